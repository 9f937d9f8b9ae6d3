"""Long-tail losses against independent float64 numpy oracles written from the papers' equations.

CE; logit adjustment (Menon et al. 2021: z + τ·log π); balanced softmax (Ren et al. 2020:
softmax over n_j·e^{z_j}); GCL (Li et al. 2022 / LPT Eq. 6: z_j − s·μ·|ε_ij|·m_j/max m,
ε ~ N(0, 1/3) clipped, one draw per logit as the official code draws it); A-GCL (LPT Eq. 8,
negated, see `ltbench.losses.AsymmetricGCL`). None of the oracles calls ltbench.
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ltbench.losses import LOSSES, build_loss

COUNTS = np.array([1000, 100, 10, 2])  # class 0 is the head (margin 0), class 3 the rarest


def _batch(b=8, c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, c, generator=g, dtype=torch.float64) * 3, torch.randint(c, (b,), generator=g))


# -- oracles (numpy, float64) -------------------------------------------------------------------
def _log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def ce_oracle(z, y, eps=0.0):
    lp = _log_softmax(z)
    nll = -lp[np.arange(len(y)), y]
    return ((1 - eps) * nll + eps * (-lp).mean(-1)).mean()


def gcl_logits_oracle(z, y, counts, s, mu, margin, eps_draw):
    """LPT Eq. 6 (times s, since ltbench's cosine head has applied s already) plus the official margin."""
    m = np.log(counts.max()) - np.log(counts.astype(np.float64))
    cloud = np.abs(np.clip(eps_draw / 3.0, -1, 1)) if eps_draw is not None else 0.0
    v = z - s * mu * cloud * (m / m.max())
    v[np.arange(len(y)), y] -= s * margin
    return v


def agcl_oracle(v, y, lam_pos, lam_neg, neg_weight=1.0, eps=0.0):
    """−[(1−p_y)^λ+ log p_y + Σ_{j≠y} p_j^λ− log p_j], each term times its (smoothed) coefficient."""
    lp = _log_softmax(v)
    p = np.exp(lp)
    out = []
    for i, yi in enumerate(y):
        total = 0.0
        for j in range(v.shape[1]):
            if j == yi:
                total += (1 - eps + eps / v.shape[1]) * (1 - p[i, j]) ** lam_pos * lp[i, j]
            else:
                total += (eps / v.shape[1] + neg_weight) * p[i, j] ** lam_neg * lp[i, j]
        out.append(-total)
    return float(np.mean(out))


def _noise(seed, shape):
    """The draw the official code makes: one N(0, 1) value per logit (row-major) from torch's global RNG."""
    torch.manual_seed(seed)
    return torch.randn(shape).numpy()


# -- tests --------------------------------------------------------------------------------------
def test_registered_names():
    assert {"ce", "la", "bs", "gcl", "agcl"} <= set(LOSSES)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ce_la_bs_match_their_equations(seed):
    z, y = _batch(b=16, seed=seed)
    zn, yn = z.numpy(), y.numpy()
    prior = COUNTS / COUNTS.sum()
    assert abs(build_loss("ce", COUNTS)(z, y).item() - ce_oracle(zn, yn)) <= 1e-6
    assert abs(build_loss("ce", COUNTS, label_smoothing=0.1)(z, y).item() - ce_oracle(zn, yn, 0.1)) <= 1e-6
    for tau in (1.0, 0.5):
        assert abs(build_loss("la", COUNTS, tau=tau)(z, y).item() - ce_oracle(zn + tau * np.log(prior), yn)) <= 1e-6
    # balanced softmax: −log(n_y e^{z_y} / Σ_j n_j e^{z_j})
    num = COUNTS[yn] * np.exp(zn[np.arange(16), yn])
    bs = -np.log(num / (COUNTS * np.exp(zn)).sum(-1)).mean()
    assert abs(build_loss("bs", COUNTS)(z, y).item() - bs) <= 1e-6


@pytest.mark.parametrize("margin,eps", [(0.0, 0.0), (0.1, 0.1)])
def test_gcl_matches_eq6_with_per_logit_noise(margin, eps):
    z, y = _batch(b=32, seed=4)
    loss = build_loss("gcl", COUNTS, scale=20.0, noise_mul=0.5, margin=margin, label_smoothing=eps)
    draw = _noise(11, (32, 4))
    torch.manual_seed(11)
    got = loss(z, y).item()
    want = ce_oracle(gcl_logits_oracle(z.numpy(), y.numpy(), COUNTS, 20.0, 0.5, margin, draw), y.numpy(), eps)
    assert abs(got - want) <= 1e-6
    # eval mode: no cloud
    want_eval = ce_oracle(gcl_logits_oracle(z.numpy(), y.numpy(), COUNTS, 20.0, 0.5, margin, None), y.numpy(), eps)
    assert abs(loss.eval()(z, y).item() - want_eval) <= 1e-6


def test_gcl_noise_is_drawn_per_logit():
    z, y = _batch(b=256)
    loss = build_loss("gcl", COUNTS, scale=20.0, noise_mul=0.5)
    torch.manual_seed(0)
    drop = (z - loss.perturb(z, y)).numpy()
    assert (drop[:, 0] == 0).all() and (drop >= 0).all()  # head class: margin 0, logit unchanged
    m = np.log(1000) - np.log(COUNTS[1:])
    ratio = drop[:, 1:] / (m / m.max())  # = 20·0.5·|ε_ij|: independent per class, not one per sample
    assert np.abs(ratio[:, 0] - ratio[:, 1]).max() > 1.0
    assert ratio.max() <= 10 + 1e-9
    # ε ~ N(0, std 1/3): E|ε| = (1/3)·sqrt(2/π) ≈ 0.266
    assert abs(ratio.mean() / 10 - (1 / 3) * np.sqrt(2 / np.pi)) < 0.02


@pytest.mark.parametrize("opts", [
    {},  # the paper's defaults: λ+ 0, λ− 4, every off-target term counted once
    {"gamma_pos": 0.5, "gamma_neg": 8.0, "margin": 0.1, "label_smoothing": 0.1, "neg_weight": 0.0},  # official, ins. half
    {"gamma_pos": 0.0, "gamma_neg": 4.0, "margin": 0.1, "label_smoothing": 0.1, "neg_weight": 0.0},  # official, bal. half
])
def test_agcl_matches_eq8_in_train_mode(opts):
    z, y = _batch(b=24, seed=5)
    loss = build_loss("agcl", COUNTS, scale=20.0, **opts)
    assert loss.training
    torch.manual_seed(3)
    got = loss(z, y).item()
    v = gcl_logits_oracle(z.numpy(), y.numpy(), COUNTS, 20.0, 0.5, opts.get("margin", 0.0), _noise(3, (24, 4)))
    want = agcl_oracle(v, y.numpy(), opts.get("gamma_pos", 0.0), opts.get("gamma_neg", 4.0),
                       opts.get("neg_weight", 1.0), opts.get("label_smoothing", 0.0))
    assert abs(got - want) <= 1e-6


def test_agcl_differs_from_gcl_with_defaults_by_hand():
    # logits (2, 1, 0), target 0, no noise (eval): p = softmax = (0.6652, 0.2447, 0.0900)
    z, y = torch.tensor([[2.0, 1.0, 0.0]], dtype=torch.float64), torch.tensor([0])
    e = [math.exp(2), math.exp(1), 1.0]
    p = [v / sum(e) for v in e]
    gcl_hand = -math.log(p[0])  # = 0.40761
    agcl_hand = -(math.log(p[0]) + p[1] ** 4 * math.log(p[1]) + p[2] ** 4 * math.log(p[2]))  # = 0.412813
    counts = np.array([30, 20, 10])
    agcl = build_loss("agcl", counts).eval()(z, y).item()
    gcl = build_loss("gcl", counts).eval()(z, y).item()
    assert abs(gcl - gcl_hand) <= 1e-9 and abs(agcl - agcl_hand) <= 1e-9
    assert abs(agcl_hand - 0.412813) < 1e-6 and abs(gcl_hand - 0.407606) < 1e-6
    assert agcl - gcl > 5e-3  # λ− acts with the defaults
    # ... and on training batches their gradients differ too
    zb, yb = _batch(b=16)
    grads = []
    for name in ("agcl", "gcl"):
        zz = zb.clone().requires_grad_(True)
        build_loss(name, COUNTS).eval()(zz, yb).backward()
        grads.append(zz.grad)
    assert not torch.allclose(*grads)


def test_agcl_negated_eq8_is_minimised_by_the_target():
    # the reading is a loss: gradient descent from a confidently wrong start reaches the target
    z = torch.zeros(1, 6, dtype=torch.float64)
    z[0, 3] = 8.0
    z.requires_grad_(True)
    loss = build_loss("agcl", np.full(6, 10)).eval()
    opt = torch.optim.SGD([z], lr=0.5)
    for _ in range(2000):
        opt.zero_grad()
        loss(z, torch.tensor([0])).backward()
        opt.step()
    assert z.softmax(-1)[0, 0] > 0.99


def test_agcl_reduces_to_cross_entropy_without_focusing_or_negatives():
    z, y = _batch(b=32, c=10)
    counts = np.arange(1, 11) * 7
    loss = build_loss("agcl", counts, noise_mul=0.0, gamma_pos=0.0, gamma_neg=0.0, neg_weight=0.0)
    assert abs(loss(z, y).item() - ce_oracle(z.numpy(), y.numpy())) <= 1e-6
    smooth = build_loss("agcl", counts, noise_mul=0.0, gamma_neg=0.0, neg_weight=0.0, label_smoothing=0.1)
    assert abs(smooth(z, y).item() - ce_oracle(z.numpy(), y.numpy(), 0.1)) <= 1e-6


@pytest.mark.parametrize("name", ["ce", "la", "bs", "gcl", "agcl"])
def test_per_sample_weight(name):
    z, y = _batch(b=2)
    loss = build_loss(name, COUNTS).eval()
    per = torch.stack([loss(z[i : i + 1], y[i : i + 1]) for i in range(2)])
    assert torch.allclose(loss(z, y), per.mean())
    assert torch.allclose(loss(z, y, torch.tensor([0.5, 2.0])), (0.5 * per[0] + 2 * per[1]) / 2)
    with pytest.raises(ValueError, match="one entry per sample"):
        loss(z, y, torch.ones(3))


def test_gcl_noise_uses_global_rng():
    z, y = _batch(b=16)
    loss = build_loss("agcl", COUNTS, scale=20.0)
    torch.manual_seed(7)
    a = loss(z, y)
    b = loss(z, y)
    torch.manual_seed(7)
    assert torch.equal(loss(z, y), a) and not torch.equal(a, b)


def test_agcl_gradients_finite_when_saturated():
    z = torch.tensor([[80.0, -80.0, 0.0, 0.0]], requires_grad=True)
    loss = build_loss("agcl", COUNTS, gamma_pos=0.5, gamma_neg=8, label_smoothing=0.1)
    loss(z, torch.tensor([0])).backward()
    assert torch.isfinite(z.grad).all()


def test_balanced_counts_and_unknown_options():
    z, y = _batch()
    torch.testing.assert_close(build_loss("gcl", np.full(4, 5))(z, y), F.cross_entropy(z, y))  # all margins 0
    with pytest.raises(TypeError, match="does not take option.*'gama_neg'"):
        build_loss("agcl", COUNTS, gama_neg=4)
    with pytest.raises(TypeError, match="'tau'"):
        build_loss("ce", COUNTS, tau=1.0)
    with pytest.raises(TypeError, match="'scale'"):
        build_loss("bs", COUNTS, scale=20.0)
