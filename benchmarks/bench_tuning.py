"""Defaults vs. hand-picked overrides vs. equal tuning, side by side, at the demo's size; and the
tuned demo's accuracy against budget.

    .venv/bin/python benchmarks/bench_tuning.py --home DIR [--seeds 0 1 2] [--variants defaults overrides fixed tuned]
    .venv/bin/python benchmarks/bench_tuning.py --home DIR --seeds 0 --variants --budgets 5epochs 10epochs 20epochs 40epochs --out DIR
    .venv/bin/python benchmarks/bench_tuning.py --quick   # the same steps on a tiny suite (seconds): checks the script

Builds one suite per variant from the built-in demo suite (same dataset, backbone, sizes and
budget) and runs them into one registry, so a killed run resumes with what it has:

- `defaults`: every method with the library's defaults (the papers' values), no tuning;
- `overrides`: the demo's former per-method overrides (learning rates, optimisers, batch sizes
  chosen by looking at validation accuracy of full runs), no tuning;
- `fixed`: the demo tuned by the fixed-share form at the same tuning compute as its `tune:`
  block's budget (3 trials of a quarter of the run = 0.75 runs, the first the defaults);
- `tuned`: the demo suite itself (its `tune:` block, equal for every method).

With `--budgets`, the tuned demo also runs at each of those budgets (each tuned on its own) and
the accuracy-against-budget table, the budgets where the ranking changes, and the figure
(`accuracy_vs_budget.png`, into `--out`) are written.

Fusions are left out: the table is per method. Then prints, per method and variant, test
overall and few-shot accuracy and per-class validation accuracy (mean ± std over the seeds),
the tuning compute (trials' device seconds and FLOPs), the run's own device seconds and the
seeds whose run's report status is not `ok` (at chance, still improving, diverged); then per
method whether the tuned mean is within one standard deviation of the overrides' (or above it),
and each variant's ordering of methods by test accuracy.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
from pathlib import Path

#: The demo's former per-method overrides, kept as data for the side-by-side comparison.
OVERRIDES = {
    "linear-probe": {"batch_size": 8},
    "vpt-deep": {"optimizer": "adamw", "lr": 1.0e-2},
    "lpt": {"optimizer": "adamw", "lr": 3.0e-3, "lr_ref_batch": 0},
    "lpt++": {"optimizer": "adamw", "lr": 3.0e-3, "lr_ref_batch": 0},
    "lit": {"batch_size": 16},
    "lpt++-vl": {"optimizer": "adamw", "lr": 3.0e-3, "lr_ref_batch": 0},
    "lt-soups": {"batch_size": 16, "lr": 3.0e-3, "stage2_share": 0.5},
}
VARIANTS = ("defaults", "overrides", "fixed", "tuned")
#: `fixed`: the fixed-share form of tuning (trial 0 the defaults, then TPE) at 0.75 of a run
FIXED = {"trials": 3, "share": 0.25}
#: `--quick`: the demo's shape at test size (the random test ViT, 3-step runs, 2 trials); its numbers mean nothing
QUICK = {
    "name": "quick", "dataset": "fashion-mnist-lt", "backbone": "vit-tiny-test", "budget": "4steps", "seeds": [0],
    "set": {"head": 40, "imbalance": 10, "val_per_class": 4, "test_per_class": 6},
    "tune": {"budget": 1.0, "share": 0.5, "eta": 2, "rungs": 2},
    "runs": [{"method": "linear-probe"}, {"method": "vpt-deep", "set": {"prompt_len": 2}}],
}


def variant_suite(demo: dict, variant: str, seeds: list[int]) -> dict:
    """The demo suite's dict as one variant: its name, seeds, tuning and per-run sets."""
    data = copy.deepcopy(demo)
    data["seeds"] = list(seeds)
    data.pop("fusions", None)
    if variant == "tuned":
        return data
    data["name"] = f"{data['name']}-{variant}"
    data.pop("tune", None)
    if variant == "fixed":
        data["tune"] = dict(FIXED)
    for run in data["runs"]:
        label = run.get("label", run["method"])
        if variant == "overrides" and label in OVERRIDES:
            run["set"] = {**run.get("set", {}), **OVERRIDES[label]}
    return data


def _mean_std(values: list[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.fmean(values):.1f} ± {statistics.stdev(values):.1f}"


def not_ok(registry, names: list[str]) -> dict[str, str]:
    """The report's status of each of these experts where it is not `ok` (at chance, still
    improving, diverged): a mean over seeds must not hide a seed that never trained."""
    from ltbench import api

    frame = api.report_frame(registry, experts=names, ci=False, group_seeds=False)
    return {row.expert: row.status for row in frame.itertuples() if row.status != "ok"}


def verdict(label: str, tuned: list[float], overrides: list[float]) -> str:
    """One line: the tuned mean minus the overrides' mean, and whether it is above −sd (within one
    standard deviation of the overrides, or above them)."""
    diff = statistics.fmean(tuned) - statistics.fmean(overrides)
    sd = max(statistics.stdev(tuned), statistics.stdev(overrides))
    word = "above" if diff >= 0 else "within one sd" if diff >= -sd else "BELOW by more than one sd"
    return f"{label:<14}{diff:+6.1f} (sd {sd:4.1f}): {word}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", help="registry home (kept; a rerun reuses what it registered; default: a temporary one)")
    ap.add_argument("--quick", action="store_true", help="a tiny suite instead of the demo's (seconds): checks the script")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="*", choices=VARIANTS, default=list(VARIANTS))
    ap.add_argument("--budgets", nargs="*", default=[], help="also run the tuned demo at these budgets")
    ap.add_argument("--out", help="--budgets: folder for the accuracy-against-budget table and figure")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args()
    if args.home is None:
        import tempfile

        args.home = tempfile.mkdtemp(prefix="ltbench-tuning-")
    os.environ["LTBENCH_HOME"] = str(Path(args.home).resolve())

    import yaml
    from rich.console import Console

    import ltbench
    from ltbench.suites.schema import parse_suite
    from ltbench.executors import run_suite
    from ltbench.store.index import Registry

    demo = QUICK if args.quick else yaml.safe_load((Path(ltbench.__file__).parent / "suites" / "demo.yaml").read_text())
    registry = Registry(args.home)
    console = Console(stderr=True)
    suites = {v: parse_suite(variant_suite(demo, v, args.seeds), f"demo ({v})") for v in args.variants}
    for v, suite in suites.items():
        console.print(f"[bold]{v}[/]: {len(suite.jobs)} runs")
        run_suite(suite, registry, console=console, quiet=args.quiet)

    labels = [r.get("label", r["method"]) for r in demo["runs"]]
    print(f"\n{demo['dataset']} / {demo['backbone']}, budget {demo['budget']}, set {demo.get('set')}, "
          f"seeds {args.seeds}, tuned with {demo.get('tune')}")
    head = f"{'method':<14}{'variant':<11}{'test overall':>15}{'test few':>15}{'val':>15}{'tune s':>9}{'tune FLOPs':>12}" \
           f"{'run s':>8}  not ok"
    print(head)
    flagged = not_ok(registry, [s.expert_name(label, seed) for s in suites.values() for label in labels
                                for seed in args.seeds])
    order: dict[str, list[tuple[float, str]]] = {v: [] for v in suites}
    overall: dict[tuple[str, str], list[float]] = {}
    for label in labels:
        for v, suite in suites.items():
            cols: dict[str, list[float]] = {"overall": [], "few": [], "val": [], "tune_s": [], "tune_f": [], "run_s": []}
            for seed in args.seeds:
                ex = registry.get(suite.expert_name(label, seed))
                cols["overall"].append(100 * ex.metrics["test"]["overall"])
                cols["few"].append(100 * ex.metrics["test"]["few"])
                cols["val"].append(100 * ex.metrics["val"]["overall"])
                compute = ((ex.meta.get("tuning") or {}).get("compute") or {})
                cols["tune_s"].append(float(compute.get("seconds") or 0))
                cols["tune_f"].append(float(compute.get("flops") or 0))
                cols["run_s"].append(float((ex.meta.get("spent") or {}).get("seconds") or 0))
            order[v].append((statistics.fmean(cols["overall"]), label))
            overall[label, v] = cols["overall"]
            print((f"{label:<14}{v:<11}{_mean_std(cols['overall']):>15}{_mean_std(cols['few']):>15}"
                  f"{_mean_std(cols['val']):>15}{statistics.fmean(cols['tune_s']):9.0f}"
                  f"{statistics.fmean(cols['tune_f']):12.2e}{statistics.fmean(cols['run_s']):8.0f}  "
                  + ", ".join(f"s{seed} {flagged[n]}" for seed in args.seeds
                              if (n := suite.expert_name(label, seed)) in flagged)).rstrip())
    if {"tuned", "overrides"} <= set(suites) and len(args.seeds) > 1:
        print("\ntuned against overrides, test overall (sd: the larger of the two variants' stds over the seeds):")
        for label in labels:
            print("  " + verdict(label, overall[label, "tuned"], overall[label, "overrides"]))
    print("\nordering by mean test accuracy (best first):")
    for v, rows in order.items():
        print(f"  {v:<10} " + " > ".join(label for _, label in sorted(rows, reverse=True)))
    if args.budgets:
        by_budget(demo, args, registry, console)
    print(f"load average (1 min) {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (seconds are noisy, FLOPs not)")


def by_budget(demo: dict, args, registry, console) -> None:
    """The tuned demo at each of `args.budgets` (its own budget among them or not), then the
    accuracy-against-budget table, where the ranking changes, and the figure."""
    from ltbench import api
    from ltbench.suites.schema import parse_suite
    from ltbench.executors import run_suite

    data = variant_suite(demo, "tuned", args.seeds)
    data["budgets"] = list(args.budgets)
    suite = parse_suite(data, "demo (budgets)")
    console.print(f"[bold]budgets[/] {', '.join(args.budgets)}: {len(suite.jobs)} runs")
    run_suite(suite, registry, console=console, quiet=args.quiet)
    names = [n for n in suite.names if n in registry]
    from ltbench.report.views import show

    view, written = api.report("md", out=args.out, plots=args.out is not None, by="budget", registry=registry,
                               experts=names)
    print(show(view, "md"))
    for path in written:
        print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
