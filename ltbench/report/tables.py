"""One row per expert: accuracy per shot group, OOD, calibration, size and compute spent."""
from __future__ import annotations

import json
import math
from typing import Iterable

import pandas as pd
from rich.table import Table

from ..registry import Registry

ACC_COLUMNS = ["overall", "many", "medium", "few"]
FORMATS = ("table", "csv", "md", "latex", "json")


def collect(registry: Registry, dataset: str | None = None, method: str | None = None,
            experts: Iterable[str] | None = None) -> pd.DataFrame:
    wanted = set(experts) if experts else None
    rows = []
    for r in registry.rows():
        if (dataset and r["dataset"] != dataset) or (method and r["method"] != method):
            continue
        if wanted is not None and r["name"] not in wanted:
            continue
        ex = registry.get(r["name"])
        metrics, meta = ex.metrics, ex.meta
        test = metrics.get("test", {})
        row = {"expert": r["name"], "method": r["method"], "backbone": r["backbone"], "dataset": r["dataset"],
               "seed": r["seed"], **{k: test.get(k) for k in ACC_COLUMNS}, "ece": test.get("ece")}
        for split, m in sorted(metrics.items()):
            if split.startswith("ood:"):
                row[split] = m.get("overall")
        params = meta.get("params", {})
        row["trainable_params"] = params.get("trainable")
        row["total_params"] = params.get("total")
        row["trainable_pct"] = 100 * params["trainable"] / params["total"] if params.get("total") else None
        spent = meta.get("spent", {})
        row["flops"] = spent.get("flops")
        row["device_seconds"] = spent.get("seconds")
        row["budget"] = meta.get("budget")
        rows.append(row)
    df = pd.DataFrame(rows)
    if len(df):
        df = df.sort_values(["dataset", "method", "expert"], kind="stable").reset_index(drop=True)
    return df


def _fmt(col: str, v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if col in ACC_COLUMNS or col.startswith("ood:"):
        return f"{100 * v:.2f}"
    if col == "ece":
        return f"{v:.3f}"
    if col == "trainable_pct":
        return f"{v:.2f}%"
    if col in ("trainable_params", "total_params"):
        return f"{int(v):,}"
    if col == "flops":
        return f"{v:.2e}"
    if col == "device_seconds":
        return f"{v:.1f}"
    return str(v)


def _display_columns(df: pd.DataFrame) -> list[str]:
    ood = [c for c in df.columns if c.startswith("ood:")]
    return ["expert", "method", "backbone", *ACC_COLUMNS, *ood, "ece", "trainable_params", "trainable_pct",
            "flops", "device_seconds"]


def rich_table(df: pd.DataFrame, title: str = "ltbench report (test accuracy, %)") -> Table:
    table = Table(title=title)
    cols = _display_columns(df)
    for c in cols:
        table.add_column(c, justify="left" if c in ("expert", "method", "backbone") else "right")
    for _, row in df.iterrows():
        table.add_row(*[_fmt(c, row.get(c)) for c in cols])
    return table


def render(df: pd.DataFrame, fmt: str) -> str:
    """Machine formats keep fractions in [0, 1]; human ones (md, latex) show percentages."""
    if fmt == "json":
        return json.dumps(json.loads(df.to_json(orient="records")), indent=2)
    if fmt == "csv":
        return df.to_csv(index=False)
    cols = _display_columns(df)
    cells = [[_fmt(c, row.get(c)) for c in cols] for _, row in df.iterrows()]
    if fmt == "md":
        lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in cells]
        return "\n".join(lines) + "\n"
    if fmt == "latex":
        esc = lambda s: s.replace("_", r"\_").replace("%", r"\%")  # noqa: E731
        lines = [r"\begin{tabular}{" + "l" * 3 + "r" * (len(cols) - 3) + "}", r"\toprule",
                 " & ".join(esc(c) for c in cols) + r" \\", r"\midrule"]
        lines += [" & ".join(esc(x) for x in r) + r" \\" for r in cells]
        lines += [r"\bottomrule", r"\end{tabular}"]
        return "\n".join(lines) + "\n"
    raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
