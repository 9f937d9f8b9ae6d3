"""AdaptFormer (Chen et al. 2022): a parallel bottleneck next to every block's MLP, plus a head."""
from __future__ import annotations

from dataclasses import dataclass

from . import register_method
from .adapters import PEFTMethod, add_adapters
from .base import MethodConfig


@dataclass
class AdaptFormerConfig(MethodConfig):
    bottleneck: int = 64
    adapter_scale: float = 0.1  # AdaptFormer's fixed s
    learnable_scale: bool = False
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4


@register_method("adaptformer")
class AdaptFormer(PEFTMethod):
    """AdaptFormer adapters (parallel to each MLP) + head; a PEFT baseline"""

    Config = AdaptFormerConfig

    def insert(self, backbone, cfg):
        return add_adapters(backbone, cfg.bottleneck, cfg.adapter_scale, cfg.learnable_scale)
