"""Full fine-tuning: every backbone parameter trains, at a lower lr than the head."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar

import torch

from ..checks import Float
from ..plugins import register_method
from .base import Method, MethodConfig, Phase, optimizer_space


@dataclass(frozen=True)
class FullFTConfig(MethodConfig):
    """Full fine-tuning's defaults: the backbone at 1/100 of the head's lr, so the pretrained
    features are adjusted rather than overwritten by a randomly initialised head's gradients."""
    SEARCH_SPACE: ClassVar[dict[str, tuple]] = optimizer_space(sgd=(1e-4, 1e-1), adamw=(1e-5, 1e-2))
    optimizer: str = "adamw"
    lr: float = 1e-3  # the head's lr
    backbone_lr_scale: Annotated[float, Float(lo=0, hi=100)] = 0.01  # backbone lr = lr × this
    weight_decay: float = 0.05


@register_method("full-ft")
class FullFineTune(Method):
    """every backbone weight trains (lower lr than the head)"""

    Config = FullFTConfig

    def __init__(self, backbone, num_classes, cfg, *args):
        super().__init__(backbone, num_classes, cfg, *args)
        self.head = self.make_head()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone features (trained), then the head."""
        return self.head(self.head_features(x))

    def phases(self) -> list[Phase]:
        """One phase, two parameter groups: the backbone at `backbone_lr_scale` × lr, the head at lr."""
        return [Phase("full", [
            {"params": list(self.backbone.parameters()), "lr_scale": self.cfg.backbone_lr_scale},
            {"params": list(self.head.parameters())},
        ])]
