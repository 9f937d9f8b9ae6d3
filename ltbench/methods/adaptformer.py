"""AdaptFormer (Chen et al. 2022): a parallel bottleneck next to every block's MLP, plus a head."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import register_method
from .adapters import add_adapters
from .base import Method, MethodConfig, Phase


@dataclass
class AdaptFormerConfig(MethodConfig):
    bottleneck: int = 64
    adapter_scale: float = 0.1  # AdaptFormer's fixed s
    learnable_scale: bool = False
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4


@register_method("adaptformer")
class AdaptFormer(Method):
    """AdaptFormer adapters (parallel to each MLP) + head; a PEFT baseline"""

    Config = AdaptFormerConfig

    def __init__(self, backbone, num_classes, cfg, *args):
        super().__init__(backbone, num_classes, cfg, *args)
        self.adapters = torch.nn.ModuleList(add_adapters(backbone, cfg.bottleneck, cfg.adapter_scale, cfg.learnable_scale))
        self.head = self.make_head()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.info.features(x))

    def phases(self) -> list[Phase]:
        return [Phase("adapters", [{"params": [*self.adapters.parameters(), *self.head.parameters()]}])]
