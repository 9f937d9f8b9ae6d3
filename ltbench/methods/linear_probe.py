"""Linear probe: a head on the frozen backbone's final class token.

By default (`solver=lbfgs`) it is fitted as CLIP, CLIP_benchmark and LIFT fit it: features of
un-augmented training and validation images are computed once, then a multinomial logistic
regression (logit-adjusted by default, for a long-tailed training set) is solved to
convergence on the full feature matrix by L-BFGS (strong Wolfe line search), once per L2
strength of a log grid, and the strength with the best validation accuracy is kept. Its
compute is the feature pass plus the solver, recorded in FLOPs and seconds; the run's budget
does not cut a convergent solver short (see `Phase.solve`).

`solver=sgd` trains the head by minibatches for as long as the budget lasts (for ablations).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Callable, ClassVar

import numpy as np
import torch

from ..budget import count_flops
from ..checks import Choice, Float, Int, ListOf, Opt
from ..errors import ConfigError
from ..plugins import register_method
from .base import Method, MethodConfig, Phase, optimizer_space

SOLVERS = ("lbfgs", "sgd")


@dataclass(frozen=True)
class LinearProbeConfig(MethodConfig):
    """The probe's defaults: a logit-adjusted logistic regression solved by L-BFGS (the reference
    protocol, no budget-dependent schedule), or minibatch SGD under the budget with `solver=sgd`."""
    # solver=sgd only: L-BFGS sweeps its L2 strength itself
    SEARCH_SPACE: ClassVar[dict[str, tuple]] = optimizer_space(sgd=(1e-3, 1.0), adamw=(1e-4, 1e-1),
                                                               batch_size=("choice", [8, 16, 32, 64, 128]))

    # lbfgs: to convergence, L2 swept on val | sgd: minibatches for as long as the budget lasts
    solver: Annotated[str, Choice(SOLVERS)] = "lbfgs"
    # Logit-adjusted logistic regression (Menon et al. 2021): its optimum is the balanced-error classifier,
    # which a long-tailed benchmark's balanced test set scores. Plain CE (CLIP's probe, `--loss ce`) at
    # convergence learns the training prior in its bias: on fashion-mnist-lt / dinov2-s14 at 56 px it
    # lost 5 points (15 on few-shot classes) to a minibatch probe that never converged (docs/results.md).
    loss: str = "la"
    # L2 strengths λ of λ/2·‖W‖² beside the mean cross-entropy, swept strong → weak with warm starts,
    # then refined half a decade either side of the best. Decades over 1 … 1e-6 cover about CLIP's
    # sweep (sklearn's C = 1/(λ·n) over 1e-6 … 1e6 with n ≈ 1e3 … 1e6) at the resolution a
    # validation set of a few hundred images can tell apart. None: L2_GRID.
    l2_grid: Annotated[list[float] | None, Opt(ListOf(Float(lo=0, hi=1e6, lo_open=True), nonempty=True))] = None
    max_iter: Annotated[int, Int(lo=1, hi=10**6)] = 1000  # L-BFGS iterations per strength (fewer once converged)
    optimizer: str = "adamw"  # solver=sgd
    lr: float = 1e-2  # solver=sgd; measured: 1e-3 under-trains a head in a few hundred steps
    weight_decay: float = 1e-4  # solver=sgd
    batch_size: int = 64  # solver=sgd

    def __post_init__(self) -> None:  # what one key's check cannot see: keys that exclude each other
        if self.solver == "lbfgs" and self.classifier != "linear":
            raise ConfigError("--set classifier=cosine needs --set solver=sgd (L-BFGS fits a linear "
                              "logistic regression; an L2 penalty on a normalised weight has no effect)")
        if self.solver == "lbfgs" and self.loss not in ("ce", "la", "bs"):
            raise ConfigError(f"--loss {self.loss}: L-BFGS needs a deterministic loss (ce, la or bs)")

    def search_space(self) -> dict[str, tuple]:
        """Nothing to tune under L-BFGS, which sweeps its own L2 strength on validation."""
        return dict(self.SEARCH_SPACE) if self.solver == "sgd" else {}


#: 1, 0.1, …, 1e-6: seven decades (see LinearProbeConfig.l2_grid); the best is then refined halfway to
#: its neighbours.
L2_GRID = [float(10.0 ** -k) for k in range(7)]
PATIENCE = 2  # stop walking towards weaker strengths after this many that do not beat the best


def fit_logistic_regression(x: torch.Tensor, y: torch.Tensor, xv: torch.Tensor, yv: torch.Tensor, num_classes: int,
                            loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], grid: list[float],
                            max_iter: int = 1000) -> dict[str, Any]:
    """Multinomial logistic regression by L-BFGS, the L2 strength chosen on validation accuracy.

    For each λ it minimises loss_fn(xW^T + b, y) + λ/2·‖W‖² (bias not penalised) to L-BFGS's
    tolerance. The grid is walked from strong to weak, each fit warm-started from the previous
    one (a regularisation path: the problem is convex, so a start changes only the time to the
    optimum), until PATIENCE strengths in a row fail to beat the best (the weak end, where a
    nearly separable problem converges slowest, is seldom reached); then the geometric
    midpoints between the best and its grid neighbours are tried. Validation accuracy is
    per-class averaged; ties keep the stronger λ. Returns the chosen weights and a log that
    counts the FLOPs of every loss/gradient evaluation and validation pass.
    """
    weight = torch.zeros(num_classes, x.shape[1], dtype=x.dtype, device=x.device, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=x.dtype, device=x.device, requires_grad=True)
    yv_np = yv.cpu().numpy()
    present = np.unique(yv_np)

    def val_accuracy() -> float:
        with torch.no_grad():
            pred = (xv @ weight.T + bias).argmax(1).cpu().numpy()
        return float(np.mean([(pred[yv_np == c] == c).mean() for c in present]))

    evals, path, best = 0, [], None
    flops: dict[str, int] = {}

    def fit(lam: float, start: tuple[torch.Tensor, torch.Tensor] | None) -> bool:
        """Solve at `lam` (from `start`, else from the current weights); True if it is the new best."""
        nonlocal evals, best
        if start is not None:
            with torch.no_grad():
                weight.copy_(start[0])
                bias.copy_(start[1])
        opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, history_size=20,
                                tolerance_grad=1e-5, tolerance_change=1e-9, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            nonlocal evals
            evals += 1
            opt.zero_grad()
            loss = loss_fn(x @ weight.T + bias, y) + 0.5 * lam * weight.pow(2).sum()
            loss.backward()
            return loss

        if not flops:
            flops["eval"], flops["val"] = count_flops(closure), count_flops(val_accuracy)
        opt.step(closure)
        iters = int(opt.state[weight].get("n_iter", 0))
        acc = val_accuracy()
        path.append({"l2": lam, "val_acc": acc, "iterations": iters, "converged": iters < max_iter,
                     "max_grad": max(float(weight.grad.abs().max()), float(bias.grad.abs().max()))})
        better = best is None or acc > best[0] or (acc == best[0] and lam > best[1])
        if better:
            best = (acc, lam, weight.detach().clone(), bias.detach().clone())
        return better

    grid = sorted({float(v) for v in grid}, reverse=True)
    worse = 0
    for lam in grid:
        worse = 0 if fit(lam, None) else worse + 1
        if worse >= PATIENCE:
            break
    i = grid.index(best[1])
    around = [grid[j] for j in (i - 1, i + 1) if 0 <= j < len(grid)]
    start = (best[2], best[3])
    for lam in [float(np.sqrt(best[1] * g)) for g in around]:
        fit(lam, start)
    acc, lam, w, b = best
    return {"weight": w, "bias": b, "l2": lam, "val_acc": acc, "path": path, "evals": evals,
            "iterations": sum(p["iterations"] for p in path), "flops": flops["eval"] * evals + flops["val"] * len(path)}


@register_method("linear-probe")
class LinearProbe(Method):
    """frozen backbone + linear head on cached class-token features (L-BFGS, L2 swept on val)"""

    Config = LinearProbeConfig

    def __init__(self, backbone, num_classes, cfg, *args):
        super().__init__(backbone, num_classes, cfg, *args)
        self.head = self.make_head()

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen backbone's features, computed once per image by the trainer."""
        return self.head_features(x)

    def classify(self, feats: torch.Tensor) -> torch.Tensor:
        """The head alone: all that trains on the cached features."""
        return self.head(feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """embed then classify, for prediction on images."""
        return self.classify(self.embed(x))

    def solve(self, x: torch.Tensor, y: torch.Tensor, xv: torch.Tensor, yv: torch.Tensor, loss_fn) -> dict[str, Any]:
        """Fit the head by L-BFGS on cached train features, choosing L2 on cached val features."""
        grid = self.cfg.l2_grid or L2_GRID
        fit = fit_logistic_regression(x, y, xv, yv, self.num_classes, loss_fn, grid, self.cfg.max_iter)
        with torch.no_grad():
            self.head.weight.copy_(fit.pop("weight"))
            self.head.bias.copy_(fit.pop("bias"))
        return fit

    def phases(self) -> list[Phase]:
        """One head phase on cached features: solved in one call (L-BFGS) or in minibatches (SGD)."""
        params = [{"params": list(self.head.parameters())}]
        if self.cfg.solver == "lbfgs":
            return [Phase("head", params, cache_features=True, solve=self.solve)]
        return [Phase("head", params, cache_features=True)]
