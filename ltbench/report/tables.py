"""One row per expert — or per seed group — from the registry alone: accuracy per shot group,
OOD, calibration, size and compute spent. No retraining, no re-evaluation.

Experts whose stored configs differ only by seed (and name, and operational keys such as the
device) are grouped into one row: mean and sample standard deviation over seeds, `seeds` = n.
Single runs get a percentile bootstrap interval of per-class-averaged test accuracy instead,
from their cached test logits (optional: `ci=False` reads no logits at all).

Machine formats (JSON, CSV) carry fractions in [0, 1] and numeric `<column>_std` (one scheme:
`overall_std`, `ood:sketch_std`), `overall_lo`, `overall_hi` columns; human formats (table, md,
latex) show percentages. JSON is strict (NaN → null) and wraps the rows in an object that says
what produced them: {ltbench_version, git_hash, date, suite, budget, groups, rows}; `groups` is
the shot-group protocol of the rows (metrics.GROUP_PROTOCOLS), "mixed" when they differ, and a
table that mixes protocols shows a `groups` column.
"""
from __future__ import annotations

import functools
import io
import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from ..errors import RegistryError
from ..metrics import group_protocol
from ..store.index import Registry
from ..store.provenance import experiment_key, replicate_seed
from . import logits as _logits
from . import status as _status

ACC_COLUMNS = ["overall", "many", "medium", "few"]
FORMATS = ("table", "csv", "md", "latex", "json")
#: Files `--out DIR` writes, one per format.
FILES = {"csv": "report.csv", "md": "report.md", "latex": "report.tex", "json": "report.json", "table": "report.txt"}
SORT = ["dataset", "method", "expert"]
_HEADERS = {"trainable_params": "trainable", "trainable_pct": "% of model", "flops": "FLOPs",
            "device_seconds": "device s", "ece": "ECE", "tuned": "tuned", "tune_flops": "tuning FLOPs",
            "tune_seconds": "tuning s"}


class ReportError(RegistryError):
    """A report that cannot be built as asked (bad format, nothing to plot …)."""


def _expert_row(registry: Registry, r: dict[str, Any], lookup) -> dict[str, Any]:
    ex = registry.get(r["name"])
    stale = ex.stale_metrics()  # metrics computed from other logits than those cached now
    if stale:
        raise RegistryError(f"stale metrics: {stale}")
    config, metrics, meta = ex.config, ex.metrics, ex.meta
    test = metrics.get("test", {})
    row: dict[str, Any] = {"expert": r["name"], "method": r["method"], "backbone": r["backbone"],
                           "dataset": r["dataset"], "seeds": 1, "seed": replicate_seed(config), "members": r["name"],
                           **{k: test.get(k) for k in ACC_COLUMNS}, "ece": test.get("ece")}
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
    row["groups"] = group_protocol(config)
    # trained in reproducible mode (the same bits on any x86-64 CPU), or with the kernels this CPU chose
    row["reproducible"] = bool((meta.get("env") or {}).get("reproducible"))
    tuning = meta.get("tuning")  # the study that chose its values: its trial count and compute
    row["tuned"] = len(tuning.get("trials") or []) if tuning else None
    row["tune_flops"] = (tuning.get("compute") or {}).get("flops") if tuning else None
    row["tune_seconds"] = (tuning.get("compute") or {}).get("seconds") if tuning else None
    row["_path"] = ex.path
    row["_key"] = (r["dataset"], experiment_key(config, lookup))
    # the same experiment at any budget (a line of the accuracy-against-budget view), and its budget
    row["_series"] = (r["dataset"], experiment_key({**config, "budget": None}, _without_budget(lookup)))
    row["_at_budget"] = _budget_of(config, meta, lookup)
    counts = ex.class_counts
    row["_classes"] = len(counts) if counts is not None else (config.get("data") or {}).get("num_classes")
    row["_n"] = test.get("n")
    row["_history"] = ex.history()
    row["same_as"] = _status.one_expert(meta) if r["method"].startswith("fuse") or "constituents" in meta else None
    return row


def _without_budget(lookup):
    def inner(name: str) -> dict[str, Any]:
        return {**lookup(name), "budget": None}

    return inner


def _budget_of(config: dict[str, Any], meta: dict[str, Any], lookup) -> str | None:
    """The budget a row ran at: a fusion's is its members' (when they share one)."""
    if meta.get("budget") != "fuse":
        return meta.get("budget") or config.get("budget")
    budgets = set()
    for name in config.get("experts") or []:
        try:
            budgets.add(lookup(name).get("budget"))
        except KeyError:
            return None
    return budgets.pop() if len(budgets) == 1 else None


def _config_lookup(registry: Registry):
    """name -> stored config, each read once; KeyError for a name no longer registered."""
    known = set(registry.names())

    @functools.lru_cache(maxsize=None)
    def lookup(name: str) -> dict[str, Any]:
        if name not in known:
            raise KeyError(name)
        try:
            return registry.get(name).config
        except RegistryError:  # a broken member: keep its name
            raise KeyError(name) from None

    return lookup


def _stem(names: list[str]) -> str:
    """`lp_vit_d_s0`, `lp_vit_d_s1` → `lp_vit_d` (their common prefix minus a seed marker)."""
    prefix = names[0]
    for n in names[1:]:
        while not n.startswith(prefix):
            prefix = prefix[:-1]
    return re.sub(r"[_\-.]*(seed|s)?[_\-.]*$", "", prefix)


def _group_row(members: list[dict[str, Any]]) -> dict[str, Any]:
    members = sorted(members, key=lambda m: m["seed"])
    names = [m["expert"] for m in members]
    seeds = [m["seed"] for m in members]
    stem = _stem(names)
    first = members[0]
    row = {k: first[k] for k in ("method", "backbone", "dataset", "trainable_params", "total_params",
                                 "trainable_pct", "groups", "_path", "_key", "_series", "_at_budget")}
    row["expert"] = f"{stem}_s{{{','.join(map(str, seeds))}}}" if stem else "+".join(names)
    row.update(seeds=len(members), seed=None, members=",".join(names))
    metric_cols = [c for c in members[0] if c in ACC_COLUMNS or c == "ece" or c.startswith("ood:")]
    metric_cols += [c for m in members for c in m if c.startswith("ood:") and c not in metric_cols]
    for c in metric_cols:
        vals = np.array([np.nan if m.get(c) is None else float(m[c]) for m in members])
        row[c] = float(vals.mean())
        row[_std_name(c)] = float(vals.std(ddof=1))
    row["tuned"] = first.get("tuned")
    for c in ("flops", "device_seconds", "tune_flops", "tune_seconds"):  # spent per run (mean over seeds)
        vals = [m[c] for m in members if m.get(c) is not None]
        row[c] = float(np.mean(vals)) if len(vals) == len(members) else None
    budgets = {m.get("budget") for m in members}
    row["budget"] = budgets.pop() if len(budgets) == 1 else "mixed"
    row["status"], row["status_why"] = _status.group_status(members)
    same = {m.get("same_as") for m in members}
    row["same_as"] = same.pop() if len(same) == 1 else None
    row["reproducible"] = all(m.get("reproducible") for m in members)
    return row


def _std_name(col: str) -> str:
    return f"{col}_std"


def _ood_columns(df: pd.DataFrame) -> list[str]:
    """The `ood:<name>` accuracy columns (not their `ood:<name>_std`)."""
    return sorted(c for c in df.columns if c.startswith("ood:") and not c.endswith("_std"))


def _columns(df: pd.DataFrame) -> list[str]:
    ood = _ood_columns(df)
    cols = ["expert", "method", "backbone", "dataset", "seeds", "seed", "members",
            "overall", "overall_lo", "overall_hi", "overall_std", "many", "many_std", "medium", "medium_std",
            "few", "few_std", *ood, *[_std_name(c) for c in ood], "ece", "ece_std",
            "trainable_params", "total_params", "trainable_pct", "flops", "device_seconds",
            "tuned", "tune_flops", "tune_seconds", "budget", "status", "status_why", "same_as", "groups",
            "reproducible"]
    return cols


def _skip(name: str, e: Exception) -> None:
    import warnings

    from ..errors import BrokenExpertWarning

    text = (str(e).strip().splitlines() or [""])[0]
    warnings.warn(f"skipping expert {name!r}: {text}; `ltbench doctor` for details", BrokenExpertWarning, stacklevel=3)


def _with_intervals(rows: list[dict], n_resamples: int, confidence: float, seed: int, engine) -> list[dict]:
    """Set each row's bootstrap interval of its overall accuracy; return the rows whose test logits are
    gone or damaged (each skipped with a warning naming it)."""

    def interval(r):
        try:
            return _logits.interval(r["_path"], n_resamples, confidence, seed, engine)
        except (RegistryError, OSError, ValueError) as e:
            return e

    broken = []
    for r, iv in zip(rows, _logits.parallel_map(interval, rows)):
        if isinstance(iv, Exception):
            _skip(r["expert"], iv)
            broken.append(r)
        else:
            r["overall_lo"], r["overall_hi"] = iv
    return broken


def collect(registry: Registry, dataset: str | None = None, method: str | None = None,
            experts: Iterable[str] | None = None, *, ci: bool = True, group_seeds: bool = True,
            n_resamples: int = 1000, confidence: float = 0.95, bootstrap_seed: int = 0,
            engine: str = "poisson", with_paths: bool = False) -> pd.DataFrame:
    """The report's rows, sorted by (dataset, method, expert).

    `experts` names unknown to the registry raise RegistryError (with a suggestion).
    `with_paths=True` keeps a private `_paths` column (member folders) for the plots.
    """
    rows = registry.healthy_rows()  # a broken expert is skipped with a warning naming it
    wanted = list(dict.fromkeys(experts)) if experts else None
    if wanted is not None:
        known = {r["name"] for r in rows}
        for name in wanted:
            if name not in known:
                registry.get(name)  # raises, with "did you mean"
        keep = set(wanted)
        rows = [r for r in rows if r["name"] in keep]
    rows = [r for r in rows if not (dataset and r["dataset"] != dataset) and not (method and r["method"] != method)]
    lookup = _config_lookup(registry)
    singles = []
    for r in rows:  # an expert that breaks while read (removed meanwhile, damaged) is skipped and named
        try:
            singles.append(_expert_row(registry, r, lookup))
        except (RegistryError, OSError) as e:
            _skip(r["name"], e)
    by_key: dict[tuple, list[dict]] = defaultdict(list)
    for row in singles:
        by_key[row["_key"]].append(row)

    def grouped(members: list[dict]) -> bool:
        seeds = [m["seed"] for m in members]
        return group_seeds and len(members) > 1 and None not in seeds and len(set(seeds)) == len(seeds)

    if ci:  # single runs only: a seed group's members are judged on a Wilson interval (see report/status.py)
        lone = [m for members in by_key.values() if not grouped(members) for m in members
                if m.get("overall") is not None]
        for r in _with_intervals(lone, n_resamples, confidence, bootstrap_seed, engine):  # the broken ones
            singles.remove(r)
            by_key[r["_key"]].remove(r)
            if not by_key[r["_key"]]:
                del by_key[r["_key"]]
    for r in singles:
        r["status"], r["status_why"] = _status.row_status(r, r.pop("_history"), r["_classes"], r["_n"])

    out: list[dict[str, Any]] = []
    for members in by_key.values():
        if grouped(members):
            g = _group_row(members)
            g["_paths"] = [m["_path"] for m in sorted(members, key=lambda m: m["seed"])]
            out.append(g)
        else:
            for m in members:
                m["_paths"] = [m["_path"]]
                out.append(m)

    df = pd.DataFrame(out)
    cols = _columns(df)
    df = df.reindex(columns=cols + ["_series", "_at_budget"] + (["_paths"] if with_paths else []))
    if len(df):
        df = df.sort_values(SORT, kind="stable").reset_index(drop=True)
    for c in cols:
        if c not in ("expert", "method", "backbone", "dataset", "members", "budget", "seed", "status", "status_why",
                     "same_as", "groups", "reproducible"):
            df[c] = pd.to_numeric(df[c], errors="coerce")
    for c in ("seed", "seeds", "trainable_params", "total_params", "tuned"):
        df[c] = df[c].astype("Int64")
    return df


# -- published reference rows ---------------------------------------------------------------
def add_references(df: pd.DataFrame, references: list[dict[str, Any]], run_of: dict[str, str]) -> pd.DataFrame:
    """Published rows beside the measured ones (a suite's `reference:` block).

    Each reference becomes a row (`expert` "published: <name>", its `source`), placed after the
    measured rows of the run it belongs to; those rows get `delta:<column>` = measured − published
    for every number the reference gives. `run_of` maps an expert name to its run label."""
    if not references:
        return df
    by_run: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for ref in references:
        by_run[ref.get("run")].append(ref)
    dataset = df["dataset"].dropna().iloc[0] if len(df) and df["dataset"].notna().any() else None

    def published(ref: dict[str, Any], method: Any) -> dict[str, Any]:
        given = [c for c in ACC_COLUMNS if ref.get(c) is not None] + [f"ood.{k}" for k in ref.get("ood") or {}]
        quoted = ref.get("quoted") or []  # numbers not in the paper's text: never silently "published"
        label = (f"quoted: {ref['name']}" if set(given) <= set(quoted) else
                 f"published: {ref['name']} (quoted: {', '.join(quoted)})" if quoted else f"published: {ref['name']}")
        row = {"expert": label, "method": method, "dataset": dataset, "source": ref["source"],
               **{c: ref.get(c) for c in ACC_COLUMNS}}
        row.update({f"ood:{k}": v for k, v in (ref.get("ood") or {}).items()})
        return row

    recs = df.to_dict("records")
    runs = [run_of.get(str(r.get("members") or r["expert"]).split(",")[0]) for r in recs]
    last = {run: i for i, run in enumerate(runs) if run is not None}
    rows = []
    for i, (rec, run) in enumerate(zip(recs, runs)):
        refs = by_run.get(run, []) if run is not None else []
        for ref in refs[:1]:  # the differences are to the run's first reference
            for col in ACC_COLUMNS:
                if ref.get(col) is not None and not _missing(rec.get(col)):
                    rec[f"delta:{col}"] = rec[col] - ref[col]
            for k, v in (ref.get("ood") or {}).items():
                if not _missing(rec.get(f"ood:{k}")):
                    rec[f"delta:ood:{k}"] = rec[f"ood:{k}"] - v
        rows.append(rec)
        if run is not None and last[run] == i:  # after the run's last measured row
            rows += [published(ref, rec.get("method")) for ref in refs]
    rows += [published(ref, None) for run, refs in by_run.items() if run not in last for ref in refs]
    out = pd.DataFrame(rows)
    deltas = sorted(c for c in out.columns if c.startswith("delta:"))
    lead = [c for c in df.columns if c in out.columns]
    ood = [c for c in out.columns if c.startswith("ood:") and c not in lead]
    return out.reindex(columns=[*lead, *ood, *deltas, "source"])


# -- formatting ---------------------------------------------------------------------------
def _missing(v) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def _pct(v: float, digits: int = 2) -> str:
    return f"{100 * v:.{digits}f}"


def _cell(col: str, row: pd.Series) -> str:
    v = row.get(col)
    if _missing(v):
        return "—"
    if col == "reproducible":
        return "yes" if v else "no"
    grouped = not _missing(row.get("seeds")) and row.get("seeds", 1) > 1
    if col in ACC_COLUMNS or col.startswith("ood:"):
        text = _pct(v)
        if grouped and not _missing(row.get(_std_name(col))):
            text += f" ± {_pct(row[_std_name(col)])}"
            if col == "overall":
                text += f" ({int(row['seeds'])})"
        elif col == "overall" and not _missing(row.get("overall_lo")) and not _missing(row.get("overall_hi")):
            text += f" [{_pct(row['overall_lo'], 1)}, {_pct(row['overall_hi'], 1)}]"
        return text
    if col.startswith("delta:"):
        return f"{100 * v:+.2f}"
    if col == "ece":
        text = f"{v:.3f}"
        if grouped and not _missing(row.get("ece_std")):
            text += f" ± {row['ece_std']:.3f}"
        return text
    if col == "trainable_pct":
        return f"{v:.3g}%"
    if col == "trainable_params":  # count and share of the whole model in one cell
        pct = row.get("trainable_pct")
        return _count(v) + ("" if _missing(pct) else f" ({pct:.3g}%)")
    if col in ("total_params", "seeds"):
        return f"{int(v):,}"
    if col == "tuned":
        return f"{int(v)} trials"
    if col == "status":
        same = row.get("same_as")
        return str(v) + ("" if _missing(same) else f", = {same}")
    if col in ("flops", "tune_flops"):
        return f"{v:.2e}"
    if col in ("device_seconds", "tune_seconds"):
        return f"{v:.1f}"
    return str(v)


def _count(n) -> str:
    n = int(n)
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return str(n)


def _display_columns(df: pd.DataFrame) -> list[str]:
    ood = _ood_columns(df)
    lead = ["expert", "method", "backbone"] + (["dataset"] if df["dataset"].nunique() > 1 else [])
    deltas = [c for c in df.columns if c.startswith("delta:")]
    tuned = ["tuned", "tune_flops", "tune_seconds"] if "tuned" in df and df["tuned"].notna().any() else []
    status = ["status"] if "status" in df and df["status"].notna().any() else []
    # the budget column only when runs ran at different budgets (a fusion's own "fuse" does not count)
    budget = ["budget"] if "_at_budget" in df and df["_at_budget"].nunique() > 1 else []
    if "groups" in df and df["groups"].nunique() > 1:  # rows of different shot-group protocols: say so per row
        lead.append("groups")
    if "reproducible" in df and df["reproducible"].nunique() > 1:  # some rows pinned, some not: mark each
        lead.append("reproducible")
    return [*lead, *budget, "seeds", *ACC_COLUMNS, *status, *ood, *deltas, "ece", "trainable_params", "flops",
            "device_seconds", *tuned]


def _header(col: str) -> str:
    return _HEADERS.get(col, f"Δ {col[len('delta:'):]}" if col.startswith("delta:") else col)


TITLE = "ltbench report — test accuracy (%)"
CAPTION = "single runs: [95% bootstrap interval over test samples]; seed groups: mean ± std (n seeds)"


def _caption(df: pd.DataFrame) -> str:
    """CAPTION plus the rows' shot-group protocol (or "mixed": then each row shows its own)."""
    protocols = set(df["groups"].dropna()) if "groups" in df else set()
    text = CAPTION
    if protocols:
        text += f"; shot groups: {protocols.pop() if len(protocols) == 1 else 'mixed (see groups column)'}"
    modes = set(df["reproducible"].dropna()) if "reproducible" in df else set()
    if modes == {False}:
        text += "; trained without reproducible mode (another CPU may change the last digits)"
    elif len(modes) > 1:
        text += "; reproducible: trained in reproducible mode (the same bits on any x86-64 CPU)"
    return text


def rich_table(df: pd.DataFrame, title: str = TITLE) -> Table:
    """The report frame as a terminal table, with intervals and seed spreads written beside the means."""
    table = Table(title=title, caption=_caption(df))
    cols = _display_columns(df) if len(df.columns) else []
    for c in cols:
        text = c in ("expert", "method", "backbone", "dataset")
        # numbers never wrap; names fold when the terminal is too narrow
        table.add_column(_header(c), justify="left" if text else "right", no_wrap=not text,
                         overflow="fold" if text else "ellipsis")
    for _, row in df.iterrows():
        flagged = row.get("status") not in (None, _status.OK) and not _missing(row.get("status"))
        table.add_row(*[_cell(c, row) for c in cols], style="yellow" if flagged else None)
    return table


def terminal(df: pd.DataFrame, title: str = TITLE):
    """What the terminal shows: the table, then one line per flagged row saying why."""
    from rich.console import Group
    from rich.text import Text

    return Group(rich_table(df, title), *(Text(line, style="yellow") for line in flag_lines(df)))


def flag_lines(df: pd.DataFrame) -> list[str]:
    """One line per flagged row (a status other than ok, or a fusion that is one expert), saying why."""
    lines = []
    for _, row in df.iterrows():
        status, same = row.get("status"), row.get("same_as")
        if not _missing(status) and status != _status.OK:
            lines.append(f"{row['expert']}: {status} — {row.get('status_why') or ''}".rstrip(" —"))
        if not _missing(same):
            lines.append(f"{row['expert']}: = {same} — at least {_status.ONE_EXPERT:.0%} of the fusion's weight "
                         f"is on its {same} expert in every shot group")
    return lines


def table_text(df: pd.DataFrame, width: int = 400) -> str:
    """The rich table as plain text (what `--out` writes to report.txt)."""
    console = Console(file=io.StringIO(), width=width, color_system=None, force_terminal=False)
    console.print(rich_table(df))
    for line in flag_lines(df):
        console.print(line, highlight=False, soft_wrap=True)
    return "\n".join(line.rstrip() for line in console.file.getvalue().splitlines()) + "\n"


def records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as plain JSON values (NaN → null, numpy scalars → Python), private columns dropped."""
    out = []
    cols = [c for c in df.columns if not c.startswith("_")]
    for row in df[cols].itertuples(index=False, name=None):
        rec = {}
        for c, v in zip(cols, row):
            if _missing(v):
                v = None
            elif isinstance(v, np.generic):
                v = v.item()
            rec[c] = v
        out.append(rec)
    return out


def _latex_escape(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                 ("{", r"\{"), ("}", r"\}"), ("±", r"$\pm$"), ("—", "--")):
        s = s.replace(a, b)
    return s


def document(df: pd.DataFrame, suite: str | None = None, budget: str | None = None) -> dict[str, Any]:
    """The JSON report: the rows and what produced them. `budget` defaults to the rows' common
    budget ("mixed" when they differ, null when there are no rows)."""
    from .. import __version__
    from ..store.provenance import git_hash, now

    rows = records(df)
    if budget is None:
        budgets = {r.get("budget") for r in rows} - {None}
        budget = budgets.pop() if len(budgets) == 1 else ("mixed" if budgets else None)
    protocols = {r.get("groups") for r in rows} - {None}
    groups = protocols.pop() if len(protocols) == 1 else ("mixed" if protocols else None)
    return {"ltbench_version": __version__, "git_hash": git_hash(), "date": now(), "suite": suite,
            "budget": budget, "groups": groups, "rows": rows}


def render(df: pd.DataFrame, fmt: str, suite: str | None = None, budget: str | None = None) -> str:
    """Machine formats keep fractions in [0, 1]; human ones (table, md, latex) show percentages.
    `suite` and `budget` go into the JSON document (see `document`)."""
    if fmt == "json":
        from ..jsonio import dumps

        return dumps(document(df, suite, budget), indent=2) + "\n"
    if fmt == "csv":
        return df[[c for c in df.columns if not c.startswith("_")]].to_csv(index=False)
    if fmt == "table":
        return table_text(df)
    if fmt not in FORMATS:
        raise ReportError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    cols = _display_columns(df)
    cells = [[_cell(c, row) for c in cols] for _, row in df.iterrows()]
    if fmt == "md":
        esc = lambda s: s.replace("|", r"\|")  # noqa: E731
        lines = ["| " + " | ".join(_header(c) for c in cols) + " |",
                 "|" + "|".join(":---" if c in ("expert", "method", "backbone", "dataset") else "---:" for c in cols) + "|"]
        lines += ["| " + " | ".join(esc(x) for x in r) + " |" for r in cells]
        flags = "".join(f"- {esc(line)}\n" for line in flag_lines(df))
        return "\n".join(lines) + f"\n\n{_caption(df)}\n" + (f"\n{flags}" if flags else "")
    lead = sum(c in ("expert", "method", "backbone", "dataset") for c in cols)
    lines = [r"\begin{tabular}{" + "l" * lead + "r" * (len(cols) - lead) + "}", r"\toprule",
             " & ".join(_latex_escape(_header(c)) for c in cols) + r" \\", r"\midrule"]
    lines += [" & ".join(_latex_escape(x) for x in r) + r" \\" for r in cells]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def write_report(df: pd.DataFrame, out_dir: str | Path, suite: str | None = None,
                 budget: str | None = None) -> list[Path]:
    """Every format at once: report.csv, report.md, report.tex, report.json, report.txt."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt, file in FILES.items():
        (out / file).write_text(render(df, fmt, suite, budget), encoding="utf-8")
        written.append(out / file)
    return written
