"""open_clip backbones, adapters, LoRA and LPT++ on tiny random configs (no download)."""
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import TINY_DATA
from ltbench.cli import app
from ltbench.spec import RunSpec, resolve_run
from ltbench.errors import BackboneError
from ltbench.backbones.factory import create_backbone
from ltbench.methods import create_method
from ltbench.methods.adapters import add_adapters, add_lora
from ltbench.store.index import Registry
from ltbench.training.pipeline import build_all, train_expert

NAMES = ["cat", "dog", "car", "tree", "ship"]


def test_text_classifier_shape_and_normalisation():
    bb = create_backbone("clip:tiny-test")
    w = bb.text_classifier(NAMES)
    assert w.shape == (bb.feature_dim, 5)
    assert torch.allclose(w.norm(dim=0), torch.ones(5), atol=1e-5)
    assert not torch.allclose(w[:, 0], w[:, 1])


@pytest.mark.parametrize("name", ["clip:tiny-test", "vit-tiny-test"])
def test_token_interface_matches_the_towers_own_forward(name):
    bb = create_backbone(name)
    x = torch.randn(2, 3, 32, 32)
    ref = bb.model.encode_image(x) if bb.is_clip else bb.model.forward_head(bb.model.forward_features(x), pre_logits=True)
    assert torch.allclose(bb.features(x), ref, atol=1e-5)


@pytest.mark.parametrize("name", ["clip:tiny-test", "vit-tiny-test"])
def test_adapters_at_zero_scale_leave_the_output_unchanged(name):
    bb = create_backbone(name)
    x = torch.randn(2, 3, 32, 32)
    ref = bb.features(x)
    adapters = add_adapters(bb, bottleneck=4, scale=0.0)
    with torch.no_grad():
        for a in adapters:
            a.up.weight.normal_()  # a trained adapter, switched off by its scale
    assert torch.allclose(bb.features(x), ref, atol=1e-6)
    with torch.no_grad():
        for a in adapters:
            a.scale.fill_(0.5)
    assert not torch.allclose(bb.features(x), ref, atol=1e-3)


@pytest.mark.parametrize("name", ["clip:tiny-test", "vit-tiny-test"])
def test_lora_starts_as_identity_and_trains_only_its_factors(name):
    bb = create_backbone(name)
    x = torch.randn(2, 3, 32, 32)
    ref = bb.features(x)
    bb.model.requires_grad_(False)
    loras = add_lora(bb, rank=2, alpha=4)
    assert torch.allclose(bb.features(x), ref, atol=1e-6)
    bb.features(x).sum().backward()
    assert all(l.B.grad is not None for l in loras)
    assert all(p.grad is None for n, p in bb.model.named_parameters() if "parametrizations" not in n or "original" in n)


def test_prompts_on_the_clip_tower():
    bb = create_backbone("clip:tiny-test")
    m = create_method("vpt-deep", bb, 5, classnames=NAMES, prompt_len=3).eval()
    seen = []
    hooks = [b.register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape)) for b in bb.blocks]
    out = m(torch.randn(2, 3, 32, 32))
    [h.remove() for h in hooks]
    n = bb.embed_tokens(torch.randn(1, 3, 32, 32)).shape[1]
    assert out.shape == (2, 5) and all(s[1] == n + 3 for s in seen) and len(seen) == bb.depth


def test_cosine_head_starts_from_the_text_classifier_on_clip():
    bb = create_backbone("clip:tiny-test")
    m = create_method("lpt++", bb, 5, np.array([9, 5, 3, 2, 1]), NAMES, prompt_len=2, pool_size=4)
    assert torch.allclose(m.head.weight, bb.text_classifier(NAMES).t())


def test_zero_shot_is_scaled_cosine_against_the_text_classifier():
    bb = create_backbone("clip:tiny-test")
    m = create_method("zero-shot", bb, 5, classnames=NAMES).eval()
    x = torch.randn(3, 3, 32, 32)
    img = torch.nn.functional.normalize(bb.model.encode_image(x), dim=-1)
    expected = bb.model.logit_scale.exp() * img @ bb.text_classifier(NAMES)
    assert torch.allclose(m(x), expected, atol=1e-4)
    assert m.param_counts()["trainable"] == 0
    with pytest.raises(ValueError, match="vision-language"):
        create_method("zero-shot", create_backbone("vit-tiny-test"), 5, classnames=NAMES)


def _run(method, **sets):
    return resolve_run({"backbone": "clip:tiny-test", "method": method, "budget": "2epochs"}, {**TINY_DATA, **sets})


def test_lpt_pp_round_trip_through_the_registry(tmp_path):
    reg = Registry(tmp_path)
    run = _run("lpt++", prompt_len=2, pool_size=4, batch_size=8).replace(name="vl")
    ex = train_expert(run, reg, quiet=True)
    assert any(".adapter." in k for k in ex.delta()) and "pool" in ex.delta()
    data, fresh = build_all(RunSpec.from_config(ex.config), reg)
    fresh.load_delta(ex.delta())
    from ltbench.training.trainer import Trainer

    logits = Trainer(fresh, data, RunSpec.from_config(ex.config), torch.device("cpu"), quiet=True).predict(data.test)
    assert torch.allclose(logits, ex.logits("test"), atol=2e-2)  # stored as fp16
    assert set(json.loads(CliRunner().invoke(app, ["show", "vl"], env={"LTBENCH_HOME": str(tmp_path)}).output)["metrics"]) >= {"val", "test"}


def test_lit_aligns_projections_and_experts_start_from_it(tmp_path):
    reg = Registry(tmp_path)
    lit = train_expert(_run("lit", batch_size=16).replace(name="lit"), reg, quiet=True)
    delta = lit.delta()
    assert set(delta) == {"backbone.visual.proj", "backbone.text_projection", "backbone.logit_scale"}
    fresh = create_backbone("clip:tiny-test")
    assert not torch.equal(delta["backbone.text_projection"], fresh.model.text_projection)
    zs = train_expert(_run("zero-shot", init="lit").replace(name="zs"), reg, quiet=True)
    # the zero-shot expert built on the aligned projections reproduces the LiT expert's scores
    assert torch.allclose(zs.logits("test"), lit.logits("test"), atol=2e-2)


def test_adapters_add_about_one_percent_of_vit_b():
    out = CliRunner().invoke(app, ["params", "--method", "lpt++", "--backbone", "vit_base_patch16_224", "--num-classes", "365"]).output
    counts = json.loads(out)
    adapters = 12 * (768 * 48 + 48 + 48 * 768 + 768 + 1)
    assert adapters == 894_540
    assert counts["trainable"] == 1_309_440 + adapters
    vit_b = counts["total"] - counts["trainable"]
    assert vit_b == 85_798_656
    assert 0.9 < 100 * adapters / vit_b < 1.1
    added = counts["trainable"] - 365 * 768  # LPT's prompts and keys plus the adapters, the cosine head aside
    assert added == 1_923_660 and round(100 * added / vit_b, 2) == 2.24


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "clip:ViT-B-32/openai"])
def test_hub_weights_without_network_say_how_to_pass_weights(name, monkeypatch):
    import huggingface_hub.constants

    # the hub client reads HF_HUB_OFFLINE at import; offline mode fails at once instead of retrying
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(BackboneError, match="--weights FILE"):
        create_backbone(name)


def test_timm_weights_from_a_local_file(tmp_path):
    import timm
    from safetensors.torch import save_file

    src = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=1000)
    save_file(src.state_dict(), str(tmp_path / "w.safetensors"))
    bb = create_backbone("vit_tiny_patch16_224", img_size=64, weights=str(tmp_path / "w.safetensors"))
    # the head was filtered away and the position embeddings resampled to the 4×4 grid
    assert bb.model.num_classes == 0 and bb.model.pos_embed.shape[1] == 1 + 16
    assert torch.equal(bb.model.blocks[0].attn.qkv.weight, src.blocks[0].attn.qkv.weight)


def test_clip_weights_from_a_local_file(tmp_path):
    a = create_backbone("clip:tiny-test")
    with torch.no_grad():
        a.model.text_projection.mul_(3)
    torch.save(a.model.state_dict(), tmp_path / "clip.pt")
    b = create_backbone("clip:ltbench-tiny-clip", weights=str(tmp_path / "clip.pt"))
    assert torch.equal(a.model.text_projection, b.model.text_projection)
