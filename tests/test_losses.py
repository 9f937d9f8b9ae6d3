"""Long-tail losses: the per-sample weight interface, CE/LA/BS, GCL and A-GCL."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ltbench.losses import LOSSES, build_loss

COUNTS = np.array([1000, 100, 10, 2])  # class 0 is the head (margin 0), class 3 the rarest


def _batch(b=8, c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, generator=g) * 3, torch.randint(c, (b,), generator=g)


def test_registered_names():
    assert {"ce", "la", "bs", "gcl", "agcl"} <= set(LOSSES)


def test_ce_la_bs_values():
    z, y = _batch()
    assert torch.allclose(build_loss("ce", COUNTS)(z, y), F.cross_entropy(z, y))
    assert torch.allclose(build_loss("ce", COUNTS, label_smoothing=0.1)(z, y), F.cross_entropy(z, y, label_smoothing=0.1))
    prior = torch.log(torch.tensor(COUNTS, dtype=torch.float32) / COUNTS.sum())
    assert torch.allclose(build_loss("la", COUNTS)(z, y), F.cross_entropy(z + prior, y))
    assert torch.allclose(build_loss("la", COUNTS, tau=0.5)(z, y), F.cross_entropy(z + 0.5 * prior, y))
    # balanced softmax: log n_j differs from log prior by a constant, which softmax ignores
    assert torch.allclose(build_loss("bs", COUNTS)(z, y), F.cross_entropy(z + torch.log(torch.tensor(COUNTS.astype(np.float32))), y))
    assert not torch.allclose(build_loss("la", COUNTS)(z, y), F.cross_entropy(z, y))


@pytest.mark.parametrize("name", ["ce", "la", "bs", "gcl", "agcl"])
def test_per_sample_weight(name):
    z, y = _batch(b=2)
    loss = build_loss(name, COUNTS).eval()
    per = torch.stack([loss(z[i : i + 1], y[i : i + 1]) for i in range(2)])
    assert torch.allclose(loss(z, y), per.mean())
    assert torch.allclose(loss(z, y, torch.tensor([1.0, 0.0])), per[0] / 2)  # mean over B, not / sum(w)
    assert torch.allclose(loss(z, y, torch.tensor([0.5, 2.0])), (0.5 * per[0] + 2 * per[1]) / 2)
    with pytest.raises(ValueError, match="one entry per sample"):
        loss(z, y, torch.ones(3))


def test_agcl_reduces_to_cross_entropy():
    z, y = _batch(b=32, c=10)
    counts = np.arange(1, 11) * 7
    loss = build_loss("agcl", counts, noise_mul=0.0, margin=0.0, gamma_pos=0.0, gamma_neg=0.0, label_smoothing=0.0)
    assert loss.training
    torch.testing.assert_close(loss(z, y), F.cross_entropy(z, y), rtol=0, atol=1e-6)
    smooth = build_loss("agcl", counts, noise_mul=0.0, gamma_neg=0.0, label_smoothing=0.1)
    torch.testing.assert_close(smooth(z, y), F.cross_entropy(z, y, label_smoothing=0.1), rtol=0, atol=1e-6)


def test_agcl_matches_hand_computation():
    z, y = _batch(b=6, c=4, seed=3)
    loss = build_loss("agcl", COUNTS, scale=20.0, margin=0.1, label_smoothing=0.1, gamma_pos=0.5, gamma_neg=8).eval()
    zz = z - 20 * 0.1 * F.one_hot(y, 4)
    logp = F.log_softmax(zz, -1)
    p, t = logp.exp(), F.one_hot(y, 4).float()
    w = torch.where(t.bool(), (1 - p) ** 0.5, p ** 8)
    want = -((t * 0.9 + 0.1 / 4) * w * logp).sum(-1).mean()
    torch.testing.assert_close(loss(z, y), want)


def test_agcl_gamma_neg_matters_only_with_smoothing():
    z, y = _batch(b=16)
    kw = dict(noise_mul=0.0, gamma_pos=0.0)
    plain = build_loss("agcl", COUNTS, gamma_neg=0.0, label_smoothing=0.1, **kw)(z, y)
    focal = build_loss("agcl", COUNTS, gamma_neg=4.0, label_smoothing=0.1, **kw)(z, y)
    assert focal < plain  # off-target terms are down-weighted by p^4 < 1
    # without smoothing the off-target terms have weight 0: gamma_neg changes nothing
    torch.testing.assert_close(build_loss("agcl", COUNTS, gamma_neg=4.0, **kw)(z, y),
                               build_loss("agcl", COUNTS, gamma_neg=0.0, **kw)(z, y))
    # gamma_pos > 0 down-weights the (confident) target term
    assert (build_loss("agcl", COUNTS, noise_mul=0.0, gamma_neg=0.0, gamma_pos=2.0)(z, y)
            < build_loss("agcl", COUNTS, noise_mul=0.0, gamma_neg=0.0, gamma_pos=0.0)(z, y))


def test_gcl_eval_is_cross_entropy_train_is_not():
    z, y = _batch(b=32)
    loss = build_loss("gcl", COUNTS, scale=20.0).eval()
    torch.testing.assert_close(loss(z, y), F.cross_entropy(z, y), rtol=0, atol=1e-6)
    loss.train()
    assert not torch.allclose(loss(z, y), F.cross_entropy(z, y))
    assert torch.allclose(build_loss("gcl", COUNTS, noise_mul=0.0)(z, y), F.cross_entropy(z, y))


def test_gcl_perturbation_lowers_tail_logits_only():
    z, y = _batch(b=256)
    loss = build_loss("gcl", COUNTS, scale=20.0, noise_mul=0.5)
    torch.manual_seed(0)
    out = loss.perturb(z, y)
    drop = z - out
    assert torch.equal(drop[:, 0], torch.zeros(256))  # head class: margin 0, logit unchanged
    assert (drop >= 0).all() and (drop[:, 3] > 0).any()
    assert (drop[:, 1] <= drop[:, 2]).all() and (drop[:, 2] <= drop[:, 3]).all()  # rarer → lowered more
    assert drop.max() <= 20 * 0.5 + 1e-5  # |ε| clipped to 1, times scale·noise_mul·m_j/max m
    # one draw per sample, broadcast over the classes: drop_j / m_j is the same for all j > 0
    m = np.log(1000) - np.log(COUNTS[1:])
    ratio = drop[:, 1:] / torch.tensor(m / m.max(), dtype=torch.float32)
    torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio))
    # ε ~ N(0, std 1/3): E|ε| = (1/3)·sqrt(2/π) ≈ 0.266
    eps = drop[:, 3] / 10
    assert abs(eps.mean().item() - (1 / 3) * np.sqrt(2 / np.pi)) < 0.04


def test_gcl_noise_uses_global_rng():
    z, y = _batch(b=16)
    loss = build_loss("agcl", COUNTS, scale=20.0)
    torch.manual_seed(7)
    a = loss(z, y)
    b = loss(z, y)
    torch.manual_seed(7)
    assert torch.equal(loss(z, y), a) and not torch.equal(a, b)


def test_gcl_train_never_raises_loss_of_head_only_batch():
    # lowering non-target (tail) logits can only lower the loss of head-class samples
    z, _ = _batch(b=64)
    y = torch.zeros(64, dtype=torch.long)
    loss = build_loss("gcl", COUNTS, scale=20.0)
    torch.manual_seed(1)
    per_noisy = loss.per_sample(z, y)
    per_clean = F.cross_entropy(z, y, reduction="none")
    assert (per_noisy <= per_clean + 1e-6).all() and (per_noisy < per_clean).any()
    # and never lowers the loss of rarest-class samples (their own logit drops most)
    y3 = torch.full((64,), 3, dtype=torch.long)
    assert (loss.per_sample(z, y3) >= F.cross_entropy(z, y3, reduction="none") - 1e-6).all()


def test_gcl_margin_and_smoothing():
    z, y = _batch(b=16)
    loss = build_loss("gcl", COUNTS, scale=20.0, margin=0.1, label_smoothing=0.1).eval()
    torch.testing.assert_close(loss(z, y), F.cross_entropy(z - 2.0 * F.one_hot(y, 4), y, label_smoothing=0.1))


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
