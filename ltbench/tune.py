"""An equal tuning budget for every method: an Optuna study of N short trials on validation data.

`ltbench train --tune N` and a suite's `tune:` block run, before the real run, N trials of
the method's declared search space (`SEARCH_SPACE` beside its config: learning rate,
weight decay, batch size where it matters), each trained on `share` of the run's budget
and scored by per-class-averaged validation accuracy. Trial 0 is the method's own values
(its paper defaults, or the user's `--set`) wherever they lie in the space, so other values
are chosen only where they beat those on validation at the trial's share of the budget (which
a full-budget run need not repeat: short trials favour fast starters); the others are drawn
by TPE, seeded with the run's seed; a median pruner stops a trial whose validation accuracy
at the end of an epoch of the run's budget (summed over a method's phases) falls below the
median of earlier trials there. The final run trains on the whole budget with the best values
and records the study (every trial, its state, values and compute; the best values; the total
tuning compute) in its provenance.

Trials never see the test split or the OOD sets (they are dropped before the data is
validated). The study lives in the registry's storage (`storage_url`), so a killed tuning
resumes with the trials it has, and `jobs` processes share one study through it.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from . import _registry
from .errors import ConfigError, TrainingError
from .registry import Registry

SPACE_KINDS = ("log", "float", "int", "choice")
PRUNERS = ("median", "none")
#: Finished states: what counts towards a study's N trials (a RUNNING one left by a killed process does not).
_FINISHED = ("COMPLETE", "PRUNED", "FAIL")


@dataclass(frozen=True)
class TuneSpec:
    """How a run is tuned; the same for every run of a suite."""

    trials: int
    share: float = 0.25  # each trial's budget, as a share of the run's
    jobs: int = 1  # processes running trials at once, sharing the study through its storage
    pruner: str = "median"  # median | none
    startup: int = 2  # trials that finish before the pruner stops any

    def as_dict(self) -> dict[str, Any]:
        """Plain dict, for hashing into the study name."""
        return asdict(self)


def parse_tune(value: Any, where: str = "tune") -> TuneSpec | None:
    """A `tune:` value (N, or a mapping of TuneSpec keys) checked before anything trains; None: no tuning."""
    if value is None or value is False:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, dict)):
        raise ConfigError(f"{where}: expected a number of trials or a mapping (trials, share, jobs, pruner, startup),"
                          f" got {value!r}")
    raw = {"trials": value} if isinstance(value, int) else dict(value)
    known = list(TuneSpec.__dataclass_fields__)
    for key in raw:
        if key not in known:
            hint = _registry.suggest(key, known, cutoff=0.6)
            raise ConfigError(f"{where}: unknown key {key!r}.{hint} Known keys: {', '.join(known)}")
    if "trials" not in raw:
        raise ConfigError(f"{where}: missing required key 'trials'")

    def integer(key: str, low: int) -> None:
        v = raw.get(key)
        if key in raw and (not isinstance(v, int) or isinstance(v, bool) or v < low):
            raise ConfigError(f"{where}: {key} must be an integer >= {low}, got {v!r}")

    integer("trials", 1)
    integer("jobs", 1)
    integer("startup", 0)
    share = raw.get("share", TuneSpec.share)
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1:
        raise ConfigError(f"{where}: share must be a number in (0, 1], the share of the run's budget a trial gets;"
                          f" got {share!r}")
    if raw.get("pruner", "median") not in PRUNERS:
        raise ConfigError(f"{where}: pruner must be one of {', '.join(PRUNERS)}, got {raw['pruner']!r}")
    return TuneSpec(**{**raw, "share": float(share)})


def storage_url(registry: Registry) -> str:
    """The Optuna RDB storage of a registry's tuning studies: next to its index."""
    return f"sqlite:///{(registry.home / 'studies.sqlite').resolve()}"


def search_space(run: dict[str, Any]) -> dict[str, tuple]:
    """The method's declared space for this resolved run, checked against its config keys."""
    from .methods import METHODS

    cls = METHODS.get(run["method"])
    space = cls.Config(**run["method_config"]).search_space()
    check_space(space, run["method_config"], f"method {run['method']!r} SEARCH_SPACE")
    return space


def check_space(space: dict[str, tuple], config: dict[str, Any], where: str) -> None:
    """Fail before any trial when a search key is not in the method's config or its range is bad."""
    for key, spec in space.items():
        if key not in config:
            raise ConfigError(f"{where}: {key!r} is no key of the method's config")
        kind = spec[0] if isinstance(spec, (tuple, list)) and spec else None
        if kind == "log":
            ok = len(spec) == 3 and 0 < spec[1] < spec[2]
        elif kind in ("float", "int"):
            ok = len(spec) == 3 and spec[1] < spec[2]
        else:
            ok = kind == "choice" and len(spec) == 2 and isinstance(spec[1], (list, tuple)) and len(spec[1]) > 0
        if not ok:
            raise ConfigError(f"{where}: {key}: {spec!r} is not (log|float|int, low, high) with low < high"
                              f" (log: low > 0) or (choice, [values])")


def in_space(value: Any, spec: tuple) -> bool:
    """Whether a config value is one the space can draw (its defaults are enqueued only then)."""
    kind = spec[0]
    if kind == "choice":
        return value in list(spec[1])
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return spec[1] <= value <= spec[2] and (kind != "int" or float(value).is_integer())


def suggest(trial, space: dict[str, tuple]) -> dict[str, Any]:
    """One trial's values for every key of the search space (Optuna's suggest_* per kind)."""
    out = {}
    for key, spec in space.items():
        kind = spec[0]
        if kind == "choice":
            out[key] = trial.suggest_categorical(key, list(spec[1]))
        elif kind == "int":
            out[key] = trial.suggest_int(key, int(spec[1]), int(spec[2]))
        else:
            out[key] = trial.suggest_float(key, float(spec[1]), float(spec[2]), log=kind == "log")
    return out


def study_name(run: dict[str, Any], spec: TuneSpec, space: dict[str, tuple]) -> str:
    """A name that changes with anything that changes results, so a study only resumes its own trials."""
    from .provenance import _hash
    from .records import result_keys

    # operational keys (device, workers, logging, …: records.OPERATIONAL) leave the study as it is,
    # as they leave config_hash: a study resumed on another device keeps its trials
    key = _hash({"run": result_keys(run), "tune": spec.as_dict(),
                 "space": {k: list(v) if isinstance(v, tuple) else v for k, v in space.items()}})
    return f"tune-{run['name']}-{key}"


def trial_run(run: dict[str, Any], params: dict[str, Any], share: float) -> dict[str, Any]:
    """The run config of one trial: the chosen values and its share of the budget.

    Without the learning curve's validation pass at each epoch end (`val_each_epoch`, an
    operational key): a trial is never registered, so nobody reads its history, and those passes
    are not charged to its budget (a multi-phase trial, e.g. LT-Soups' 15, ran one per phase).
    """
    from .budget import parse_budget

    budget = parse_budget(run["budget"]).scaled(share)
    return {**run, "budget": str(budget), "method_config": {**run["method_config"], **params},
            "val_each_epoch": False}


def run_trial(run: dict[str, Any], registry: Registry, trial=None) -> tuple[float, dict[str, float]]:
    """Train `run` without registering it; (per-class val accuracy, compute spent incl. evaluations).

    With an Optuna `trial`, validation accuracy is reported at every epoch end and the trial
    is pruned (optuna.TrialPruned) when the pruner says so; the compute spent so far is
    stored on the trial first, so pruned trials count in the tuning compute too.
    """
    import optuna

    from .budget import Spent, Stopwatch, count_flops, parse_budget
    from .metrics import per_class_accuracy
    from .train import Trainer, build_all, resolve_device, seed_everything

    device = resolve_device(run["device"])
    seed_everything(run["seed"])
    data, method = build_all(run, registry, tuning=True)
    method.to(device)
    evals = {"flops": 0.0, "seconds": 0.0, "per_image": None}

    def val_accuracy(trainer: Trainer) -> float:
        val = data.val
        if evals["per_image"] is None:
            x0 = trainer._eval_loader(val.subset([0]))
            x0 = next(iter(x0))[0].to(device)
            method.eval()
            with torch.no_grad():
                evals["per_image"] = count_flops(lambda: method(x0))
        with Stopwatch(device) as sw:
            logits = trainer.predict(val)
        evals["flops"] += evals["per_image"] * len(val)
        evals["seconds"] += sw.elapsed
        acc = per_class_accuracy(logits.argmax(1).numpy(), val.labels, data.num_classes)
        return float(np.nanmean(acc))

    def spent_dict(spent: Spent) -> dict[str, float]:
        return {"flops": spent.flops + evals["flops"], "seconds": spent.seconds + evals["seconds"],
                "train_flops": spent.flops, "train_seconds": spent.seconds, "steps": spent.steps,
                "epochs": spent.epochs}

    def on_epoch_end(step: int, spent: Spent) -> None:
        acc = val_accuracy(trainer)
        trial.report(acc, step)
        trial.set_user_attr("spent", spent_dict(spent))
        if trial.should_prune():
            raise optuna.TrialPruned(f"val accuracy {acc:.4f} below the median at epoch {step}")

    trainer = Trainer(method, data, run, device, quiet=True, on_epoch_end=on_epoch_end if trial is not None else None)
    result = trainer.fit(parse_budget(run["budget"]))
    acc = val_accuracy(trainer)
    return acc, spent_dict(result.spent)


def _open_study(name: str, storage: str, spec: TuneSpec, seed: int, worker: int = 0):
    import optuna

    startup = max(1, min(10, spec.trials // 2))  # TPE's random start: half the trials, at most its default 10
    sampler = optuna.samplers.TPESampler(seed=seed + worker, n_startup_trials=startup,
                                         constant_liar=spec.jobs > 1)
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=spec.startup, n_warmup_steps=0)
              if spec.pruner == "median" else optuna.pruners.NopPruner())
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner,
                               direction="maximize", load_if_exists=True)


def _optimize(name: str, storage: str, run: dict[str, Any], space: dict[str, tuple], spec: TuneSpec,
              home: str, n_trials: int, worker: int = 0, threads: int | None = None) -> None:
    """Run `n_trials` trials of the shared study (in this process or a spawned worker)."""
    if threads:
        torch.set_num_threads(threads)
    registry = Registry(home)
    study = _open_study(name, storage, spec, run["seed"], worker)

    def objective(trial) -> float:
        params = suggest(trial, space)
        trial.set_user_attr("pid", os.getpid())
        acc, spent = run_trial(trial_run(run, params, spec.share), registry, trial)
        trial.set_user_attr("spent", spent)
        return acc

    study.optimize(objective, n_trials=n_trials, catch=(TrainingError,))


def _finished(study) -> int:
    return sum(t.state.name in _FINISHED for t in study.get_trials(deepcopy=False))


def tune(run: dict[str, Any], spec: TuneSpec, registry: Registry | None = None) -> tuple[dict[str, Any], dict]:
    """Run (or resume) the study of `run`; (the best values, the provenance record of the study).

    With `jobs` > 1 the remaining trials are split over that many processes (this one and
    jobs − 1 spawned ones, the cores shared among them), all on the study in the storage.
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
    study = _open_study(name, storage, spec, run["seed"])
    if not study.get_trials(deepcopy=False):  # trial 0: the method's own values, so tuning is never worse on val
        base = {k: run["method_config"][k] for k, v in space.items() if in_space(run["method_config"][k], v)}
        if base:
            study.enqueue_trial(base)
    left = max(0, spec.trials - _finished(study))
    jobs = min(spec.jobs, left) if left else 1
    if left and jobs > 1:
        import multiprocessing as mp

        threads = max(1, torch.get_num_threads() // jobs)
        parts = [left // jobs + (i < left % jobs) for i in range(jobs)]
        ctx = mp.get_context("spawn")
        procs = [ctx.Process(target=_optimize, args=(name, storage, run, space, spec, str(registry.home), parts[i], i,
                                                     threads)) for i in range(1, jobs)]
        for p in procs:
            p.start()
        before = torch.get_num_threads()
        try:
            _optimize(name, storage, run, space, spec, str(registry.home), parts[0], 0, threads)
        finally:
            torch.set_num_threads(before)
            for p in procs:
                p.join()
        bad = [p.exitcode for p in procs if p.exitcode]
        if bad:
            raise TrainingError(f"tuning study {name!r}: {len(bad)} worker process(es) failed (exit {bad[0]});"
                                f" rerun to resume it from {storage}")
    elif left:
        _optimize(name, storage, run, space, spec, str(registry.home), left)
    study = _open_study(name, storage, spec, run["seed"])
    trials = [t for t in study.get_trials(deepcopy=False) if t.state.name in _FINISHED]
    record["study"] = name
    for t in trials:
        spent = t.user_attrs.get("spent") or {}
        record["trials"].append({"number": t.number, "state": t.state.name, "params": t.params, "value": t.value,
                                 "intermediate": {str(k): v for k, v in sorted(t.intermediate_values.items())},
                                 "spent": spent, "pid": t.user_attrs.get("pid")})
        record["compute"]["flops"] += float(spent.get("flops", 0.0))
        record["compute"]["seconds"] += float(spent.get("seconds", 0.0))
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    if not complete:
        raise TrainingError(f"tuning study {name!r}: none of its {len(trials)} trials finished (all failed or pruned);"
                            f" widen the method's space or raise the trial share")
    best = max(complete, key=lambda t: (t.value, -t.number))  # ties: the earliest trial
    record["best_params"], record["best_value"] = dict(best.params), best.value
    record["best_trial"] = best.number
    return dict(best.params), record


def tuned_run(run: dict[str, Any], spec: TuneSpec, best: dict[str, Any], space: dict[str, tuple]) -> dict[str, Any]:
    """The final run: the best values in its method config, and what was tuned (with the untuned values)."""
    base = {k: run["method_config"][k] for k in space}
    return {**run, "method_config": {**run["method_config"], **best},
            "tune": {**spec.as_dict(), "space": {k: list(v) for k, v in space.items()}, "base": base}}


def tune_and_train(run: dict[str, Any], spec: TuneSpec, registry: Registry | None = None, console=None,
                   quiet: bool = False):
    """Tune `run` (see `tune`), then train and register it with the best values and the study's record."""
    from .train import default_name, train_expert

    registry = registry or Registry()
    run = {**run, "name": run["name"] or default_name(run)}
    if run["name"] in registry:
        from .registry import RegistryError

        raise RegistryError(f"expert {run['name']!r} is already registered in {registry.home};"
                            f" pick --name or `ltbench rm {run['name']}`")
    if console is not None and not quiet:
        console.print(f"tuning {run['name']}: {spec.trials} trials of {spec.share:g} × {run['budget']}"
                      f" ({spec.jobs} process{'es' if spec.jobs > 1 else ''})", highlight=False)
    best, record = tune(run, spec, registry)
    space = {k: tuple(v) for k, v in record["space"].items()}
    if console is not None and not quiet and space:
        shown = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.items())
        console.print(f"tuned {run['name']}: {shown} (val {record['best_value']:.4f}, "
                      f"{math.fsum(t['spent'].get('seconds', 0) for t in record['trials']):.0f} s)", highlight=False)
    return train_expert(tuned_run(run, spec, best, space), registry=registry, console=console, quiet=quiet,
                        tuning=record)

