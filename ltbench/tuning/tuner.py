"""An equal tuning budget for every method: successive halving over many short runs, on validation data.

`ltbench train --tune-budget B` and a suite's `tune: {budget: B}` spend, before the real run, B
times the run's own budget (in its unit: epochs, steps, FLOPs or seconds) on trials of the
method's declared search space (`SEARCH_SPACE` beside its config: the optimiser, sgd or adamw, each
with its own learning-rate range; weight decay; warm-up; a batch size where it matters). A trial
is a run of a share of the run's budget with a schedule of its own length (warm-up as a share of
its steps, cosine to its end: the final run's shape, shorter), scored by its per-class accuracy on
a fixed, class-balanced subset of the validation split (at most `val_images`). Successive halving
(`halving_plan`): the first rung runs as many trials of share·eta^-(rungs-1) as the budget pays
for, drawn by TPE (seeded with the run's seed); the best 1/eta of each rung by the mean of
accuracy and the probability given to the true class (both per-class averaged: `scores`) run again,
eta times longer, up to `share` of the run. A short trial is often still at chance in accuracy, its
argmax noise, while that probability already orders the settings; the log-loss would not, as it
favours a model left near uniform (too low a learning rate) over one that learns with confidence,
and the probability alone favours a confident model over a more accurate one. The final run trains
on the whole budget with the best values (by accuracy) of the last rung and records the study
(every trial, its rung, values, probability and compute; the best values; the budget and what was
used, evaluations included) in its provenance.

`tune: {trials: N}` is the fixed-trial form: N trials of `share` each, the first of them the
method's own values (its paper defaults, or the user's `--set`) where they lie in the space, with
Optuna's median pruner (or none) at `rungs` report points of each trial.

Trials never see the test split or the OOD sets (they are dropped before the data is
validated). The study lives in the registry's storage (`storage_url`), so a killed tuning
resumes with the trials it has, and `jobs` processes share one study through it.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..errors import ConfigError, TrainingError
from ..plugins.names import suggest as suggest_name
from ..spec import RunSpec
from ..store.index import Registry
from ..training.callbacks import Callback
from .study import join, open_study, spawn

SPACE_KINDS = ("log", "float", "int", "choice", "by")
PRUNERS = ("median", "none")
#: Finished states: what counts towards a study's trials (a RUNNING one left by a killed process does not).
_FINISHED = ("COMPLETE", "PRUNED", "FAIL")
#: The most trials a halving's first rung may draw (a guard for a tiny share of a large budget).
MAX_TRIALS = 1000


@dataclass(frozen=True)
class TuneSpec:
    """How a run is tuned; the same for every run of a suite."""

    budget: float | None = None  # successive halving: tuning compute as a multiple of the run's budget
    trials: int | None = None  # the fixed-trial form: this many trials of `share` each
    share: float = 0.25  # the longest trial, as a share of the run's budget
    eta: int = 3  # each rung is eta times longer than the one before and keeps 1/eta of its trials
    rungs: int = 3  # halving: rungs of trial lengths; fixed trials: report points to the pruner
    val_images: int = 1000  # the fixed validation subset trials are scored on (class-balanced), at most this many
    jobs: int = 1  # processes running trials at once, sharing the study (and the budget) through its storage
    pruner: str = "median"  # fixed trials: median | none
    startup: int = 2  # fixed trials: trials that finish before the median pruner stops any

    def as_dict(self) -> dict[str, Any]:
        """Plain dict, for hashing into the study name."""
        return asdict(self)

    def points(self) -> list[float]:
        """eta^-(rungs-1), …, 1/eta, 1: the rungs' trial lengths (halving), or a trial's report points (fixed)."""
        return [float(self.eta) ** -(self.rungs - 1 - i) for i in range(self.rungs)]

    def steps(self) -> list[int]:
        """The Optuna step of each report point (point i is step eta^i: the pruner's rungs, min resource 1)."""
        return [self.eta ** i for i in range(self.rungs)]


def parse_tune(value: Any, where: str = "tune") -> TuneSpec | None:
    """A `tune:` value (N trials, or a mapping of TuneSpec keys) checked before anything trains; None: no tuning."""
    if value is None or value is False:
        return None
    known = list(TuneSpec.__dataclass_fields__)
    if isinstance(value, bool) or not isinstance(value, (int, dict)):
        raise ConfigError(f"{where}: expected a number of trials or a mapping ({', '.join(known)}), got {value!r}")
    raw = {"trials": value} if isinstance(value, int) else dict(value)
    for key in raw:
        if key not in known:
            hint = suggest_name(str(key), known, cutoff=0.6)
            raise ConfigError(f"{where}: unknown key {key!r}.{hint} Known keys: {', '.join(known)}")
    if (raw.get("trials") is None) == (raw.get("budget") is None):
        raise ConfigError(f"{where}: give either 'budget' (tuning compute as a multiple of the run's, e.g. 0.75:"
                          f" successive halving) or 'trials' (a number of fixed-share trials)")

    def integer(key: str, low: int) -> None:
        v = raw.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < low):
            raise ConfigError(f"{where}: {key} must be an integer >= {low}, got {v!r}")

    def number(key: str, ok: Callable[[float], bool], what: str) -> None:
        v = raw.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not ok(v)):
            raise ConfigError(f"{where}: {key} must be {what}; got {v!r}")

    integer("trials", 1)
    integer("jobs", 1)
    integer("startup", 0)
    integer("eta", 2)
    integer("rungs", 1)
    integer("val_images", 1)
    number("share", lambda v: 0 < v <= 1, "a number in (0, 1], the share of the run's budget a trial gets")
    number("budget", lambda v: 0 < v <= 100, "a number in (0, 100], the tuning compute as a multiple of the run's")
    if raw.get("pruner", "median") not in PRUNERS:
        raise ConfigError(f"{where}: pruner must be one of {', '.join(PRUNERS)}, got {raw['pruner']!r}")
    for key in ("share", "budget"):
        if raw.get(key) is not None:
            raw[key] = float(raw[key])
    spec = TuneSpec(**raw)
    least = spec.share * math.fsum(spec.points())  # one trial in each rung
    if spec.budget is not None and spec.budget < least * (1 - 1e-9):
        raise ConfigError(f"{where}: budget {spec.budget:g} does not pay for one trial through every rung"
                          f" ({least:.3g} of the run); raise it, or lower share or rungs")
    return spec


def storage_url(registry: Registry) -> str:
    """The Optuna RDB storage of a registry's tuning studies: next to its index."""
    return f"sqlite:///{(registry.home / 'studies.sqlite').resolve()}"


def search_space(run: RunSpec) -> dict[str, tuple]:
    """The method's declared space for this run, checked against its config keys."""
    space = run.method_config.search_space()
    check_space(space, asdict(run.method_config), f"method {run.method!r} SEARCH_SPACE")
    return space


def _check_range(spec: Any) -> bool:
    kind = spec[0] if isinstance(spec, (tuple, list)) and spec else None
    if kind == "log":
        return len(spec) == 3 and 0 < spec[1] < spec[2]
    if kind in ("float", "int"):
        return len(spec) == 3 and spec[1] < spec[2]
    return kind == "choice" and len(spec) == 2 and isinstance(spec[1], (list, tuple)) and len(spec[1]) > 0


def check_space(space: dict[str, tuple], config: dict[str, Any], where: str) -> None:
    """Fail before any trial when a search key is not in the method's config or its range is bad.

    Besides ranges, a key may depend on a choice drawn before it: ("by", "optimizer", {"sgd": range,
    "adamw": range}) draws the learning rate from the range of the optimiser the trial uses.
    """
    for key, spec in space.items():
        if key not in config:
            raise ConfigError(f"{where}: {key!r} is no key of the method's config")
        if isinstance(spec, (tuple, list)) and spec and spec[0] == "by":
            parent = spec[1] if len(spec) == 3 else None
            options = space.get(parent) if parent in space else None
            ok = (isinstance(spec[2], dict) and list(space).index(parent) < list(space).index(key)
                  and options[0] == "choice" and set(spec[2]) == set(options[1])
                  and all(_check_range(r) and r[0] != "choice" for r in spec[2].values()))
            if not ok:
                raise ConfigError(f"{where}: {key}: {spec!r} is not (by, KEY, {{value: range}}) with KEY a choice"
                                  f" declared before it and one range for each of its values")
        elif not _check_range(spec):
            raise ConfigError(f"{where}: {key}: {spec!r} is not (log|float|int, low, high) with low < high"
                              f" (log: low > 0) or (choice, [values])")


def _range_of(spec: tuple, values: dict[str, Any]) -> tuple:
    """The plain range a key is drawn from, given the values drawn before it."""
    return tuple(spec[2][values[spec[1]]]) if spec[0] == "by" else tuple(spec)


def in_space(values: dict[str, Any], space: dict[str, tuple]) -> dict[str, Any]:
    """The part of `values` the space can draw (a method's own values are enqueued only where they lie in it)."""
    out: dict[str, Any] = {}
    for key, spec in space.items():
        if spec[0] == "by" and spec[1] not in out:
            continue
        value, rng = values[key], _range_of(spec, out)
        if rng[0] == "choice":
            ok = value in list(rng[1])
        else:
            ok = (not isinstance(value, bool) and isinstance(value, (int, float)) and rng[1] <= value <= rng[2]
                  and (rng[0] != "int" or float(value).is_integer()))
        if ok:
            out[key] = value
    return out


def _param_name(key: str, spec: tuple, values: dict[str, Any]) -> str:
    """Optuna's name of a key: a dependent key has one parameter per choice (its own distribution)."""
    return f"{key}:{values[spec[1]]}" if spec[0] == "by" else key


def suggest(trial, space: dict[str, tuple]) -> dict[str, Any]:
    """One trial's values for every key of the search space (Optuna's suggest_* per kind)."""
    out: dict[str, Any] = {}
    for key, spec in space.items():
        name, rng = _param_name(key, spec, out), _range_of(spec, out)
        kind = rng[0]
        if kind == "choice":
            out[key] = trial.suggest_categorical(name, list(rng[1]))
        elif kind == "int":
            out[key] = trial.suggest_int(name, int(rng[1]), int(rng[2]))
        else:
            out[key] = trial.suggest_float(name, float(rng[1]), float(rng[2]), log=kind == "log")
    return out


def optuna_params(values: dict[str, Any], space: dict[str, tuple]) -> dict[str, Any]:
    """Config values as Optuna's parameter names (to enqueue a trial)."""
    return {_param_name(k, space[k], values): v for k, v in values.items()}


def config_values(params: dict[str, Any]) -> dict[str, Any]:
    """Optuna's parameters of a trial as config values (`lr:adamw` is the config's `lr`)."""
    return {k.split(":", 1)[0]: v for k, v in params.items()}


def study_name(run: RunSpec, spec: TuneSpec, space: dict[str, tuple]) -> str:
    """A name that changes with anything that changes results, so a study only resumes its own trials."""
    from ..store.provenance import _hash, result_keys

    # operational keys (device, workers, logging, …: records.OPERATIONAL) leave the study as it is,
    # as they leave config_hash: a study resumed on another device keeps its trials
    key = _hash({"run": result_keys(run.config), "tune": spec.as_dict(),
                 "space": {k: list(v) if isinstance(v, tuple) else v for k, v in space.items()}})
    return f"tune-{run.name}-{key}"


def trial_run(run: RunSpec, params: dict[str, Any], share: float) -> RunSpec:
    """The run config of one trial: the chosen values and its share of the budget.

    Without the learning curve's validation pass at each epoch end (`val_each_epoch`, an
    operational key): a trial is never registered, so nobody reads its history, and those passes
    are not charged to its budget (a multi-phase trial, e.g. LT-Soups' 15, ran one per phase).
    """
    budget = run.budget.scaled(share)
    if budget.unit == "steps":  # whole steps, at least one
        budget = type(budget)(max(1.0, float(round(budget.amount))), "steps")
    return run.replace(budget=budget, val_each_epoch=False).with_method(**params)


def val_subset(labels: np.ndarray, num_classes: int, at_most: int) -> np.ndarray:
    """The fixed validation images trials are scored on: the first ⌊at_most / C⌋ (at least 1) of each class,
    in split order, so every trial of every method sees the same ones and no RNG is drawn."""
    per_class = max(1, at_most // num_classes)
    return np.sort(np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(num_classes)]))


@dataclass
class TrialCompute:
    """What one trial spent: training (in the run's units) plus its validation reports."""

    unit: str
    train: Any = None  # budget.Spent
    eval_flops: float = 0.0
    eval_seconds: float = 0.0

    def amount(self) -> float:
        """Spent in the budget's unit: evaluations count where the unit measures them (FLOPs, seconds)."""
        if self.train is None:
            return 0.0
        extra = {"flops": self.eval_flops, "seconds": self.eval_seconds}.get(self.unit, 0.0)
        return self.train.get(self.unit) + extra

    def as_dict(self) -> dict[str, float]:
        t = self.train
        return {"flops": t.flops + self.eval_flops, "seconds": t.seconds + self.eval_seconds,
                "train_flops": t.flops, "train_seconds": t.seconds, "steps": t.steps, "epochs": t.epochs,
                "amount": self.amount(), "unit": self.unit}


class Reporter:
    """What a fixed-share trial tells its study at each of the spec's report points: the accuracy (to
    the pruner) and the compute spent so far (stored first, so a pruned trial counts in the tuning
    compute too). It stops the trial (optuna.TrialPruned) where the pruner says so."""

    def __init__(self, trial, spec: TuneSpec):
        self.trial, self.points, self.steps = trial, spec.points(), spec.steps()
        self.done = 0

    def __call__(self, k: int, acc: float, cost: TrialCompute) -> None:
        """The trial has passed its first `k` points with `acc`; the last point ends it (never pruned there)."""
        import optuna

        for step in self.steps[self.done:k]:
            self.trial.report(acc, step)
        self.done = k
        self.trial.set_user_attr("spent", cost.as_dict())
        if k < len(self.points) and self.trial.should_prune():
            raise optuna.TrialPruned(f"val accuracy {acc:.4f} at point {k} is below the median")


def scores(logits: torch.Tensor, labels: np.ndarray, num_classes: int) -> tuple[float, float | None]:
    """(accuracy, mean probability of the true class) of validation logits, each averaged per class: the
    second is the accuracy the model expects of itself, 1/C for a uniform or a collapsed model alike;
    None where the logits are not finite (the worst)."""
    from ..metrics import class_averaged_accuracy

    labels = np.asarray(labels, dtype=np.int64)
    logits = torch.as_tensor(logits).float()
    p_true = torch.softmax(logits, 1)[torch.arange(len(labels)), torch.as_tensor(labels)].numpy()
    soft = class_averaged_accuracy(p_true, labels, num_classes)  # the per-class mean of any per-sample value
    acc = class_averaged_accuracy(logits.argmax(1).numpy() == labels, labels, num_classes)
    return acc, soft if math.isfinite(soft) else None


def run_trial(run: RunSpec, registry: Registry, reporter: Reporter | None = None,
              val_images: int = TuneSpec.val_images) -> tuple[float, float | None, dict[str, float]]:
    """Train `run` (one trial) without registering it; (per-class val accuracy, per-class val probability
    of the true class (`scores`), compute spent incl. evaluations).

    The accuracy is measured on `val_subset`; with a `reporter`, at each of its points too.
    """
    from ..budget import Spent
    from ..training.pipeline import build_all
    from ..training.callbacks import AtProgress
    from ..training.trainer import Trainer, resolve_device, seed_everything

    budget = run.budget
    device = resolve_device(run.device)
    seed_everything(run.seed)
    data, method = build_all(run, registry, tuning=True)
    data.val = data.val.subset(val_subset(data.val.labels, data.num_classes, val_images))
    method.to(device)
    cost = TrialCompute(budget.unit, Spent())

    def val_scores() -> tuple[float, float | None]:
        logits, flops, seconds = trainer.val_pass()
        cost.eval_flops += flops
        cost.eval_seconds += seconds
        return scores(logits, data.val.labels, data.num_classes)

    def on_report(k: int, spent: Spent) -> None:
        cost.train = spent
        reporter(k, val_scores()[0], cost)

    # the last point is the trial's end: reported after `fit`, from the finished model (a phase's end
    # hook may still change it after the last step, as LT-Soups' does)
    points = reporter.points[:-1] if reporter is not None else []
    trainer = Trainer(method, data, run, device, quiet=True,
                      callbacks=[AtProgress(points, on_report)] if reporter is not None else [])
    cost.train = trainer.fit(budget).spent
    acc, p_true = val_scores()
    if reporter is not None:
        reporter(len(reporter.points), acc, cost)
    return acc, p_true, cost.as_dict()


def _open_study(name: str, storage: str, spec: TuneSpec, seed: int, worker: int = 0):
    import optuna

    # TPE's random start: half the trials (of rung 0 when halving), at most its default 10
    n = spec.trials if spec.trials else halving_plan(spec)[0][0]
    sampler = optuna.samplers.TPESampler(seed=seed + worker, n_startup_trials=max(1, min(10, n // 2)),
                                         constant_liar=spec.jobs > 1)
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=spec.startup, n_warmup_steps=0)
              if spec.pruner == "median" and spec.budget is None else optuna.pruners.NopPruner())
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return open_study(name, storage, sampler, ConfigError, pruner=pruner)


def halving_plan(spec: TuneSpec) -> list[tuple[int, float]]:
    """(trials, each one's share of the run's budget) per rung of a budget's successive halving.

    Rung i trains n_i trials of share·eta^-(rungs-1-i), n_i = max(1, n_(i-1) // eta): the best
    1/eta of a rung train again, eta times longer, each from scratch with a schedule of its own
    length. n_0 is the largest whose rungs together cost at most `budget` runs.
    """
    shares = [spec.share * p for p in spec.points()]

    def rungs(n0: int) -> list[tuple[int, float]]:
        out, n = [], n0
        for share in shares:
            out.append((n, share))
            n = max(1, n // spec.eta)
        return out

    def cost(n0: int) -> float:
        return math.fsum(n * share for n, share in rungs(n0))

    n0 = 1
    while n0 < MAX_TRIALS and cost(n0 + 1) <= spec.budget * (1 + 1e-9):
        n0 += 1
    return rungs(n0)


def _run_configs(name: str, storage: str, run: RunSpec, space: dict[str, tuple], spec: TuneSpec,
                 home: str, items: list[tuple[int, float, dict[str, Any] | None]], worker: int = 0,
                 threads: int | None = None) -> None:
    """Train one rung's trials: (rung, share, fixed values or None to draw them) each, telling the study."""
    import optuna

    if threads:
        torch.set_num_threads(threads)
    registry = Registry(home)
    study = _open_study(name, storage, spec, run.seed, worker)
    for rung, share, values in items:
        if values is not None:
            study.enqueue_trial(optuna_params(values, space), user_attrs={"rung": rung})
        trial = study.ask()
        trial.set_user_attr("rung", rung)
        trial.set_user_attr("pid", os.getpid())
        params = suggest(trial, space)
        try:
            acc, p_true, spent = run_trial(trial_run(run, params, share), registry, val_images=spec.val_images)
        except TrainingError as e:  # e.g. a learning rate that makes the loss non-finite: the worst value
            trial.set_user_attr("error", str(e))
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            continue
        trial.set_user_attr("spent", spent)
        trial.set_user_attr("val_p_true", p_true)
        study.tell(trial, acc)


def _in_processes(target: Callable[..., None], args: tuple, parts: list[Any], jobs: int) -> None:
    """Run target(*args, part, worker, threads) for each part: here, and in jobs − 1 spawned processes."""
    if jobs <= 1 or len(parts) <= 1:
        for part in parts:
            target(*args, part)
        return
    threads = max(1, torch.get_num_threads() // jobs)
    procs = spawn(target, [(*args, parts[i], i, threads) for i in range(1, len(parts))])
    before = torch.get_num_threads()
    try:
        target(*args, parts[0], 0, threads)
    finally:
        torch.set_num_threads(before)
        codes = join(procs)
    bad = [code for code in codes if code]
    if bad:
        raise TrainingError(f"tuning study {args[0]!r}: {len(bad)} worker process(es) failed (exit {bad[0]});"
                            f" rerun to resume it from {args[1]}")


def _split(items: list, jobs: int) -> list[list]:
    jobs = max(1, min(jobs, len(items)))
    return [items[i::jobs] for i in range(jobs)]


def _rank(trials: list) -> list:
    """Best first: by value, ties to the earlier trial; failed trials last."""
    return sorted(trials, key=lambda t: (t.value is None, -(t.value or 0.0), t.number))


def _promote(trials: list) -> list:
    """A rung's trials best first for the next rung: by the mean of validation accuracy and probability
    of the true class (`scores`), ties to the earlier trial; failed trials last."""
    def score(t) -> float:
        p_true = t.user_attrs.get("val_p_true")
        return -math.inf if t.value is None or p_true is None else (t.value + float(p_true)) / 2

    return sorted(trials, key=lambda t: (t.value is None, -score(t), t.number))


def _halve(name: str, storage: str, run: RunSpec, space: dict[str, tuple], spec: TuneSpec, home: str) -> None:
    """Run (or resume) a budget's successive halving, rung by rung (see `halving_plan`)."""
    study = _open_study(name, storage, spec, run.seed)
    args = (name, storage, run, space, spec, home)
    for rung, (n, share) in enumerate(halving_plan(spec)):
        done = [t for t in study.get_trials(deepcopy=False)
                if t.user_attrs.get("rung") == rung and t.state.name in ("COMPLETE", "FAIL")]
        if rung == 0:
            todo = [(0, share, None)] * (n - len(done))
        else:
            ran = [dict(config_values(t.params)) for t in done]
            prev = [t for t in study.get_trials(deepcopy=False)
                    if t.user_attrs.get("rung") == rung - 1 and t.state.name in ("COMPLETE", "FAIL")]
            best = [config_values(t.params) for t in _promote(prev)[:n]]
            todo = [(rung, share, v) for v in best if v not in ran]
        if todo:
            _in_processes(_run_configs, args, _split(todo, spec.jobs), spec.jobs)


def _fixed_trials(name: str, storage: str, run: RunSpec, space: dict[str, tuple], spec: TuneSpec,
                  home: str, quota: int, worker: int = 0, threads: int | None = None) -> None:
    """`quota` trials of the fixed-trial form (the median pruner, or none, at the report points)."""
    if threads:
        torch.set_num_threads(threads)
    registry = Registry(home)
    study = _open_study(name, storage, spec, run.seed, worker)

    def objective(trial) -> float:
        params = suggest(trial, space)
        trial.set_user_attr("pid", os.getpid())
        reporter = Reporter(trial, spec)
        acc, p_true, spent = run_trial(trial_run(run, params, spec.share), registry, reporter, spec.val_images)
        trial.set_user_attr("spent", spent)
        trial.set_user_attr("val_p_true", p_true)
        return acc

    study.optimize(objective, n_trials=quota, catch=(TrainingError,))


def _spent(t) -> float:
    """What a trial spent in the run's budget unit."""
    return float((t.user_attrs.get("spent") or {}).get("amount", 0.0))


def tune(run: RunSpec, spec: TuneSpec, registry: Registry | None = None) -> tuple[dict[str, Any], dict]:
    """Run (or resume) the study of `run`; (the best values, the provenance record of the study).

    With `jobs` > 1, a rung's trials (or the fixed trials) are split over that many processes (this
    one and jobs − 1 spawned ones, the cores shared among them), all on the study in the storage.
    A method with an empty space runs no trials: its values are its defaults.
    """
    registry = registry or Registry()
    space = search_space(run)
    storage = storage_url(registry)
    record: dict[str, Any] = {"spec": spec.as_dict(), "space": {k: list(v) for k, v in space.items()},
                              "storage": storage, "study": None, "trials": [], "best_params": {}, "best_value": None,
                              "compute": {"flops": 0.0, "seconds": 0.0}}
    if not space:
        return {}, record
    name = study_name(run, spec, space)
    study = _open_study(name, storage, spec, run.seed)
    home = str(registry.home)
    if spec.budget is not None:
        _halve(name, storage, run, space, spec, home)
    else:
        if not study.get_trials(deepcopy=False):
            # trial 0 is the method's own values, so tuning is never worse on val at a trial's length
            base = in_space(asdict(run.method_config), space)
            if base:
                study.enqueue_trial(optuna_params(base, space))
        left = spec.trials - sum(t.state.name in _FINISHED for t in study.get_trials(deepcopy=False))
        if left > 0:
            parts = [len(p) for p in _split(list(range(left)), spec.jobs)]
            _in_processes(_fixed_trials, (name, storage, run, space, spec, home), parts, spec.jobs)
    study = _open_study(name, storage, spec, run.seed)
    trials = [t for t in study.get_trials(deepcopy=False) if t.state.name in _FINISHED]
    record["study"] = name
    for t in trials:
        spent = t.user_attrs.get("spent") or {}
        record["trials"].append({"number": t.number, "state": t.state.name, "params": config_values(t.params),
                                 "value": t.value, "val_p_true": t.user_attrs.get("val_p_true"),
                                 "rung": t.user_attrs.get("rung"),
                                 "intermediate": {str(k): v for k, v in sorted(t.intermediate_values.items())},
                                 "spent": spent, "pid": t.user_attrs.get("pid")})
        record["compute"]["flops"] += float(spent.get("flops", 0.0))
        record["compute"]["seconds"] += float(spent.get("seconds", 0.0))
    budget = run.budget
    record["budget"] = {"unit": budget.unit,
                        "cap": spec.budget * budget.amount if spec.budget is not None else None,
                        "used": math.fsum(_spent(t) for t in study.get_trials(deepcopy=False))}
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    if spec.budget is not None and complete:  # the longest trials decide
        top = max(t.user_attrs.get("rung", 0) for t in complete)
        complete = [t for t in complete if t.user_attrs.get("rung", 0) == top]
    if not complete:
        raise TrainingError(f"tuning study {name!r}: none of its {len(trials)} trials finished (all failed or pruned);"
                            f" narrow the method's space or raise the trial share")
    best = _rank(complete)[0]
    record["best_params"], record["best_value"] = config_values(best.params), best.value
    record["best_trial"] = best.number
    return config_values(best.params), record


def describe(spec: TuneSpec, budget: str) -> str:
    """One line: how much tuning a run gets and how it is spent."""
    if spec.budget is not None:
        plan = " → ".join(f"{n} × {share:.3g}" for n, share in halving_plan(spec))
        return f"{spec.budget:g} × {budget} by successive halving (trials × share of the run: {plan})"
    pruner = "median pruner" if spec.pruner == "median" else "no pruner"
    return f"{spec.trials} trials of {spec.share:g} × {budget} ({pruner})"


def tuned_run(run: RunSpec, spec: TuneSpec, best: dict[str, Any], space: dict[str, tuple]) -> RunSpec:
    """The final run: the best values in its method config, and what was tuned (with the untuned values)."""
    base = {k: getattr(run.method_config, k) for k in space}
    return run.with_method(**best).replace(
        tune={**spec.as_dict(), "space": {k: list(v) for k, v in space.items()}, "base": base})


def tune_and_train(run: RunSpec, spec: TuneSpec, registry: Registry | None = None, console=None,
                   quiet: bool = False, callbacks: Sequence[Callback] = ()):
    """Tune `run` (see `tune`), then train and register it with the best values and the study's record."""
    from ..training.pipeline import train_expert

    registry = registry or Registry()
    if run.name in registry:
        from ..errors import RegistryError

        raise RegistryError(f"expert {run.name!r} is already registered in {registry.home};"
                            f" pick --name or `ltbench rm {run.name}`")
    if console is not None and not quiet and search_space(run):
        console.print(f"tuning {run.name}: {describe(spec, str(run.budget))}"
                      f" ({spec.jobs} process{'es' if spec.jobs > 1 else ''})", highlight=False)
    best, record = tune(run, spec, registry)
    space = {k: tuple(v) for k, v in record["space"].items()}
    if console is not None and not quiet and space:
        shown = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.items())
        console.print(f"tuned {run.name}: {shown} (val {record['best_value']:.4f}, "
                      f"{math.fsum(t['spent'].get('seconds', 0) for t in record['trials']):.0f} s)", highlight=False)
    return train_expert(tuned_run(run, spec, best, space), registry=registry, console=console, quiet=quiet,
                        tuning=record, callbacks=callbacks)

