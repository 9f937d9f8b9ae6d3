"""Adapter and LoRA mechanics on any backbone block (timm or open_clip), shared by methods.

AdaptFormer-style adapters run a bottleneck in parallel with a block's MLP: its input is the
residual stream entering the MLP branch (tapped at the block's MLP norm), its output is
scaled by s and added to the block's output. The up-projection starts at zero, so a freshly
adapted backbone computes exactly what the frozen one did. LoRA is a parametrization of the
fused q/k/v weight: W + (α/r)·B·A with B = 0 at the start, over all of q/k/v (`targets="qkv"`)
or as separate factors on the q and v rows only (`targets="qv"`, LT-Soups' official modules).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..backbones.base import Backbone
from .base import Method, Phase


class Adapter(nn.Module):
    """AdaptFormer's bottleneck, up-projection at zero: a freshly adapted backbone computes what the
    frozen one did, so training starts from the pretrained features rather than from noise."""

    def __init__(self, dim: int, bottleneck: int, scale: float = 0.1, learnable_scale: bool = True):
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        s = torch.tensor(float(scale))
        if learnable_scale:
            self.scale = nn.Parameter(s)
        else:
            self.register_buffer("scale", s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """s · up(relu(down(x))): the scale keeps the adapter's share small (fixed, or learnt in LPT++)."""
        return self.scale * self.up(torch.relu(self.down(x)))


class _Tap(nn.Module):
    """Passes through a module and remembers its last input."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.last: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.last = x
        return self.inner(x)


class AdaptedBlock(nn.Module):
    """block(x) + adapter(residual stream entering the block's MLP branch)."""

    def __init__(self, block: nn.Module, mlp_norm: str, adapter: Adapter):
        super().__init__()
        self.block = block
        self.adapter = adapter
        self.tap = _Tap(getattr(block, mlp_norm))
        setattr(block, mlp_norm, self.tap)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """The block as before plus the adapter on the tapped MLP input; the tap is cleared so no
        activation outlives the forward."""
        y = self.block(x, *args, **kwargs)
        out = y + self.adapter(self.tap.last)
        self.tap.last = None
        return out


def add_adapters(backbone: Backbone, bottleneck: int, scale: float = 0.1, learnable_scale: bool = True) -> list[Adapter]:
    """Wrap every block of the backbone in place; returns the adapters (trainable)."""
    blocks = backbone.blocks
    adapters = []
    for i, block in enumerate(list(blocks)):
        ad = Adapter(backbone.embed_dim, bottleneck, scale, learnable_scale)
        blocks[i] = AdaptedBlock(block, backbone.mlp_norm, ad)
        adapters.append(ad)
    return adapters


def _qkv_of(backbone: Backbone, block: nn.Module) -> tuple[nn.Module, str]:
    return backbone.qkv_weight(block.block if isinstance(block, AdaptedBlock) else block)


class LoRA(nn.Module):
    """A parametrization W ↦ W + (alpha / rank)·B·A."""

    def __init__(self, out_features: int, in_features: int, rank: int, alpha: float):
        super().__init__()
        self.A = nn.Parameter(torch.empty(rank, in_features))
        self.B = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.scaling = alpha / rank

    def delta(self) -> torch.Tensor:
        """(α / r)·B·A: the α / r scale lets the rank change without retuning the learning rate."""
        return self.scaling * (self.B @ self.A)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """The effective weight, cast to the weight's dtype so a model held in half precision stays in it."""
        return weight + self.delta().to(weight.dtype)


class SlicedLoRA(nn.Module):
    """LoRA on some row blocks of a fused [3D, D] q/k/v weight: one (A, B) pair per target, zero elsewhere."""

    def __init__(self, dim: int, rank: int, alpha: float, targets: str):
        super().__init__()
        self.targets = targets
        self.parts = nn.ModuleDict({t: LoRA(dim, dim, rank, alpha) for t in targets})

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """The fused weight plus each target's update in its row block (k untouched under `qv`)."""
        dim = weight.shape[1]
        rows = [self.parts[t].delta() if t in self.parts else weight.new_zeros(dim, dim) for t in "qkv"]
        return weight + torch.cat(rows).to(weight.dtype)


LORA_TARGETS = ("qkv", "qv")


def add_lora(backbone: Backbone, rank: int, alpha: float, targets: str = "qkv") -> list[nn.Module]:
    """LoRA on every block's fused q/k/v weight (all of it, or the q and v rows); originals stay frozen."""
    if targets not in LORA_TARGETS:
        raise ValueError(f"LoRA targets must be one of {', '.join(LORA_TARGETS)}, got {targets!r}")
    loras: list[nn.Module] = []
    for block in backbone.blocks:
        module, name = _qkv_of(backbone, block)
        w = getattr(module, name)
        lora = LoRA(w.shape[0], w.shape[1], rank, alpha) if targets == "qkv" else SlicedLoRA(w.shape[1], rank, alpha, targets)
        parametrize.register_parametrization(module, name, lora)
        getattr(module.parametrizations, name).original.requires_grad_(False)
        loras.append(lora)
    return loras


class PEFTMethod(Method):
    """A PEFT baseline: modules inserted into the frozen backbone (by `insert`) plus a head."""

    def __init__(self, backbone, num_classes, cfg, *args):
        super().__init__(backbone, num_classes, cfg, *args)
        self.peft = nn.ModuleList(self.insert(backbone, cfg))
        self.head = self.make_head()

    def insert(self, backbone: Backbone, cfg) -> list[nn.Module]:
        """Put the method's modules into `backbone` in place; returns them (what trains, with the head)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's features (the inserted modules act inside it), then the head."""
        return self.head(self.head_features(x))

    def phases(self) -> list[Phase]:
        """One phase: the inserted modules and the head train together at one lr."""
        return [Phase(self.name, [{"params": [*self.peft.parameters(), *self.head.parameters()]}])]
