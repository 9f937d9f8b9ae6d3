"""AdaptFormer (Chen et al. 2022): a parallel bottleneck next to every block's MLP, plus a head."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar

from ..checks import Bool, Float, Int
from ..plugins import register_method
from .adapters import PEFTMethod, add_adapters
from .base import MethodConfig, optimizer_space


@dataclass(frozen=True)
class AdaptFormerConfig(MethodConfig):
    """AdaptFormer's defaults: AdamW at a PEFT lr, a fixed adapter scale s = 0.1 as in the paper."""
    SEARCH_SPACE: ClassVar[dict[str, tuple]] = optimizer_space(sgd=(1e-4, 1e-1), adamw=(1e-4, 1e-2))
    bottleneck: Annotated[int, Int(lo=1, hi=65536)] = 64
    adapter_scale: Annotated[float, Float(lo=0, hi=100)] = 0.1  # AdaptFormer's fixed s
    learnable_scale: Annotated[bool, Bool()] = False
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4


@register_method("adaptformer")
class AdaptFormer(PEFTMethod):
    """AdaptFormer adapters (parallel to each MLP) + head; a PEFT baseline"""

    Config = AdaptFormerConfig

    def insert(self, backbone, cfg):
        """An adapter beside every block's MLP."""
        return add_adapters(backbone, cfg.bottleneck, cfg.adapter_scale, cfg.learnable_scale)
