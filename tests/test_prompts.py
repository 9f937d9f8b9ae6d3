"""VPT and LPT on tiny random ViTs: shapes, prefix handling, matching, block reuse, phases."""
import dataclasses
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import TINY_DATA
from ltbench.cli import app
from ltbench.spec import resolve_run
from ltbench.backbones.factory import create_backbone
from ltbench.methods import create_method
from ltbench.store.index import Registry
from ltbench.training.pipeline import train_expert


def method(name, backbone="vit-tiny-test", **cfg):
    torch.manual_seed(0)
    return create_method(name, create_backbone(backbone), 5, np.array([50, 20, 10, 5, 2]), **cfg).eval()


def block_inputs(m):
    seen = []
    hooks = [b.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone())) for b in m.info.blocks]
    return seen, hooks


def test_shapes():
    v = method("vpt-deep", prompt_len=3)
    assert v.prompts.shape == (4, 3, 32)
    lpt = method("lpt", prompt_len=3, pool_size=6, top_k=2)
    assert lpt.shared.shape == (4, 3, 32) and lpt.K == 2
    assert lpt.pool.shape == (6, 2, 3, 32) and lpt.keys.shape == (6, 32)
    assert method("vpt-shallow", prompt_len=3).prompts.shape == (1, 3, 32)


@pytest.mark.parametrize("backbone,npt", [("vit-tiny-test", 1), ("vit-tiny-reg-test", 3)])
def test_deep_prompts_follow_the_prefix_and_are_replaced_each_block(backbone, npt):
    m = method("vpt-deep", backbone, prompt_len=3)
    x = torch.randn(2, 3, 32, 32)
    seen, hooks = block_inputs(m)
    m(x)
    [h.remove() for h in hooks]
    tokens = m.info.embed_tokens(x)
    n = tokens.shape[1]
    for i, inp in enumerate(seen):
        assert inp.shape[1] == n + 3  # prompts replaced, never accumulated
        assert torch.allclose(inp[:, npt:npt + 3], m.prompts[i].expand(2, -1, -1))
    assert torch.allclose(seen[0][:, :npt], tokens[:, :npt]) and torch.allclose(seen[0][:, npt + 3:], tokens[:, npt:])


def test_shallow_prompts_are_carried_not_replaced():
    m = method("vpt-shallow", prompt_len=3)
    seen, hooks = block_inputs(m)
    m(torch.randn(2, 3, 32, 32))
    [h.remove() for h in hooks]
    assert torch.allclose(seen[0][:, 1:4], m.prompts[0].expand(2, -1, -1))
    assert not torch.allclose(seen[1][:, 1:4], m.prompts[0].expand(2, -1, -1))  # block 0's outputs


def test_zero_length_prompts_reduce_to_the_backbone():
    m = method("vpt-deep", prompt_len=0)
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(m.head(m.info.features(x)), m(x), atol=1e-6)


def test_top_k_picks_the_most_similar_keys():
    m = method("lpt", pool_size=5, top_k=2)
    with torch.no_grad():
        m.keys.copy_(torch.eye(5, 32))
    q = torch.zeros(1, 32)
    q[0, 3], q[0, 1], q[0, 0] = 1.0, 0.8, 0.1
    idx, sim, group = m.select(q)
    assert idx.tolist() == [[3, 1]]
    assert torch.allclose(group[0], (m.pool[3] + m.pool[1]) / 2)


def test_phase2_counts_blocks_L_plus_L_minus_K():
    m = method("lpt", prompt_len=2, pool_size=4)
    calls = []
    hooks = [b.register_forward_hook(lambda *a: calls.append(1)) for b in m.info.blocks]
    m(torch.randn(1, 3, 32, 32))
    assert len(calls) == 4 + 2
    calls.clear()
    m.cfg = dataclasses.replace(m.cfg, reuse_blocks=False)
    m(torch.randn(1, 3, 32, 32))
    assert len(calls) == 2 * 4
    [h.remove() for h in hooks]


def test_phase2_trains_pool_keys_head_not_shared(tmp_path):
    reg = Registry(tmp_path)
    run = resolve_run({"backbone": "vit-tiny-test", "method": "lpt", "budget": "2epochs"},
                         {**TINY_DATA, "prompt_len": 2, "pool_size": 4, "batch_size": 8, "phase": 1})
    p1 = train_expert(run.replace(name="p1"), reg, quiet=True)
    assert p1.meta["phases"][0]["phase"] == "shared-prompt" and len(p1.meta["phases"]) == 1
    run2 = resolve_run({"backbone": "vit-tiny-test", "method": "lpt", "budget": "2epochs"},
                          {**TINY_DATA, "prompt_len": 2, "pool_size": 4, "batch_size": 8, "phase": 2, "init": "p1"})
    p2 = train_expert(run2.replace(name="p2"), reg, quiet=True)
    d1, d2 = p1.delta(), p2.delta()
    assert torch.equal(d1["shared"], d2["shared"])  # frozen in phase 2
    assert not torch.equal(d1["head.weight"], d2["head.weight"])  # the classifier is fine-tuned
    assert set(d2) == {"shared", "pool", "keys", "head.weight"}
    log = p2.meta["phases"][0]
    assert log["sampler"] == "class+instance" and log["loss"] == "agcl+agcl"
    assert log["part_weights"] == [[1.0, 0.5], [1.0, 0.25]]  # β = η·(E − e)/E at each epoch start, E = 2
    matching = json.loads((p2.path / "prompt_matching.json").read_text())
    counts = np.array(matching["counts"])
    assert counts.shape == (10, 4) and counts.sum() == 2 * len(p2.labels("test"))


def test_phase2_without_init_is_refused():
    with pytest.raises(ValueError, match="init"):
        method("lpt", phase=2)


# ViT-B/16 on Places-LT (365 classes): D = 768, L = 12; the paper's prompts: P = 10 tokens, m = 20
# group prompts in the last L − K = 6 blocks, one key (dim D) each, a cosine head without bias.
D, L, P, M, K, C = 768, 12, 10, 20, 6, 365


def test_lpt_prompt_count_is_the_papers():
    # Table 3 / Sec. 5.1: "only 1.01M (1.1%) additional trainable parameters" — the shared and group prompts
    assert round((L * P * D + M * (L - K) * P * D) / 1e6, 2) == 1.01


@pytest.mark.parametrize("name,expected", [
    ("lpt", L * P * D + M * (L - K) * P * D + M * D + C * D),
    ("vpt-deep", L * P * D + C * D + C),
    ("vpt-shallow", P * D + C * D + C),
    ("linear-probe", C * D + C),
])
def test_params_on_vit_base(name, expected):
    r = CliRunner().invoke(app, ["params", "--method", name, "--backbone", "vit_base_patch16_224", "--num-classes", "365"])
    counts = json.loads(r.output)
    assert counts["trainable"] == expected
