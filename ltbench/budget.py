"""Compute budgets: parse `3epochs | 500steps | 2e13flops | 600s`, and account what is spent.

Every method in a comparison gets the same budget; the meter is the single place that
decides when a run stops, and its numbers are what the report shows as compute spent.
"""
from __future__ import annotations

import math
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from .errors import BudgetError

UNITS = {
    "epoch": "epochs", "epochs": "epochs",
    "step": "steps", "steps": "steps",
    "flop": "flops", "flops": "flops",
    "s": "seconds", "sec": "seconds", "secs": "seconds", "second": "seconds", "seconds": "seconds",
}
#: Sane upper bounds: past them a run would not end in any useful time (1e21 FLOPs is ~10 GPU-years).
MAX_BUDGET = {"epochs": 1e6, "steps": 1e9, "flops": 1e21, "seconds": 1e8}
_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]+)\s*$")


@dataclass(frozen=True)
class Budget:
    """A compute budget: an amount in one unit; methods are compared at equal budgets."""
    amount: float
    unit: str  # epochs | steps | flops | seconds

    def __str__(self) -> str:
        suffix = {"epochs": "epochs", "steps": "steps", "flops": "flops", "seconds": "s"}[self.unit]
        return f"{self.amount:g}{suffix}"

    def scaled(self, fraction: float) -> "Budget":
        """The share of this budget one phase of a multi-phase method gets."""
        return Budget(self.amount * fraction, self.unit)


def parse_budget(text: str | Budget) -> Budget:
    """"3epochs", "500steps", "2e13flops" or "600s" as a Budget; bad text is a BudgetError naming it."""
    if isinstance(text, Budget):
        return text
    m = _PATTERN.match(str(text))
    unit = UNITS.get(m.group(2).lower()) if m else None
    if not m or unit is None or float(m.group(1)) <= 0:
        raise BudgetError(
            f"cannot parse budget {text!r}: expected a positive number and a unit,"
            " e.g. 3epochs, 500steps, 2e13flops or 600s"
        )
    amount = float(m.group(1))
    if not math.isfinite(amount) or amount > MAX_BUDGET[unit]:
        raise BudgetError(f"budget {text!r}: at most {MAX_BUDGET[unit]:g} {unit} (a run that long never ends)")
    if unit == "seconds" and amount < 1:
        raise BudgetError(f"budget {text!r}: at least 1 second (a step alone takes longer)")
    if unit == "steps" and amount != int(amount):
        raise BudgetError(f"budget {text!r}: steps must be a whole number")
    return Budget(amount, unit)


@dataclass
class Spent:
    """Compute spent so far; serialisable so a resumed run continues the count."""

    epochs: float = 0.0
    steps: int = 0
    flops: float = 0.0
    seconds: float = 0.0
    images: int = 0

    def get(self, unit: str) -> float:
        """The amount spent in `unit` (one of Budget's units)."""
        return float(getattr(self, unit))

    def add(self, other: "Spent") -> None:
        """Add another count to this one (a phase's spending to the run's)."""
        for k, v in asdict(other).items():
            setattr(self, k, getattr(self, k) + v)

    def as_dict(self) -> dict:
        """Plain dict for the expert's metrics record."""
        return asdict(self)


@dataclass
class Meter:
    """Tracks one phase's spending against its budget."""

    budget: Budget
    spent: Spent = field(default_factory=Spent)

    @property
    def fraction(self) -> float:
        """Share of the budget spent, at most 1 (drives the learning-rate schedule)."""
        return min(1.0, self.spent.get(self.budget.unit) / self.budget.amount)

    @property
    def exhausted(self) -> bool:
        """True once the budget is spent (1e-9 slack: fractional epochs summed in floats may fall just short)."""
        return self.spent.get(self.budget.unit) >= self.budget.amount - 1e-9

    def charge(self, *, steps: int = 0, images: int = 0, epochs: float = 0.0, flops: float = 0.0,
               seconds: float = 0.0) -> None:
        """Count what one step (or epoch) cost against the budget."""
        s = self.spent
        s.steps += steps
        s.images += images
        s.epochs += epochs
        s.flops += flops
        s.seconds += seconds


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of `fn` (forward, or forward + backward), by torch's flop counter."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


class Stopwatch:
    """Device-seconds: wall time with the device synchronised, so GPU work is counted."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self) -> "Stopwatch":
        self._sync()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self._sync()
        self.elapsed = time.perf_counter() - self.t0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
