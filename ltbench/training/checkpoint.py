"""The epoch checkpoint: everything a resumed run needs to continue exactly, written atomically.

`Checkpoint` is the last of the trainer's callbacks, so an epoch's checkpoint holds what the
others recorded at that epoch (the tracker's history, for one). The trainer says what a phase's
state is (`Trainer.checkpoint_state`); this module owns the file, its atomic write and its
check against the run's config.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import TrainingError
from .callbacks import Callback


def rng_state() -> dict[str, Any]:
    """Every RNG an epoch draws from (timm's crops use `random`, flips and GCL noise use torch)."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` saved, so a resumed run continues the same random stream."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save through a temporary file and a rename, so a crash never leaves half a checkpoint."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError
        size = max(tmp.stat().st_size if tmp.exists() else 0, path.stat().st_size if path.exists() else 0)
        tmp.unlink(missing_ok=True)
        if isinstance(e, RuntimeError) and "write" not in str(e).lower():
            raise
        why = getattr(e, "strerror", None) or _first_line(e)
        raise TrainingError(f"cannot write the checkpoint {path} ({why}); the previous one is kept — free at least"
                            f" {max(size, 1) / 1e6:.1f} MB in {path.parent} and continue with --resume") from None


class Checkpoint(Callback):
    """`path`, rewritten by rank 0 at the end of every epoch."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_epoch_end(self, trainer, run) -> None:
        if not trainer.dist.is_main:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_save(trainer.checkpoint_state(run), self.path)

    def load(self, config_hash: str) -> dict | None:
        """The saved state, None when there is none; an unreadable one or another config's is an error."""
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=False)
        except Exception as e:  # written atomically, so this is outside damage
            raise TrainingError(f"checkpoint {self.path} cannot be read ({e}); remove it or drop --resume") from None
        if state.get("config_hash") != config_hash:
            raise TrainingError(f"checkpoint {self.path} belongs to a different config; remove it or drop --resume")
        return state
