"""W_offset by a small network trained in PyTorch (LPT++'s learning-based scorer).

Inputs per sample: each expert's confidence statistics (max probability, normalised
entropy, top-1 − top-2 margin, agreement of its argmax with the other experts'). Output:
one offset per expert, added to W_base in softplus pre-activation space (see ``core``).

Training: full batch on 80% of the validation split (stratified, seeded), cross-entropy of
the normalised fused scores, Adam, early stopping on the held-out 20% (the untrained
network, i.e. W_base alone, is the first candidate). Gate: the offsets are kept only if
they do not lower the validation objective, on the held-out part and on the whole split,
so a fitted offset never makes the fusion worse than W_base alone on validation.
Deterministic for a seed (seeded init and split, full batch, no data-order randomness).
"""
from __future__ import annotations

import contextlib
import copy
import time
from typing import Any, Callable

import numpy as np
import torch

from .core import FEATURES, FusionModel, OffsetNet, ProbStack, stratified_holdout


def fit_offsets(stack: ProbStack, labels: np.ndarray, w_base: torch.Tensor, groups: torch.Tensor,
                score: Callable[[torch.Tensor], float], make_score: Callable[[np.ndarray], Callable], seed: int,
                hidden: int = 32, max_epochs: int = 300, patience: int = 25, lr: float = 1e-2,
                weight_decay: float = 1e-4, holdout: float = 0.2) -> tuple[FusionModel, dict[str, Any]]:
    """``score`` judges predictions on the whole val split; ``make_score(labels)`` builds one for a part."""
    t0 = time.perf_counter()
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    rows_fit, rows_hold = stratified_holdout(labels, holdout, seed)
    fit, hold = stack.subset(rows_fit), stack.subset(rows_hold)
    y_fit, y_hold = y[rows_fit], y[rows_hold]
    score_hold = make_score(np.asarray(labels)[rows_hold.numpy()])

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = OffsetNet(stack.num_experts * len(FEATURES), stack.num_experts, hidden)
    net.set_stats(fit.features)
    model = FusionModel(w_base, groups, net)
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)

    t_fit, t_hold = fit.nll_terms(y_fit), hold.nll_terms(y_hold)  # the loss needs only these [N, E, G] terms
    with torch.no_grad():
        best_loss = float(hold.nll(model.weights(hold), terms=t_hold))
    init_loss, best_state = best_loss, copy.deepcopy(net.state_dict())
    with _one_thread():
        epoch, best_loss, best_state, best_epoch = _train(net, model, opt, fit, hold, t_fit, t_hold, max_epochs,
                                                          patience, best_loss, best_state)
    net.load_state_dict(best_state)
    net.eval()

    base = FusionModel(w_base, groups)
    with torch.no_grad():
        hold_with, hold_without = score_hold(hold.predict(model.weights(hold))), score_hold(hold.predict(w_base))
        val_with, val_without = score(stack.predict(model.weights(stack))), score(stack.predict(w_base))
    accepted = best_epoch > 0 and hold_with >= hold_without and val_with >= val_without
    info = {
        "features": list(FEATURES), "hidden": hidden, "epochs_run": epoch, "best_epoch": best_epoch,
        "holdout": holdout, "fit_rows": len(rows_fit), "holdout_rows": len(rows_hold),
        "holdout_nll": {"init": init_loss, "best": best_loss},
        "objective_with_offset": {"holdout": hold_with, "val": val_with},
        "objective_without_offset": {"holdout": hold_without, "val": val_without},
        "offset_accepted": bool(accepted), "lr": lr, "weight_decay": weight_decay, "max_epochs": max_epochs,
        "patience": patience, "learn_seconds": time.perf_counter() - t0,
    }
    return (model if accepted else base), info


def _train(net, model, opt, fit, hold, t_fit, t_hold, max_epochs, patience, best_loss, best_state):
    """Full-batch steps on the fit rows; keep the state with the lowest held-out loss."""
    best_epoch, epoch = 0, 0
    for epoch in range(1, max_epochs + 1):
        net.train()
        opt.zero_grad(set_to_none=True)
        loss = fit.nll(model.weights(fit), terms=t_fit)
        loss.backward()
        opt.step()
        net.eval()
        with torch.no_grad():
            h = float(hold.nll(model.weights(hold), terms=t_hold))
        if h < best_loss - 1e-6:
            best_loss, best_state, best_epoch = h, copy.deepcopy(net.state_dict()), epoch
        elif epoch - best_epoch >= patience:
            break
    return epoch, best_loss, best_state, best_epoch


@contextlib.contextmanager
def _one_thread():
    """The training steps touch [N, E, G] tensors only: one thread is faster than a team, and immune
    to the barrier stalls a busy machine inflicts on a multi-threaded op this small."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)
