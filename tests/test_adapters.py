"""LPT++'s adapters against an oracle written from AdaptFormer's parallel formulation, computed
from the frozen block's own submodules (not through ltbench's wrapper):

    x1 = x + ls1(attn(norm1(x)));  out = x1 + ls2(mlp(norm2(x1))) + s · up(relu(down(x1)))

the adapter reads the residual stream entering the MLP branch (before norm2) and its output is
added beside the MLP's. LPT++ wraps every block and trains only the adapters (and s) with the
shared prompt in phase 1."""
import pytest
import torch

from ltbench.backbones.factory import create_backbone
from ltbench.methods import create_method
from ltbench.methods.adapters import AdaptedBlock, add_adapters


def oracle_block(block, x, down_w, down_b, up_w, up_b, s):
    x1 = x + block.ls1(block.attn(block.norm1(x)))
    mlp = block.ls2(block.mlp(block.norm2(x1)))
    adapter = s * (torch.relu(x1 @ down_w.T + down_b) @ up_w.T + up_b)
    return x1 + mlp + adapter


def test_adapted_blocks_match_the_parallel_adapter_oracle():
    torch.manual_seed(0)
    bb = create_backbone("vit-tiny-test")
    originals = [b for b in bb.blocks]
    adapters = add_adapters(bb, bottleneck=5, scale=0.3)
    assert len(adapters) == len(originals) and all(isinstance(b, AdaptedBlock) for b in bb.blocks)
    with torch.no_grad():
        for a in adapters:  # a trained adapter: every weight non-zero
            for p in (a.down.weight, a.down.bias, a.up.weight, a.up.bias):
                p.normal_(0, 0.5)
    x = torch.randn(2, 17, bb.embed_dim)
    for block, a in zip(bb.blocks, adapters):
        want = oracle_block(block.block, x, a.down.weight, a.down.bias, a.up.weight, a.up.bias, a.scale)
        assert torch.allclose(block(x), want, atol=1e-5)
        assert block.tap.last is None  # no activation kept after the forward
        x = want
    # the whole tower: tokens through the oracle blocks, then the backbone's own head-side pooling
    images = torch.randn(2, 3, 32, 32)
    tokens = bb.model.patch_embed(images)
    tokens = bb.model._pos_embed(tokens)
    tokens = bb.model.norm_pre(tokens)
    for block, a in zip(bb.blocks, adapters):
        tokens = oracle_block(block.block, tokens, a.down.weight, a.down.bias, a.up.weight, a.up.bias, a.scale)
    want = bb.model.forward_head(bb.model.norm(tokens), pre_logits=True)
    assert torch.allclose(bb.features(images), want, atol=1e-4)


def test_lpt_pp_trains_the_adapters_and_their_scale_in_phase_1_only():
    bb = create_backbone("vit-tiny-test")
    m = create_method("lpt++", bb, 3, None, bottleneck=4, adapter_scale=0.2)
    p1, p2 = (set(map(id, m.phase_params(k))) for k in (1, 2))
    adapter_params = {id(p) for a in m.adapters for p in a.parameters()}
    assert len(adapter_params) == len(bb.blocks) * 5  # down W, b; up W, b; the scale s
    assert adapter_params <= p1 and not adapter_params & p2
    assert all(float(a.scale) == pytest.approx(0.2) for a in m.adapters)
