"""Reproducible mode: one tiny training under two ATen CPU capabilities gives the same bits with
the mode, and the mode is recorded in provenance. Without it the bits may differ (they do on a
CPU with AVX2 or AVX-512, where ATen's vectorised kernels differ from its portable ones)."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ltbench import reproducible

ROOT = Path(__file__).resolve().parents[1]


def _train(tmp: Path, capability: str, mode: bool) -> tuple[str, dict]:
    home = tmp / f"{capability}-{int(mode)}"
    env = {k: v for k, v in os.environ.items() if k not in reproducible.PINS and k != reproducible.ENV}
    env.update(ATEN_CPU_CAPABILITY=capability, LTBENCH_HOME=str(home), PYTHONPATH=str(ROOT))
    args = ["train", "--backbone", "vit-tiny-test", "--method", "full-ft", "--budget", "3steps", "--quiet",
            "--name", "r", "--set", "val_per_class=2", "--set", "test_per_class=2", "--set", "batch_size=16"]
    if mode:
        args += ["--set", "reproducible=true"]  # the CLI pins the kernels before torch loads
    r = subprocess.run([sys.executable, "-m", "ltbench", *args], env=env, cwd=tmp, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    folder = home / "experts" / "r"
    digest = hashlib.sha256(b"".join((folder / f).read_bytes() for f in
                                     ["delta.safetensors", "logits/test.safetensors", "metrics.json"])).hexdigest()
    return digest, json.loads((folder / "meta.json").read_text())


def test_the_mode_gives_the_same_bits_under_two_cpu_capabilities(tmp_path, capsys):
    wide = "avx512" if "avx512f" in Path("/proc/cpuinfo").read_text(errors="replace") else "avx2"
    pinned = [_train(tmp_path, cap, True) for cap in (wide, "default")]
    assert pinned[0][0] == pinned[1][0]
    recorded = pinned[0][1]["env"]["reproducible"]
    assert recorded["ATEN_CPU_CAPABILITY"] == "default" and recorded["cpu_capability"] == "DEFAULT"
    assert recorded["threads"] == 1
    free = [_train(tmp_path, cap, False) for cap in (wide, "default")]
    assert free[0][1]["env"]["reproducible"] is None
    # the report marks which rows were trained in the mode: a column where rows differ, the caption where not
    from ltbench.store.index import Registry
    from ltbench.report.tables import _display_columns, collect, rich_table

    frames = []
    for home, marks in ((f"{wide}-1", {True}), (f"{wide}-0", {False})):
        df = collect(Registry(tmp_path / home), ci=False)
        frames.append(df)
        assert set(df["reproducible"]) == marks
        caption = str(rich_table(df).caption)
        assert ("without reproducible mode" in caption) == (marks == {False})
        assert "reproducible" not in _display_columns(df)
    import pandas as pd

    both = pd.concat(frames, ignore_index=True)
    assert "reproducible" in _display_columns(both) and "reproducible mode" in str(rich_table(both).caption)
    with capsys.disabled():  # what the bits do without the mode on this CPU
        print(f"\nwithout the mode, {wide} vs default: {'different' if free[0][0] != free[1][0] else 'the same'} bits")


def test_the_mode_is_refused_where_torch_loaded_unpinned(monkeypatch):
    from ltbench.errors import ConfigError

    monkeypatch.delenv(reproducible.ENV, raising=False)
    with pytest.raises(ConfigError, match="must be pinned before torch loads"):
        reproducible.check({"reproducible": True})


def test_what_asks_for_the_mode(tmp_path):
    (tmp_path / "s.yaml").write_text("name: s\nreproducible: true  # all runs\n")
    assert reproducible.requested(["train", "--set", "reproducible=true"], {})
    assert reproducible.requested(["bench", str(tmp_path / "s.yaml")], {})
    assert reproducible.requested(["--home", "h", "bench", "--quiet", str(tmp_path / "s.yaml")], {})
    assert reproducible.requested(["ls"], {reproducible.ENV: "1"})
    assert not reproducible.requested(["train", "--set", "reproducible=false"], {})
