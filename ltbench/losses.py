"""Long-tail losses, each a module `loss(logits, targets)` built from training class counts."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._registry import Registry

LOSSES: Registry[Callable[..., nn.Module]] = Registry("loss")


def _log_prior(class_counts: np.ndarray) -> torch.Tensor:
    counts = torch.as_tensor(np.asarray(class_counts), dtype=torch.float32).clamp_min(1)
    return torch.log(counts / counts.sum())


@LOSSES.register("ce", help="cross-entropy")
class CrossEntropy(nn.Module):
    def __init__(self, class_counts: np.ndarray | None = None, label_smoothing: float = 0.0, **_):
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)


@LOSSES.register("la", help="logit-adjusted cross-entropy (Menon et al. 2021): logits + tau·log prior")
class LogitAdjusted(nn.Module):
    def __init__(self, class_counts: np.ndarray, tau: float = 1.0, **_):
        super().__init__()
        self.register_buffer("adjust", tau * _log_prior(class_counts), persistent=False)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits + self.adjust.to(logits.dtype), targets)


@LOSSES.register("bs", help="balanced softmax (Ren et al. 2020): softmax over logits + log n_j")
class BalancedSoftmax(LogitAdjusted):
    def __init__(self, class_counts: np.ndarray, **_):
        super().__init__(class_counts, tau=1.0)


def build_loss(name: str, class_counts: np.ndarray, **kwargs) -> nn.Module:
    return LOSSES.get(name)(class_counts=class_counts, **kwargs)
