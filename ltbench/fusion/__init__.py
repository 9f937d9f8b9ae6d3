"""Fusion of registered experts (LPT++ phase 3): an MoE scorer over cached logits → a new expert.

    from ltbench.fusion import fuse_experts
    fuse_experts(["lpt_vit", "lpt_clip"], scorer="moe", trials=200, name="lpt-pp")

Scorers (``SCORERS``, one registered function each, in ``scorers.py``):

- ``mean``    equal weights (probability averaging), the baseline;
- ``search``  W_base from an Optuna TPE search on validation (``search.py``);
- ``learned`` W_offset per sample from a small network on confidence statistics (``learned.py``);
- ``moe``     W_base + W_offset, as in LPT++.

Fusion is in probability space (``core.py`` documents the formula); every scorer is fitted
on the validation split only, and is applied afterwards to test and OOD splits.
"""
from ..errors import FusionError
from .core import (
           FEATURES,
           OBJECTIVES,
           FusionModel,
           OffsetNet,
           ProbStack,
           make_objective,
)
from .fuse import apply_fused, check_compatible, fit, fuse_experts
from .scorers import SCORERS, FitContext

__all__ = ["FEATURES", "OBJECTIVES", "SCORERS", "FitContext", "FusionError", "FusionModel", "OffsetNet",
           "ProbStack", "apply_fused", "check_compatible", "fit", "fuse_experts", "make_objective"]
