"""Report figures (PNG, matplotlib's Agg canvas; pyplot's global state is never touched).

- accuracy_vs_params: overall accuracy against trainable parameters (log x), bubble area ∝
  total model size, one labelled bubble per row (Figure 1 of the LPT papers);
- accuracy_vs_compute: overall accuracy against the compute each row spent, in FLOPs and in
  device seconds (two panels, log x), one point per row, the Pareto front (no other row is
  as accurate for less compute) drawn as a step line;
- per_class_accuracy: per-class test accuracy against training frequency, classes sorted by
  training count (descending), shot-group boundaries marked, one line per row;
- shot_groups: many / medium / few accuracy as grouped bars.

One set of files per dataset; with more than one dataset in the frame the file names get a
`-<dataset>` suffix. Rows are those of `collect(..., with_paths=True)`.

A method has one colour in every plot and every report (`method_color`: a fixed table, not
the order methods happen to appear in). Error bars say what they are: a single run's 95 %
bootstrap interval over test images, or the std over a seed group's runs.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import RegistryError
from ..metrics import shot_groups
from ..store.expert import Expert
from . import logits as _logits
from .tables import _count

#: Shot groups in greys: colour is kept for methods (`method_color`).
GROUP_COLORS = {"many": "#525252", "medium": "#969696", "few": "#d0d0d0"}
MAX_LINES = 12
DPI = 130


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, bbox_inches="tight", facecolor="white")
    return path


#: One colour per method, whatever else a report holds (tab20's colours; fusions in greys/browns).
METHOD_COLORS = {
    "linear-probe": "#1f77b4", "full-ft": "#d62728", "vpt-shallow": "#aec7e8", "vpt-deep": "#ff7f0e",
    "lpt": "#2ca02c", "lpt++": "#98df8a", "zero-shot": "#7f7f7f", "lit": "#c7c7c7", "lora": "#9467bd",
    "adaptformer": "#c5b0d5", "lt-soups": "#e377c2", "fuse:mean": "#8c564b", "fuse:search": "#c49c94",
    "fuse:learned": "#bcbd22", "fuse:moe": "#17becf",
}
_SPARE_COLORS = ["#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d", "#31a354",
                 "#756bb1", "#636363"]


def method_color(method: str) -> str:
    """The method's colour: from METHOD_COLORS, else a spare colour chosen by a stable hash of its name."""
    import zlib

    return METHOD_COLORS.get(method) or _SPARE_COLORS[zlib.crc32(method.encode()) % len(_SPARE_COLORS)]


def _method_colors(methods) -> dict[str, str]:
    return {m: method_color(m) for m in set(methods)}


#: What the two kinds of error bar show (legend labels).
CI_LABEL = "95% bootstrap interval (single run, over test images)"
STD_LABEL = "± std over seeds (seed group)"


def _yerr_kinds(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lo/hi error [2, N] in %, seed-group mask, bootstrap mask): std for seed groups, the
    bootstrap interval for single runs, none otherwise."""
    err = np.zeros((2, len(df)))
    std = np.zeros(len(df), bool)
    boot = np.zeros(len(df), bool)
    for i, (_, r) in enumerate(df.iterrows()):
        if pd.notna(r.get("overall_std")) and (r.get("seeds") or 1) > 1:
            err[:, i] = 100 * r["overall_std"]
            std[i] = True
        elif pd.notna(r.get("overall_lo")) and pd.notna(r.get("overall_hi")):
            err[0, i] = 100 * max(0.0, r["overall"] - r["overall_lo"])
            err[1, i] = 100 * max(0.0, r["overall_hi"] - r["overall"])
            boot[i] = True
    return err, std, boot


def _error_bars(ax, x, y, df: pd.DataFrame) -> None:
    """Bootstrap intervals and seed std drawn apart, each labelled in the legend."""
    err, std, boot = _yerr_kinds(df)
    for mask, label, style in ((boot, CI_LABEL, "-"), (std, STD_LABEL, "--")):
        if mask.any():
            bars = ax.errorbar(x[mask], y[mask], yerr=err[:, mask], fmt="none", ecolor="0.35", elinewidth=1,
                               capsize=3, zorder=2, label=label)
            bars[-1][0].set_linestyle(style)


#: Legend text of a hollow point.
HOLLOW_LABEL = "hollow: flagged (at chance, still improving or diverged)"


def flagged(df: pd.DataFrame) -> np.ndarray:
    """Rows whose status is not ok: drawn hollow (the report's closing lines say why)."""
    if "status" not in df:
        return np.zeros(len(df), bool)
    return (df["status"].notna() & (df["status"] != "ok")).to_numpy()


def _scatter(ax, x, y, hollow, color, s, **kw) -> None:
    """Filled points, and hollow ones (edge in the method's colour) for flagged rows; `color`
    and `s` are one value or one per point."""
    color = np.broadcast_to(np.asarray(color, dtype=object), len(x))
    s = np.broadcast_to(np.asarray(s, dtype=float), len(x))
    if (~hollow).any():
        ax.scatter(x[~hollow], y[~hollow], s=s[~hollow], color=list(color[~hollow]), edgecolors="black", **kw)
    if hollow.any():
        kw = {**kw, "label": None if (~hollow).any() else kw.get("label"), "linewidths": 1.6}
        ax.scatter(x[hollow], y[hollow], s=s[hollow], facecolors="none", edgecolors=list(color[hollow]), **kw)


def _hollow_note(ax, df: pd.DataFrame) -> None:
    if flagged(df).any():
        ax.scatter([], [], facecolors="none", edgecolors="black", s=40, label=HOLLOW_LABEL)


def pareto_front(cost: np.ndarray, acc: np.ndarray) -> np.ndarray:
    """Indices of the rows no other row beats (as accurate or more for as little compute or less,
    better in one), sorted by cost: the accuracy-for-compute frontier."""
    order = np.lexsort((-acc, cost))  # cheapest first; at equal cost the most accurate first
    front, best = [], -np.inf
    for i in order:
        if acc[i] > best:
            front.append(i)
            best = acc[i]
    return np.asarray(front, dtype=np.int64)


#: Where a bubble's label may go, tried in order: (dx, dy) in units of (radius + 3 pt), alignment.
_LABEL_SPOTS = [((1, 0), "left", "center"), ((-1, 0), "right", "center"), ((0, 1), "center", "bottom"),
                ((0, -1), "center", "top"), ((0.75, 0.75), "left", "bottom"), ((0.75, -0.75), "left", "top"),
                ((-0.75, 0.75), "right", "bottom"), ((-0.75, -0.75), "right", "top")]


def _place_labels(fig, ax, x, y, radii, names) -> None:
    """Label each bubble at the first spot around it whose text overlaps no other bubble, no label
    placed so far, and stays inside the axes (else the spot with the least overlap)."""
    from matplotlib.transforms import Bbox

    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    centres = ax.transData.transform(np.column_stack([x, y]))
    px = radii * fig.dpi / 72
    placed: list = [Bbox.from_extents(cx - r, cy - r, cx + r, cy + r) for (cx, cy), r in zip(centres, px)]  # bubbles

    def overlap(b) -> float:
        area = sum(max(0.0, min(b.x1, o.x1) - max(b.x0, o.x0)) * max(0.0, min(b.y1, o.y1) - max(b.y0, o.y0))
                   for o in placed)
        outside = (b.x1 - b.x0) * (b.y1 - b.y0) - max(0.0, min(b.x1, frame.x1) - max(b.x0, frame.x0)) \
            * max(0.0, min(b.y1, frame.y1) - max(b.y0, frame.y0))
        return area + outside

    for i in np.argsort(-y, kind="stable"):  # top to bottom
        best = None
        for (dx, dy), ha, va in _LABEL_SPOTS:
            r = radii[i] + 3
            t = ax.annotate(names[i], (x[i], y[i]), xytext=(dx * r, dy * r), textcoords="offset points",
                            fontsize=7, ha=ha, va=va, zorder=4)
            cost = overlap(t.get_window_extent(renderer))
            if best is None or cost < best[0]:
                if best is not None:
                    best[1].remove()
                best = (cost, t)
            else:
                t.remove()
            if cost == 0:
                break
        placed.append(best[1].get_window_extent(renderer))


def accuracy_vs_params(df: pd.DataFrame, path: Path, dataset: str) -> Path | None:
    """Accuracy against trainable parameters: the cost axis parameter-efficient methods compete on."""
    d = df[df["trainable_params"].notna() & df["overall"].notna()].reset_index(drop=True)
    if not len(d):
        return None
    fig = _figure(7.5, 5)
    ax = fig.add_subplot()
    colors = _method_colors(d["method"])
    x = np.maximum(d["trainable_params"].astype(float).to_numpy(), 1.0)  # 0 trainable (zero-shot) sits at 1
    y = 100 * d["overall"].to_numpy(dtype=float)
    total = d["total_params"].astype(float).fillna(0).to_numpy()
    top = total.max() if total.max() > 0 else 1.0
    sizes = 60 + 1400 * total / top
    _error_bars(ax, x, y, d)
    hollow = flagged(d)
    for method in sorted(set(d["method"])):
        m = (d["method"] == method).to_numpy()
        _scatter(ax, x[m], y[m], hollow[m], colors[method], sizes[m], alpha=0.55, linewidths=0.6,
                 label=method, zorder=3)
    _hollow_note(ax, d)
    ax.set_xscale("log")
    lo, hi = x.min(), x.max()
    ax.set_xlim(lo / 3, hi * 6)
    pad = max(2.0, 0.15 * (y.max() - y.min()))
    ax.set_ylim(max(0, y.min() - pad), min(100, y.max() + pad))
    raw = d["trainable_params"].astype(float).to_numpy()
    names = [name + (" (0 trainable)" if n == 0 else "") for name, n in zip(d["expert"], raw)]
    _place_labels(fig, ax, x, y, np.sqrt(sizes / np.pi), names)  # marker area is in points²
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel("overall test accuracy (%)")
    ax.set_title(f"{dataset}: accuracy vs trainable parameters\nbubble area ∝ total model size "
                 f"(largest {_count(top)} params)", fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    leg = ax.legend(title="method", fontsize=8, title_fontsize=8, loc="best", markerscale=0.5)
    for h in leg.legend_handles:
        if hasattr(h, "set_sizes"):
            h.set_sizes([40])
    return _save(fig, path)


COMPUTE_AXES = (("flops", "FLOPs spent in training"), ("device_seconds", "device seconds spent in training"))


def accuracy_vs_compute(df: pd.DataFrame, path: Path, dataset: str) -> Path | None:
    """Accuracy against compute spent (FLOPs, seconds): what a budget buys per method."""
    d = df[df["overall"].notna()].reset_index(drop=True)
    axes = [(col, label) for col, label in COMPUTE_AXES if col in d and d[col].notna().any()]
    if not len(d) or not axes:
        return None
    fig = _figure(6.2 * len(axes), 5)
    y = 100 * d["overall"].to_numpy(dtype=float)
    for k, (col, label) in enumerate(axes):
        ax = fig.add_subplot(1, len(axes), k + 1)
        raw = d[col].astype(float).to_numpy()
        ok = np.isfinite(raw)
        positive = raw[ok & (raw > 0)]
        floor = positive.min() / 3 if len(positive) else 1.0
        x = np.where(ok & (raw > 0), raw, floor)  # no compute (zero-shot) sits at the left edge
        x, yy, sub = x[ok], y[ok], d[ok].reset_index(drop=True)
        _error_bars(ax, x, yy, sub)
        hollow = flagged(sub)
        for method in sorted(set(sub["method"])):
            m = (sub["method"] == method).to_numpy()
            _scatter(ax, x[m], yy[m], hollow[m], method_color(method), 46, linewidths=0.6, label=method, zorder=3)
        _hollow_note(ax, sub)
        front = pareto_front(x, yy)
        if len(front):
            fx, fy = x[front], yy[front]
            ax.step(np.r_[fx, x.max() * 2], np.r_[fy, fy[-1]], where="post", color="black", linewidth=1,
                    alpha=0.6, zorder=1, label="Pareto front")
        spent = raw[ok]
        for i in front:
            note = " (none spent)" if spent[i] <= 0 else ""
            ax.annotate(sub["expert"][i] + note, (x[i], yy[i]), xytext=(4, 4), textcoords="offset points", fontsize=7)
        ax.set_xscale("log")
        ax.set_xlim(x.min() / 2, x.max() * 2)
        ax.set_xlabel(f"{label} (log scale)")
        ax.set_ylabel("overall test accuracy (%)")
        ax.grid(True, which="major", alpha=0.3)
        if k == len(axes) - 1:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle(f"{dataset}: accuracy vs compute (one point per expert; labelled: on the Pareto front)", fontsize=10)
    return _save(fig, path)


def _member_info(path: Path) -> tuple[np.ndarray | None, int, int]:
    ex = Expert.at(path)
    return (ex.class_counts, *ex.thresholds)


def per_class_accuracy(df: pd.DataFrame, path: Path, dataset: str) -> Path | None:
    """Accuracy per class ordered by training count: where along the tail each method wins."""
    rows = df[df["overall"].notna()].sort_values("overall", ascending=False, kind="stable")
    note = ""
    if len(rows) > MAX_LINES:
        note = f" (best {MAX_LINES} of {len(rows)} by overall)"
        rows = rows.head(MAX_LINES)
    lines = []
    counts = None
    many = few = None
    for _, r in rows.iterrows():
        try:
            accs = [_logits.per_class_accuracy(p) for p in r["_paths"]]
            c, many_t, few_t = _member_info(r["_paths"][0])
        except (RegistryError, OSError, ValueError):
            continue
        if c is None or len(c) != len(accs[0]):
            continue
        if counts is None:
            counts, many, few = c, many_t, few_t
        lines.append((r["expert"], r["method"], c, np.nanmean(np.vstack(accs), axis=0)))
    if not lines:
        return None
    order = np.argsort(-counts, kind="stable")
    ncls = len(counts)
    rank = np.arange(1, ncls + 1)
    window = max(1, round(ncls / 40))
    fig = _figure(9, 5)
    ax = fig.add_subplot()
    ax2 = ax.twinx()
    ax2.fill_between(rank, counts[order], step="mid", color="0.85", zorder=0)
    ax2.set_yscale("log")
    ax2.set_ylabel("training images per class (grey, log)", color="0.4")
    ax2.tick_params(axis="y", colors="0.4")
    ax.set_zorder(ax2.get_zorder() + 1)
    ax.patch.set_visible(False)
    styles = ["-", "--", ":", "-."]
    seen: dict[str, int] = {}
    for name, method, c, acc in lines:
        sorted_acc = 100 * acc[np.argsort(-c, kind="stable")]
        smooth = pd.Series(sorted_acc).rolling(window, center=True, min_periods=1).mean().to_numpy()
        k = seen[method] = seen.get(method, -1) + 1  # the method's colour; its experts told apart by line style
        ax.plot(rank, smooth, color=method_color(method), linestyle=styles[k % len(styles)], linewidth=1.6,
                label=name)
    groups = shot_groups(counts, many, few)[order]
    bounds = np.flatnonzero(np.diff(groups)) + 1  # first rank of each next group (0-based)
    for b in bounds:
        ax.axvline(b + 0.5, color="black", linestyle="--", linewidth=1)
    edges = [0, *bounds.tolist(), ncls]
    names = {0: f"many (>{many})", 1: f"medium ({few}–{many})", 2: f"few (<{few})"}
    for a, b in zip(edges[:-1], edges[1:]):
        ax.text((a + b) / 2 + 0.5, 1.01, f"{names[int(groups[a])]}: {b - a}", transform=ax.get_xaxis_transform(),
                ha="center", va="bottom", fontsize=8)
    ax.set_xlim(0.5, ncls + 0.5)
    ax.set_ylim(0, 100)
    ax.set_xlabel("class rank by training count (most frequent first)")
    ax.set_ylabel(f"test accuracy per class (%, rolling mean over {window})" if window > 1 else "test accuracy per class (%)")
    ax.set_title(f"{dataset}: per-class accuracy vs training frequency{note}", fontsize=10, pad=18)
    ax.grid(True, alpha=0.25)
    ax.legend(fontsize=7, loc="lower left", ncol=2 if len(lines) > 6 else 1)
    return _save(fig, path)


def shot_group_bars(df: pd.DataFrame, path: Path, dataset: str) -> Path | None:
    """Many / medium / few accuracy side by side: the long-tail summary in one figure."""
    d = df[df[["many", "medium", "few"]].notna().any(axis=1)].reset_index(drop=True)
    if not len(d):
        return None
    n = len(d)
    fig = _figure(min(30.0, max(6.0, 0.75 * n + 2)), 4.8)
    ax = fig.add_subplot()
    width = 0.26
    xs = np.arange(n)
    grouped = d["seeds"].fillna(1).to_numpy() > 1 if "seeds" in d else np.zeros(n, bool)
    for j, g in enumerate(("many", "medium", "few")):
        vals = 100 * d[g].astype(float).fillna(0).to_numpy()
        ax.bar(xs + (j - 1) * width, vals, width, color=GROUP_COLORS[g], label=g)
        if f"{g}_std" in d and grouped.any():  # std bars on seed groups only (single runs have none)
            err = 100 * d[f"{g}_std"].astype(float).fillna(0).to_numpy()
            ax.errorbar((xs + (j - 1) * width)[grouped], vals[grouped], yerr=err[grouped], fmt="none",
                        ecolor="black", elinewidth=0.8, capsize=2, label=STD_LABEL if j == 0 else None)
    _scatter(ax, xs, 100 * d["overall"].astype(float).to_numpy(), flagged(d), [method_color(m) for m in d["method"]],
             26, marker="D", linewidths=0.6, zorder=3, label="overall (method colour)")
    _hollow_note(ax, d)
    ax.set_xticks(xs)
    ax.set_xticklabels(d["expert"], rotation=30 if n > 3 else 0, ha="right" if n > 3 else "center", fontsize=8)
    for tick, method in zip(ax.get_xticklabels(), d["method"]):
        tick.set_color(method_color(method))
    ax.set_ylim(0, 100)
    ax.set_ylabel("test accuracy (%)")
    note = " (error bars: std over seeds)" if grouped.any() else ""
    ax.set_title(f"{dataset}: accuracy by shot group{note}", fontsize=10)
    ax.grid(True, axis="y", alpha=0.25)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, path)


PLOTS = {"accuracy_vs_params": accuracy_vs_params, "accuracy_vs_compute": accuracy_vs_compute,
         "per_class_accuracy": per_class_accuracy, "shot_groups": shot_group_bars}


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s)


def write_plots(df: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """Write every plot for every dataset in `df` (a frame from `collect(..., with_paths=True)`)."""
    if "_paths" not in df.columns:
        raise ValueError("write_plots needs collect(..., with_paths=True)")
    out = Path(out_dir)
    datasets = sorted(df["dataset"].dropna().unique())
    if datasets:
        out.mkdir(parents=True, exist_ok=True)
    written = []
    for ds in datasets:
        sub = df[df["dataset"] == ds]
        suffix = "" if len(datasets) == 1 else f"-{_slug(ds)}"
        for stem, fn in PLOTS.items():
            p = fn(sub, out / f"{stem}{suffix}.png", ds)
            if p is not None:
                written.append(p)
    return written
