"""LT-Soups (2025): model soups over class-capped subsets, then a classifier retrained on all data.

Stage 1: for each factor k, cap every class at n_min·2^k images (the subset's imbalance is
at most 2^k), fine-tune the inner method (LoRA, AdaptFormer or full fine-tuning) on it from
the same start (cross-entropy at k = 0, logit adjustment otherwise), and merge: in sequence
from the start, w ← α·w + (1 − α)·w_k with α = 0.3 (reference code), or a uniform average.
Stage 2: retrain only the classifier on the full long-tailed data with logit adjustment,
on cached features of the soup. Every stage-1 model gets the same number of epochs, so the
budget is shared in proportion to the subsets' sizes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from . import METHODS, create_method, register_method
from .base import Method, MethodConfig, Phase


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


@dataclass
class LTSoupsConfig(MethodConfig):
    inner: str = "lora"  # lora | adaptformer | full-ft (the reference code's options)
    inner_set: dict[str, Any] = field(default_factory=dict)  # the inner method's own keys (rank, bottleneck …)
    factors: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4, 5, 6])
    merge: str = "sequential"  # sequential (w ← α·w + (1−α)·w_k, from the start) | uniform
    merge_alpha: float = 0.3
    stage2_share: float = 0.1  # share of the budget for retraining the classifier
    stage2_lr: float = 1e-2
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4


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
        if class_counts is None:
            raise ValueError("lt-soups needs the training class counts")
        shared = {k: getattr(cfg, k) for k in ("optimizer", "lr", "weight_decay", "momentum", "warmup",
                                               "batch_size", "classifier", "cosine_scale")}
        inner_cfg = METHODS.get(cfg.inner).Config(**{**shared, **cfg.inner_set})
        self.inner = METHODS.get(cfg.inner)(backbone, num_classes, inner_cfg, class_counts, classnames)
        self.n_min = int(np.min(class_counts[class_counts > 0]))
        self._start = {k: v.clone() for k, v in self._weights().items()}
        self._soup: dict[str, torch.Tensor] | None = None
        self._merged = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.info.features(x)

    def classify(self, feats: torch.Tensor) -> torch.Tensor:
        return self.inner.head(feats)

    # -- stage 1: the soup -----------------------------------------------------------------
    def _weights(self) -> dict[str, torch.Tensor]:
        return {n: p for n, p in self.inner.named_parameters() if n in set(self.inner.trainable_names())}

    def caps(self) -> list[int]:
        return [self.n_min * 2 ** k for k in self.cfg.factors]

    def _restart(self) -> None:
        with torch.no_grad():
            for n, p in self._weights().items():
                p.copy_(self._start[n])

    def _merge(self) -> None:
        w_k = {n: p.detach().clone() for n, p in self._weights().items()}
        self._merged += 1
        if self._soup is None:
            base = self._start if self.cfg.merge == "sequential" else None
            self._soup = ({n: self.cfg.merge_alpha * base[n] + (1 - self.cfg.merge_alpha) * w for n, w in w_k.items()}
                          if base is not None else w_k)
        elif self.cfg.merge == "sequential":
            a = self.cfg.merge_alpha
            self._soup = {n: a * self._soup[n] + (1 - a) * w_k[n] for n in w_k}
        else:  # uniform: running mean
            m = self._merged
            self._soup = {n: self._soup[n] + (w_k[n] - self._soup[n]) / m for n in w_k}
        if self._merged == len(self.cfg.factors):  # the last model: the soup replaces it
            with torch.no_grad():
                for n, p in self._weights().items():
                    p.copy_(self._soup[n])

    def resume_state(self) -> dict[str, Any]:
        return {"soup": self._soup, "merged": self._merged}

    def load_resume_state(self, state: dict[str, Any]) -> None:
        if state:
            self._soup, self._merged = state["soup"], state["merged"]

    def phases(self) -> list[Phase]:
        cfg = self.cfg
        counts = np.asarray(self.class_counts)
        sizes = [int(np.minimum(counts, cap).sum()) for cap in self.caps()]
        params = list(self._weights().values())
        stage1 = []
        for k, cap, size in zip(cfg.factors, self.caps(), sizes):
            stage1.append(Phase(
                f"soup k={k} (cap {cap})", [{"params": params}],
                share=(1 - cfg.stage2_share) * size / sum(sizes),
                epoch_share=(1 - cfg.stage2_share) / len(sizes),
                loss="ce" if k == 0 else "la",
                subset=lambda labels, seed, cap=cap: capped_subset(labels, cap, seed),
                on_start=self._restart, on_end=self._merge,
            ))
        head = list(self.inner.head.parameters())
        stage2 = Phase("classifier (LA, full data)", [{"params": head, "lr_scale": cfg.stage2_lr / cfg.lr}],
                       share=cfg.stage2_share, loss="la", sampler="instance", cache_features=True)
        return [*stage1, stage2]
