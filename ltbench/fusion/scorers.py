"""The scorers `ltbench fuse --scorer` knows, registered by name.

A scorer is ``fit(ctx) -> (FusionModel, info)``. ``ctx`` carries the **validation** split
only: the experts' val probabilities and the val labels. Nothing a scorer sees can reach
test or OOD labels; the fitted model is applied to the other splits afterwards.

``moe`` splits validation in two disjoint, stratified, seeded parts: W_base is searched on one,
W_offset fitted (and its held-out gate judged) on the other, so the offsets are never fitted
to images the search already chose W_base on. The rows of each part are in ``info["split"]``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from ..errors import FusionError
from ..plugins import SCORERS
from .core import (
    FusionModel,
    ProbStack,
    make_objective,
    normalise_base,
    stratified_holdout,
)
from .learned import fit_offsets
from .search import search_weights


@dataclass
class FitContext:
    """Everything a scorer may use: validation data, names and options."""

    stack: ProbStack  # val probabilities [E, N, C] by weight group (with confidence features)
    labels: np.ndarray  # val labels
    shot_groups: np.ndarray  # [C] many / medium / few of each class
    groups: torch.Tensor  # [C] weight group of each class (all 0 unless per-group)
    group_names: list[str]
    experts: list[str]
    objective: str = "balanced"
    seed: int = 0
    trials: int = 200
    storage: str | None = None
    study_name: str = "ltbench-fuse"
    workers: int = 1  # search processes sharing the study in `storage`
    options: dict[str, Any] | None = None

    def score(self, labels: np.ndarray | None = None) -> Callable[[torch.Tensor], float]:
        """The objective on validation labels (or others'), as a function of predictions."""
        return make_objective(self.objective, self.labels if labels is None else labels, self.shot_groups)

    def part(self, rows: torch.Tensor) -> "FitContext":
        """The same context on some validation rows only."""
        from dataclasses import replace

        return replace(self, stack=self.stack.subset(rows), labels=np.asarray(self.labels)[np.asarray(rows)])

    def equal(self) -> torch.Tensor:
        """Equal weights [E, G]: the starting point and the `mean` scorer."""
        return normalise_base(torch.ones(self.stack.num_experts, self.stack.num_groups))


Scorer = Callable[[FitContext], "tuple[FusionModel, dict[str, Any]]"]


#: share of validation held out from the W_base search for fitting W_offset (``moe``)
OFFSET_SHARE = 0.5


def _learn(ctx: FitContext, w_base: torch.Tensor) -> tuple[FusionModel, dict[str, Any]]:
    options = {k: v for k, v in (ctx.options or {}).items() if k != "offset_share"}
    return fit_offsets(ctx.stack, ctx.labels, w_base, ctx.groups, ctx.score(), ctx.score, ctx.seed, **options)


@SCORERS.register("mean", help="plain probability averaging: equal weights, nothing fitted (baseline)")
def fit_mean(ctx: FitContext) -> tuple[FusionModel, dict[str, Any]]:
    """Equal weights: the baseline every fitted scorer must beat."""
    return FusionModel(ctx.equal(), ctx.groups), {}


@SCORERS.register("search", help="W_base: Optuna TPE search of one weight per expert (and group) on val")
def fit_search(ctx: FitContext) -> tuple[FusionModel, dict[str, Any]]:
    """Expert (or per-group) weights by Optuna search on the objective; no per-sample term."""
    w, info = search_weights(ctx.stack, ctx.score(), ctx.experts, ctx.group_names, ctx.trials, ctx.seed,
                             ctx.storage, ctx.study_name, ctx.workers, (ctx.objective, ctx.labels, ctx.shot_groups))
    return FusionModel(w, ctx.groups), {"search": info}


@SCORERS.register("learned", help="W_offset: per-sample offsets from a small network on confidence statistics")
def fit_learned(ctx: FitContext) -> tuple[FusionModel, dict[str, Any]]:
    """Equal base weights plus per-sample offsets learned by gradient descent."""
    model, info = _learn(ctx, ctx.equal())
    return model, {"learned": info}


@SCORERS.register("moe", help="LPT++ MoE scorer: searched W_base plus learned per-sample W_offset")
def fit_moe(ctx: FitContext) -> tuple[FusionModel, dict[str, Any]]:
    """Searched base weights on one part of validation, per-sample offsets on the other."""
    share = float((ctx.options or {}).get("offset_share", OFFSET_SHARE))
    if not 0 < share < 1:
        raise FusionError(f"offset_share={share}: the share of validation for W_offset must be in (0, 1)")
    rows_search, rows_offset = stratified_holdout(ctx.labels, share, ctx.seed)
    searched = ctx.part(rows_search)
    w, search_info = search_weights(searched.stack, searched.score(), ctx.experts, ctx.group_names, ctx.trials,
                                    ctx.seed, ctx.storage, ctx.study_name, ctx.workers,
                                    (ctx.objective, searched.labels, ctx.shot_groups))
    model, learn_info = _learn(ctx.part(rows_offset), w)
    split = {"kind": "disjoint", "offset_share": share, "seed": ctx.seed,
             "search_rows": rows_search.tolist(), "offset_rows": rows_offset.tolist()}
    return model, {"search": search_info, "learned": learn_info, "split": split}
