"""The method interface every training method implements (PEFT's config/mechanism split).

A method owns its trainable tensors, declares its phases (what trains, with which loss and
sampler, for which share of the budget) and counts its parameters. The backbone inside it
is frozen unless a phase says otherwise; the trainer never needs to know which method runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, ClassVar, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.base import Backbone
from ..checks import Bool, Choice, Float, Int, Opt, Str

#: `preset=paper` (the default): the paper's values; `preset=reference`: the official code's
#: values where they differ (each config class lists them in its REFERENCE table).
PRESETS = ("paper", "reference")


def _losses() -> list[str]:
    from ..losses import LOSSES

    return list(LOSSES)


def _samplers() -> list[str]:
    from ..data.samplers import SAMPLERS

    return SAMPLERS.registered()


def optimizer_space(sgd: tuple[float, float], adamw: tuple[float, float],
                    weight_decay: tuple[float, float] = (1e-6, 1e-1), warmup: tuple[float, float] = (0.0, 0.3),
                    **extra: tuple) -> dict[str, tuple]:
    """The search space of a minibatch-trained method: the optimiser, the learning rate from that
    optimiser's own log range (good SGD and AdamW rates differ by one to two decades), weight decay,
    and the warm-up share; `extra` adds method keys (a batch size where it sets the negatives)."""
    return {"optimizer": ("choice", ["sgd", "adamw"]),
            "lr": ("by", "optimizer", {"sgd": ("log", *sgd), "adamw": ("log", *adamw)}),
            "weight_decay": ("log", *weight_decay), "warmup": ("float", *warmup), **extra}


@dataclass(frozen=True)
class MethodConfig:
    """Training defaults shared by every method; methods override the defaults they change.

    Defaults follow the method's paper. `REFERENCE` holds the official code's values where
    they differ, applied under the user's own overrides by `--set preset=reference`.
    """

    REFERENCE: ClassVar[dict[str, Any]] = {}
    #: What `tune:` searches: key -> ("log", lo, hi) | ("float", lo, hi) | ("int", lo, hi) | ("choice", [values])
    #: | ("by", KEY, {value of KEY: range}). Each method declares its own (`optimizer_space`); empty: nothing to tune.
    SEARCH_SPACE: ClassVar[dict[str, tuple]] = {}

    preset: Annotated[str, Choice(PRESETS)] = "paper"
    loss: Annotated[str, Choice(_losses)] = "ce"
    sampler: Annotated[str, Choice(_samplers)] = "instance"
    optimizer: Annotated[str, Choice(("sgd", "adamw"))] = "sgd"
    lr: Annotated[float, Float(lo=0, hi=10, lo_open=True)] = 0.01
    weight_decay: Annotated[float, Float(lo=0, hi=10)] = 1e-4
    momentum: Annotated[float, Float(lo=0, hi=1, hi_open=True)] = 0.9
    warmup: Annotated[float, Float(lo=0, hi=1, hi_open=True)] = 0.1  # share of each phase's budget spent warming up the lr linearly
    warmup_steps: Annotated[int, Int(lo=0, hi=2**31)] = 0  # ...or at least this many steps (steps / epochs budgets)
    warmup_start: Annotated[float | None, Opt(Float(lo=0, hi=1))] = None  # the warm-up's first lr factor (None: ~0)
    lr_floor: Annotated[float, Float(lo=0, hi=1, hi_open=True)] = 0.0  # the cosine ends at lr × this
    batch_size: Annotated[int, Int(lo=1, hi=2**20)] = 32
    classifier: Annotated[str, Choice(("linear", "cosine"))] = "linear"
    cosine_scale: Annotated[float, Float(lo=0, hi=1e4, lo_open=True)] = 20.0
    #: on a CLIP backbone the head reads the joint space (after the visual projection); false: the pooled
    #: features before it, its text initialisation mapped back through the projection (LT-Soups' use_proj).
    #: No effect on a backbone without a projection.
    head_proj: Annotated[bool, Bool()] = True
    lr_ref_batch: Annotated[int, Int(lo=0, hi=2**20)] = 0  # >0: the lr is given for this batch size and scaled linearly (lr·B/ref)
    init: Annotated[str | None, Opt(Str())] = None  # start from a registered expert's delta (tensors with matching names)

    def search_space(self) -> dict[str, tuple]:
        """The space tuning searches for this config (a method may narrow it by its settings)."""
        return dict(self.SEARCH_SPACE)

    @property
    def effective_lr(self) -> float:
        """The lr scaled linearly by batch size / `lr_ref_batch` (when set), so lrs carry over between batch sizes."""
        return self.lr * self.batch_size / self.lr_ref_batch if self.lr_ref_batch else self.lr


#: a part's weight: a constant, or `f(e, E)` of the phase's epoch e (0-based) and its length E in
#: epochs, re-evaluated at the start of every epoch (LPT's β = η·(E − e)/E, stepped per epoch)
PartWeight = Union[float, Callable[[int, float], float]]


@dataclass
class PartSpec:
    """One part of a phase's batch: `batch_size` images drawn by `sampler`, with their own loss
    (and options), their own mean, and a weight. A batch holds its parts in order; the phase's
    loss is Σ_p weight_p · (mean loss_p + mean extra term_p) — see `training.trainer.batch_loss`."""

    sampler: str | None = None  # None: the method config's sampler
    loss: str | None = None  # None: the method config's loss
    loss_kwargs: dict[str, Any] = field(default_factory=dict)
    weight: PartWeight = 1.0

    def weight_at(self, epoch: int, epochs: float) -> float:
        """This part's loss weight at `epoch` of `epochs` (a constant or a schedule)."""
        return float(self.weight(epoch, epochs)) if callable(self.weight) else float(self.weight)


@dataclass
class Phase:
    """One stage of training: which parameters train, how, and its share of the budget."""

    name: str
    param_groups: list[dict[str, Any]]  # [{"params": [...], "lr_scale": 1.0}, ...]
    share: float = 1.0
    #: share under an epochs budget, when it differs (LT-Soups: equal epochs on subsets of unequal size)
    epoch_share: float | None = None
    loss: str | None = None  # None: the method config's loss (a one-part phase; see `parts`)
    sampler: str | None = None
    cache_features: bool = False  # train `classify` on cached `embed` outputs of un-augmented images
    loss_kwargs: dict[str, Any] = field(default_factory=dict)
    #: the batch's parts (LPT's dual sampling: a class-balanced and an instance-sampled part);
    #: None: one part from `sampler`, `loss` and `loss_kwargs`
    parts: list[PartSpec] | None = None
    mixup: float = 0.0  # Mixup's Beta(α, α) α, applied within each part; 0: off
    on_start: Callable[[], None] | None = None  # e.g. switch the method's forward to this phase
    on_end: Callable[[], None] | None = None  # e.g. merge this phase's weights into a soup
    #: train on a subset of the training split: (train labels, seed) -> indices (LT-Soups' caps)
    subset: Callable[[np.ndarray, int], np.ndarray] | None = None
    #: called after every optimizer step (LT-Soups: update the EMA of the weights)
    on_step: Callable[[], None] | None = None
    #: `val_checks` validation checks evenly spaced over the phase, the last at its end: the trainer
    #: calls `on_val(score)`, `score()` being the current forward's per-class-averaged accuracy on
    #: the validation split (its compute is charged to the phase's budget). LT-Soups keeps its best EMA.
    val_checks: int = 0
    on_val: Callable[[Callable[[], float]], None] | None = None
    #: fit in one call instead of minibatches (the L-BFGS linear probe): (train feats, labels, val feats,
    #: labels, loss) -> log with "flops" and "iterations"; needs cache_features. It runs to convergence:
    #: the budget does not stop it, what it spends is recorded.
    solve: Callable[..., dict[str, Any]] | None = None

    @property
    def parameters(self) -> list[nn.Parameter]:
        """Every parameter the phase trains, over all its groups."""
        return [p for g in self.param_groups for p in g["params"]]

    def batch_parts(self, cfg: MethodConfig) -> list[PartSpec]:
        """The parts with every sampler and loss resolved against the method's config."""
        parts = self.parts or [PartSpec(self.sampler, self.loss, dict(self.loss_kwargs))]
        return [PartSpec(p.sampler or cfg.sampler, p.loss or cfg.loss, dict(p.loss_kwargs), p.weight) for p in parts]


class ClassifierHead(nn.Module):
    """Linear head, or a cosine head whose scale is applied to its output (LPT's classifier)."""

    def __init__(self, dim: int, num_classes: int, kind: str = "linear", scale: float = 20.0):
        super().__init__()
        if kind not in ("linear", "cosine"):
            raise ValueError(f"classifier must be 'linear' or 'cosine', got {kind!r}")
        self.kind, self.scale = kind, scale
        self.weight = nn.Parameter(torch.empty(num_classes, dim))
        nn.init.trunc_normal_(self.weight, std=0.02)
        self.bias = nn.Parameter(torch.zeros(num_classes)) if kind == "linear" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits: a linear layer, or scaled cosine similarity for the cosine head."""
        if self.kind == "cosine":
            return self.scale * F.linear(F.normalize(x, dim=-1), F.normalize(self.weight, dim=-1))
        return F.linear(x, self.weight, self.bias)


class Method(nn.Module):
    """Base class: a frozen backbone plus the method's own trainable delta."""

    name: ClassVar[str]
    Config: ClassVar[type[MethodConfig]] = MethodConfig

    def __init__(self, backbone: Backbone, num_classes: int, cfg: MethodConfig,
                 class_counts: np.ndarray | None = None, classnames: list[str] | None = None):
        super().__init__()
        self.backbone = backbone.model
        self.backbone.requires_grad_(False)
        self.info = backbone
        self.num_classes = num_classes
        self.cfg = cfg
        self.class_counts = class_counts
        self.classnames = classnames
        #: set to a list to record per-sample choices during prediction (LPT's prompt matching)
        self.recorder: list | None = None

    @property
    def head_dim(self) -> int:
        """Width of what the head reads (`head_features`)."""
        return self.info.feature_dim if self.cfg.head_proj else self.info.pooled_dim

    def head_features(self, x: torch.Tensor) -> torch.Tensor:
        """The features the head reads: projected into the joint space, or not (`head_proj`)."""
        return self.info.features(x, project=self.cfg.head_proj)

    def make_head(self) -> ClassifierHead:
        """The method's classifier; on a CLIP backbone a cosine head starts from the text classifier,
        mapped back before the projection and renormalised when the head reads pooled features
        (LT-Soups trainer.py:499-501)."""
        head = ClassifierHead(self.head_dim, self.num_classes, self.cfg.classifier, self.cfg.cosine_scale)
        if self.info.is_clip and self.cfg.classifier == "cosine" and self.classnames:
            with torch.no_grad():
                text = self.info.text_classifier(self.classnames)  # [joint, C]
                if not self.cfg.head_proj:
                    text = F.normalize(self.info.unproject_classifier(text), dim=0)
                head.weight.copy_(text.t())
        return head

    # -- what subclasses implement ---------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of images."""
        raise NotImplementedError

    def phases(self) -> list[Phase]:
        """The training phases, in order; the trainer runs them under shares of the budget."""
        raise NotImplementedError

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Frozen features for methods with `cache_features` phases."""
        raise NotImplementedError

    def classify(self, feats: torch.Tensor) -> torch.Tensor:
        """Logits from features, so the trainer can cache features of a frozen backbone."""
        raise NotImplementedError

    def resume_state(self) -> dict[str, Any]:
        """State outside the delta that a resumed run needs (e.g. LT-Soups' partial soup)."""
        return {}

    def load_resume_state(self, state: dict[str, Any]) -> None:
        """Restore what a method keeps outside its parameters (none by default)."""
        pass

    def extra_loss(self) -> torch.Tensor | None:
        """A per-sample term [B] the last forward adds to the loss (LPT's key matching), averaged
        over each batch part like the part's loss; None for most methods."""
        return None

    def artifacts(self, test_labels: np.ndarray | None = None) -> dict[str, Any]:
        """Extra JSON files saved with the expert (e.g. LPT's prompt matching record)."""
        return {}

    # -- shared mechanics ----------------------------------------------------------------
    def trainable_names(self) -> list[str]:
        """Every tensor some phase trains: exactly what the expert's delta file stores."""
        ids = {id(p) for ph in self.phases() for p in ph.parameters}
        return [n for n, p in self.named_parameters() if id(p) in ids]

    def delta_names(self) -> list[str]:
        """What the expert stores: the method's own tensors, plus backbone weights a phase trains."""
        trained = set(self.trainable_names())
        return [n for n, _ in self.named_parameters() if not n.startswith("backbone.") or n in trained]

    def delta_state_dict(self) -> dict[str, torch.Tensor]:
        """Only the trained parameters, so an expert is saved without the frozen backbone."""
        params = dict(self.named_parameters())
        return {n: params[n].detach().clone() for n in self.delta_names()}

    def load_delta(self, delta: dict[str, torch.Tensor], partial: bool = False) -> list[str]:
        """Load a stored delta; `partial` loads the tensors whose names and shapes match (init)."""
        own = dict(self.named_parameters())
        if not partial:
            expected = set(self.delta_names())
            if set(delta) != expected:
                raise ValueError(
                    f"delta does not fit method {self.name!r}: missing {sorted(expected - set(delta))[:5]},"
                    f" unexpected {sorted(set(delta) - expected)[:5]}"
                )
            misfit = [k for k, v in delta.items() if own[k].shape != v.shape]
            if misfit:  # e.g. a head of another width (head_proj): never predict with a fresh tensor
                k = misfit[0]
                raise ValueError(f"delta does not fit method {self.name!r}: {k} is {tuple(delta[k].shape)},"
                                 f" the method's {tuple(own[k].shape)}")
        take = {k: v for k, v in delta.items() if k in own and own[k].shape == v.shape}
        with torch.no_grad():
            for k, v in take.items():
                own[k].copy_(v)
        return sorted(take)

    def param_counts(self) -> dict[str, int]:
        """Total and trainable parameters (each shared tensor counted once), for the report."""
        ids = {id(p) for ph in self.phases() for p in ph.parameters}
        seen: set[int] = set()
        total = trainable = 0
        for p in self.parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            total += p.numel()
            trainable += p.numel() if id(p) in ids else 0
        return {"trainable": trainable, "total": total}


def resolve_method_config(cls: type[Method], overrides: dict[str, Any]) -> MethodConfig:
    """The method's config: its paper defaults, or its REFERENCE values under `preset=reference`,
    then the user's overrides on top."""
    from ..errors import ConfigError

    preset = overrides.get("preset", "paper")
    if preset not in PRESETS:
        raise ConfigError(f"--set preset={preset!r}: expected {' or '.join(PRESETS)}")
    base = dict(cls.Config.REFERENCE) if preset == "reference" else {}
    return cls.Config(**{**base, **overrides})
