"""Cost of reproducible mode: training steps per second with and without it, as a ratio.

Each variant is one `ltbench train` of full-ft on the test ViT in a fresh process (the mode's
settings are read when torch loads), interleaved over rounds; steps/s is the run's own count
of training steps over its training seconds (meta.json `spent`), so start-up is not in it.
`--quick` runs a short smoke version.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def steps_per_second(mode: bool, steps: int, backbone: str, threads: int | None = None) -> float:
    from ltbench import reproducible

    with tempfile.TemporaryDirectory() as home:
        env = {k: v for k, v in os.environ.items() if k not in reproducible.PINS and k != reproducible.ENV}
        env.update(LTBENCH_HOME=home, PYTHONPATH=str(ROOT))
        if threads is not None:
            env["OMP_NUM_THREADS"] = str(threads)
        args = ["train", "--backbone", backbone, "--method", "full-ft", "--budget", f"{steps}steps", "--quiet",
                "--name", "r", "--set", "batch_size=32", "--set", "val_per_class=2", "--set", "test_per_class=2",
                "--set", f"reproducible={str(mode).lower()}"]
        subprocess.run([sys.executable, "-m", "ltbench", *args], env=env, check=True, capture_output=True)
        spent = json.loads((Path(home) / "experts" / "r" / "meta.json").read_text())["spent"]
        return spent["steps"] / spent["seconds"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a short smoke run")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--backbone", default="vit-tiny-test")
    a = p.parse_args()
    rounds, steps = (1, 5) if a.quick else (a.rounds, a.steps)
    free, one, pinned = [], [], []
    for _ in range(rounds):  # interleaved, so load changes hit all alike
        free.append(steps_per_second(False, steps, a.backbone))
        one.append(steps_per_second(False, steps, a.backbone, threads=1))
        pinned.append(steps_per_second(True, steps, a.backbone))
    f, o, r = statistics.median(free), statistics.median(one), statistics.median(pinned)
    print(f"steps/s without the mode: {f:.2f} (runs {', '.join(f'{x:.2f}' for x in free)})")
    print(f"steps/s without the mode, 1 thread: {o:.2f} (runs {', '.join(f'{x:.2f}' for x in one)})")
    print(f"steps/s with the mode:    {r:.2f} (runs {', '.join(f'{x:.2f}' for x in pinned)})")
    print(f"reproducible / default steps/s ratio: {r / f:.2f}; at one thread each (the kernels' cost alone):"
          f" {r / o:.2f} ({a.backbone}, {steps} steps, {rounds} rounds)")


if __name__ == "__main__":
    main()
