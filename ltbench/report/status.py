"""Whether a run trained: one `status` per report row, from what the registry already holds
(the expert's cached test logits or metrics, its history.csv learning curve, a fusion's weights).

Statuses, most severe first (a seed group shows its most severe member's, naming the seeds):

- ``diverged``: the training loss went non-finite, or its last steps sit at more than
  `BLOWUP` × its first steps' (median of each, in the run's last phase), or the test accuracy
  is not a number;
- ``at chance``: the 95 % interval of the per-class-averaged test accuracy contains 1/C. 1/C is
  the per-class-averaged accuracy of *any* classifier that ignores its input (constant or
  random), whatever the test set's class balance, so an interval reaching it means the data
  cannot tell the run from one that learnt nothing. The interval is the report's percentile
  bootstrap over test images (`metrics.bootstrap_interval`: it resamples what the statistic
  averages, per class, so it is right for unbalanced test sets too). Where the report reads no
  logits — `ci=False`, and the members of a seed group, whose bootstrap would cost the report a
  logits read each — a Wilson score interval on the test-set size stands in: the interval of a
  plain proportion, which per-class-averaged accuracy is on a balanced test set (the long-tail
  benchmarks' test sets are balanced); it is too narrow on an unbalanced one;
- ``still improving``: the validation curve still rises at its end beyond its noise (see
  `still_improving`); the training loss (negated) stands in when validation was measured
  fewer than `MIN_VAL_POINTS` times, as in runs of an epoch or two;
- ``ok`` otherwise.

A fusion whose weights put at least `ONE_EXPERT` of the weight on one expert in every shot
group keeps its status and says "= <that expert's method>": it is that expert, not a mixture.
"""
from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np

OK, IMPROVING, CHANCE, DIVERGED = "ok", "still improving", "at chance", "diverged"
#: Most severe last (a group takes its most severe member's status).
STATUSES = (OK, IMPROVING, CHANCE, DIVERGED)
#: Validation points needed to judge the validation curve (else the training loss is used).
MIN_VAL_POINTS = 5
#: Loss steps needed to judge the loss curve.
MIN_LOSS_POINTS = 9
#: A rise must exceed this many standard errors of the end slope (one-sided, about 97.7 %).
Z_RISE = 2.0
#: ... and be worth reporting: half a point of accuracy, or 1 % of the loss, over the last third.
MIN_ACC_RISE, MIN_LOSS_DROP = 0.005, 0.01
#: The loss "blew up": its end is more than this many times its start.
BLOWUP = 2.0
#: A fusion is one expert when that expert holds at least this share of the weight everywhere.
ONE_EXPERT = 0.95


def wilson_interval(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion `p` observed on `n` trials."""
    if n <= 0 or not math.isfinite(p):
        return float("nan"), float("nan")
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return centre - half, centre + half


def at_chance(lo: float, hi: float, num_classes: int) -> bool:
    """Does the interval [lo, hi] contain 1/C (boundaries included)?"""
    return num_classes > 0 and lo <= 1.0 / num_classes <= hi


def noise_sigma(y: np.ndarray) -> float:
    """Robust noise level of a curve: from its second differences, which cancel any locally
    linear trend; for white noise of std σ, Var(Δ²y) = 6σ² (MAD scaled to a std)."""
    d2 = np.diff(np.asarray(y, dtype=np.float64), n=2)
    if not len(d2):
        return 0.0
    return float(1.4826 * np.median(np.abs(d2 - np.median(d2))) / math.sqrt(6))


def end_rise(y: Iterable[float]) -> tuple[float, float, float]:
    """(rise, its standard error, window length) of a curve's last third (at least 3 points):
    rise = the OLS slope over the window × (window − 1); its standard error from `noise_sigma`
    of the whole curve (a fit's own residuals on 3 points would say almost nothing)."""
    y = np.asarray(list(y), dtype=np.float64)
    m = max(3, math.ceil(len(y) / 3))
    w = y[-m:]
    x = np.arange(len(w), dtype=np.float64) - (len(w) - 1) / 2
    sxx = float((x * x).sum())
    slope = float((x * (w - w.mean())).sum() / sxx)
    se = noise_sigma(y) / math.sqrt(sxx)
    return slope * (m - 1), se * (m - 1), m


def still_improving(y: Iterable[float], min_rise: float, z: float = Z_RISE) -> bool:
    """True when the curve's last third rises by more than `z` standard errors and by at least
    `min_rise` (higher = better; pass a negated loss)."""
    rise, se, _ = end_rise(y)
    return rise > 0 and rise > z * se and rise >= min_rise


def _last_phase(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of the run's last phase (a multi-phase method's loss restarts at each phase)."""
    last = history[-1].get("phase")
    return [r for r in history if r.get("phase") == last]


def curve_status(history: list[dict[str, Any]] | None) -> tuple[str, str]:
    """(status, why) from a learning curve: diverged, still improving or ok."""
    if not history:
        return OK, ""
    losses = [r.get("loss") for r in history]
    for r, v in zip(history, losses):
        if v is not None and not math.isfinite(v):
            return DIVERGED, f"training loss became {v} at step {r.get('step')}"
    rows = _last_phase(history)
    loss = np.array([r["loss"] for r in rows if r.get("loss") is not None], dtype=np.float64)
    if len(loss) >= 2 * 3:
        k = max(3, len(loss) // 10)
        start, end = float(np.median(loss[:k])), float(np.median(loss[-k:]))
        if start > 0 and end > BLOWUP * start:
            return DIVERGED, f"training loss blew up: {start:.3g} over its first {k} steps, {end:.3g} over its last {k}"
    val = [r["val_acc"] for r in rows if r.get("val_acc") is not None]
    if len(val) >= MIN_VAL_POINTS:
        if still_improving(val, MIN_ACC_RISE):
            rise, se, m = end_rise(val)
            return IMPROVING, (f"validation accuracy rose {100 * rise:.1f} points over its last {m} epochs "
                               f"(noise ±{100 * se:.1f})")
    elif len(loss) >= MIN_LOSS_POINTS:
        m = max(3, math.ceil(len(loss) / 3))
        if still_improving(-loss, MIN_LOSS_DROP * float(np.mean(np.abs(loss[-m:])))):
            rise, se, m = end_rise(-loss)
            return IMPROVING, (f"training loss fell {rise:.3g} over its last {m} steps (noise ±{se:.2g}); "
                               f"too few validation points ({len(val)}) to judge validation")
    return OK, ""


def chance_status(overall: float | None, lo: float | None, hi: float | None, num_classes: int | None,
                  n: int | None) -> tuple[str, str]:
    """(status, why) from the test accuracy and its interval (Wilson on `n` when lo/hi are missing)."""
    if overall is None or not math.isfinite(overall):
        return DIVERGED, "test accuracy is not a number"
    if not num_classes:
        return OK, ""
    kind = "bootstrap"
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        if not n:
            return OK, ""
        lo, hi = wilson_interval(overall, int(n))
        kind = "Wilson"
    if at_chance(lo, hi, num_classes):
        return CHANCE, (f"test accuracy {100 * overall:.1f} %, 95 % {kind} interval [{100 * lo:.1f}, {100 * hi:.1f}]"
                        f" contains chance 1/{num_classes} = {100 / num_classes:.1f} %")
    return OK, ""


def one_expert(meta: dict[str, Any]) -> str | None:
    """The method a fusion collapsed onto (≥ ONE_EXPERT of the weight in every group), else None."""
    weights = meta.get("weights") or {}
    per_split = weights.get("mean_per_split") or {}
    w = per_split.get("test") or next(iter(per_split.values()), None)
    if not w:
        return None
    w = np.asarray(w, dtype=np.float64)  # [experts, groups]
    if w.ndim != 2 or not w.size:
        return None
    top = w.argmax(axis=0)
    if len(set(top.tolist())) != 1 or not (w[top[0]] >= ONE_EXPERT).all():
        return None
    names = weights.get("experts") or []
    methods = {c.get("name"): c.get("method") for c in meta.get("constituents") or []}
    name = names[top[0]] if top[0] < len(names) else None
    return methods.get(name) or name


def worst(statuses: Iterable[str]) -> str:
    """The most severe of some statuses."""
    return max(statuses, key=STATUSES.index, default=OK)


def row_status(row: dict[str, Any], history: list[dict[str, Any]] | None, num_classes: int | None,
               n: int | None) -> tuple[str, str]:
    """(status, why) of one expert's report row."""
    found = [curve_status(history),
             chance_status(row.get("overall"), row.get("overall_lo"), row.get("overall_hi"), num_classes, n)]
    status = worst(s for s, _ in found)
    why = [w for s, w in found if s == status and w]
    why += [f"also {s}: {w}" for s, w in found if s not in (status, OK) and w]  # e.g. at chance but still rising
    return status, "; ".join(why)


def group_status(members: list[dict[str, Any]]) -> tuple[str, str]:
    """A seed group's (status, why): its most severe member's, naming the seeds that have it."""
    status = worst(m["status"] for m in members)
    if status == OK:
        return OK, ""
    hit = [m for m in members if m["status"] == status]
    seeds = ", ".join(str(m["seed"]) for m in hit)
    return status, f"{len(hit)} of {len(members)} seeds ({seeds}): {hit[0]['status_why']}"
