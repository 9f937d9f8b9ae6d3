"""Accuracy per class and per shot group, and calibration, all from cached logits."""
from __future__ import annotations

import numpy as np
import torch

from .data.base import GROUP_NAMES


def mask_to_subset(logits: torch.Tensor, class_subset: np.ndarray | None) -> torch.Tensor:
    """OOD sets that cover a subset of classes (ImageNet-R/A) are scored among those only."""
    if class_subset is None:
        return logits
    mask = torch.full((logits.shape[1],), float("-inf"), dtype=logits.dtype)
    mask[torch.as_tensor(class_subset, dtype=torch.long)] = 0
    return logits + mask


def per_class_accuracy(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Accuracy of each class (NaN for classes absent from `labels`)."""
    correct = np.bincount(labels, weights=(pred == labels).astype(np.float64), minlength=num_classes)
    total = np.bincount(labels, minlength=num_classes).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return correct / total


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    conf = probs.max(1)
    correct = (probs.argmax(1) == labels).astype(np.float64)
    bins = np.minimum((conf * n_bins).astype(np.int64), n_bins - 1)
    weight = np.bincount(bins, minlength=n_bins)
    gap = np.abs(np.bincount(bins, weights=correct, minlength=n_bins) - np.bincount(bins, weights=conf, minlength=n_bins))
    return float(gap.sum() / max(1, weight.sum()))


def evaluate_logits(
    logits: torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    groups: np.ndarray,
    class_subset: np.ndarray | None = None,
) -> dict[str, float]:
    """Per-class-averaged overall / many / medium / few accuracy and ECE."""
    logits = mask_to_subset(torch.as_tensor(logits).float(), class_subset)
    labels = np.asarray(labels, dtype=np.int64)
    probs = torch.softmax(logits, dim=1).numpy()
    pred = probs.argmax(1)
    acc = per_class_accuracy(pred, labels, logits.shape[1])
    out = {"overall": float(np.nanmean(acc)), "n": int(len(labels))}
    for g, name in enumerate(GROUP_NAMES):
        vals = acc[(groups == g) & ~np.isnan(acc)]
        out[name] = float(vals.mean()) if len(vals) else float("nan")
    out["ece"] = expected_calibration_error(probs, labels)
    return out
