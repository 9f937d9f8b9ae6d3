"""The local executor: a suite's jobs one after another in this process, under one progress bar."""
from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from ..store.index import Registry
from ..suites.execute import check_registered, execute
from ..suites.schema import Suite


def run_local(suite: Suite, registry: Registry, console: Console | None = None, quiet: bool = False) -> list[str]:
    """Every job of the suite not registered yet, in order; the experts' names.

    One progress bar covers the whole suite (jobs done / total, the current job as its
    description); each run's own bar appears under it."""
    console = console or Console(stderr=True)
    done = set(check_registered(suite, registry))
    progress = Progress(TextColumn(f"[bold]suite {suite.name}[/]"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.description}"), TimeElapsedColumn(),
                        console=console, disable=quiet, transient=False)
    with progress:
        task = progress.add_task("", total=len(suite.jobs))
        for job in suite.jobs:
            if job.name in done:
                progress.update(task, advance=1, description=f"{job.name} (registered)")
                continue
            progress.update(task, description=f"{job.name} ({job.kind})")
            execute(job, registry, console=console, quiet=quiet)
            progress.update(task, advance=1)
        progress.update(task, description="done")
    return suite.names
