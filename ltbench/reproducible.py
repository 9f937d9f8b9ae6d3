"""Reproducible mode: the same seed gives the same bits on any x86-64 CPU.

Float results depend on more than the seed: ATen picks vectorised kernels by the CPU's ISA
(AVX2, AVX-512), MKL picks code paths by CPU, oneDNN by ISA, and reductions split work by
thread count. The mode pins each to one path every x86-64 CPU has (ATen's `default`
capability, MKL's conditional-reproducibility `COMPATIBLE` branch, oneDNN capped at SSE4.1)
and to one thread. These settings are read once, when torch loads, so they must be in the
environment before that: the CLI sets them first thing (`--set reproducible=true`, a config
or suite file's `reproducible: true`, or `LTBENCH_REPRODUCIBLE=1`), re-executing itself if torch
was already imported; Ray workers get them through the job's runtime environment. A library
caller sets `LTBENCH_REPRODUCIBLE=1` for the whole process. This module imports no torch.
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

#: the environment variable that asks for the mode for a whole process
ENV = "LTBENCH_REPRODUCIBLE"
#: what the mode pins, before torch loads
PINS: dict[str, str] = {
    "ATEN_CPU_CAPABILITY": "default",  # ATen's portable kernels, not AVX2 / AVX-512 ones
    "MKL_CBWR": "COMPATIBLE",  # MKL: one code path on every CPU
    "ONEDNN_MAX_CPU_ISA": "SSE41",  # oneDNN: no wider ISA
    "DNNL_MAX_CPU_ISA": "SSE41",  # the same, older name
    "OMP_NUM_THREADS": "1",  # reductions split one way
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
}
_TRUE = ("1", "true", "yes", "on")
_KEY = re.compile(r"^\s*reproducible\s*:\s*(true|yes|on|1)\s*(#.*)?$", re.I | re.M)


def requested(argv: list[str], environ: dict[str, str] | None = None) -> bool:
    """Whether this command asks for the mode: the variable, `--set reproducible=true`, or a
    `reproducible: true` line in a `--config` or suite file it names."""
    environ = os.environ if environ is None else environ
    if environ.get(ENV, "").strip().lower() in _TRUE:
        return True
    for i, arg in enumerate(argv):
        value = arg.split("=", 1)[1] if arg.startswith("--set=") else argv[i + 1] if arg == "--set" and i + 1 < len(argv) else ""
        if re.fullmatch(r"\s*reproducible\s*=\s*(true|yes|on|1)\s*", value, re.I):
            return True
    files = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--config"]
    if "bench" in argv:  # its suite file: the first argument after the command that is not an option
        files += [a for a in argv[argv.index("bench") + 1:] if not a.startswith("-")][:1]
    for f in files:
        try:
            if _KEY.search(Path(f).read_text(errors="replace")[:1_000_000]):
                return True
        except OSError:
            continue  # the command itself reports the file
    return False


def active() -> bool:
    """Whether this process runs pinned (the variables were there before torch loaded)."""
    return os.environ.get(ENV, "").strip().lower() in _TRUE and all(os.environ.get(k) == v for k, v in PINS.items())


def prepare(argv: list[str]) -> None:
    """Pin the environment if the command asks for the mode; if torch is already loaded, re-run
    this same command with it pinned (the settings are only read at load)."""
    if not requested(argv) or active():
        return
    os.environ.update(PINS)
    os.environ[ENV] = "1"
    if "torch" in sys.modules:
        os.execv(sys.executable, [sys.executable, "-m", "ltbench", *argv])


def check(wanted: bool) -> None:
    """A run that asks for the mode (`reproducible=true`) in a process that is not pinned is refused (before any work)."""
    from .errors import ConfigError

    if wanted and not active():
        raise ConfigError("reproducible=true: the CPU kernels must be pinned before torch loads; run it through the"
                          f" ltbench command, or set {ENV}=1 for the whole process")


def settings() -> dict[str, Any] | None:
    """What provenance records: the pinned variables and what torch reports, or None if not pinned."""
    if not active():
        return None
    import torch

    return {**PINS, "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads()}
