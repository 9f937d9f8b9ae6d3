"""A report as data (`ReportView`), and the one function that turns it into what a format shows.

`api.report` and a suite's report return views; the CLI (or a notebook) renders them, so the
library side never builds terminal tables and a caller can read the frames directly."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from .tables import TITLE, render, terminal


@dataclass
class ReportView:
    """The rows of a report and how they are titled.

    `frame` is `collect`'s (with reference rows, for a suite); `doc` is what the JSON document
    wraps them with (suite, budget); `by_budget` is the accuracy-against-budget view (`budgets.
    budget_frame`), shown after the table, or alone with `budget_only` (`--by budget`)."""

    frame: pd.DataFrame | None = None
    title: str = TITLE
    doc: dict[str, Any] = field(default_factory=dict)
    by_budget: pd.DataFrame | None = None
    by_budget_title: str | None = None
    budget_only: bool = False


def show(view: ReportView, fmt: str = "table"):
    """The view in `fmt`: a rich renderable for "table" (the table, its flagged rows' lines, then the
    budget view), else text (the budget view's text alone with `budget_only`)."""
    from . import budgets

    if view.budget_only:
        return budgets.terminal(view.by_budget) if fmt == "table" else budgets.render(view.by_budget, fmt)
    if fmt != "table":
        return render(view.frame, fmt, **view.doc)
    shown = terminal(view.frame, title=view.title)
    if view.by_budget is None:
        return shown
    from rich.console import Group

    return Group(shown, budgets.terminal(view.by_budget, view.by_budget_title or budgets.TITLE))
