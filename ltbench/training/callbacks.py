"""What the trainer tells the outside while it trains: one list of callbacks.

The loop calls every callback at the same points — a minibatch phase starts, a step ends, an
epoch ends, the phase ends — in list order, and never knows who listens: the progress bar,
the tracker (history, log lines, sinks), tuning's report points (where a pruner may stop the
run by raising), a Ray task's live table, the checkpoint (last, so it saves what the others
recorded). A callback with state returns it from `state()`; the checkpoint keeps it under
the callback's `key`, so a resumed run continues it. Torch is not imported here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

if TYPE_CHECKING:
    from ..budget import Spent
    from ..methods.base import Phase

#: hooks receive the `Trainer` (and a phase's `_PhaseRun`), typed loosely: trainer.py imports this module
Trainer = _PhaseRun = Any


@dataclass(frozen=True)
class StepEvent:
    """One optimiser step has been charged (and the phase's validation checks then due were run)."""
    label: str  # the method's name
    phase: str
    epoch: float  # epochs spent in the phase
    loss: float
    lr: float
    images_per_s: float
    spent: Spent  # the phase's spending so far
    fraction: float  # of the phase's budget
    run_spent: Spent  # the whole run's spending so far, over its phases
    run_progress: float  # of the whole run's budget, in its unit


class Callback:
    """Every hook optional; `key` names the state a checkpoint keeps for it (None: it has none)."""
    key: str | None = None

    def on_phase_start(self, trainer: Trainer, phase: "Phase", before: Spent, fraction: float) -> None:
        """A minibatch phase begins (or resumes at `fraction` of its budget) after the run spent `before`."""

    def on_step(self, trainer: Trainer, event: StepEvent) -> None:
        """A step ended."""

    def on_epoch_end(self, trainer: Trainer, run: _PhaseRun) -> None:
        """An epoch (or the budget's last part of one) ended."""

    def on_phase_end(self, trainer: Trainer, phase: "Phase") -> None:
        """The phase's steps are over, or the phase failed (called from a `finally`)."""

    def state(self) -> Any:
        return None

    def load_state(self, state: Any) -> None:
        """Restore what `state` returned in the checkpoint (None for a fresh run)."""


class ProgressBar(Callback):
    """A rich bar per minibatch phase, on a terminal only (elsewhere the tracker prints plain lines)."""

    def __init__(self, console):
        self.console = console
        self._progress = None
        self._task = None

    def on_phase_start(self, trainer, phase, before, fraction) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        if not self.console.is_terminal:
            return
        self._progress = Progress(
            TextColumn(f"[bold]{trainer.method.name}[/] {phase.name}"), BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TextColumn("loss {task.fields[loss]:.4f} lr {task.fields[lr]:.2e} {task.fields[ips]:.0f} img/s"),
            TimeElapsedColumn(), console=self.console, transient=False)
        self._progress.start()
        self._task = self._progress.add_task("train", total=1.0, completed=fraction, loss=float("nan"), lr=0.0,
                                             ips=0.0)

    def on_step(self, trainer, event: StepEvent) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=event.fraction, loss=event.loss, lr=event.lr,
                                  ips=event.images_per_s)

    def on_phase_end(self, trainer, phase) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


class AtProgress(Callback):
    """Calls `fn(k, run_spent)` once the run has spent `points[k - 1]` of its whole budget (summed over
    its phases, so sub-epoch points too, the same whatever a method's phases). Tuning reports
    validation accuracy there, and its pruner may stop the run by raising."""

    def __init__(self, points: Sequence[float], fn: Callable[[int, Spent], None]):
        self.points, self.fn = sorted(points), fn
        self.reported = 0

    def on_step(self, trainer, event: StepEvent) -> None:
        k = self.reported
        while k < len(self.points) and event.run_progress >= self.points[k] - 1e-6:
            k += 1
        if k > self.reported:
            self.reported = k
            self.fn(k, event.run_spent)
            trainer.train_mode()  # the callback may have evaluated

