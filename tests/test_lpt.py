"""LPT against an independent oracle written here from the paper (Sec. 4) and the official code.

The oracle runs plain timm blocks the way the official `VPT_ViT.forward_query` /
`forward_features` do: two full passes from the patch embedding, prompts appended after the
patch tokens (ltbench inserts them after the prefix and reuses the first K blocks), top-k keys
by cosine, averaged group prompts in the last L − K blocks, a cosine head. Everything runs in
float64 so the comparison holds to 1e-6 (attention sums the tokens in another order).
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from test_losses import agcl_oracle
from ltbench.backbones.factory import create_backbone
from ltbench.methods import create_method
from ltbench.methods.base import resolve_method_config
from ltbench.methods.lpt import LPT
from ltbench.losses import build_loss
from ltbench.training.trainer import begin_phase, forward_loss, mixup_parts

# The paper's values (Sec. 4.2, App. B, C.7, C.8): K = 6 of L = 12 blocks share only the shared
# prompt, top-k = 2, η = 0.5, Mixup in both phases (α = 1 from the official mixup.py)
PAPER_TOP_K = 2
PAPER_ETA = 0.5
PAPER_MIXUP = 1.0
PAPER_DROPOUT = 0.1  # official nn.Dropout(0.1) before the head
COUNTS = np.array([50, 20, 10, 5, 2])


def paper_K(depth):
    return depth - depth // 2  # 6 of 12


def make(backbone="vit-tiny-test", **cfg):
    torch.manual_seed(0)
    bb = create_backbone(backbone)
    overrides = {"prompt_len": 3, "pool_size": 6, **cfg}
    m = create_method("lpt", bb, 5, COUNTS, **overrides)
    return m


def oracle(m, x):
    """(logits, per-image matching term 1 − mean_k cos) of LPT phase 2, from plain timm blocks."""
    vit = m.info.vit
    shared, pool, keys = m.shared, m.pool, m.keys
    P, L = shared.shape[1], len(vit.blocks)
    K = paper_K(L)
    B = len(x)

    def embed(img):
        return vit.norm_pre(vit._pos_embed(vit.patch_embed(img)))

    t = embed(x)
    for i, blk in enumerate(vit.blocks):  # the phase-1 pass: the query
        t = blk(torch.cat([t, shared[i].expand(B, -1, -1)], 1))[:, :-P]
    q = vit.norm(t)[:, 0]
    sim = F.normalize(q, dim=-1) @ F.normalize(keys, dim=-1).t()
    top = sim.topk(PAPER_TOP_K, dim=1)
    r = pool[top.indices].mean(1)  # [B, L−K, P, D]
    t = embed(x)
    for i, blk in enumerate(vit.blocks):
        if i < K:
            t = blk(torch.cat([t, shared[i].expand(B, -1, -1)], 1))[:, :-P]
        else:
            t = blk(torch.cat([t, shared[i].expand(B, -1, -1), r[:, i - K]], 1))[:, :-2 * P]
    f = vit.norm(t)[:, 0]
    logits = m.cfg.cosine_scale * F.normalize(f, dim=-1) @ F.normalize(m.head.weight, dim=-1).t()
    return logits, 1 - top.values.mean(1)


def oracle_phase1(m, x):
    vit, shared = m.info.vit, m.shared
    P, B = shared.shape[1], len(x)
    t = vit.norm_pre(vit._pos_embed(vit.patch_embed(x)))
    for i, blk in enumerate(vit.blocks):
        t = blk(torch.cat([t, shared[i].expand(B, -1, -1)], 1))[:, :-P]
    f = vit.norm(t)[:, 0]
    return m.cfg.cosine_scale * F.normalize(f, dim=-1) @ F.normalize(m.head.weight, dim=-1).t()


@pytest.mark.parametrize("backbone", ["vit-tiny-test", "vit-tiny-reg-test"])
@pytest.mark.parametrize("reuse", [True, False])
def test_phase2_forward_matches_the_two_pass_oracle(backbone, reuse):
    m = make(backbone, reuse_blocks=reuse).double().eval()
    with torch.no_grad():  # spread the keys so that the top-k choice differs between images
        m.keys.normal_()
    x = torch.randn(6, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        got = m(x)
        want, _ = oracle(m, x)
    assert (got - want).abs().max() <= 1e-6
    assert m.K == paper_K(4)


def test_phase1_forward_matches_vpt_deep_oracle():
    m = make(phase=1).double().eval()
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        assert (m(x) - oracle_phase1(m, x)).abs().max() <= 1e-6


def _phase2(preset="paper", **cfg):
    m = make(preset=preset, dropout=0.0, **cfg).double()
    p2 = m.phases()[1]
    begin_phase(m, p2)
    m.train()
    m.backbone.eval()
    return m, p2


@pytest.mark.parametrize("preset", ["paper", "reference"])
@pytest.mark.parametrize("epoch", [0, 3])
def test_phase2_loss_matches_eq5_with_dual_sampling(preset, epoch):
    """Σ over the parts: balanced part [A-GCL + matching] + β·instance part [A-GCL + matching], each its
    own mean and loss options, with Mixup drawn per part; β = η·(E − e)/E (official code). Mixup is
    switched on in phase 2 under both presets here (the reference turns it off) to check its parts."""
    m, p2 = _phase2(preset, phase2_mixup=None)
    parts = p2.batch_parts(m.cfg)
    assert [p.sampler for p in parts] == ["class", "instance"]
    E = 10
    weights = [p.weight_at(epoch, E) for p in parts]
    losses = [build_loss(p.loss, COUNTS, **p.loss_kwargs).double().eval() for p in parts]  # eval: no GCL noise
    b = 4
    x = torch.randn(2 * b, 3, 32, 32, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 4, 4, 0, 1])
    torch.manual_seed(5)
    got, mix = forward_loss(lambda v: (m(v), m.extra_loss()), x, y, losses, weights, p2.mixup)
    # oracle: mix each part with the drawn (λ, π), the two-pass forward, Eq. 8 per part, Eq. 5 + β
    assert p2.mixup == PAPER_MIXUP and len(mix) == 2
    official = preset == "reference"
    opts = [dict(gamma_pos=0.0, gamma_neg=4.0), dict(gamma_pos=0.5, gamma_neg=8.0) if official
            else dict(gamma_pos=0.0, gamma_neg=4.0)]
    margin, eps, neg = (0.1, 0.1, 0.0) if official else (0.0, 0.0, 1.0)
    want = 0.0
    for p, beta in enumerate([1.0, PAPER_ETA * (E - epoch) / E]):
        lam, perm = mix[p]
        assert 0 < lam < 1 and not torch.equal(perm, torch.arange(b))
        xp, yp = x[p * b:(p + 1) * b], y[p * b:(p + 1) * b]
        with torch.no_grad():
            logits, match = oracle(m, lam * xp + (1 - lam) * xp[perm])
        v = logits.numpy().copy()
        for targets, share in ((yp, lam), (yp[perm], 1 - lam)):
            vv = v.copy()
            vv[np.arange(b), targets.numpy()] -= m.cfg.cosine_scale * margin
            want += beta * share * agcl_oracle(vv, targets.numpy(), opts[p]["gamma_pos"], opts[p]["gamma_neg"], neg, eps)
        want += beta * 1.0 * match.mean().item()  # matching weight 1 (Eq. 5; official −0.5·Σ_{k=2} cos)
    assert abs(got.item() - want) <= 1e-6


def test_beta_decays_per_epoch_as_the_official_code():
    m, p2 = _phase2()
    bal, ins = p2.batch_parts(m.cfg)
    for E in (40, 3, 2.5):
        for e in range(int(np.ceil(E))):
            assert bal.weight_at(e, E) == 1.0
            assert abs(ins.weight_at(e, E) - max(0.0, PAPER_ETA * (E - e) / E)) < 1e-12
    assert ins.weight_at(0, float("inf")) == PAPER_ETA


def test_phase2_trains_keys_pool_and_head_through_the_loss():
    m, p2 = _phase2()
    parts = p2.batch_parts(m.cfg)
    losses = [build_loss(p.loss, COUNTS, **p.loss_kwargs).double() for p in parts]
    x = torch.randn(8, 3, 32, 32, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 4, 4, 0, 1])
    loss, _ = forward_loss(lambda v: (m(v), m.extra_loss()), x, y, losses, [1.0, 0.5], p2.mixup)
    loss.backward()
    for name in ("keys", "pool", "head"):
        t = getattr(m, name) if name != "head" else m.head.weight
        assert t.grad is not None and t.grad.abs().sum() > 0, name
    assert m.shared.grad is None  # frozen in phase 2


def test_mixup_mixes_each_part_with_its_own_draw():
    x = torch.randn(8, 3, 4, 4)
    torch.manual_seed(0)
    out, mix = mixup_parts(x, 2, 1.0)
    for p, (lam, perm) in enumerate(mix):
        xp = x[4 * p:4 * p + 4]
        torch.testing.assert_close(out[4 * p:4 * p + 4], lam * xp + (1 - lam) * xp[perm], rtol=0, atol=1e-6)
    assert mix[0][0] != mix[1][0]
    assert make().phases()[0].mixup == PAPER_MIXUP  # phase 1 mixes too (App. B)


def test_dropout_before_the_head_in_training_only():
    m = make(phase=1)
    seen = []
    m.head.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    x = torch.randn(64, 3, 32, 32)
    m.train()
    m.backbone.eval()
    m(x)
    m.eval()
    m(x)
    train, ev = seen
    zeros = (train == 0).float().mean().item()
    assert abs(zeros - PAPER_DROPOUT) < 0.03  # 64 · 32 features, rate 0.1
    kept = train != 0
    torch.testing.assert_close(train[kept], ev[kept] / (1 - PAPER_DROPOUT))
    assert (ev != 0).all()


def test_official_initialisation():
    torch.manual_seed(0)
    m = make(prompt_len=10, pool_size=20)
    for t in (m.shared, m.pool, m.keys):  # trunc_normal_(std=0.02): |x| ≤ 2 and std ≈ 0.02
        assert t.abs().max() <= 2.0 and abs(t.std().item() - 0.02) < 0.002
    w = m.head.weight
    assert w.min() >= -1 and w.max() <= 1 and w.std() > 0.5  # NormedLinear: uniform(−1, 1), std 0.577


def test_reference_preset_is_the_official_code():
    cfg = resolve_method_config(LPT, {"preset": "reference"})
    assert (cfg.lr, cfg.weight_decay, cfg.batch_size) == (0.02, 0.01, 256)
    assert (cfg.margin, cfg.label_smoothing, cfg.neg_weight) == (0.1, 0.1, 0.0)
    assert (cfg.gamma_pos, cfg.gamma_neg, cfg.ins_gamma_pos, cfg.ins_gamma_neg) == (0.0, 4.0, 0.5, 8.0)
    assert resolve_method_config(LPT, {"preset": "reference", "lr": 0.1}).lr == 0.1  # the user's --set wins
    paper = resolve_method_config(LPT, {})
    assert (paper.lr, paper.weight_decay, paper.neg_weight, paper.top_k, paper.eta) == (0.002, 1e-4, 1.0, 2, 0.5)


def test_reference_phase2_has_no_mixup_and_the_paper_mixes_both_phases():
    """The official phase-2 script never imports its mixup.py; the paper (App. B) mixes both phases."""
    p1, p2 = make(preset="reference").phases()
    assert (p1.mixup, p2.mixup) == (1.0, 0.0)
    p1, p2 = make().phases()
    assert (p1.mixup, p2.mixup) == (1.0, 1.0)
    assert make(mixup=0.4).phases()[1].mixup == 0.4  # phase2_mixup None: phase 2 follows `mixup`


def test_losses_without_the_options_get_none_of_them():
    p1, p2 = make(loss="la").phases()
    assert p1.loss_kwargs == {} and all(p.loss_kwargs == {} for p in p2.parts)
    assert make(loss="ce", label_smoothing=0.1).phases()[0].loss_kwargs == {"label_smoothing": 0.1}


def test_run_config_records_the_preset_and_its_values():
    from ltbench.spec import resolve_run

    run = resolve_run({"backbone": "vit-tiny-test", "method": "lpt", "budget": "1epochs"},
                         {"preset": "reference", "label_smoothing": 0.2})
    mc = run.config["method_config"]  # what `ltbench show` prints under config.method_config
    assert mc["preset"] == "reference" and mc["margin"] == 0.1 and mc["ins_gamma_neg"] == 8.0
    assert mc["label_smoothing"] == 0.2  # the user's --set over the preset


def test_the_pools_gradient_is_the_same_on_every_run_with_several_threads():
    """The same batch gives the same pool gradient to the last bit with 2 threads: an indexing
    backward (`pool[idx]`) adds into it with atomics in a run-dependent order on CPU."""
    m = make(prompt_len=64, pool_size=4, top_k=2)
    q = torch.randn(256, m.info.feature_dim)
    weights = torch.randn(256, m.group_layers, 64, m.info.embed_dim)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        grads = []
        for _ in range(6):
            m.pool.grad = None
            _, _, group = m.select(q)
            (group * weights).sum().backward()
            grads.append(m.pool.grad.clone())
    finally:
        torch.set_num_threads(before)
    # the oracle: each image adds its weights / k to each chosen prompt
    _, idx = (F.normalize(q, dim=-1) @ F.normalize(m.keys, dim=-1).t()).topk(2, dim=1)
    expect = torch.zeros_like(m.pool, dtype=torch.float64)
    for b in range(256):
        for j in idx[b]:
            expect[j] += weights[b].double() / 2
    assert torch.allclose(grads[0].double(), expect, atol=1e-4)
    assert all(torch.equal(g, grads[0]) for g in grads[1:])
