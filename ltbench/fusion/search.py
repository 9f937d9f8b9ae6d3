"""W_base by an Optuna TPE search on validation data (LPT++'s searching-based scorer).

One weight in [0, 1] per expert (or per expert and weight group). The equal-weight trial
and one trial per single expert are enqueued first, so the best trial is never below the
best single expert on the validation objective. Each trial is one GEMV per weight group
over the precomputed [E, N, C] probabilities, then an argmax and a bincount.

Trials are bounded by ``trials`` in total: a study opened from ``storage`` (``load_if_exists``)
runs only the trials it still lacks, so re-running the same command after a crash, or
with a larger ``trials``, continues the study instead of restarting it.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import torch

from ..errors import FusionError
from ..tuning.study import open_study, quiet_optuna
from .core import ProbStack, normalise_base
from .parallel import run_workers, weight_sampler


def param_name(expert: str, group: str | None) -> str:
    """The Optuna parameter of one expert's weight (per group: `expert@group`), stable across resumes."""
    return expert if group is None else f"{expert}@{group}"


def search_weights(stack: ProbStack, score: Callable[[torch.Tensor], float], experts: list[str],
                   group_names: list[str] | None, trials: int, seed: int, storage: str | None,
                   study_name: str, workers: int = 1,
                   score_spec: tuple[str, Any, Any] | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """Best [E, G] weights on the validation stack, and what the search did.

    With `workers` > 1 the trials run in that many processes on the study in `storage`
    (`parallel.run_workers`), which rebuild `score` from `score_spec` (objective, labels, shot groups).
    """
    import optuna

    E, G = stack.num_experts, stack.num_groups
    groups = group_names if G > 1 else [None]
    keys = [[param_name(experts[e], groups[g]) for g in range(G)] for e in range(E)]

    def weights_of(params: dict[str, float]) -> torch.Tensor:
        return torch.tensor([[params[keys[e][g]] for g in range(G)] for e in range(E)], dtype=torch.float32)

    def objective(trial: "optuna.Trial") -> float:
        w = torch.tensor([[trial.suggest_float(keys[e][g], 0.0, 1.0) for g in range(G)] for e in range(E)],
                         dtype=torch.float32)
        return score(stack.predict(w))

    t0 = time.perf_counter()
    with quiet_optuna():
        study = open_study(study_name, storage, weight_sampler(seed), FusionError, heartbeat=workers > 1)
        anchors = [{k: 1.0 for row in keys for k in row}]  # equal weights
        anchors += [{k: (1.0 if e == j else 0.0) for e, row in enumerate(keys) for k in row} for j in range(E)]
        for params in anchors:
            study.enqueue_trial(params, skip_if_exists=True)
        complete = optuna.trial.TrialState.COMPLETE
        before = len(study.get_trials(deepcopy=False, states=(complete,)))
        todo = max(trials, len(anchors)) - before  # the anchors always run: the guarantee rests on them
        parallel = {}
        if todo > 0 and workers > 1:
            parallel = run_workers(workers, storage, study_name, before + todo, seed, keys, stack, *score_spec)
        elif todo > 0:
            study.optimize(objective, n_trials=todo)
        done = study.get_trials(deepcopy=False, states=(complete,))
        if len(done) < before + todo:  # every worker died: the study keeps what they did
            raise FusionError(f"the search stopped at {len(done)} of {before + todo} trials (worker exit codes "
                              f"{parallel.get('worker_exit_codes')}); run the same command again to finish it")
        best = study.best_trial
    singles = {experts[j]: _value_of(done, anchors[1 + j]) for j in range(E)}
    info = {
        "study_name": study_name, "storage": storage, "trials_before": before, "trials_run": len(done) - before,
        "trials_completed": len(done), "best_trial": best.number, "best_value": float(best.value),
        "equal_value": _value_of(done, anchors[0]), "single_values": singles,
        "search_seconds": time.perf_counter() - t0, **parallel,
        "sampler": {"name": "TPESampler", "seed": seed, "multivariate": True, "constant_liar": True},
    }
    return normalise_base(weights_of(best.params)), info


def _value_of(trials, params: dict[str, float]) -> float | None:
    for t in trials:
        if t.params == params:
            return float(t.value)
    return None
