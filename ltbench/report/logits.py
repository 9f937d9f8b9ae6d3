"""What the report reads from cached test logits: per-sample correctness, bootstrap intervals,
per-class accuracy. Everything else in a report comes from the experts' metrics and meta records.

Correctness is computed once per cached split and kept in memory (keyed by the registry's
`Expert.logits_version`, so a re-registered expert is re-read); nothing is ever written to the registry.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, TypeVar

import numpy as np

from ..metrics import bootstrap_interval
from ..store.expert import Expert

T = TypeVar("T")

_lock = threading.Lock()
_correct_cache: dict[tuple, tuple[np.ndarray, np.ndarray, int]] = {}
_interval_cache: dict[tuple, tuple[float, float]] = {}


def _file_key(expert_path: Path, split: str) -> tuple[Expert, tuple]:
    ex = Expert.at(expert_path)
    return ex, ex.logits_version(split)


def fast_argmax(logits: np.ndarray, rows: int = 1024) -> np.ndarray:
    """Row argmax; fp16 is compared as order-preserving int16 (numpy's fp16 argmax is slow).

    Sign-magnitude → two's complement: non-negative halves already order as int16, negative
    ones become their negated magnitude (so −0 == +0 and ties keep the first index, as in
    argmax). Worked in blocks of `rows` so the temporaries stay in cache.
    """
    if logits.dtype != np.float16:
        return logits.argmax(axis=1)
    bits = logits.view(np.int16)
    out = np.empty(len(bits), dtype=np.int64)
    key = np.empty((min(rows, len(bits)), bits.shape[1]), dtype=np.int16)
    sign = np.empty_like(key)
    for i in range(0, len(bits), rows):
        x = bits[i:i + rows]
        k, s = key[: len(x)], sign[: len(x)]
        np.right_shift(x, 15, out=s)  # 0 or −1
        np.bitwise_and(x, np.int16(0x7FFF), out=k)
        np.bitwise_xor(k, s, out=k)
        np.subtract(k, s, out=k)
        out[i:i + rows] = k.argmax(axis=1)
    return out


def test_correctness(expert_path: Path, split: str = "test") -> tuple[np.ndarray, np.ndarray, int]:
    """(correct: bool per sample, labels: int64, num_classes) from an expert's cached logits."""
    ex, key = _file_key(expert_path, split)
    with _lock:
        hit = _correct_cache.get(key)
    if hit is not None:
        return hit
    logits, labels = ex.stored_logits(split)
    pred = fast_argmax(logits)
    out = (pred == labels, labels, int(logits.shape[1]))
    with _lock:
        _correct_cache[key] = out
    return out


def interval(expert_path: Path, n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0,
             engine: str = "poisson", split: str = "test") -> tuple[float, float]:
    """95 % (by default) bootstrap interval of the per-class-averaged accuracy on `split`."""
    _, fkey = _file_key(expert_path, split)
    key = (fkey, n_resamples, confidence, seed, engine)
    with _lock:
        hit = _interval_cache.get(key)
    if hit is not None:
        return hit
    correct, labels, c = test_correctness(expert_path, split)
    out = bootstrap_interval(correct, labels, c, n_resamples=n_resamples, confidence=confidence, seed=seed,
                             engine=engine)
    with _lock:
        _interval_cache[key] = out
    return out


def per_class_accuracy(expert_path: Path, split: str = "test") -> np.ndarray:
    """Accuracy of each class on `split` (NaN for classes with no samples)."""
    correct, labels, c = test_correctness(expert_path, split)
    total = np.bincount(labels, minlength=c).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.bincount(labels, weights=correct, minlength=c) / total


def parallel_map(fn: Callable[..., T], items: Iterable, workers: int | None = None) -> list[T]:
    """numpy's argmax and random draws release the GIL, so threads use every core."""
    items = list(items)
    workers = workers or min(len(items), os.cpu_count() or 1)
    if workers <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))


def clear_cache() -> None:
    """Forget cached correctness and intervals (tests, and long sessions after re-registrations)."""
    with _lock:
        _correct_cache.clear()
        _interval_cache.clear()
