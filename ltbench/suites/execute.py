"""Running a suite's jobs: which are registered already (and whether as the suite says), and
`execute(job)`, the one place a job is trained, tuned or fused — what every executor calls."""
from __future__ import annotations

import json
from typing import Any, Sequence

from rich.console import Console

from ..config import RUN_DEFAULTS
from ..store.index import Registry
from ..store.provenance import OPERATIONAL
from ..training.callbacks import Callback
from .schema import Job, Suite, SuiteError


def _norm(v: Any) -> str:
    return json.dumps(v, sort_keys=True, default=str)


def _stale(job: Job, config: dict[str, Any]) -> list[str]:
    """The keys the suite sets whose value differs in an already registered expert's config."""
    diffs = []
    ours = job.run.config
    for key, want in (job.explicit or {}).items():
        if key in OPERATIONAL:  # a registered expert may differ here
            continue
        if key in RUN_DEFAULTS or key in ("method", "backbone", "dataset", "budget", "seed"):
            have, want = config.get(key), ours.get(key)
            if key == "img_size" and want is None:
                continue
            if key == "groups":  # experts that predate the key were evaluated under `standard`
                from ..metrics import group_protocol

                have = group_protocol(config)
        elif key in ours["method_config"]:
            have, want = (config.get("method_config") or {}).get(key), ours["method_config"][key]
        else:
            have, want = (config.get("data") or {}).get(key), ours["data"].get(key)
        if key == "budget":
            from ..spec import read_budget

            have, want = str(read_budget(have)) if have else have, str(read_budget(want))
        if _norm(have) != _norm(want):
            diffs.append(f"{key}: registered {have!r}, suite {want!r}")
    have = {k: v for k, v in (config.get("tune") or {}).items() if k not in ("space", "base")} or None
    want = job.tune.as_dict() if job.tune is not None else None
    if _norm(have) != _norm(want):
        diffs.append(f"tune: registered {have!r}, suite {want!r}")
    return diffs


def _stale_fusion(job: Job, fused, registry: Registry) -> list[str]:
    """Options that differ, and constituents that are missing or not the ones it was fitted on."""
    f, config = job.fusion, fused.config
    want = {"experts": job.members, "scorer": f.scorer, "trials": f.trials, "objective": f.objective,
            "per_group": f.per_group}
    diffs = [f"{k}: registered {config.get(k)!r}, suite {v!r}" for k, v in want.items()
             if _norm(config.get(k)) != _norm(v)]
    fitted_on = {c.get("name"): c for c in fused.meta.get("constituents") or []}
    for name in job.members:
        if name not in registry:
            diffs.append(f"constituent {name} is not registered (it will be retrained)")
            continue
        ex, was = registry.get(name), fitted_on.get(name, {})
        now = {"config_hash": ex.meta.get("config_hash"), "test": ex.metrics.get("test", {}).get("overall")}
        if any(_norm(was.get(k)) != _norm(v) for k, v in now.items()):
            diffs.append(f"constituent {name} changed since the fusion was fitted")
    return diffs


def check_registered(suite: Suite, registry: Registry) -> list[str]:
    """Names of the suite's experts already registered; an error if one was made differently."""
    done = []
    for job in suite.jobs:
        if job.name not in registry:
            continue
        ex = registry.get(job.name)
        diffs = _stale(job, ex.config) if job.kind == "run" else _stale_fusion(job, ex, registry)
        if diffs:
            raise SuiteError(f"{suite.source}: expert {job.name!r} is registered with a different config "
                             f"({'; '.join(diffs)}). Remove it (`ltbench rm {job.name}`) or rename the suite.")
        done.append(job.name)
    return done


def execute(job: Job, registry: Registry, console: Console | None = None, quiet: bool = False,
            callbacks: Sequence[Callback] = (), resume: bool = False) -> None:
    """Train (tuning first, when the suite tunes) or fuse one job and register its expert: the one
    switch every executor runs. `callbacks` go to the trainer of the registered run (not to tuning's
    trials), e.g. a live table's feed. `resume` continues a run from its last epoch checkpoint (a retry)."""
    if job.kind == "fusion":
        from ..fusion import fuse_experts

        f = job.fusion
        fuse_experts(job.members, f.scorer, name=job.name, trials=f.trials, objective=f.objective, seed=job.seed,
                     per_group=f.per_group, registry=registry, console=console, quiet=quiet)
        return
    run = job.run.replace(resume=True) if resume else job.run
    if job.tune is not None:  # its trials run here too
        from ..tuning.tuner import tune_and_train

        tune_and_train(run, job.tune, registry=registry, console=console, quiet=quiet, callbacks=callbacks)
    else:
        from ..training.pipeline import train_expert

        train_expert(run, registry=registry, console=console, quiet=quiet, callbacks=callbacks)
