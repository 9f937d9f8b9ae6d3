"""Start-up time of the light commands against what importing torch alone costs.

Each command runs in a fresh interpreter (`python -m ltbench …`, an empty registry in a temporary
home), interleaved with `python -c "import torch"` so machine load hits both alike; the median of
`--repeat` runs is printed with its ratio to the torch import. Before ltbench/plugins/catalog.py (now a scan of the sources) and the
lazy imports every one of these paid at least the torch import (ratio ≥ 1).

    python benchmarks/bench_cli_startup.py [--repeat 5] [--quick]

`--quick` times two of the commands once each: it checks the script runs, its ratios are one sample.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMANDS = [["--help"], ["--version"], ["ls"], ["methods"], ["datasets"], ["backbones"], ["scorers"]]


def seconds(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="--version and methods, once each (a smoke run)")
    args = parser.parse_args()
    commands = [["--version"], ["methods"]] if args.quick else COMMANDS
    repeat = 1 if args.quick else args.repeat
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PYTHONPATH": str(root), "LTBENCH_HOME": tmp}
        subprocess.run([sys.executable, "-c", "from ltbench.store.index import Registry; Registry()"], env=env, check=True)
        torch_t = []
        times: dict[str, list[float]] = {" ".join(c): [] for c in commands}
        for _ in range(repeat):
            for c in commands:
                torch_t.append(seconds([sys.executable, "-c", "import torch"], env))
                times[" ".join(c)].append(seconds([sys.executable, "-m", "ltbench", *c], env))
    base = statistics.median(torch_t)
    print(f"{'command':<22} {'median s':>9} {'/ import torch':>15}")
    print(f"{'python -c import torch':<22} {base:9.2f} {1.0:15.2f}")
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"{'ltbench ' + name:<22} {m:9.2f} {m / base:15.2f}")


if __name__ == "__main__":
    main()
