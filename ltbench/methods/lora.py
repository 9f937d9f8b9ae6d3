"""LoRA (Hu et al. 2022) on every block's fused q/k/v projection, plus a head."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import register_method
from .adapters import add_lora
from .base import Method, MethodConfig, Phase


@dataclass
class LoRAConfig(MethodConfig):
    rank: int = 8
    alpha: float = 16.0
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4


@register_method("lora")
class LoRAMethod(Method):
    """LoRA on the q/k/v projections + head; a PEFT baseline"""

    Config = LoRAConfig

    def __init__(self, backbone, num_classes, cfg, *args):
        super().__init__(backbone, num_classes, cfg, *args)
        self.loras = torch.nn.ModuleList(add_lora(backbone, cfg.rank, cfg.alpha))
        self.head = self.make_head()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.info.features(x))

    def phases(self) -> list[Phase]:
        return [Phase("lora", [{"params": [*self.loras.parameters(), *self.head.parameters()]}])]
