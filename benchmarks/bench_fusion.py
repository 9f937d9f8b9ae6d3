"""`ltbench fuse` on Places-LT-sized synthetic logits: 5 experts, 7,300 val × 365 classes, 36,500 test.

Targets: `search` with 200 trials under 60 s on 2 cores; `learned` under 60 s.
Each scorer is timed end to end through `fuse_experts` on a temporary registry (load the
cached logits, fit on val, apply to test, evaluate, register), and the fit alone is
reported beside it. Prints seconds and the ratio to the target (< 1 is within it).

    .venv/bin/python benchmarks/bench_fusion.py [--cores 2] [--trials 200] [--experts 5] [--scorers search,learned]
    .venv/bin/python benchmarks/bench_fusion.py --quick   # 2 experts × 20 classes, 3 trials: a smoke run

Under `--quick` the targets are not checked (the sizes are not Places-LT's).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

TARGET_S = 60.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--experts", type=int, default=5)
    ap.add_argument("--classes", type=int, default=365)
    ap.add_argument("--val-per-class", type=int, default=20)
    ap.add_argument("--test-per-class", type=int, default=100)
    ap.add_argument("--scorers", default="search,learned,moe,search+per-group")
    ap.add_argument("--quick", action="store_true", help="2 experts, 20 classes, 3 trials, every scorer: a smoke run")
    args = ap.parse_args()
    if args.quick:
        args.experts, args.classes, args.val_per_class, args.test_per_class, args.trials = 2, 20, 5, 5, 3
        args.scorers = "search,learned,moe,mean,search+per-group"

    if hasattr(os, "sched_setaffinity"):
        cpus = sorted(os.sched_getaffinity(0))[: args.cores]
        os.sched_setaffinity(0, cpus)
    import torch

    torch.set_num_threads(args.cores)
    from ltbench.metrics import shot_groups
    from ltbench.fusion import fuse_experts
    from ltbench.fusion.synthetic import balanced_labels, expert_logits, lt_counts
    from ltbench.store.index import Registry

    C = args.classes
    counts = lt_counts(C, head=4980, imbalance=4980 / 5)  # Places-LT: 4,980 … 5 images per class
    groups = shot_groups(counts)
    val, test = balanced_labels(C, args.val_per_class), balanced_labels(C, args.test_per_class)
    print(f"{args.experts} experts, val {len(val):,} × {C}, test {len(test):,} × {C}; shot groups "
          f"{[int((groups == g).sum()) for g in range(3)]}; {args.cores} cores "
          f"(torch threads {torch.get_num_threads()})")

    with tempfile.TemporaryDirectory() as tmp:
        reg = Registry(tmp)
        t0 = time.perf_counter()
        rng = np.random.default_rng(0)
        names = []
        for e in range(args.experts):
            # each expert strong on a different slice of the shot groups
            acc = np.clip(rng.uniform(0.3, 0.7, 3)[groups] + rng.normal(0, 0.05, C), 0.05, 0.95)
            logits = {"val": (expert_logits(val, acc, C, 10 * e), val),
                      "test": (expert_logits(test, acc, C, 10 * e + 1), test)}
            name = f"e{e}"
            reg.register(name, {"method": "synthetic", "backbone": f"bb{e}", "dataset": "places-lt-synth", "seed": 0,
                                "many": 100, "few": 20},
                         {}, logits, {}, {"class_counts": counts.tolist(), "classnames": [f"c{i}" for i in range(C)],
                                          "params": {"trainable": 1, "total": 1}, "spent": {"flops": 0, "seconds": 0}})
            names.append(name)
        print(f"setup (synthetic logits registered): {time.perf_counter() - t0:.1f}s")

        rows = []
        for spec in args.scorers.split(","):
            scorer, _, flag = spec.partition("+")
            t = time.perf_counter()
            fused = fuse_experts(names, scorer, trials=args.trials, per_group=flag == "per-group", registry=reg,
                                 quiet=True, name=spec.replace("+", "-"))
            total = time.perf_counter() - t
            meta = fused.meta
            fit = meta["spent_fusion"]["seconds"]
            info = meta["scorer_info"]
            detail = []
            if "search" in info:
                s = info["search"]
                detail.append(f"{s['trials_completed']} trials, search {s['search_seconds']:.1f}s "
                              f"({1000 * s['search_seconds'] / max(1, s['trials_run']):.0f} ms/trial), "
                              f"best single val {100 * max(s['single_values'].values()):.2f}%")
            if "learned" in info:
                li = info["learned"]
                detail.append(f"offsets {li['epochs_run']} epochs in {li['learn_seconds']:.1f}s "
                              f"(accepted={li['offset_accepted']})")
            rows.append((spec, total, fit, meta["best_val"], fused.metrics["test"]["overall"], "; ".join(detail)))

    print(f"\n{'scorer':<20} {'end-to-end s':>12} {'ratio/60s':>9} {'fit s':>7} {'val':>7} {'test':>7}  detail")
    for spec, total, fit, bv, te, detail in rows:
        print(f"{spec:<20} {total:>12.1f} {total / TARGET_S:>9.2f} {fit:>7.1f} {100 * bv:>6.2f}% "
              f"{100 * te:>6.2f}%  {detail}")
    bad = [] if args.quick else [r[0] for r in rows if r[0] in ("search", "learned") and r[1] > TARGET_S]
    if bad:
        print(f"over the {TARGET_S:.0f} s target: {', '.join(bad)}")
        sys.exit(1)


if __name__ == "__main__":
    main()
