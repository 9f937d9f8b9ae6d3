"""The command line end to end with a tiny random ViT (seconds, no weights)."""
import json

import pytest
from typer.testing import CliRunner

from conftest import TINY_SETS
from ltbench.cli import app
from ltbench.registry import Registry

runner = CliRunner()
TINY = ["--backbone", "vit-tiny-test", "--budget", "2epochs", "--quiet"] + [a for s in TINY_SETS for a in ("--set", s)]


def invoke(*args):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_train_report_show_rm(home):
    r = invoke("train", "--method", "linear-probe", "--name", "lp", *TINY)
    assert r.exit_code == 0, r.output
    assert "registered lp" in r.output

    rows = json.loads(invoke("report", "--format", "json").output)
    assert len(rows) == 1
    row = rows[0]
    for key in ("expert", "method", "backbone", "dataset", "overall", "many", "medium", "few",
                "trainable_params", "flops", "device_seconds", "ood:fashion-mnist-sketch"):
        assert key in row, key
    assert row["expert"] == "lp" and 0 <= row["overall"] <= 1 and row["flops"] > 0
    assert row["trainable_params"] == 32 * 10 + 10

    csv = invoke("report", "--format", "csv").output
    assert csv.splitlines()[0].startswith("expert,method,backbone")
    assert "| lp |" in invoke("report", "--format", "md").output

    shown = json.loads(invoke("show", "lp").output)
    assert shown["config"]["method_config"]["lr"] == 1e-2 and shown["meta"]["seed"] == 0
    assert set(shown["meta"]["packages"]) >= {"torch", "timm"} and shown["meta"]["spent"]["epochs"] == 2
    assert "lp" in invoke("ls").output

    assert invoke("rm", "lp").exit_code == 0
    assert Registry(home).names() == []


def test_params_json():
    r = invoke("params", "--method", "linear-probe", "--backbone", "vit-tiny-test", "--num-classes", "7")
    counts = json.loads(r.output)
    assert counts["trainable"] == 32 * 7 + 7 and counts["total"] > counts["trainable"]


@pytest.mark.parametrize("flag,value,expected", [
    ("--method", "linear-prob", "Did you mean 'linear-probe'"),
    ("--backbone", "dinov2-s15", "Did you mean 'dinov2-s14'"),
    ("--dataset", "fashion-mnist", "Did you mean 'fashion-mnist-lt'"),
    ("--budget", "3parsecs", "cannot parse budget '3parsecs'"),
])
def test_unknown_names_exit_2_with_suggestion(home, flag, value, expected):
    args = ["train", "--backbone", "vit-tiny-test", "--quiet", flag, value]
    r = invoke(*args)
    assert r.exit_code == 2
    assert expected in r.output
    assert Registry(home).names() == []


def _split_setup(tmp_path, lines):
    root = tmp_path / "imgs"
    (root / "a").mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (8, 8)).save(root / "a" / "x.jpg")
    (tmp_path / "Places_LT_train.txt").write_text("\n".join(lines) + "\n")
    for split in ("val", "test"):
        (tmp_path / f"Places_LT_{split}.txt").write_text("a/x.jpg 0\na/x.jpg 1\n")
    (tmp_path / "classnames.txt").write_text("a 0\nb 1\n")
    return ["train", "--dataset", "places-lt", "--root", str(root), "--backbone", "vit-tiny-test", "--quiet",
            "--set", f"split_dir={tmp_path}", "--set", "num_classes=2", "--set", "classnames_file=classnames.txt"]


@pytest.mark.parametrize("lines,expected", [
    (["a/x.jpg 0", "a/x.jpg"], "Places_LT_train.txt:2"),
    (["a/x.jpg 0", "a/x.jpg 5"], "Places_LT_train.txt:2"),
    (["a/x.jpg 0", "a/missing.jpg 1"], "Places_LT_train.txt:2"),
])
def test_bad_split_file_fails_before_training(home, tmp_path, lines, expected):
    r = invoke(*_split_setup(tmp_path, lines))
    assert r.exit_code == 2, r.output
    assert expected in r.output
    assert Registry(home).names() == [] and not (home / "runs").exists()


def test_listing_commands():
    assert "fashion-mnist-lt" in invoke("datasets").output
    assert "dinov2-s14" in invoke("backbones").output
    out = invoke("methods").output
    assert "linear-probe" in out and "full-ft" in out
