"""LPT++ (arXiv 2409.11323): LPT's prompts plus AdaptFormer-style visual adapters.

Phase 1 trains the shared prompt and the adapters (each with a learnable scale s) together
with the cosine classifier; phase 2 freezes them and learns the group prompts as in LPT.
On a timm backbone this is LPT++'s visual expert; on a `clip:` backbone its
vision-language expert, whose cosine classifier starts from the text classifier. The
experts are combined afterwards with `ltbench fuse` (the MoE scorer, phase 3).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch

from ..checks import Float, Int
from ..plugins import register_method
from .adapters import add_adapters
from .lpt import LPT, LPTConfig


@dataclass(frozen=True)
class LPTPlusPlusConfig(LPTConfig):
    """LPT's keys plus the adapters' bottleneck and initial scale."""
    # Bottleneck 48 makes the adapters add about 1% of a ViT-B/16's parameters
    # (12 × (2·768·48 + 48 + 768 + 1) = 894,540 = 1.04% of 85.8M), LPT++'s stated overhead.
    bottleneck: Annotated[int, Int(lo=1, hi=65536)] = 48
    adapter_scale: Annotated[float, Float(lo=0, hi=100)] = 0.1  # initial value of the learnable scale s


@register_method("lpt++")
class LPTPlusPlus(LPT):
    """LPT++: LPT prompts + visual adapters with a learnable scale (visual or VL expert)"""

    Config = LPTPlusPlusConfig

    def __init__(self, backbone, num_classes, cfg, *args):
        adapters = add_adapters(backbone, cfg.bottleneck, cfg.adapter_scale, learnable_scale=True)
        super().__init__(backbone, num_classes, cfg, *args)
        self.adapters = torch.nn.ModuleList(adapters)

    def phase_params(self, phase: int) -> list:
        """LPT's parameters, the adapters in phase 1 only: frozen in phase 2 with the shared prompt, they
        keep the query features that the group prompts are matched on fixed while the pool trains."""
        params = super().phase_params(phase)
        return params + list(self.adapters.parameters()) if phase == 1 else params
