"""The L-BFGS linear probe: logistic regression solved to convergence, L2 strength chosen on val.

The oracle is an independent solver: SciPy's L-BFGS-B on the same objective written in numpy
(mean softmax cross-entropy + λ/2·‖W‖², bias unpenalised), as CLIP fits its probe.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import minimize

from conftest import TINY_DATA
from ltbench.errors import ConfigError
from ltbench.spec import resolve_run
from ltbench.methods.linear_probe import fit_logistic_regression
from ltbench.store.index import Registry
from ltbench.training.pipeline import build_all, train_expert


def problem(n=120, d=6, c=3, seed=0, noise=1.5):
    rng = np.random.default_rng(seed)
    mu = rng.normal(size=(c, d))
    y, yv = rng.integers(0, c, n), np.repeat(np.arange(c), 20)
    x = mu[y] + noise * rng.normal(size=(n, d))
    xv = mu[yv] + noise * rng.normal(size=(len(yv), d))
    return x, y, xv, yv


def scipy_fit(x, y, c, lam):
    """argmin mean CE(xWᵀ + b, y) + λ/2‖W‖², by SciPy (numpy objective and gradient)."""
    n, d = x.shape
    onehot = np.eye(c)[y]

    def f(theta):
        w, b = theta[:c * d].reshape(c, d), theta[c * d:]
        z = x @ w.T + b
        z = z - z.max(1, keepdims=True)
        p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        loss = -np.log(p[np.arange(n), y]).mean() + 0.5 * lam * (w ** 2).sum()
        g = (p - onehot) / n
        return loss, np.concatenate([(g.T @ x + lam * w).ravel(), g.sum(0)])

    r = minimize(f, np.zeros(c * d + c), jac=True, method="L-BFGS-B", options={"gtol": 1e-10, "ftol": 1e-14,
                                                                                "maxiter": 10000})
    return r.x[:c * d].reshape(c, d), r.x[c * d:]


def balanced_acc(pred, y):
    return np.mean([(pred[y == k] == k).mean() for k in np.unique(y)])


def t64(*a):
    return [torch.as_tensor(v) for v in a]


@pytest.mark.parametrize("lam", [1e-1, 1e-3])
def test_solution_is_the_regularised_logistic_regression_optimum(lam):
    x, y, xv, yv = problem()
    fit = fit_logistic_regression(*t64(x, y, xv, yv), 3, F.cross_entropy, [lam])
    w, b = scipy_fit(x, y, 3, lam)
    assert fit["l2"] == lam and all(p["converged"] for p in fit["path"])
    assert np.allclose(fit["weight"].numpy(), w, atol=2e-4) and np.allclose(fit["bias"].numpy(), b, atol=2e-4)


def test_l2_strength_is_the_best_on_validation_of_those_tried():
    x, y, xv, yv = problem(n=60, d=20, noise=3.0)  # few, noisy samples: regularisation matters
    grid = [1.0, 1e-1, 1e-2, 1e-3]
    fit = fit_logistic_regression(*t64(x, y, xv, yv), 3, F.cross_entropy, grid)
    tried = [p["l2"] for p in fit["path"]]
    assert tried[:2] == grid[:2] and len(tried) > 2  # strong → weak, then refined around the best
    oracle = {}
    for lam in tried:
        w, b = scipy_fit(x, y, 3, lam)
        oracle[lam] = balanced_acc((xv @ w.T + b).argmax(1), yv)
    for p in fit["path"]:
        assert p["val_acc"] == pytest.approx(oracle[p["l2"]])
    best = max(oracle.values())
    assert fit["val_acc"] == pytest.approx(best)
    assert fit["l2"] == max(lam for lam, a in oracle.items() if a == pytest.approx(best))  # ties: the stronger
    assert len(set(oracle.values())) > 1  # the choice mattered on this problem


def test_flops_count_every_evaluation():
    x, y, xv, yv = problem()
    fit = fit_logistic_regression(*t64(x, y, xv, yv), 3, F.cross_entropy, [1e-2])
    (n, d), c, nv = x.shape, 3, len(xv)
    per_eval = 2 * (2 * n * d * c)  # forward matmul + the weight-gradient matmul (features need none)
    assert fit["evals"] >= fit["iterations"] > 1
    assert fit["flops"] == fit["evals"] * per_eval + len(fit["path"]) * 2 * nv * d * c


def tiny(budget="2epochs", **sets):
    return resolve_run({"backbone": "vit-tiny-test", "method": "linear-probe", "budget": budget},
                          {**TINY_DATA, "max_iter": 60, **sets})


def test_probe_fits_on_train_and_val_features_only_and_records_its_compute(tmp_path, monkeypatch):
    from ltbench.methods.linear_probe import LinearProbe

    seen = {}
    real = LinearProbe.solve

    def spy(self, x, y, xv, yv, loss_fn):
        seen.update(train=len(x), val=len(xv), val_labels=yv.numpy().copy())
        return real(self, x, y, xv, yv, loss_fn)

    monkeypatch.setattr(LinearProbe, "solve", spy)
    run = tiny("1steps")  # the budget does not cut the solver short
    ex = train_expert(run, Registry(tmp_path), quiet=True)
    data, _ = build_all(run)
    assert seen["train"] == len(data.train) and seen["val"] == len(data.val)
    assert np.array_equal(seen["val_labels"], data.val.labels)
    phase = ex.meta["phases"][0]
    solver = phase["solver"]
    assert phase["budget_applies"] is False and solver["iterations"] > 1
    assert ex.meta["spent"]["steps"] == 0  # no minibatch steps: the budget's steps did not limit it
    assert ex.meta["spent"]["flops"] > solver["flops"] > 0 and ex.meta["spent"]["seconds"] > 0
    # the registered head is the chosen fit: its val accuracy is the one the sweep selected
    val = ex.logits("val").argmax(1).numpy()
    assert balanced_acc(val, ex.labels("val")) == pytest.approx(solver["val_acc"])


def test_same_seed_same_probe(tmp_path):
    a = train_expert(tiny().replace(name="a"), Registry(tmp_path), quiet=True)
    b = train_expert(tiny().replace(name="b"), Registry(tmp_path), quiet=True)
    assert torch.equal(a.logits("test"), b.logits("test"))


def test_sgd_solver_stays_an_option(tmp_path):
    ex = train_expert(tiny("2epochs", solver="sgd"), Registry(tmp_path), quiet=True)
    assert ex.meta["spent"]["epochs"] == pytest.approx(2) and "solver" not in ex.meta["phases"][0]


@pytest.mark.parametrize("sets,match", [
    ({"solver": "adam"}, "solver='adam': expected one of lbfgs, sgd"),
    ({"classifier": "cosine"}, "classifier=cosine needs --set solver=sgd"),
    ({"loss": "gcl"}, "deterministic loss"),
    ({"l2_grid": [0.1, -1]}, "l2_grid"),
])
def test_bad_probe_settings_fail_before_work(sets, match):
    with pytest.raises(ConfigError, match=match):
        tiny(**sets)


def test_the_logit_adjusted_probe_removes_the_training_prior():
    """Features that say nothing about the label leave only the bias to fit: plain CE learns the
    training prior (b_c − b_k = log n_c/n_k), the logit-adjusted loss the probe fits by default
    (logits + log prior) learns none of it, so a balanced test set is not tilted to the head.
    A flipped prior sign would learn twice the prior instead."""
    from ltbench.losses import build_loss

    counts = np.array([80, 15, 5])
    y = torch.as_tensor(np.repeat(np.arange(3), counts))
    x = torch.zeros(len(y), 4, dtype=torch.float64)
    yv = torch.arange(3).repeat(5)
    xv = torch.zeros(len(yv), 4, dtype=torch.float64)
    fits = {name: fit_logistic_regression(x, y, xv, yv, 3, build_loss(name, counts).double(), [1e-3])
            for name in ("ce", "la")}
    ce, la = fits["ce"]["bias"], fits["la"]["bias"]
    assert torch.allclose(ce - ce[2], torch.as_tensor(np.log(counts / counts[2])), atol=1e-4)
    assert torch.allclose(la - la[2], torch.zeros(3, dtype=la.dtype), atol=1e-4)
