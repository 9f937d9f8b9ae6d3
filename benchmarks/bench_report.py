"""`ltbench report` on 100 Places-LT-sized experts (test logits 36,500 × 365, fp16) in a tmp
registry, with bootstrap intervals on. Target: under 5 s.

    .venv/bin/python benchmarks/bench_report.py [--experts 100] [--keep DIR] [--no-cli]
    .venv/bin/python benchmarks/bench_report.py --quick   # 4 experts (1 seed group), no CLI: a smoke run

Prints the in-process time of `collect` + rendering (cold: first call in the process, so every
expert's logits are read and bootstrapped), the same warm (in-memory cache), `--no-ci`, and
the whole `ltbench report` command line as a fresh process (which adds the import time of
`ltbench.cli`), each with its ratio to the 5 s target. 30 of the experts are 10 seed groups
of 3; the other 70 are single runs (so 70 bootstrap intervals).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

TARGET_S = 5.0
N_TEST, N_CLASSES, PER_CLASS = 36_500, 365, 100


def places_counts() -> list[int]:
    """Real Places-LT training counts, from the split file that ships inside the package."""
    import gzip

    f = Path(__file__).resolve().parents[1] / "ltbench" / "data" / "splits" / "places_lt" / "Places_LT_train.txt.gz"
    labels = np.array([int(line.split()[-1]) for line in gzip.open(f, "rt") if line.strip()])
    return np.bincount(labels, minlength=N_CLASSES).tolist()


def build(home: Path, n: int) -> None:
    from ltbench.metrics import shot_groups
    from ltbench.store.index import Registry

    reg = Registry(home)
    counts = places_counts()
    groups = shot_groups(np.asarray(counts))
    labels = np.repeat(np.arange(N_CLASSES), PER_CLASS)
    g = torch.Generator().manual_seed(0)
    base = torch.randn(N_TEST, N_CLASSES, generator=g).half()
    rows = torch.arange(N_TEST)
    methods = ["linear-probe", "vpt", "lpt", "lpt++", "full-ft"]
    for i in range(n):
        grouped = i < 30
        method = methods[(i // 3 if grouped else i) % len(methods)]
        seed = i % 3 if grouped else 0
        lr = (i // 3) if grouped else 100 + i
        p = 0.35 + 0.4 * (i % 7) / 7 + 0.15 * torch.linspace(1, -1, N_CLASSES)
        hit = torch.rand(N_TEST, generator=g) < p[torch.as_tensor(labels)]
        lg = base.roll(i, dims=1)
        lg[rows[hit], torch.as_tensor(labels)[hit]] = 8.0
        pred = lg.float().argmax(1).numpy()
        acc = np.bincount(labels, weights=pred == labels, minlength=N_CLASSES) / PER_CLASS
        test = {"overall": float(acc.mean()), **{k: float(acc[groups == j].mean())
                                                 for j, k in enumerate(("many", "medium", "few"))}, "ece": 0.05}
        name = f"{method}_vit-b16_places-lt_lr{lr}_s{seed}"
        trainable = [1e5, 5e4, 1.1e6, 1.5e6, 8.6e7][i % 5]
        reg.register(
            name,
            {"method": method, "backbone": "vit-b16", "dataset": "places-lt", "seed": seed,
             "method_config": {"lr": lr}, "many": 100, "few": 20},
            {"head.weight": torch.zeros(1)},
            {"test": (lg, labels)},
            {"test": test, "ood:places-sketch": {"overall": test["overall"] * 0.6}},
            {"params": {"trainable": int(trainable), "total": int(8.6e7 + trainable)},
             "spent": {"flops": 2e15, "seconds": 600.0}, "budget": "10epochs", "class_counts": counts,
             "created": "bench"},
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experts", type=int, default=100)
    ap.add_argument("--keep", type=Path, default=None, help="build (or reuse) the registry here and keep it")
    ap.add_argument("--no-cli", action="store_true", help="skip the fresh-process command-line timing")
    ap.add_argument("--quick", action="store_true", help="4 experts and no command-line timing (a smoke run)")
    args = ap.parse_args()
    if args.quick:
        args.experts, args.no_cli = 4, True
    home = args.keep or Path(tempfile.mkdtemp(prefix="ltbench-bench-report-"))
    try:
        t = time.perf_counter()
        if not (home / "registry.sqlite").exists():
            build(home, args.experts)
            print(f"built {args.experts} experts in {time.perf_counter() - t:.1f} s ({home})")

        from ltbench.store.index import Registry
        from ltbench.report import collect, render

        reg = Registry(home)

        def timed(label: str, **kw) -> float:
            t0 = time.perf_counter()
            df = collect(reg, **kw)
            render(df, "table")
            render(df, "json")
            dt = time.perf_counter() - t0
            print(f"{label:<34} {dt:6.2f} s   ratio to {TARGET_S:.0f} s target: {dt / TARGET_S:.2f}"
                  f"   ({len(df)} rows)")
            return dt

        print(f"threads: {os.cpu_count()} cpu(s)")
        timed("report, CI on (cold, in-process)")
        timed("report, CI on (warm cache)")
        timed("report, --no-ci")
        if not args.no_cli:
            env = {**os.environ, "LTBENCH_HOME": str(home)}
            exe = [sys.executable, "-m", "ltbench"]
            t0 = time.perf_counter()
            subprocess.run(exe + ["ls"], env=env, check=True, capture_output=True)
            startup = time.perf_counter() - t0
            t0 = time.perf_counter()
            subprocess.run(exe + ["report", "--format", "json"], env=env, check=True, capture_output=True)
            dt = time.perf_counter() - t0
            print(f"{'`ltbench report` CLI, CI on':<34} {dt:6.2f} s   ratio to {TARGET_S:.0f} s target: "
                  f"{dt / TARGET_S:.2f}   (of which ~{startup:.2f} s is `ltbench ls`: interpreter + imports)")
    finally:
        if args.keep is None:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
