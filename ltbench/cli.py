"""The `ltbench` command line: parse, call the library, print. No logic lives here."""
from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from . import api
from .errors import USER_ERRORS, ConfigError
from .plugins import catalog

try:  # typer >= 0.20 carries its own copy of click
    from typer._click.exceptions import ClickException, UsageError
except ImportError:  # pragma: no cover
    from click.exceptions import ClickException, UsageError

#: what `ltbench ls --format` takes
LS_FORMATS = ("table", "json")

# Wide when piped (CI logs, files): a table is worth more than an 80-column wrap.
out = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True)


def _print_table(shown) -> None:
    """Print a table; piped, at its natural width: squeezed into a fixed one, rich cuts the names
    into narrow wrapped cells. A terminal keeps its own width."""
    if not out.is_terminal:
        natural = out.measure(shown, options=out.options.update_width(100_000)).maximum
        out.width = max(out.width, natural)
    out.print(shown)


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """A warning about user data (a broken expert) is one line naming it; others keep Python's form."""
    from .errors import BrokenExpertWarning

    if issubclass(category, BrokenExpertWarning):
        from rich.markup import escape

        err.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False, soft_wrap=True)
    else:
        _python_showwarning(message, category, filename, lineno, file, line)


_python_showwarning = warnings.showwarning
warnings.showwarning = _show_warning


#: the longest error line printed (a message quoting a huge value is cut, never echoed whole)
MAX_ERROR_CHARS = 500


def _error_line(text: str) -> None:
    from rich.markup import escape

    text = " ".join(text.split())
    if len(text) > MAX_ERROR_CHARS:  # the middle goes: the end usually says what to do
        text = text[:MAX_ERROR_CHARS * 3 // 5] + " … " + text[-MAX_ERROR_CHARS * 2 // 5:]
    err.print(f"[red]error:[/] {escape(text)}", highlight=False, soft_wrap=True)


class _OneLineErrors(TyperGroup):
    """A usage error (unknown option or command, bad value) is one line, click's "did you mean"
    included, instead of a usage box."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except UsageError as e:
            from .plugins.names import suggest

            message = e.format_message()
            if getattr(e, "possibilities", None):  # an unknown option: name the closest, not all
                message = f"No such option: {e.option_name}.{suggest(e.option_name, e.possibilities)}"
            where = f" (see `{e.ctx.command_path} -h`)" if e.ctx is not None else ""
            _error_line(message + where)
            sys.exit(e.exit_code)
        except ClickException as e:
            _error_line(e.format_message())
            sys.exit(e.exit_code)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(cls=_OneLineErrors, no_args_is_help=True, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="Train, register, fuse and compare long-tailed classifiers on frozen ViTs.")


def _version(value: bool) -> None:
    if value:
        out.print(api.version(), highlight=False, markup=False)
        raise typer.Exit()


@app.callback()
def _global(
    home: Optional[str] = typer.Option(None, "--home", envvar="LTBENCH_HOME", show_envvar=True,
                                       show_default="./ltbench-runs", help="the registry folder (a path or file:// URL)"),
    registry: Optional[str] = typer.Option(None, "--registry", envvar="LTBENCH_REGISTRY", show_envvar=True,
                                           show_default="<home>/registry.sqlite",
                                           help="the registry's index: a SQLite file or a database URL (postgresql://…)"),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="print the version and git commit, then exit"),
) -> None:
    """Train, register, fuse and compare long-tailed classifiers on frozen ViTs."""
    api.use_home(home, registry)


def _fail(e: Exception) -> None:
    _error_line(str(e))
    raise typer.Exit(code=2)


def _guard(fn):
    """Known user errors print one line and exit 2; programming errors keep their traceback."""
    import functools

    @functools.wraps(fn)
    def wrapper(*a, **kw):
        try:
            return fn(*a, **kw)
        except USER_ERRORS as e:
            _fail(e)

    return wrapper


@app.command()
@_guard
def train(
    dataset: Optional[str] = typer.Option(None, help="dataset source (see `ltbench datasets`)"),
    backbone: Optional[str] = typer.Option(None, help="backbone (see `ltbench backbones`)"),
    method: Optional[str] = typer.Option(None, help="method (see `ltbench methods`)"),
    budget: Optional[str] = typer.Option(None, help="3epochs | 500steps | 2e13flops | 600s"),
    loss: Optional[str] = typer.Option(None, help="loss (see `ltbench losses`; default: the method's)"),
    sampler: Optional[str] = typer.Option(None, help="sampler (see `ltbench samplers`; default: the method's)"),
    seed: Optional[int] = typer.Option(None, help="random seed (default 0)"),
    name: Optional[str] = typer.Option(None, help="expert name (default method_backbone_dataset_sSEED)"),
    weights: Optional[str] = typer.Option(None, help="local backbone weights file (offline use of hub models)"),
    root: Optional[str] = typer.Option(None, help="dataset root folder"),
    resume: bool = typer.Option(False, help="continue from the run's last checkpoint"),
    skip_bad_images: bool = typer.Option(False, help="drop unreadable images (counted in the metrics) instead of failing"),
    ood: List[str] = typer.Option([], "--ood", help="extra OOD set NAME=PATH (e.g. imagenet-r=/data/imagenet-r); repeatable"),
    set_: List[str] = typer.Option([], "--set", help="key=value override of any run, method or dataset key"),
    config: Optional[Path] = typer.Option(None, help="YAML/JSON file of keys (flags and --set win)"),
    log: List[str] = typer.Option([], "--log", help="also log the learning curve to tensorboard | mlflow; repeatable"),
    tune: Optional[int] = typer.Option(None, "--tune", help="first tune the method's search space: at most N trials on val"),
    tune_budget: Optional[float] = typer.Option(None, help="first tune, spending this multiple of the run's budget"
                                                            " (successive halving over many short trials)"),
    tune_share: float = typer.Option(0.25, help="tuning: each trial's whole length, as a share of the budget"),
    tune_jobs: int = typer.Option(1, help="tuning: processes running trials at once (one shared study)"),
    quiet: bool = typer.Option(False, help="no progress bar"),
) -> None:
    """Train an expert and register it (delta weights, cached logits, metrics, history, provenance)."""
    flags = dict(dataset=dataset, backbone=backbone, method=method, budget=budget, loss=loss, sampler=sampler,
                 seed=seed, name=name, weights=weights, root=root, resume=resume or None, ood=ood or None,
                 skip_bad_images=skip_bad_images or None, log=",".join(log) or None)
    tuning = None if tune is None and tune_budget is None else \
        {"trials": tune, "budget": tune_budget, "share": tune_share, "jobs": tune_jobs}
    expert = api.train(flags, set_, config, console=err, quiet=quiet, tune=tuning)
    if expert is None:  # a non-zero rank of a torchrun job: rank 0 registers and reports
        return
    _print_expert(expert)


def _print_expert(expert) -> None:
    """A registered expert: where it is, and its report row."""
    from .report import rich_table

    out.print(f"registered [bold]{expert.name}[/] in {expert.path}")
    _print_table(rich_table(api.report_frame(experts=[expert.name])))


@app.command()
@_guard
def fuse(
    experts: str = typer.Option(..., help="comma-separated registered experts, e.g. A,B[,C]"),
    scorer: str = typer.Option("moe", help=" | ".join(api.listed_names("scorers"))),
    trials: int = typer.Option(200, help="Optuna trials in total (search, moe); a resumed study runs the rest"),
    name: Optional[str] = typer.Option(None, help="fused expert's name (default fuse-SCORER_A+B)"),
    storage: Optional[str] = typer.Option(None, help="Optuna storage URL (sqlite:///fuse.db, postgresql://…) to resume or share a search"),
    workers: int = typer.Option(1, help="search processes on the --storage study (exact trial count; a killed one's trial is retried)"),
    objective: str = typer.Option("balanced", help="val objective: balanced | harmonic | accuracy"),
    seed: int = typer.Option(0, help="seed of the search sampler, the held-out split and the offset network"),
    per_group: bool = typer.Option(False, "--per-group/--no-per-group",
                                   help="one weight per expert and shot group (many/medium/few)"),
    quiet: bool = typer.Option(False, help="no progress lines"),
) -> None:
    """Fuse registered experts with an MoE scorer fitted on val logits; register the result."""
    expert = api.fuse(experts, scorer=scorer, trials=trials, name=name, storage=storage, objective=objective,
                      seed=seed, per_group=per_group, console=err, quiet=quiet, workers=workers)
    _print_expert(expert)


@app.command()
@_guard
def report(
    dataset: Optional[str] = typer.Option(None, help="only this dataset"),
    method: Optional[str] = typer.Option(None, help="only this method"),
    experts: Optional[str] = typer.Option(None, help="comma-separated expert names"),
    suite: Optional[Path] = typer.Option(None, "--suite", help="only this suite's experts, beside its published reference rows"),
    format: str = typer.Option("table", "--format", help="table | csv | md | latex | json"),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="also write every format (report.csv/.md/.tex/.json/.txt) here"),
    plots: bool = typer.Option(False, "--plots", help="write PNG plots into --out (default ./ltbench-report)"),
    ci: bool = typer.Option(True, "--ci/--no-ci", help="95% bootstrap interval of single runs (reads cached test logits)"),
    group_seeds: bool = typer.Option(True, "--group-seeds/--no-group-seeds", help="one row per experiment: mean ± std over seeds"),
    by: Optional[str] = typer.Option(None, "--by", help="budget: accuracy against budget, one line per experiment"),
) -> None:
    """Print the comparison table from the registry (no retraining)."""
    names = experts.split(",") if experts else None
    from .report.views import show

    view, written = api.report(format, out=out_dir, plots=plots, dataset=dataset, method=method, experts=names,
                               ci=ci, group_seeds=group_seeds, suite=suite, by=by)
    _emit(show(view, format), format)
    if written:
        err.print(f"wrote {len(written)} files to {written[0].parent}: {', '.join(p.name for p in written)}",
                  highlight=False, soft_wrap=True)


def _emit(shown, format: str) -> None:
    """A rich table on the terminal; machine formats (json, csv) verbatim on stdout."""
    if format == "table":
        _print_table(shown)
    else:
        sys.stdout.write(shown)


@app.command("ls")
@_guard
def ls(format: str = typer.Option("table", "--format", help="table | json")) -> None:
    """List registered experts."""
    from .plugins.names import suggest

    if format not in LS_FORMATS:
        raise ConfigError(f"--format {format!r}: use one of {', '.join(LS_FORMATS)}.{suggest(format, LS_FORMATS)}")
    rows = api.ls()
    if format == "json":
        from .jsonio import dumps

        sys.stdout.write(dumps(rows, indent=2) + "\n")
        return
    table = Table(title="registered experts")
    for col in api.LS_COLUMNS:
        table.add_column(col)
    for r in rows:
        table.add_row(*(str(r[c]) for c in api.LS_COLUMNS))
    _print_table(table)


@app.command()
@_guard
def show(
    name: str,
    history: bool = typer.Option(False, "--history", help="the learning curve (history.csv) as a table instead"),
) -> None:
    """Show an expert's config, metrics and provenance (or its learning curve)."""
    if history:
        from .training.tracking import history_table

        _print_table(history_table(name, api.show_history(name)))
        return
    from .jsonio import dumps

    out.print_json(dumps(api.show(name)))


@app.command()
@_guard
def predict(
    expert: str = typer.Argument(..., help="registered expert name, or a file written by `ltbench export`"),
    images: List[Path] = typer.Argument(..., help="image files or folders (searched recursively)"),
    top: int = typer.Option(5, help="classes shown per image"),
    format: str = typer.Option("table", "--format", help="table | json | csv"),
    batch_size: int = typer.Option(32, help="images per forward pass"),
    device: str = typer.Option("cpu", help="cpu | cuda | auto"),
    weights: Optional[str] = typer.Option(None, help="backbone weights file, when it lives elsewhere on this machine"),
) -> None:
    """Classify images with a registered expert (fused experts through their scorer)."""
    from .experts.predict import render

    rows = api.predict(expert, [str(p) for p in images], top=top, fmt=format, batch_size=batch_size,
                       device=device, weights=weights)
    _emit(render(rows, format), format)


@app.command()
@_guard
def export(
    name: str = typer.Argument(..., help="registered expert"),
    file: Path = typer.Argument(..., help="output .safetensors file (a new one, unless --force)"),
    force: bool = typer.Option(False, "--force", help="replace FILE if it is an existing regular file"),
) -> None:
    """Write an expert as one safetensors file (delta + config); `load_expert(FILE)` reads it elsewhere."""
    path = api.export(name, file, force=force)
    out.print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)", highlight=False)


@app.command()
@_guard
def rm(name: str, force: bool = typer.Option(False, "--force", help="also a member of a registered fusion")) -> None:
    """Remove an expert (index row and folder together)."""
    api.remove(name, force=force)
    out.print(f"removed {name}")


@app.command()
@_guard
def doctor(
    repair: bool = typer.Option(False, "--repair", help="re-index complete folders, drop orphan rows, delete stale temporaries"),
    remove_broken: bool = typer.Option(False, "--remove-broken", help="with --repair: also remove unreadable experts"),
) -> None:
    """Check the registry: orphan rows and folders, unreadable records, half-written temporaries (exit 1 if any)."""
    if remove_broken and not repair:
        _fail(ConfigError("--remove-broken only works together with --repair"))
    found, done = api.doctor(repair=repair, remove_broken=remove_broken)
    for p in done:
        out.print(f"fixed {p.kind} {p.name} ({p.path})", highlight=False, markup=False, soft_wrap=True)
    for p in found:
        out.print(f"{p.kind} {p.name}: {p.detail} ({p.path}); {p.fix}",
                  highlight=False, markup=False, soft_wrap=True)
    if not found:
        out.print("registry OK" + (f" ({len(done)} fixed)" if done else ""), highlight=False)
    raise typer.Exit(code=1 if found else 0)


@app.command()
@_guard
def params(
    method: str = typer.Option(..., help="method name"),
    backbone: str = typer.Option(..., help="backbone name (no weights are loaded)"),
    num_classes: int = typer.Option(..., help="number of classes"),
    set_: List[str] = typer.Option([], "--set", help="method config key=value"),
) -> None:
    """Print {"trainable": n, "total": n} for a method on a backbone."""
    from .jsonio import dumps

    sys.stdout.write(dumps(api.params(method, backbone, num_classes, set_)) + "\n")


def _listing_command(command: str) -> None:
    """Add `ltbench <command>`, which prints catalog.LISTINGS[command]'s rows, one line each."""

    @_guard
    def show_rows() -> None:
        for name, help_ in api.listing(command):
            out.print(f"{name:<22} {help_}", highlight=False, markup=False, soft_wrap=True)

    app.command(command, help=catalog.LISTINGS[command].help)(show_rows)


for _command in catalog.LISTINGS:
    _listing_command(_command)


def _print_suite_result(view, written) -> None:
    from .report.views import show

    _print_table(show(view))
    if written:
        err.print(f"wrote {len(written)} files to {written[0].parent}: {', '.join(p.name for p in written)}",
                  highlight=False, soft_wrap=True)


@app.command()
@_guard
def bench(
    suite: Path = typer.Argument(..., help="suite file (YAML): dataset, backbone, budget, seeds, runs, fusions"),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="report folder (default <LTBENCH_HOME>/reports/<suite name>)"),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="also write the PNG plots into the report folder"),
    quiet: bool = typer.Option(False, help="no progress bars"),
    plan: bool = typer.Option(False, "--plan", help="validate and print runs, seeds, budget, estimated FLOPs; train nothing"),
    executor: str = typer.Option("local", help="local (one run after another) | ray (every run a Ray task)"),
    address: Optional[str] = typer.Option(None, help="Ray cluster: auto | ray://HOST:PORT (default: start a local one)"),
    budgets: Optional[str] = typer.Option(None, "--budgets", help="run every run at each budget, e.g. 1epochs,2epochs,4epochs"),
) -> None:
    """Run a suite: every method under one budget (registered runs are skipped), fusions, then the report."""
    if plan:
        from .suites.planner import plan_table

        _print_table(plan_table(*api.plan(suite, budgets)))
        return
    table, written, _ = api.bench(suite, out=out_dir, plots=plots, console=err, quiet=quiet, executor=executor,
                                  address=address, budgets=budgets)
    _print_suite_result(table, written)


@app.command()
@_guard
def demo(
    out_dir: Optional[Path] = typer.Option(None, "--out", help="report folder (default <LTBENCH_HOME>/reports/demo)"),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="also write the PNG plots into the report folder"),
    quiet: bool = typer.Option(False, help="no progress bars"),
) -> None:
    """Run the built-in offline suite on fashion-mnist-lt with dinov2-s14, then report (table + plots)."""
    table, written, _ = api.demo(console=err, quiet=quiet, out=out_dir, plots=plots)
    _print_suite_result(table, written)


def main() -> None:  # `python -m ltbench`
    """Entry point of `python -m ltbench` and the console script."""
    from . import reproducible

    reproducible.prepare(sys.argv[1:])  # before anything loads torch
    app(prog_name="ltbench")
