"""What every registered result carries: versions, git hash, environment, config hash."""
from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import torch

from .. import reproducible

#: Run keys that never change what a run computes: its name, resuming, where it runs and how
#: fast (device, loader workers, eval batch size, torch.compile), and where its learning curve
#: is reported. Two configs that differ only here are the same experiment and the same hash.
OPERATIONAL: frozenset[str] = frozenset({
    "name", "resume", "device", "num_workers", "eval_batch_size", "compile",
    "log", "log_dir", "mlflow_uri", "val_each_epoch", "reproducible",
})


def result_keys(config: dict[str, Any]) -> dict[str, Any]:
    """`config` without its operational keys: what decides the numbers."""
    return {k: v for k, v in config.items() if k not in OPERATIONAL}


PACKAGES = ("ltbench", "torch", "torchvision", "timm", "open_clip_torch", "optuna", "numpy", "scipy",
            "pandas", "safetensors", "onnx")


def package_versions() -> dict[str, str | None]:
    """Installed versions of what decides an expert's numbers (None: not installed)."""
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_hash() -> str | None:
    """The ltbench checkout's commit (with `+dirty` when it has uncommitted changes)."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                              timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: torch.device | str = "cpu") -> dict[str, Any]:
    """Where the numbers came from: what decides float results beyond the seed (see `numeric_environment`)."""
    import torch

    device = torch.device(device)
    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "numeric": numeric_environment(),
        "reproducible": reproducible.settings(),  # None: kernels chosen by this CPU
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cudnn"] = torch.backends.cudnn.version()
    return env


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def numeric_environment() -> dict[str, Any]:
    """CPU model and vector ISA, torch build, BLAS / oneDNN versions, thread counts: two machines
    that differ here may round differently (same seed, numbers equal to ~1e-6, accuracies ±0.1)."""
    import torch

    config = torch.__config__.show()

    def line(*needles: str) -> str | None:
        for ln in config.splitlines():
            if any(n in ln for n in needles):
                return ln.strip(" -\t")
        return None

    blas = re.search(r"BLAS_INFO=([^,\s]+)", config)
    return {
        "cpu": _cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "torch_git": torch.version.git_version,
        "torch_cuda": torch.version.cuda,
        "blas": blas.group(1) if blas else None,
        "blas_version": line("Math Kernel Library", "OpenBLAS", "BLIS"),
        "onednn": line("MKL-DNN", "oneDNN"),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "thread_env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ},
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
    }


def config_hash(config: dict[str, Any]) -> str:
    """Hash of the resolved config minus its operational keys (`records.OPERATIONAL`): same hash,
    same numbers — a resumed run checks its checkpoint against it, so moving a run to another
    device or worker count keeps its checkpoint."""
    return _hash(result_keys(config))


def _hash(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


#: Config keys that do not make a different experiment: the operational ones and the seed (two
#: experts whose configs differ only here are seeds of one experiment).
EXPERIMENT_IGNORE = OPERATIONAL | {"seed"}
#: A fusion's replicate is its members' seed (`data_seed`); its study and storage are operational.
_FUSION_IGNORE = frozenset({"data_seed", "study_name", "storage"})


def is_fusion(config: dict[str, Any]) -> bool:
    """A fused expert's config: its replicate seed and identity differ from a trained one's."""
    return str(config.get("method", "")).startswith("fuse:")


def experiment_key(config: dict[str, Any], lookup: Callable[[str], dict[str, Any]] | None = None) -> str:
    """Hash of a config minus seed, name and operational keys: same key, same experiment.

    Experts built from other experts name them (a fusion's `experts`, `init=`), and those names
    carry the seed; with `lookup(name) -> config` they enter by their own experiment key instead,
    so replicates over seeds share a key. A name `lookup` raises KeyError for stays as it is.
    """
    def ref(name: str) -> str:
        if lookup is None:
            return name
        try:
            return experiment_key(lookup(name), lookup)
        except KeyError:
            return name

    ignore = EXPERIMENT_IGNORE | (_FUSION_IGNORE if is_fusion(config) else frozenset())
    payload = {k: v for k, v in config.items() if k not in ignore}
    if is_fusion(config):
        payload["experts"] = [ref(n) for n in payload.get("experts") or []]
    mc = payload.get("method_config")
    tune = payload.get("tune")
    if isinstance(mc, dict) and isinstance(tune, dict):  # tuned runs: one experiment whatever values each seed found
        mc = payload["method_config"] = {**mc, **(tune.get("base") or {})}
    if isinstance(mc, dict) and mc.get("init"):
        payload["method_config"] = {**mc, "init": ref(mc["init"])}
    return _hash(payload)


def replicate_seed(config: dict[str, Any]) -> Any:
    """The seed that tells replicates of one experiment apart (a fusion's: its members')."""
    return config.get("data_seed", config.get("seed")) if is_fusion(config) else config.get("seed")


def now() -> str:
    """UTC time to the second, ISO 8601: what `created` records (sortable as text)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
