"""Accuracy against budget: the report's rows regrouped as one line per experiment across the
budgets it ran at (`ltbench report --by budget`, and a suite run with `budgets:`).

A line ("series") is one experiment whatever its budget: rows whose configs differ only by
budget (and seed) — the report's `_series` key. Each point is a row of the report: a seed
group's mean ± std, or a single run; its status (report/status.py) is kept, so a flagged point
is drawn hollow and marked in the table. The ranking at a budget orders the lines by mean
overall accuracy; `ranking_changes` names every pair whose order flips between two
consecutive budgets (lines present at both).
"""
from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from ..errors import BudgetError
from .tables import ReportError, _missing

COLUMNS = ["dataset", "series", "method", "backbone", "budget", "amount", "unit", "seeds", "overall", "overall_std",
           "status", "experts"]


def _series_name(expert: str, budget: str) -> str:
    """`demo-lpt-1epochs-s0` / `demo-lpt_s{0,1}` → `demo-lpt`: the expert name without seed and budget."""
    name = re.sub(r"([_\-.]*(seed|s)?[_\-.]*(\{[0-9,]+\}|[0-9]+))$", "", expert)
    return re.sub(rf"[_\-.]{re.escape(budget)}$", "", name) if budget else name


def budget_frame(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (line, budget) from a `collect` frame, sorted by dataset, line, budget amount."""
    if "_series" not in df:
        raise ReportError("the accuracy-against-budget view needs a frame from report.collect")
    from ..spec import (
        read_budget,  # the run spec's reader of budget text (it imports the methods)
    )

    rows: list[dict[str, Any]] = []
    names: dict[tuple, str] = {}
    for _, r in df[df["overall"].notna() & df["_at_budget"].notna()].iterrows():
        try:
            b = read_budget(str(r["_at_budget"]))
        except BudgetError:
            continue
        key = r["_series"]
        names.setdefault(key, _series_name(str(r["expert"]), str(b)))
        rows.append({"dataset": r["dataset"], "_series": key, "method": r["method"], "backbone": r["backbone"],
                     "budget": str(b), "amount": b.amount, "unit": b.unit, "seeds": int(r.get("seeds") or 1),
                     "overall": float(r["overall"]),
                     "overall_std": None if _missing(r.get("overall_std")) else float(r["overall_std"]),
                     "status": None if _missing(r.get("status")) else r["status"], "experts": str(r["expert"])})
    out = pd.DataFrame(rows, columns=[*COLUMNS, "_series"])
    if not len(out):
        return out
    out["series"] = [names[k] for k in out["_series"]]
    # two experiments that strip to one name (different settings): tell them apart by method
    clash = out.groupby("series")["_series"].transform("nunique") > 1
    out.loc[clash, "series"] = out.loc[clash, "series"] + " (" + out.loc[clash, "method"] + ")"
    return out.sort_values(["dataset", "series", "unit", "amount"], kind="stable").reset_index(drop=True)


def _groups(bf: pd.DataFrame):
    """(dataset, unit) → its rows: one axis of budgets each."""
    return bf.groupby(["dataset", "unit"], sort=True)


def ranking_changes(bf: pd.DataFrame) -> list[str]:
    """One line per pair of consecutive budgets between which the ranking of lines changes."""
    lines = []
    for (dataset, _), sub in _groups(bf):
        budgets = sub.drop_duplicates("amount").sort_values("amount")["budget"].tolist()
        acc = {b: dict(zip(g["series"], g["overall"])) for b, g in sub.groupby("budget")}
        changed = False
        for a, b in zip(budgets, budgets[1:]):
            both = sorted(set(acc[a]) & set(acc[b]))
            flips = [(x, y) for i, x in enumerate(both) for y in both[i + 1:]
                     if (acc[a][x] - acc[a][y]) * (acc[b][x] - acc[b][y]) < 0]
            if flips:
                changed = True
                says = []
                for x, y in flips:
                    up, down = (x, y) if acc[b][x] > acc[b][y] else (y, x)
                    says.append(f"{up} overtakes {down} ({100 * acc[a][up]:.1f} → {100 * acc[b][up]:.1f} against "
                                f"{100 * acc[a][down]:.1f} → {100 * acc[b][down]:.1f})")
                lines.append(f"{dataset}: the ranking changes between {a} and {b}: {'; '.join(says)}")
        if len(budgets) > 1 and not changed:
            lines.append(f"{dataset}: the ranking is the same at every budget ({', '.join(budgets)})")
    return lines


def _point(r: pd.Series) -> str:
    text = f"{100 * r['overall']:.2f}"
    if r["seeds"] > 1 and r["overall_std"] is not None and not _missing(r["overall_std"]):
        text += f" ± {100 * r['overall_std']:.2f}"
    if r["status"] not in (None, "ok") and not _missing(r["status"]):
        text += f" [{r['status']}]"
    return text


def pivot(bf: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """(header, rows): one row per line, one column per budget (cells: mean ± std [status])."""
    budgets = bf.drop_duplicates(["unit", "amount"]).sort_values(["unit", "amount"])["budget"].tolist()
    several = bf["dataset"].nunique() > 1
    header = [*(["dataset"] if several else []), "line", "method", *budgets]
    rows = []
    for (dataset, series), g in bf.groupby(["dataset", "series"], sort=True):
        cells = {r["budget"]: _point(r) for _, r in g.iterrows()}
        rows.append([*([dataset] if several else []), series, g["method"].iloc[0], *(cells.get(b, "—") for b in budgets)])
    return header, rows


TITLE = "ltbench report — test accuracy (%) against budget"
CAPTION = "mean ± std over seeds (single runs: the run); [status] marks a run that did not train well"


def budget_table(bf: pd.DataFrame, title: str = TITLE) -> Table:
    """The pivot as a rich table; rows with a flagged point in yellow."""
    header, rows = pivot(bf)
    table = Table(title=title, caption=Text(CAPTION))
    for c in header:
        table.add_column(c, justify="left" if c in ("dataset", "line", "method") else "right")
    for r in rows:  # Text: a cell's "[at chance]" is not rich markup
        table.add_row(*(Text(c) for c in r), style="yellow" if any("[" in c for c in r) else None)
    return table


def terminal(bf: pd.DataFrame, title: str = TITLE) -> Group:
    """The table, then the budgets at which the ranking changes."""
    return Group(budget_table(bf, title), *(Text(line) for line in ranking_changes(bf)))


def render(bf: pd.DataFrame, fmt: str) -> str:
    """The view as text: table (plain), md, csv, json (fractions), latex."""
    if fmt == "csv":
        return bf[COLUMNS].to_csv(index=False)
    if fmt == "json":
        from ..jsonio import dumps

        rows = [{k: (None if _missing(v) else v.item() if isinstance(v, np.generic) else v) for k, v in r.items()}
                for r in bf[COLUMNS].to_dict("records")]
        return dumps({"by": "budget", "rows": rows, "ranking_changes": ranking_changes(bf)}, indent=2) + "\n"
    if fmt == "table":
        console = Console(file=io.StringIO(), width=400, color_system=None, force_terminal=False)
        console.print(terminal(bf))
        return "\n".join(line.rstrip() for line in console.file.getvalue().splitlines()) + "\n"
    header, rows = pivot(bf)
    changes = ranking_changes(bf)
    if fmt == "md":
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if c not in ("dataset", "line", "method")
                                                                   else ":---" for c in header) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines) + f"\n\n{CAPTION}\n\n" + "".join(f"- {c}\n" for c in changes)
    if fmt == "latex":
        from .tables import _latex_escape

        lead = sum(c in ("dataset", "line", "method") for c in header)
        lines = [r"\begin{tabular}{" + "l" * lead + "r" * (len(header) - lead) + "}", r"\toprule",
                 " & ".join(_latex_escape(c) for c in header) + r" \\", r"\midrule"]
        lines += [" & ".join(_latex_escape(x) for x in r) + r" \\" for r in rows]
        return "\n".join([*lines, r"\bottomrule", r"\end{tabular}"]) + "\n"
    raise ReportError(f"unknown format {fmt!r}")


#: Files the view writes into a report folder.
FILES = {"csv": "by_budget.csv", "md": "by_budget.md", "json": "by_budget.json", "table": "by_budget.txt"}


def write(bf: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """by_budget.csv / .md / .json / .txt into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt, file in FILES.items():
        (out / file).write_text(render(bf, fmt), encoding="utf-8")
        written.append(out / file)
    return written


def plot(bf: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """accuracy_vs_budget.png (one per dataset and unit): a line per experiment in its method's
    colour, a ± std band over seeds, flagged points hollow, budgets on a log axis."""
    from .plots import HOLLOW_LABEL, _figure, _save, _slug, method_color

    out = Path(out_dir)
    groups = list(_groups(bf))
    written = []
    for (dataset, unit), sub in groups:
        fig = _figure(8, 5)
        ax = fig.add_subplot()
        styles = ["-", "--", ":", "-."]
        seen: dict[str, int] = {}
        for series, g in sub.groupby("series", sort=True):
            g = g.sort_values("amount")
            x, y = g["amount"].to_numpy(float), 100 * g["overall"].to_numpy(float)
            std = 100 * g["overall_std"].astype(float).fillna(0).to_numpy()
            color = method_color(g["method"].iloc[0])
            k = seen[g["method"].iloc[0]] = seen.get(g["method"].iloc[0], -1) + 1
            ax.plot(x, y, color=color, linestyle=styles[k % len(styles)], linewidth=1.5, label=series, zorder=2)
            if (std > 0).any():
                ax.fill_between(x, y - std, y + std, color=color, alpha=0.15, linewidth=0, zorder=1)
            bad = (g["status"].notna() & (g["status"] != "ok")).to_numpy()
            ax.scatter(x[~bad], y[~bad], s=30, color=color, edgecolors="black", linewidths=0.5, zorder=3)
            ax.scatter(x[bad], y[bad], s=30, facecolors="none", edgecolors=color, linewidths=1.5, zorder=3)
        if (sub["status"].notna() & (sub["status"] != "ok")).any():
            ax.scatter([], [], s=30, facecolors="none", edgecolors="black", label=HOLLOW_LABEL)
        amounts = np.sort(sub["amount"].unique())
        if len(amounts) > 1 and amounts[-1] / amounts[0] > 3:
            ax.set_xscale("log")
        ax.set_xticks(amounts, [str(b) for b in sub.drop_duplicates("amount").sort_values("amount")["budget"]])
        ax.minorticks_off()
        ax.set_xlabel(f"budget ({unit} a run)")
        ax.set_ylabel("overall test accuracy (%)")
        bands = " (bands: ± std over seeds)" if (sub["seeds"] > 1).any() else ""
        ax.set_title(f"{dataset}: accuracy against budget{bands}", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
        suffix = "" if len(groups) == 1 else f"-{_slug(f'{dataset}-{unit}')}"
        out.mkdir(parents=True, exist_ok=True)
        written.append(_save(fig, out / f"accuracy_vs_budget{suffix}.png"))
    return written
