"""The library calls behind each CLI command, so the CLI only parses and prints."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from .errors import ConfigError
from .plugins import catalog
from .store.index import Registry

if TYPE_CHECKING:
    from .suites.schema import Suite

# Heavy imports (torch models, timm, open_clip, optuna) happen inside the functions that need
# them, so `--help`, `ls`, `show` and the listings start without torch (tests/test_cli.py checks).


def use_home(home: str | Path | None, registry: str | None = None) -> None:
    """Point this process (and the runs it starts) at the registry in `home` ($LTBENCH_HOME),
    indexed in `registry` ($LTBENCH_REGISTRY: a SQLite file or a database URL)."""
    if home is not None:
        os.environ["LTBENCH_HOME"] = str(home)
    if registry is not None:
        os.environ["LTBENCH_REGISTRY"] = str(registry)


def version() -> str:
    """`ltbench 0.1.0 (git 1a2b3c…)`: the package version and the checkout's commit."""
    from . import __version__
    from .store.provenance import git_hash

    return f"ltbench {__version__} (git {git_hash() or 'unknown'})"


def train(flags: dict[str, Any], sets: list[str] | None = None, config_file: str | Path | None = None,
          registry: Registry | None = None, console: Console | None = None, quiet: bool = False,
          tune: dict[str, Any] | None = None):
    """`ltbench train`; `tune` ({budget, trials, share, jobs, …}) tunes the run first (ltbench/tuning/tuner.py)."""
    from .config import load_config_file, parse_sets
    from .spec import resolve_run
    from .training.pipeline import train_expert
    from .tuning.tuner import parse_tune, tune_and_train

    spec = parse_tune(tune, "--tune")

    base: dict[str, Any] = {}
    if config_file:
        base = load_config_file(config_file)
    file_sets = base.pop("set", None) or {}
    merged = {**base, **{k: v for k, v in flags.items() if v is not None}}
    run = resolve_run(merged, {**file_sets, **parse_sets(sets or [])})
    if spec is not None:
        return tune_and_train(run, spec, registry=registry, console=console, quiet=quiet)
    return train_expert(run, registry=registry, console=console, quiet=quiet)


def report_frame(registry: Registry | None = None, **filters):
    """Report rows; filters/options: dataset, method, experts, ci, group_seeds (see report.collect)."""
    from .report import collect

    return collect(registry or Registry.existing(), **filters)


def report(fmt: str = "table", out: str | Path | None = None, plots: bool = False,
           plots_dir: str | Path = "ltbench-report", registry: Registry | None = None, **filters):
    """`ltbench report`: (the `ReportView` to show, files written). `fmt` is checked here, before
    any work, and names the formats written nowhere else: render the view with `report.views.show`.

    With `out`, every format is written there (report.csv/.md/.tex/.json/.txt); `plots` adds
    the PNG figures, into `out` or else `plots_dir`. The rows are read once for all of them.
    `by="budget"`: the accuracy-against-budget view instead (report/budgets.py).
    """
    from .plugins.names import suggest
    from .report import FORMATS, ReportError, write_plots, write_report
    from .report.views import ReportView

    if fmt not in FORMATS:
        raise ReportError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}.{suggest(fmt, FORMATS)}")
    by = filters.pop("by", None)
    if by not in (None, "budget"):
        raise ReportError(f"unknown --by {by!r}; use budget.{suggest(by, ['budget'])}")
    suite = filters.pop("suite", None)
    if suite is not None:  # exactly the suite's experts, with its published reference rows
        from .report import add_references
        from .suites.results import suite_runs
        from .suites.schema import load_suite

        suite = load_suite(suite)
        registry = registry or Registry.existing()
        filters["experts"] = [n for n in suite.names if n in registry]
        if not filters["experts"]:
            raise ReportError(f"no expert of suite {suite.name!r} is registered in {registry.home}; "
                              f"run `ltbench bench {suite.source}` first")
    measured = report_frame(registry, with_paths=plots, **filters)
    if by == "budget":
        from .report import budgets as by_budget

        bf = by_budget.budget_frame(measured)
        written = by_budget.write(bf, out) if out is not None else []
        written += by_budget.plot(bf, out if out is not None else plots_dir) if plots else []
        return ReportView(by_budget=bf, budget_only=True), written
    df = add_references(measured, suite.references, suite_runs(suite)) if suite is not None else measured
    doc = {"suite": suite.name, "budget": suite.budget} if suite is not None else {}
    written = write_report(df, out, **doc) if out is not None else []
    if plots:
        written += write_plots(measured, out if out is not None else plots_dir)
    return ReportView(df, doc=doc), written


LS_COLUMNS = ("name", "method", "backbone", "dataset", "seed", "created")


def ls(registry: Registry | None = None) -> list[dict[str, Any]]:
    """`ltbench ls`: the registered experts, one mapping of `LS_COLUMNS` each."""
    return [{c: r[c] for c in LS_COLUMNS} for r in (registry or Registry.existing()).healthy_rows()]


def show(name: str, registry: Registry | None = None) -> dict[str, Any]:
    """`ltbench show NAME`: everything registered about an expert, records and artifacts, as one mapping."""
    ex = (registry or Registry.existing()).get(name)
    info = {"name": ex.name, "path": str(ex.path), "config": ex.config, "metrics": ex.metrics, "meta": ex.meta,
            "splits": ex.splits()}
    info.update(ex.artifacts())
    return info


def show_history(name: str, registry: Registry | None = None) -> list[dict[str, Any]]:
    """`ltbench show NAME --history`: the learning curve's rows (history.csv)."""
    from .errors import RegistryError

    ex = (registry or Registry.existing()).get(name)
    rows = ex.history()
    if rows is None:
        why = "a fused expert is fitted, not trained" if str(ex.config.get("method", "")).startswith("fuse:") \
            else "it was registered before ltbench kept histories"
        raise RegistryError(f"expert {name!r} has no history.csv ({why})")
    return rows


def predict(expert: str, inputs: list[str], top: int = 5, fmt: str = "table", batch_size: int = 32,
            device: str = "cpu", weights: str | None = None, registry: Registry | None = None):
    """`ltbench predict`: one row per image (its top classes); `fmt` is checked before any work and
    is the caller's to render (`experts.predict.render`)."""
    from .errors import ExpertError
    from .experts.predict import FORMATS
    from .experts.predict import predict as _predict

    if fmt not in FORMATS:  # before any work
        raise ExpertError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    return _predict(expert, inputs, top=top, batch_size=batch_size, device=device, registry=registry, weights=weights)


def export(name: str, file: str | Path, registry: Registry | None = None, force: bool = False) -> Path:
    """`ltbench export NAME FILE`: one safetensors file that `load_expert(FILE)` reads elsewhere
    (an existing FILE only with `force`)."""
    from .experts import export_expert

    return export_expert(name, file, registry=registry or Registry.existing(), force=force)


def remove(name: str, registry: Registry | None = None, force: bool = False) -> None:
    """`ltbench rm NAME`: delete an expert (index row and folder) so the name can be trained again;
    a member of a registered fusion only with `force`."""
    (registry or Registry.existing(read_only=False)).remove(name, force=force)


def doctor(repair: bool = False, remove_broken: bool = False, registry: Registry | None = None):
    """`ltbench doctor`: (problems found, problems fixed); fixes only with `repair`.

    `--repair` on a home whose index was moved aside (damaged) builds a new one from the folders.
    """
    if registry is None:
        from .store.database import default_home

        home = default_home()
        registry = Registry(home) if repair and (home / "experts").is_dir() else Registry.existing(home, not repair)
    if not repair:
        return registry.check(), []
    done = registry.repair(remove_broken=remove_broken)
    return registry.check(), done


def params(method: str, backbone: str, num_classes: int, sets: list[str] | None = None) -> dict[str, int]:
    """Parameter counts without loading weights (random init of the backbone's shapes)."""
    from .backbones.factory import create_backbone
    from .config import method_overrides, parse_sets
    from .methods import create_method

    if num_classes < 1:
        raise ConfigError(f"--num-classes {num_classes}: expected an integer >= 1")
    overrides = method_overrides(method, parse_sets(sets or []))  # unknown keys fail before any model is built
    bb = create_backbone(backbone, pretrained=False)
    return create_method(method, bb, num_classes, **overrides).param_counts()


# The listings read the sources (ltbench/plugins/catalog.py): no plug-in module (nor torch) is imported.
def listing(command: str) -> list[tuple[str, str]]:
    """`ltbench <command>` for a listing command (datasets, backbones, methods, losses, samplers,
    scorers): (name, one-line help) rows, the outside plug-ins' included."""
    return catalog.rows(command)


def listed_names(command: str) -> list[str]:
    """The names `ltbench <command>` lists, for an option's help text: without the outside plug-ins'
    when they cannot be read, so `--help` always works (the command that needs them says why)."""
    from .plugins.external import PluginError

    try:
        return [name for name, _ in catalog.rows(command)]
    except PluginError:
        return [name for name, _ in catalog.rows(command, outside=False)]


def bench(suite: "str | Path | Suite", out: str | Path | None = None, plots: bool = True,
          registry: Registry | None = None, console: Console | None = None, quiet: bool = False,
          executor: str = "local", address: str | None = None, budgets: str | list[str] | None = None):
    """`ltbench bench SUITE.yaml`: train the suite's missing runs, fit its fusions, write its report.

    `executor="ray"` runs every job as a Ray task (on the cluster at `address`, or a local one).
    `budgets` ("1epochs,2epochs" or a list) runs the suite at each of them instead of its own.
    Returns (the report's `ReportView`, the files written, the suite's expert names). The report covers
    exactly the suite's experts and goes to `out` (default <LTBENCH_HOME>/reports/<suite name>).
    """
    from .executors import check_executor, run_suite
    from .suites.results import check_report_dir, default_report_dir, report_suite

    check_executor(executor, address)
    suite = _suite(suite, budgets)
    registry = registry or Registry()
    out = check_report_dir(out if out is not None else default_report_dir(suite, registry))  # before any run
    names = run_suite(suite, registry=registry, console=console, quiet=quiet, executor=executor, address=address)
    view, written = report_suite(suite, registry=registry, out=out, plots=plots)
    return view, written, names


def _suite(suite: "str | Path | Suite", budgets: str | list[str] | None = None) -> "Suite":
    """The suite, at `budgets` when given (checked first: a bad value fails before the file is read)."""
    from .suites.schema import Suite, load_suite, read_budgets

    wanted = read_budgets(budgets) if budgets is not None else None
    suite = suite if isinstance(suite, Suite) else load_suite(suite)
    return suite.with_budgets(wanted) if wanted is not None else suite


def plan(suite: "str | Path | Suite", budgets: str | list[str] | None = None):
    """`ltbench bench SUITE --plan`: (the suite, its plan rows); validates, trains nothing
    (`suites.planner.plan_table` renders them)."""
    from .suites.planner import plan_rows

    suite = _suite(suite, budgets)
    return suite, plan_rows(suite)


def demo(registry: Registry | None = None, console: Console | None = None, quiet: bool = False,
         out: str | Path | None = None, plots: bool = True):
    """`ltbench demo`: the built-in suite (ltbench/suites/demo.yaml) through `bench`."""
    from .suites.schema import builtin_suite

    return bench(builtin_suite("demo"), out=out, plots=plots, registry=registry, console=console, quiet=quiet)


def fuse(experts: str | list[str], scorer: str = "moe", trials: int = 200, name: str | None = None,
         storage: str | None = None, objective: str = "balanced", seed: int = 0, per_group: bool = False,
         registry: Registry | None = None, console: Console | None = None, quiet: bool = False, workers: int = 1):
    """`ltbench fuse`: fit a scorer on the experts' cached val logits and register the fused expert."""
    from .fusion import fuse_experts

    return fuse_experts(experts, scorer, name=name, trials=trials, objective=objective, seed=seed,
                        per_group=per_group, storage=storage, workers=workers, registry=registry, console=console,
                        quiet=quiet)
