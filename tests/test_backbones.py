"""Backbone names: one parser; timm names with pretrained tags; where the weights came from."""
import hashlib
import json
import os
import subprocess
import sys

import pytest
import timm
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from conftest import TINY_SETS
from ltbench.plugins.names import UnknownNameError
from ltbench.backbones.factory import create_backbone
from ltbench.backbones.names import BackboneName, parse_backbone_name
from ltbench.cli import app

TAGGED = "vit_tiny_patch16_224.augreg_in21k"  # the IN-21k weights' tag, as the LPT / VPT papers use them


@pytest.mark.parametrize("name,expected", [
    ("dinov2-s14", BackboneName("ltbench", "dinov2-s14")),
    ("vit-tiny-test", BackboneName("ltbench", "vit-tiny-test")),
    ("vit_base_patch16_224", BackboneName("timm", "vit_base_patch16_224")),
    ("vit_base_patch16_224.augreg_in21k", BackboneName("timm", "vit_base_patch16_224", "augreg_in21k")),
    ("vit_large_patch14_clip_224.openai_ft_in12k", BackboneName("timm", "vit_large_patch14_clip_224", "openai_ft_in12k")),
    ("clip:ViT-B-32/openai", BackboneName("clip", "ViT-B-32", "openai")),
    ("clip:ViT-B-16", BackboneName("clip", "ViT-B-16")),
    ("clip:dinov2-minilm", BackboneName("clip", "dinov2-minilm")),
])
def test_one_parser_for_every_name_form(name, expected):
    parsed = parse_backbone_name(name)
    assert parsed == expected
    assert parsed.assembled == (name == "clip:dinov2-minilm")


def test_a_tagged_timm_name_is_a_backbone(tmp_path):
    assert TAGGED not in timm.list_models() and timm.is_model(TAGGED)  # why list_models was the wrong check
    bb = create_backbone(TAGGED, img_size=32, pretrained=False)
    assert bb.name == TAGGED and bb.embed_dim == 192 and bb.depth == 12
    assert bb.pretrained_cfg == {"source": "random init", "architecture": "vit_tiny_patch16_224"}
    with pytest.raises(UnknownNameError, match=r"unknown backbone 'vit_tiny_patch16_224x'\. Did you mean"):
        create_backbone("vit_tiny_patch16_224x", pretrained=False)


def test_offline_hub_weights_fail_at_loading_with_the_weights_hint():
    code = ("from ltbench.backbones.factory import create_backbone\n"
            f"create_backbone({TAGGED!r}, img_size=32)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ltbench.errors.BackboneError: could not fetch pretrained weights for timm model")
    assert TAGGED in last and "--weights FILE" in last and "unknown backbone" not in proc.stderr


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """A checkpoint of the tagged architecture (random, seed 1), as a user would download elsewhere."""
    torch.manual_seed(1)
    model = timm.create_model(TAGGED, pretrained=False, img_size=32)
    path = tmp_path_factory.mktemp("w") / "vit_tiny_in21k.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path, model.state_dict()


def test_weights_file_is_loaded_and_recorded_with_its_hash(weights_file):
    path, state = weights_file
    bb = create_backbone(TAGGED, img_size=32, weights=str(path))
    own = bb.model.state_dict()
    assert all(torch.equal(own[k], state[k]) for k in own)  # every backbone tensor came from the file
    cfg = bb.pretrained_cfg
    assert cfg["source"] == "file" and cfg["tag"] == "augreg_in21k" and cfg["architecture"] == "vit_tiny_patch16_224"
    assert cfg["hf_hub_id"] == "timm/vit_tiny_patch16_224.augreg_in21k"
    assert cfg["file"] == str(path.resolve()) and cfg["file_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_provenance_of_a_trained_expert_names_its_weights(weights_file, home):
    path, _ = weights_file
    runner = CliRunner()
    sets = [a for s in TINY_SETS for a in ("--set", s)]
    r = runner.invoke(app, ["train", "--backbone", TAGGED, "--weights", str(path), "--method", "linear-probe",
                            "--budget", "1epochs", "--set", "img_size=32", "--name", "tagged", "--quiet", *sets],
                      catch_exceptions=False)
    assert r.exit_code == 0, r.output
    meta = json.loads((home / "experts" / "tagged" / "meta.json").read_text())
    assert meta["pretrained_cfg"]["tag"] == "augreg_in21k"
    assert meta["pretrained_cfg"]["file_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    r = runner.invoke(app, ["train", "--backbone", "vit-tiny-test", "--method", "linear-probe", "--budget", "1epochs",
                            "--name", "tiny", "--quiet", *sets], catch_exceptions=False)
    assert json.loads((home / "experts" / "tiny" / "meta.json").read_text())["pretrained_cfg"] == {
        "source": "random init (seed 0)"}
