"""`ltbench demo` timed part by part, in a temporary LTBENCH_HOME. Target: under 15 minutes
on 2 CPU cores, everything included (training, evaluation of val / test / OOD, fusion, report, plots).

    .venv/bin/python benchmarks/bench_demo.py [--suite FILE | --quick] [--keep DIR] [--quiet]

Runs the built-in demo suite (or `--suite FILE`) from an empty registry, so every run trains,
then prints one row per job — tuning seconds (its trials, `meta.tuning`), train seconds (the
budget meter's `spent.seconds`, feature caching included), eval seconds (`eval_seconds`: val, test and OOD logits), the rest of the
run (data, model build, checkpoints: `wall_seconds` minus both), wall seconds, steps and
FLOPs — then the report's time, the whole, and its ratio to the target. The load average is
printed before and after: on a shared machine the seconds are noisy, the steps and FLOPs not.

`--quick` runs the same steps on a tiny suite (QUICK: the random test ViT, two 3-step runs and
a mean fusion, in seconds) to check the script works; its times say nothing about the demo.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

TARGET_S = 15 * 60

#: `--quick`: every part of the demo (runs, a fusion, the report and plots) at test size
QUICK = {
    "name": "demo-quick",
    "dataset": "fashion-mnist-lt",
    "backbone": "vit-tiny-test",
    "budget": "3steps",
    "seeds": [0],
    "set": {"head": 40, "imbalance": 10, "val_per_class": 4, "test_per_class": 6},
    "runs": [{"method": "linear-probe"}, {"method": "vpt-deep", "set": {"prompt_len": 2, "batch_size": 8}}],
    "fusions": [{"label": "mean", "experts": ["linear-probe", "vpt-deep"], "scorer": "mean", "trials": 1}],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--suite", help="time this suite file instead of the built-in demo")
    which.add_argument("--quick", action="store_true", help="a tiny suite instead (seconds): checks the script only")
    ap.add_argument("--keep", help="registry home to use and keep (default: a temporary folder, removed)")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args()

    home = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="ltbench-demo-"))
    os.environ["LTBENCH_HOME"] = str(home)
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    from rich.console import Console

    from ltbench.suites.schema import builtin_suite, load_suite, parse_suite
    from ltbench.suites.results import report_suite
    from ltbench.executors import run_suite
    from ltbench.store.index import Registry

    t_import = time.perf_counter() - t0
    console = Console(stderr=True)
    if args.quick:
        suite = parse_suite(QUICK, "<bench_demo.py --quick>")
    else:
        suite = load_suite(args.suite) if args.suite else builtin_suite("demo")
    registry = Registry(home)
    already = [j.name for j in suite.jobs if j.name in registry]
    t1 = time.perf_counter()
    run_suite(suite, registry, console=console, quiet=args.quiet)
    t_runs = time.perf_counter() - t1
    t2 = time.perf_counter()
    _, written = report_suite(suite, registry, plots=True)
    t_report = time.perf_counter() - t2
    total = time.perf_counter() - t0

    rows = []
    for job in suite.jobs:
        meta = registry.get(job.name).meta
        spent = meta.get("spent") or {}
        wall = float(meta.get("wall_seconds") or 0)
        if job.kind == "run":
            train, ev = float(spent.get("seconds") or 0), float(meta.get("eval_seconds") or 0)
            rest = wall - train - ev
        else:  # a fusion: its own fit + apply (its `spent` adds the constituents' compute)
            fus = meta.get("spent_fusion") or {}
            train, ev = float(fus.get("seconds") or 0), float(fus.get("apply_seconds") or 0)
            rest = wall - train - ev
        tuned = float(((meta.get("tuning") or {}).get("compute") or {}).get("seconds") or 0)  # trials, before the run
        rows.append((job.name, job.kind, tuned, train, ev, rest, wall, spent.get("steps"), spent.get("flops")))

    w = max(len(r[0]) for r in rows) + 2
    print(f"\nsuite {suite.name}: budget {suite.budget} a run, {len(suite.jobs)} jobs, registry {home}")
    print(f"{'job':<{w}}{'kind':<8}{'tune s':>9}{'train s':>9}{'eval s':>9}{'other s':>9}{'wall s':>9}{'steps':>8}"
          f"{'FLOPs':>11}")
    for name, kind, tuned, train, ev, rest, wall, steps, flops in rows:
        print(f"{name:<{w}}{kind:<8}{tuned:9.1f}{train:9.1f}{ev:9.1f}{rest:9.1f}{wall:9.1f}"
              f"{'' if steps is None else steps:>8}{'' if flops is None else f'{flops:.2e}':>11}")
    runs = [r for r in rows if r[1] == "run"]
    print(f"{'sum of runs':<{w}}{'':<8}" + "".join(f"{sum(r[i] for r in runs):9.1f}" for i in range(2, 7)))
    print(f"\nimport {t_import:.1f}s · jobs {t_runs:.1f}s (registry writes and fusions included) · "
          f"report + {len(written) - 5} plots {t_report:.1f}s")
    if already:
        print(f"(already registered, not timed: {', '.join(already)})")
    print(f"whole: {total:.0f}s = {total / 60:.1f} min; target {TARGET_S / 60:.0f} min: ratio {total / TARGET_S:.2f} "
          f"({'OK' if total <= TARGET_S else 'OVER'})")
    print(f"load average (1 min) before {load0[0]:.1f}, after {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    if not args.keep:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
