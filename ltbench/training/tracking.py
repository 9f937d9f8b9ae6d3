"""What a run reports while it trains: the history (learning curve), plain progress lines, and
optional TensorBoard / MLflow sinks.

A `Tracker` is one of the trainer's callbacks (a phase starts, a step ends, an epoch ends); the
trainer never knows where the numbers go. The history is one row per optimiser step; the row of
an epoch's last step also carries that epoch's validation accuracy. It is kept in the
checkpoint (a resumed run's history is the uninterrupted one) and registered as the
expert's `history.csv`.

TensorBoard and MLflow are optional extras (`pip install 'ltbench[tensorboard]'`,
`'ltbench[mlflow]'`), imported only when `--log` asks for them. Torch is not imported here.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Iterable

from ..checks import Check
from .callbacks import Callback
from ..errors import ConfigError

#: history.csv's columns: step (global, from 1), phase, epoch (epochs so far in the phase), mean
#: loss of the step, learning rate, images/s of the step, FLOPs and device seconds spent so far
#: in the run, validation accuracy (per-class-averaged, on the last step of each epoch only).
HISTORY_COLUMNS = ("step", "phase", "epoch", "loss", "lr", "images_per_s", "flops", "seconds", "val_acc")
#: what `--log` accepts, and the module each needs
LOG_TARGETS = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow")}


def log_targets(value: Any) -> list[str]:
    """`--log` / `--set log=` as a list: "tensorboard", "mlflow", "tensorboard,mlflow", a list, or none.
    An unknown target is a ValueError saying what is expected (and the closest target)."""
    if value in (None, "", "none", False):
        return []
    if not isinstance(value, (str, list, tuple)):
        raise ValueError(LogTargets.what)
    items = value.split(",") if isinstance(value, str) else list(value)
    out: list[str] = []
    for item in (str(i).strip().lower() for i in items):
        if item in ("", "none"):
            continue
        if item not in LOG_TARGETS:
            from ..plugins.names import closest

            close = closest(item, LOG_TARGETS, cutoff=0.6)
            raise ValueError(LogTargets.what + (f"; did you mean {close!r}?" if close else ""))
        if item not in out:
            out.append(item)
    return out


class LogTargets(Check):
    """The `log` run key's check: normalised to a list of known targets."""

    what = "tensorboard, mlflow or both (a list or comma-separated)"

    def __call__(self, value: Any) -> list[str]:
        return log_targets(value)


def check_log_options(log: Any) -> None:
    """Fail before any work when a sink's package is missing (the `log` key is already checked)."""
    for target in log_targets(log):
        module, extra = LOG_TARGETS[target]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"--log {target} needs the {module!r} package: pip install 'ltbench[{extra}]'")


def _fmt_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Tracker(Callback):
    """Receives the trainer's events; keeps the history and feeds the progress lines and sinks."""
    key = "history"

    def __init__(self, config: dict[str, Any], console=None, quiet: bool = False, home: str | Path | None = None,
                 enabled: bool = True):
        """`config`: the run's config.json form (`RunSpec.config`), what the sinks record."""
        self.rows: list[dict[str, Any]] = []
        self.val_each_epoch = bool(config["val_each_epoch"])
        #: plain lines every 10 % of a phase when stderr is not a terminal (a cluster job's log)
        self.lines = enabled and not quiet and console is not None and not console.is_terminal
        self.console = console
        self.sinks: list[_Sink] = []
        if enabled:
            home = Path(home) if home is not None else Path("ltbench-runs")
            for target in log_targets(config["log"]):
                self.sinks.append(_SINKS[target](config, home))
        self._phase = ""
        self._before = (0.0, 0.0)
        self._next_tick = 0.1
        self._t0, self._f0 = time.perf_counter(), 0.0

    # -- the trainer's events ----------------------------------------------------------------
    def on_phase_start(self, trainer, phase, before, fraction: float) -> None:
        self.phase_start(phase.name, before.flops, before.seconds, fraction)

    def on_step(self, trainer, event) -> None:
        self.step(epoch=event.epoch, loss=event.loss, lr=event.lr, images_per_s=event.images_per_s,
                  flops=event.spent.flops, seconds=event.spent.seconds, fraction=event.fraction, label=event.label)

    def on_epoch_end(self, trainer, run) -> None:
        if self.val_each_epoch and trainer.dist.is_main:
            self.epoch_end(trainer.epoch_val_accuracy(run))

    def phase_start(self, name: str, flops_before: float, seconds_before: float, fraction: float = 0.0) -> None:
        """A phase begins (or resumes at `fraction` of its budget) after the run spent the given amounts."""
        self._phase, self._before = name, (flops_before, seconds_before)
        self._next_tick = math.floor(fraction * 10 + 1e-9) / 10 + 0.1
        self._t0, self._f0 = time.perf_counter(), fraction

    def step(self, *, epoch: float, loss: float, lr: float, images_per_s: float, flops: float, seconds: float,
             fraction: float, label: str = "") -> None:
        """One optimiser step ended; `flops` / `seconds` are this phase's so far, `fraction` of its budget."""
        row = {"step": len(self.rows) + 1, "phase": self._phase, "epoch": epoch, "loss": loss, "lr": lr,
               "images_per_s": images_per_s, "flops": self._before[0] + flops,
               "seconds": self._before[1] + seconds, "val_acc": None}
        self.rows.append(row)
        for sink in self.sinks:
            sink.step(row)
        if self.lines and fraction + 1e-9 >= self._next_tick:
            self._next_tick = math.floor(fraction * 10 + 1e-9) / 10 + 0.1
            elapsed = time.perf_counter() - self._t0
            done = fraction - self._f0
            eta = elapsed * (1 - fraction) / done if done > 0 else float("inf")
            self.console.print(f"{label} {self._phase} {100 * fraction:3.0f}% step {row['step']} loss {loss:.4f}"
                               f" lr {lr:.2e} {images_per_s:.0f} img/s ETA {_fmt_eta(eta)}",
                               highlight=False, markup=False, soft_wrap=True)

    def epoch_end(self, val_acc: float | None) -> None:
        """An epoch (or the budget's last part of one) ended; its validation accuracy if measured."""
        if val_acc is None or not self.rows:
            return
        self.rows[-1]["val_acc"] = val_acc
        for sink in self.sinks:
            sink.epoch(self.rows[-1])

    # -- resume ------------------------------------------------------------------------------
    def state(self) -> list[dict[str, Any]]:
        """The progress rows so far, saved in the checkpoint so a resumed run keeps its history."""
        return [dict(r) for r in self.rows]

    def load_state(self, rows: Iterable[dict[str, Any]] | None) -> None:
        """Restore the rows `state` saved (none for a fresh run)."""
        self.rows = [dict(r) for r in rows or []]

    # -- the end ---------------------------------------------------------------------------------
    def finish(self, config: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None,
               expert_path: Path | None = None) -> None:
        """The expert is registered: final metrics and its files go to the sinks, which close."""
        for sink in self.sinks:
            sink.finish(config or {}, metrics or {}, expert_path)
        self.sinks = []

    def fail(self) -> None:
        """Tell every sink the run failed and drop them, so nothing more is logged."""
        for sink in self.sinks:
            sink.fail()
        self.sinks = []


def flat_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """{"test": {"overall": .7}} → {"test/overall": .7}: finite numbers only."""
    out = {}
    for split, vals in metrics.items():
        if not isinstance(vals, dict):
            continue
        for k, v in vals.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                out[f"{split}/{k}"] = float(v)
    return out


def flat_params(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A resolved config as MLflow params: nested keys joined by '.', values as JSON text."""
    out: dict[str, str] = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update(flat_params(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, str) else json.dumps(v, default=str)
    return out


class _Sink:
    def step(self, row: dict[str, Any]) -> None: ...
    def epoch(self, row: dict[str, Any]) -> None: ...
    def finish(self, config: dict[str, Any], metrics: dict[str, Any], expert_path: Path | None) -> None: ...
    def fail(self) -> None: ...


STEP_SCALARS = {"train/loss": "loss", "train/lr": "lr", "train/images_per_s": "images_per_s",
                "compute/flops": "flops", "compute/device_seconds": "seconds"}


class TensorBoardSink(_Sink):
    """Event files under `log_dir/<expert name>` (default `$LTBENCH_HOME/tensorboard`), x axis = step."""

    def __init__(self, run: dict[str, Any], home: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.dir = Path(run.get("log_dir") or home / "tensorboard") / run["name"]
        self.writer = SummaryWriter(log_dir=str(self.dir))
        self.writer.add_text("config", "```\n" + json.dumps(run, indent=2, sort_keys=True, default=str) + "\n```", 0)
        self.last = 0

    def step(self, row: dict[str, Any]) -> None:
        """Write one step's scalars."""
        for tag, key in STEP_SCALARS.items():
            self.writer.add_scalar(tag, row[key], row["step"])
        self.last = row["step"]

    def epoch(self, row: dict[str, Any]) -> None:
        """Write the epoch's validation accuracy."""
        self.writer.add_scalar("val/acc", row["val_acc"], row["step"])

    def finish(self, config, metrics, expert_path) -> None:
        """Write the final metrics at the last step and close the writer."""
        for tag, v in flat_metrics(metrics).items():
            self.writer.add_scalar(f"final/{tag}", v, self.last)
        self.writer.close()

    def fail(self) -> None:
        """Close the writer so what was logged is flushed to disk."""
        self.writer.close()


class MlflowSink(_Sink):
    """One MLflow run per expert: params = the resolved config, metrics per step, the expert's files
    as artifacts. Tracking URI: `mlflow_uri`, else $MLFLOW_TRACKING_URI, else a SQLite store
    `$LTBENCH_HOME/mlflow.db` with artifacts beside it; experiment $MLFLOW_EXPERIMENT_NAME or "ltbench"."""

    BATCH = 200  # metrics per request (MLflow takes up to 1000)

    def __init__(self, run: dict[str, Any], home: Path):
        from mlflow.tracking import MlflowClient

        uri = run.get("mlflow_uri") or os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            home.mkdir(parents=True, exist_ok=True)
            uri = f"sqlite:///{(home / 'mlflow.db').resolve()}"
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "ltbench")
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            exp_id = exp.experiment_id
        elif uri.startswith("sqlite:"):  # else the server's default: an ./mlruns beside wherever ltbench ran
            exp_id = self.client.create_experiment(name, artifact_location=(home / "mlartifacts").resolve().as_uri())
        else:
            exp_id = self.client.create_experiment(name)
        self.run_id = self.client.create_run(exp_id, run_name=run["name"], tags={"ltbench.expert": run["name"]}).info.run_id
        params = flat_params({k: v for k, v in run.items() if k not in ("name", "resume")})
        from mlflow.entities import Param

        items = [Param(k, v[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100])
        self.pending: list = []
        self.last = 0

    def _metric(self, key: str, value: float, step: int) -> None:
        from mlflow.entities import Metric

        self.pending.append(Metric(key, float(value), int(time.time() * 1000), step))
        if len(self.pending) >= self.BATCH:
            self._flush()

    def _flush(self) -> None:
        if self.pending:
            self.client.log_batch(self.run_id, metrics=self.pending)
            self.pending = []

    def step(self, row: dict[str, Any]) -> None:
        """Queue one step's scalars (sent in batches)."""
        for tag, key in STEP_SCALARS.items():
            self._metric(tag.split("/", 1)[1], row[key], row["step"])
        self.last = row["step"]

    def epoch(self, row: dict[str, Any]) -> None:
        """Queue the epoch's validation accuracy and send what is queued."""
        self._metric("val_acc", row["val_acc"], row["step"])
        self._flush()

    def finish(self, config, metrics, expert_path) -> None:
        """Send the final metrics (MLflow keys take no ':')."""
        for tag, v in flat_metrics(metrics).items():
            self._metric(tag.replace(":", "_"), v, self.last)
        self._flush()
        if expert_path is not None:
            self.client.log_artifacts(self.run_id, str(expert_path))
        self.client.set_terminated(self.run_id, "FINISHED")

    def fail(self) -> None:
        """Send what is queued and mark the MLflow run FAILED."""
        self._flush()
        self.client.set_terminated(self.run_id, "FAILED")


_SINKS = {"tensorboard": TensorBoardSink, "mlflow": MlflowSink}


# -- showing a history -------------------------------------------------------------------------
_BARS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float], width: int = 40) -> str:
    """A one-line terminal plot: `values` averaged into `width` buckets, scaled min→max."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return ""
    n = min(width, len(vals))
    buckets = [vals[i * len(vals) // n:(i + 1) * len(vals) // n] for i in range(n)]
    means = [sum(b) / len(b) for b in buckets]
    lo, hi = min(means), max(means)
    span = hi - lo or 1.0
    return "".join(_BARS[min(len(_BARS) - 1, int((m - lo) / span * len(_BARS)))] for m in means)


def epoch_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One summary per epoch: the epoch's last row with its mean loss and images/s."""
    out, since = [], []
    for i, r in enumerate(rows):
        since.append(r)
        nxt = rows[i + 1] if i + 1 < len(rows) else None
        last = (nxt is None or nxt["phase"] != r["phase"] or r.get("val_acc") is not None
                or math.ceil(nxt["epoch"] - 1e-6) != math.ceil(r["epoch"] - 1e-6))
        if last:
            losses = [s["loss"] for s in since if s.get("loss") is not None]
            ips = [s["images_per_s"] for s in since if s.get("images_per_s") is not None]
            out.append({**r, "loss": sum(losses) / len(losses) if losses else None,
                        "images_per_s": sum(ips) / len(ips) if ips else None, "steps": len(since)})
            since = []
    return out


def history_table(name: str, rows: list[dict[str, Any]]):
    """`ltbench show NAME --history`: a rich table of epochs, and a loss sparkline per phase."""
    from rich.table import Table

    table = Table(title=f"{name}: learning curve ({len(rows)} steps)")
    for col, just in (("phase", "left"), ("epoch", "right"), ("step", "right"), ("loss", "right"),
                      ("lr", "right"), ("img/s", "right"), ("FLOPs", "right"), ("device s", "right"),
                      ("val acc", "right")):
        table.add_column(col, justify=just)

    def num(v, fmt):
        return "" if v is None else format(v, fmt)

    for r in epoch_rows(rows):
        table.add_row(r["phase"], num(r["epoch"], ".2f"), str(r["step"]), num(r["loss"], ".4f"), num(r["lr"], ".2e"),
                      num(r["images_per_s"], ".0f"), num(r["flops"], ".3g"), num(r["seconds"], ".1f"),
                      "" if r.get("val_acc") is None else f"{100 * r['val_acc']:.2f}%")
    phases = list(dict.fromkeys(r["phase"] for r in rows))
    caption = [f"loss {p}: {sparkline([r['loss'] for r in rows if r['phase'] == p])}" for p in phases]
    table.caption = "\n".join(caption) if caption else "no training steps recorded"
    return table
