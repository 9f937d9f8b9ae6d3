"""The mechanism shared by every scorer: probability stacks, confidence features, fused scores, objectives.

Fusion space (the one choice everything below follows)
------------------------------------------------------
Experts are fused in **probability space**, as LPT++ re-weights the experts' confidence
scores::

    s_c(x) = Σ_e w_{e,g(c)}(x) · softmax(logits_e(x))_c        w ≥ 0

and the fused expert stores ``log(s / Σ_c s)`` as its "logits" (so softmax of the stored
logits gives back the normalised fused probabilities, and ECE is that of the mixture).
``g(c)`` is the weight group of class c: one group for all classes, or the shot group
(many / medium / few) with ``--per-group``. The weights are

- ``W_base`` [E, G]: shared by every sample (``search``, ``mean``); normalised so that the
  mean over groups of Σ_e W_base[e, g] is 1 (with one group: the weights sum to 1);
- ``W_base + W_offset(x)`` (``learned``, ``moe``): the sum is taken in softplus
  pre-activation space, ``w(x) = softplus(softplus⁻¹(max(W_base, ε)) + W_offset(x))``, which
  is positive without a softmax, has a gradient everywhere (a plain clamp at 0 would not
  for an expert whose base weight is 0), and equals W_base exactly where the offset is 0.

All work is on tensors over whole splits: no Python loop over samples (the loops that
remain run over experts or over the ≤ 3 weight groups).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import FusionError
from ..metrics import GROUP_NAMES

#: Floor for a base weight before softplus⁻¹ (so a zero base weight can still be offset upwards).
EPS_WEIGHT = 1e-3
#: Floor of a fused probability before its log is stored (fp16 keeps log(1e-30) ≈ −69 exactly enough).
EPS_PROB = 1e-30
#: Validation objectives a search / an early stop / a gate can maximise.
OBJECTIVES = {
    "balanced": "per-class-averaged accuracy (equals pooled accuracy on a balanced val split, as ltbench's are)",
    "harmonic": "harmonic mean of many / medium / few per-class-averaged accuracy",
    "accuracy": "pooled accuracy over validation samples",
}
#: Confidence statistics per expert and sample, the offset network's inputs.
FEATURES = ("max_prob", "entropy", "margin", "agreement")


# -- probability stacks ------------------------------------------------------------------
def confidence_features(probs: torch.Tensor) -> torch.Tensor:
    """[E, N, C] probabilities → [N, 4E] features: per expert max prob, entropy / log C,
    top-1 − top-2 margin, and the share of the other experts whose argmax agrees with its own."""
    E, N, C = probs.shape
    top2 = probs.topk(min(2, C), dim=2).values
    max_prob = top2[..., 0]
    margin = top2[..., 0] - top2[..., 1] if C > 1 else torch.ones_like(max_prob)
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(2) / math.log(max(C, 2))
    arg = probs.argmax(2)  # [E, N]
    same = (arg[:, None, :] == arg[None, :, :]).float().sum(1) - 1  # [E, N], self excluded
    agreement = same / max(E - 1, 1)
    feats = torch.stack([max_prob, entropy, margin, agreement], dim=-1)  # [E, N, 4]
    return feats.permute(1, 0, 2).reshape(N, E * len(FEATURES)).contiguous()


@dataclass
class ProbStack:
    """The experts' softmax probabilities for one split, split into weight groups of classes.

    ``parts[g]`` is [E, N, C_g] (the classes ``index[g]``, contiguous), so a shared weight
    vector is one GEMV per group and a per-sample weight one multiply-add per expert.
    """

    parts: list[torch.Tensor]
    index: list[torch.Tensor]
    num_classes: int
    features: torch.Tensor | None = None
    group_of: torch.Tensor = field(init=False)
    pos_of: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.group_of = torch.empty(self.num_classes, dtype=torch.long)
        self.pos_of = torch.empty(self.num_classes, dtype=torch.long)
        for g, ix in enumerate(self.index):
            self.group_of[ix] = g
            self.pos_of[ix] = torch.arange(len(ix))

    @classmethod
    def build(cls, logits: Sequence[torch.Tensor], groups: torch.Tensor, with_features: bool = False) -> "ProbStack":
        """``logits``: one [N, C] tensor per expert; ``groups`` [C]: weight group 0..G−1 of each class."""
        probs = torch.stack([torch.softmax(lg.float(), dim=1) for lg in logits])  # [E, N, C]
        C = probs.shape[2]
        groups = torch.as_tensor(groups, dtype=torch.long)
        G = int(groups.max()) + 1 if len(groups) else 1
        index = [torch.nonzero(groups == g).flatten() for g in range(G)]
        if G == 1:
            parts = [probs]
        else:
            parts = [probs[:, :, ix].contiguous() for ix in index]
        feats = confidence_features(probs) if with_features else None
        return cls(parts, index, C, feats)

    @property
    def num_experts(self) -> int:
        """E: the experts stacked."""
        return self.parts[0].shape[0]

    @property
    def num_samples(self) -> int:
        """N: the samples of the split."""
        return self.parts[0].shape[1]

    @property
    def num_groups(self) -> int:
        """G: the weight groups (1 unless weights are per shot group)."""
        return len(self.parts)

    def subset(self, rows: torch.Tensor) -> "ProbStack":
        """The same stack on some rows only: scorers fit and check on disjoint parts of validation."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        return ProbStack([p[:, rows].contiguous() for p in self.parts], self.index, self.num_classes,
                         None if self.features is None else self.features[rows])

    # -- fused scores ----------------------------------------------------------------------
    def combine(self, w: torch.Tensor) -> list[torch.Tensor]:
        """Unnormalised fused scores per weight group, [N, C_g] each.

        ``w`` is [E, G] (shared by all samples) or [N, E, G] (per sample)."""
        out = []
        for g, p in enumerate(self.parts):
            if w.dim() == 2:
                out.append(torch.tensordot(w[:, g], p, dims=([0], [0])))
            else:
                wg = w[:, :, g]
                s = p[0] * wg[:, 0:1]
                for e in range(1, p.shape[0]):
                    s = s + p[e] * wg[:, e:e + 1]
                out.append(s)
        return out

    def predict(self, w: torch.Tensor) -> torch.Tensor:
        """Argmax class of the fused scores, [N] (class ids in the original order)."""
        best_val, best_cls = None, None
        for ix, s in zip(self.index, self.combine(w)):
            v, i = s.max(dim=1)
            cls = ix[i]
            if best_val is None:
                best_val, best_cls = v, cls
            else:
                take = v > best_val
                best_val = torch.where(take, v, best_val)
                best_cls = torch.where(take, cls, best_cls)
        return best_cls

    def log_probs(self, w: torch.Tensor) -> torch.Tensor:
        """log(s / Σ s): the fused expert's stored logits, [N, C] in the original class order."""
        parts = self.combine(w)
        total = sum(s.sum(1, keepdim=True) for s in parts).clamp_min(EPS_PROB)
        out = torch.empty(self.num_samples, self.num_classes, dtype=parts[0].dtype)
        for ix, s in zip(self.index, parts):
            out[:, ix] = (s / total).clamp_min(EPS_PROB).log()
        return out

    def nll_terms(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """What the cross-entropy of any weights needs from labelled data, computed once.

        Σ_c s_c = Σ_{e,g} w_{e,g} · mass_{e,g} (mass: an expert's probability summed over a
        group's classes) and s_y = Σ_e w_{e,g(y)} · p_{e,y}: so the loss never touches the
        [N, C] scores again — exact, and O(N·E·G) per step instead of O(N·E·C).
        Returns mass [N, E, G], p_true [N, E], the label's group [N]."""
        labels = torch.as_tensor(labels, dtype=torch.long)
        g, pos = self.group_of[labels], self.pos_of[labels]
        mass = torch.stack([p.sum(2) for p in self.parts], dim=-1).permute(1, 0, 2).contiguous()
        p_true = torch.zeros(self.num_samples, self.num_experts)
        for k, p in enumerate(self.parts):
            rows = torch.nonzero(g == k).flatten()
            if len(rows):
                p_true[rows] = p[:, rows, pos[rows]].T
        return mass, p_true, g

    def nll(self, w: torch.Tensor, labels: torch.Tensor | None = None,
            terms: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Mean cross-entropy of the normalised fused scores (differentiable in w)."""
        mass, p_true, g = terms if terms is not None else self.nll_terms(labels)
        if w.dim() == 2:
            w = w[None]
        w = w.expand(len(g), -1, -1)
        total = (w * mass).sum((1, 2))
        w_true = w.gather(2, g[:, None, None].expand(-1, w.shape[1], 1))[..., 0]
        s_true = (w_true * p_true).sum(1)
        return (total.clamp_min(EPS_PROB).log() - s_true.clamp_min(EPS_PROB).log()).mean()


# -- weights -----------------------------------------------------------------------------
def normalise_base(w: torch.Tensor) -> torch.Tensor:
    """Scale [E, G] weights so the mean over groups of the per-group sum is 1 (argmax-invariant)."""
    w = w.clamp_min(0).float()
    scale = w.sum(0).mean()
    if not torch.isfinite(scale) or scale <= 0:
        return torch.full_like(w, 1.0 / w.shape[0])
    return w / scale


def inverse_softplus(y: torch.Tensor) -> torch.Tensor:
    """softplus⁻¹, so a weight can be initialised at a given positive value through a softplus."""
    return y + torch.log(-torch.expm1(-y))


class OffsetNet(nn.Module):
    """Confidence statistics of every expert for a sample → one offset per expert (W_offset).

    The last layer starts at zero, so an untrained network leaves W_base as it is."""

    def __init__(self, num_features: int, num_experts: int, hidden: int = 32):
        super().__init__()
        self.register_buffer("mean", torch.zeros(num_features))
        self.register_buffer("std", torch.ones(num_features))
        self.net = nn.Sequential(nn.Linear(num_features, hidden), nn.GELU(), nn.Linear(hidden, num_experts))
        nn.init.zeros_(self.net[2].weight)
        nn.init.zeros_(self.net[2].bias)

    def set_stats(self, feats: torch.Tensor) -> None:
        """Feature normalisation kept as buffers, so re-applying the stored model normalises as fitting did."""
        self.mean.copy_(feats.mean(0))
        self.std.copy_(feats.std(0).clamp_min(1e-4) if len(feats) > 1 else torch.ones_like(self.std))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """Per-sample weight offsets from normalised confidence features."""
        return self.net((feats - self.mean) / self.std)


@dataclass
class FusionModel:
    """What a scorer fits and the registry keeps (as the fused expert's delta) to re-apply it."""

    w_base: torch.Tensor  # [E, G]
    groups: torch.Tensor  # [C] weight group of each class
    offset: OffsetNet | None = None

    @property
    def needs_features(self) -> bool:
        """Only the per-sample offsets need confidence features; building them costs time on big splits."""
        return self.offset is not None

    def weights(self, stack: ProbStack) -> torch.Tensor:
        """[E, G] shared weights, or [N, E, G] per-sample weights W_base + W_offset (softplus space)."""
        if self.offset is None:
            return self.w_base
        if stack.features is None:
            raise ValueError("this fusion needs confidence features: build the ProbStack with_features=True")
        z = inverse_softplus(self.w_base.clamp_min(EPS_WEIGHT))
        return F.softplus(z[None] + self.offset(stack.features)[:, :, None])

    def log_probs(self, logits: Sequence[torch.Tensor]) -> torch.Tensor:
        """Fused logits of one split from the constituents' logits (in constituent order)."""
        stack = ProbStack.build(logits, self.groups, with_features=self.needs_features)
        with torch.no_grad():
            return stack.log_probs(self.weights(stack))

    def num_params(self, base: bool = True) -> int:
        """Fitted numbers: W_base (when searched, ``base``) plus the offset network's parameters."""
        n = self.w_base.numel() if base else 0
        if self.offset is not None:
            n += sum(p.numel() for p in self.offset.parameters())
        return n

    def delta(self) -> dict[str, torch.Tensor]:
        """The tensors the registry keeps as the fused expert's delta, enough for `from_delta` to re-apply it."""
        out = {"w_base": self.w_base.detach().clone(), "groups": self.groups.clone()}
        if self.offset is not None:
            out.update({f"offset.{k}": v.detach().clone() for k, v in self.offset.state_dict().items()})
        return out

    @classmethod
    def from_delta(cls, delta: dict[str, torch.Tensor]) -> "FusionModel":
        """Rebuild a fitted fusion from a fused expert's ``delta()``."""
        offset = None
        state = {k[len("offset."):]: v for k, v in delta.items() if k.startswith("offset.")}
        if state:
            hidden, n_feat = state["net.0.weight"].shape
            offset = OffsetNet(n_feat, state["net.2.weight"].shape[0], hidden)
            offset.load_state_dict(state)
            offset.eval()
        return cls(delta["w_base"].float(), delta["groups"].long(), offset)


# -- objectives (validation labels only) -------------------------------------------------------
def make_objective(name: str, labels: np.ndarray, shot_groups: np.ndarray) -> Callable[[torch.Tensor], float]:
    """pred [N] → objective value; built from validation labels and the classes' shot groups."""
    if name not in OBJECTIVES:
        raise FusionError(f"unknown objective {name!r}; use one of {', '.join(OBJECTIVES)}")
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    C = len(shot_groups)
    count = torch.bincount(y, minlength=C).double()
    present = count > 0
    masks = [(torch.as_tensor(shot_groups) == g) & present for g in range(len(GROUP_NAMES))]
    masks = [m for m in masks if bool(m.any())]

    def per_class(pred: torch.Tensor) -> torch.Tensor:
        return torch.bincount(y, weights=(pred == y).double(), minlength=C) / count.clamp_min(1)

    if name == "accuracy":
        return lambda pred: float((pred == y).double().mean())
    if name == "balanced":
        return lambda pred: float(per_class(pred)[present].mean())

    def harmonic(pred: torch.Tensor) -> float:
        acc = per_class(pred)
        accs = [float(acc[m].mean()) for m in masks]
        if min(accs) <= 0:
            return 0.0
        return len(accs) / sum(1.0 / a for a in accs)

    return harmonic


def stratified_holdout(labels: np.ndarray, share: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded split of val rows: about `share` of every class held out (at least one row overall)."""
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    n = len(y)
    gen = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n, generator=gen)
    order = perm[torch.argsort(y[perm], stable=True)]
    ys = y[order]
    counts = torch.bincount(ys)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(n) - starts[ys]
    take = torch.round(counts.double() * share).long()
    hold = rank < take[ys]
    if not bool(hold.any()) and n > 1:
        hold[0] = True
    if bool(hold.all()) and n > 1:
        hold[-1] = False
    return torch.sort(order[~hold]).values, torch.sort(order[hold]).values
