"""Synthetic expert logits for tests and benchmarks: experts that are good on chosen classes.

Each expert is right with probability ``acc_e[c]`` on a sample of class c (its logit for the
true class gets a margin); otherwise it is confidently wrong on a random class. Labels are
balanced and sorted like ltbench's val / test splits. Fully vectorised and seeded.
"""
from __future__ import annotations

import numpy as np
import torch


def expert_logits(labels: np.ndarray, acc: np.ndarray, num_classes: int, seed: int,
                  margin: float = 4.0, noise: float = 1.0) -> torch.Tensor:
    """[N, C] logits of one expert whose per-class accuracy is about ``acc[c]``."""
    gen = torch.Generator().manual_seed(int(seed))
    y = torch.as_tensor(labels, dtype=torch.long)
    n = len(y)
    logits = torch.randn(n, num_classes, generator=gen) * noise
    right = torch.rand(n, generator=gen) < torch.as_tensor(acc, dtype=torch.float32)[y]
    wrong = (y + 1 + torch.randint(0, num_classes - 1, (n,), generator=gen)) % num_classes
    target = torch.where(right, y, wrong)
    rows = torch.arange(n)
    logits[rows, target] += margin * (0.5 + torch.rand(n, generator=gen))
    return logits


def balanced_labels(num_classes: int, per_class: int) -> np.ndarray:
    """Labels of a balanced split, sorted by class, as the real val / test splits are drawn."""
    return np.repeat(np.arange(num_classes), per_class)


def lt_counts(num_classes: int, head: int = 500, imbalance: float = 100.0) -> np.ndarray:
    """Exponential long-tailed training counts (CIFAR-LT style), head first."""
    i = np.arange(num_classes)
    return np.maximum(1, (head * imbalance ** (-i / max(num_classes - 1, 1))).astype(np.int64))
