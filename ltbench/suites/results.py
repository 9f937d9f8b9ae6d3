"""A suite's report: exactly its experts, its references beside them, in its own folder."""
from __future__ import annotations

import os
from pathlib import Path

from ..store.index import Registry
from .schema import Suite, SuiteError


def budget_words(suite: Suite) -> str:
    """"budget 2epochs" or "budgets 1epochs, 2epochs" (titles)."""
    if len(suite.budgets) > 1:
        return f"budgets {', '.join(suite.budgets)}"
    return f"budget {suite.budgets[0] if suite.budgets else suite.budget}"


def default_report_dir(suite: Suite, registry: Registry) -> Path:
    """Where a suite's report goes when no folder is given: under the registry home."""
    return registry.home / "reports" / suite.name


def suite_runs(suite: Suite) -> dict[str, str]:
    """Expert name → the run (or fusion) label it belongs to, for every seed."""
    return {j.name: j.label for j in suite.jobs}


def check_report_dir(out: str | Path) -> Path:
    """`out` if a report can be written there (a folder, or one that can be created), else a one-line
    SuiteError: checked before the suite runs, so a bad --out never costs the runs' time."""
    out = Path(out)
    probe = out
    while not probe.exists() and probe != probe.parent:
        if probe.is_symlink():  # a dangling link
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise SuiteError(f"--out {out}: {probe} is a file, not a folder")
    if not probe.exists() or not os.access(probe, os.W_OK | os.X_OK):
        raise SuiteError(f"--out {out}: {probe} is not writable; give a folder this user can write")
    return out


def report_suite(suite: Suite, registry: Registry | None = None, out: str | Path | None = None,
                 plots: bool = True):
    """The report of exactly the suite's experts: (its `ReportView`, files written into `out`).

    With several budgets, the accuracy-against-budget view follows the table (by_budget.* and
    accuracy_vs_budget.png), ending with the budgets at which the ranking changes."""
    from ..report import add_references, collect, write_plots, write_report
    from ..report import budgets as by_budget
    from ..report.views import ReportView

    registry = registry or Registry()
    out = Path(out) if out is not None else default_report_dir(suite, registry)
    measured = collect(registry, experts=suite.names, with_paths=plots)
    df = add_references(measured, suite.references, suite_runs(suite))
    budget = suite.budget if len(suite.budgets) <= 1 else None  # None: the rows say ("mixed")
    written = write_report(df, out, suite=suite.name, budget=budget)
    if plots:
        written += write_plots(measured, out)
    groups = suite.jobs[0].run.groups if suite.jobs and suite.jobs[0].run else "standard"
    view = ReportView(df, title=f"ltbench suite {suite.name} — test accuracy (%), {budget_words(suite)} a run,"
                                f" shot groups {groups}", doc={"suite": suite.name, "budget": budget})
    if len(suite.budgets) > 1:
        bf = by_budget.budget_frame(measured)
        written += by_budget.write(bf, out)
        if plots:
            written += by_budget.plot(bf, out)
        view.by_budget, view.by_budget_title = bf, f"ltbench suite {suite.name} — test accuracy (%) against budget"
    return view, written
