"""Long-tail losses, each a module `loss(logits, targets, weight=None)` built from training class counts.

Every loss computes a per-sample loss l_i and returns `l.mean()`, or `(weight * l).mean()` with
an optional per-sample weight of shape [B] (the mean over the batch, not divided by the sum of
the weights). A phase whose batch has several parts (LPT's dual sampling) gives each part its
own loss module and mean; the trainer weighs the parts (`methods.base.PartSpec`).

`build_loss(name, class_counts, **options)` is the entry point; an option a loss does not take
is an error, not silently dropped.
"""
from __future__ import annotations

import inspect

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .plugins import LOSSES


def _counts(class_counts: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(class_counts), dtype=torch.float32).clamp_min(1)


def _log_prior(class_counts: np.ndarray) -> torch.Tensor:
    counts = _counts(class_counts)
    return torch.log(counts / counts.sum())


class LTLoss(nn.Module):
    """Base: subclasses give `per_sample(logits, targets) -> [B]`; `forward` applies the weights."""

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Loss per sample, shape [B]; subclasses define it."""
        raise NotImplementedError

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Mean loss, each sample weighted by `weight` when given (one entry per sample)."""
        loss = self.per_sample(logits, targets)
        if weight is None:
            return loss.mean()
        weight = torch.as_tensor(weight, dtype=loss.dtype, device=loss.device)
        if weight.shape != loss.shape:
            raise ValueError(f"weight must have one entry per sample, shape {tuple(loss.shape)}; got {tuple(weight.shape)}")
        return (weight * loss).mean()


@LOSSES.register("ce", help="cross-entropy")
class CrossEntropy(LTLoss):
    """Plain cross-entropy: the baseline the long-tail losses are compared with."""
    def __init__(self, class_counts: np.ndarray | None = None, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = float(label_smoothing)

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy per sample, with optional label smoothing."""
        return F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing, reduction="none")


@LOSSES.register("la", help="logit-adjusted cross-entropy (Menon et al. 2021): logits + tau·log prior")
class LogitAdjusted(LTLoss):
    """Adds tau times the log class prior to the logits, so rare classes need a larger margin to win."""
    def __init__(self, class_counts: np.ndarray, tau: float = 1.0):
        super().__init__()
        self.register_buffer("adjust", tau * _log_prior(class_counts), persistent=False)

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the prior-adjusted logits."""
        return F.cross_entropy(logits + self.adjust.to(logits.dtype), targets, reduction="none")


@LOSSES.register("bs", help="balanced softmax (Ren et al. 2020): softmax over logits + log n_j")
class BalancedSoftmax(LogitAdjusted):
    """Logit adjustment with tau = 1: the softmax over logits + log n_j."""
    def __init__(self, class_counts: np.ndarray):
        super().__init__(class_counts, tau=1.0)


@LOSSES.register("gcl", help="Gaussian clouded logit (Li et al. 2022): logits lowered by |noise|·(log n_max − log n_j)")
class GaussianCloudedLogit(LTLoss):
    """Gaussian clouded logit loss (Li et al. 2022), as LPT uses it.

    Per-class margin m_j = log n_max − log n_j (0 for the head class, largest for the rarest).
    In training mode every logit is lowered by `scale · noise_mul · |ε_ij| · m_j / max_j m_j`,
    ε_ij ~ N(0, std 1/3) clipped to [−1, 1], one draw per logit as in the GCL and LPT official
    code (`noise = Normal(0, 1/3).sample(cosine.shape)`; LPT's Eq. 6 writes one ε without saying
    its shape). The noise comes from torch's global CPU generator, so a seeded (or resumed, via
    torch.set_rng_state) run draws the same clouds on any device. In eval mode there is no noise.

    ltbench's cosine head already multiplies cosines by its scale, so the perturbation (defined
    on cosines, then scaled by α in LPT's Eq. 6) is multiplied by `scale` here; LPT passes its
    cosine scale 20. `margin` is subtracted (times `scale`) from the target logit; then softmax
    cross-entropy with optional `label_smoothing`.
    """

    def __init__(self, class_counts: np.ndarray, scale: float = 1.0, noise_mul: float = 0.5,
                 margin: float = 0.0, label_smoothing: float = 0.0):
        super().__init__()
        log_n = torch.log(_counts(class_counts))
        m = log_n.max() - log_n
        top = m.max()
        self.register_buffer("cloud", m / top if top > 0 else torch.zeros_like(m), persistent=False)
        self.scale = float(scale)
        self.noise_mul = float(noise_mul)
        self.margin = float(margin)
        self.label_smoothing = float(label_smoothing)

    def perturb(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The GCL logits: noise (training mode only) and the target margin."""
        if self.training and self.noise_mul != 0.0:
            eps = (torch.randn(tuple(logits.shape)) / 3.0).clamp_(-1.0, 1.0).abs_()
            eps = eps.to(device=logits.device, dtype=logits.dtype)
            logits = logits - (self.scale * self.noise_mul) * eps * self.cloud.to(logits.dtype)
        if self.margin != 0.0:
            onehot = F.one_hot(targets, logits.shape[-1]).to(logits.dtype)
            logits = logits - (self.scale * self.margin) * onehot
        return logits

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the noise-perturbed logits."""
        return F.cross_entropy(self.perturb(logits, targets), targets,
                               label_smoothing=self.label_smoothing, reduction="none")


@LOSSES.register("agcl", help="A-GCL (LPT): GCL logits + asymmetric focusing (gamma+ 0 on the target, gamma- 4 off it)")
class AsymmetricGCL(GaussianCloudedLogit):
    """A-GCL, LPT's loss (Sec. 4.3, Eqs. 6–8): GCL-perturbed logits, then asymmetric focusing.

    z = GCL logits (see `gcl`); log_p = log_softmax(z); p = exp(log_p); t = one_hot(y);
    w_j = (1 − p_j)^gamma_pos on the target, p_j^gamma_neg off it;
    c = t·(1 − ε) + ε/C + neg_weight·(1 − t)      (ε = label_smoothing);
    loss_i = −Σ_j c_j · w_j · log p_j.

    Reading of Eq. 8. The paper writes L = (1 − p_y)^λ+ log p_y + Σ_{j≠y} p_j^λ− log p_j, which
    is ≤ 0 and is minimised by p_y → 0: read literally it cannot be a loss. We negate it (every
    term −w_j log p_j ≥ 0), which is what the official code computes (`loss = −t·w·log p` in
    its `ASLSingleLabel`): the same focusing weights, the same log p_j (softmax, not ASL's
    multi-label log(1 − p_j)). The paper counts each off-target term once (neg_weight 1); the
    official code multiplies every term by its label-smoothed target instead, so its off-target
    terms weigh ε/C and vanish without smoothing. With the defaults (the paper's: gamma_pos 0,
    gamma_neg 4, neg_weight 1, no margin, no smoothing) A-GCL therefore differs from GCL; the
    off-target term −p^λ log p lowers p_j for every p_j < e^(−1/λ−) (0.78 at λ− = 4) and the
    whole loss is minimised by the one-hot prediction. `preset=reference` (LPT's REFERENCE
    table) selects the official variant: neg_weight 0, label_smoothing 0.1, margin 0.1, and on
    the instance-sampled half gamma_pos 0.5, gamma_neg 8.
    """

    def __init__(self, class_counts: np.ndarray, scale: float = 1.0, noise_mul: float = 0.5,
                 margin: float = 0.0, label_smoothing: float = 0.0, gamma_pos: float = 0.0, gamma_neg: float = 4.0,
                 neg_weight: float = 1.0):
        super().__init__(class_counts, scale=scale, noise_mul=noise_mul, margin=margin, label_smoothing=label_smoothing)
        self.gamma_pos = float(gamma_pos)
        self.gamma_neg = float(gamma_neg)
        self.neg_weight = float(neg_weight)

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The asymmetric loss on the perturbed logits."""
        z = self.perturb(logits, targets)
        num_classes = z.shape[-1]
        log_p = F.log_softmax(z, dim=-1)
        p = log_p.exp()
        t = F.one_hot(targets, num_classes).to(log_p.dtype)
        if self.gamma_pos == 0.0 and self.gamma_neg == 0.0:
            weighted = log_p
        else:
            base = t * (1 - p) + (1 - t) * p
            # clamp: base 0 (p saturated at 1 or 0) would give 0·∞ = nan gradients for fractional gammas
            base = base.clamp_min(torch.finfo(base.dtype).tiny)
            weighted = log_p * base.pow(self.gamma_pos * t + self.gamma_neg * (1 - t))
        coef = t * (1 - self.label_smoothing) + self.label_smoothing / num_classes + self.neg_weight * (1 - t)
        return -(coef * weighted).sum(-1)


def build_loss(name: str, class_counts: np.ndarray, **kwargs) -> nn.Module:
    """The loss registered as `name`; `kwargs` are its options (an unknown one is a TypeError)."""
    cls = LOSSES.get(name)
    params = inspect.signature(cls).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        accepted = [k for k in params if k != "class_counts"]
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown:
            raise TypeError(f"loss {name!r} does not take option(s) {', '.join(map(repr, unknown))}; "
                            f"its options: {', '.join(accepted) or 'none'}")
    return cls(class_counts=class_counts, **kwargs)
