"""Every benchmarks/ script runs in its `--quick` mode: exit code 0 and the lines its report prints.

What this checks is that the scripts still run against the current library and print every part
of their report. It checks no timing and no target: quick modes are smoke-sized, and on a shared
machine their seconds mean nothing. Each script runs in a fresh interpreter, as a user runs it.
Cost: about 130 s of CPU for the seven (measured); wall time is several minutes on a busy box
(deselect with `-m "not benchmarks"`).
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.benchmarks

#: script -> (arguments, regular expressions that must each match a line of its output)
QUICK = {
    "bench_cli_startup.py": (["--quick"], [r"^python -c import torch\s+\d", r"^ltbench --version\s+\d",
                                           r"^ltbench methods\s+\d"]),
    "bench_demo.py": (["--quick", "--quiet"], [r"^suite demo-quick: budget 3steps a run, 3 jobs",
                                                r"^demo-quick-linear-probe-s0\s+run\s", r"^demo-quick-vpt-deep-s0\s+run\s.*\s3\s",
                                                r"^demo-quick-mean-s0\s+fusion\s", r"^whole: \d+s"]),
    "bench_fusion.py": (["--quick"], [r"^2 experts, val 100 × 20", *(rf"^{re.escape(s)}\s+\d" for s in
                                      ("search", "learned", "moe", "mean", "search+per-group"))]),
    # the tiny test ViT: the quick mode's default backbone (dinov2-s14 at 112 px) takes minutes on 2 busy cores
    "bench_prompts.py": (["--quick", "--backbone", "vit-tiny-test", "--img-size", "32", "--batch", "8", "--threads", "1"],
                         [r"^== 1\. LPT phase 2", r"same math: .*\(ok\)", r"^== 2\. VPT-deep",
                          r"ltbench vs bare .*\(ok\)", r"^frozen params: no grads PASS, optimizer state == trainable count PASS"]),
    "bench_reproducible.py": (["--quick"], [r"^steps/s without the mode: [\d.]+", r"^steps/s with the mode: +[\d.]+",
                                            r"^reproducible / default steps/s ratio: [\d.]+"]),
    "bench_report.py": (["--quick"], [r"^built 4 experts", r"^report, CI on \(cold, in-process\)\s+\d",
                                      r"^report, --no-ci\s+\d.*\(2 rows\)"]),
    "bench_suite.py": (["--quick"], [r"^  no Ray, 3-step runs: local [\d.]+ s, 2 plain processes [\d.]+ s; same metrics: True$",
                                     r"^  SQLite .* registered 20 \(distinct 20, complete 20, lost 0\)",
                                     r"^  PostgreSQL .* registered 20 \(distinct 20, complete 20, lost 0\)"]),
    "bench_tuning.py": (["--quick", "--quiet", "--seeds", "0", "1"],
                        [*(rf"^vpt-deep\s+{v}\s+[\d.]+ ± [\d.]+" for v in ("defaults", "overrides", "fixed", "tuned")),
                         r"^method\s+variant\s.*\srun s  not ok$",
                         r"^  vpt-deep\s+[+-][\d.]+ \(sd +[\d.]+\): (above|within one sd|BELOW by more than one sd)$",
                         r"^  tuned\s+(linear-probe|vpt-deep) > (linear-probe|vpt-deep)$"]),
    "bench_throughput.py": (["--quick"], [r"^vpt-deep\s+prompt\s+train end to end\s+[\d.]+ img/s",
                                          r"^lpt\s+group-prompts\s+train end to end\s+[\d.]+ img/s",
                                          r"^lpt\s+group-prompts\s+infer model only\s+[\d.]+ img/s"]),
}


def test_every_script_has_a_quick_mode_listed_here():
    assert sorted(p.name for p in (ROOT / "benchmarks").glob("bench_*.py")) == sorted(QUICK)
    for name in QUICK:
        assert "--quick" in (ROOT / "benchmarks" / name).read_text(), name


@pytest.mark.parametrize("script", sorted(QUICK))
def test_quick_mode_runs_and_prints_its_report(script, tmp_path):
    args, expected = QUICK[script]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
           "LTBENCH_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}  # one thread: a busy machine spin-waits less
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    missing = [rx for rx in expected if not re.search(rx, out, re.MULTILINE)]
    assert missing == [], out[-3000:]


def test_tuning_verdict_compares_the_tuned_mean_with_the_overrides_within_the_larger_sd():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_tuning
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    tuned, overrides = [64.2, 65.0, 53.0], [65.2, 60.8, 64.2]  # the larger sd is the tuned one, 6.7
    assert bench_tuning.verdict("lt-soups", tuned, overrides).endswith("-2.7 (sd  6.7): within one sd")
    assert bench_tuning.verdict("x", [40.0, 41.0, 42.0], [52.0, 51.9, 52.0]).endswith("BELOW by more than one sd")
    assert bench_tuning.verdict("y", [70.0, 71.0, 72.0], [52.0, 51.9, 52.0]).endswith(": above")
