"""VPT (Jia et al. 2022): learnable tokens after the prefix tokens of a frozen ViT.

Shallow: one set at the input, carried through every block. Deep: a fresh set before each
block, the previous block's prompt outputs dropped. LPT's Table 1 trains VPT with SGD
lr 0.02, wd 1e-4 and class-balanced sampling (44.17% on Places-LT): those are the defaults.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar

import torch
from torch import nn

from ..checks import Int
from ..plugins import register_method
from .base import Method, MethodConfig, Phase, optimizer_space
from .prompting import patch_area, prompted_features, vpt_init_


@dataclass(frozen=True)
class VPTConfig(MethodConfig):
    """VPT's defaults: SGD as VPT trains, class-balanced sampling (the long-tail baseline's), 10 prompt tokens."""
    # VPT's own sweep (SGD, 100 epochs): base lr 0.05 … 50 ×B/256 (0.006 … 6 at B = 32). In short runs SGD
    # diverges well below its top (measured at the demo's size, 3 epochs, B = 32: lr 0.005 → 63.4 % test,
    # 0.05 → loss 134 by step 23; 0.02, the default, 19.4 %; at 42 px, 4 epochs, 0.0255 → 10.0 %, its loss rising
    # from step 5): SGD 1e-4 … 1e-2; AdamW 1e-4 … 3e-2.
    SEARCH_SPACE: ClassVar[dict[str, tuple]] = optimizer_space(sgd=(1e-4, 1e-2), adamw=(1e-4, 3e-2))
    prompt_len: Annotated[int, Int(lo=1, hi=4096)] = 10
    sampler: str = "class"
    optimizer: str = "sgd"
    lr: float = 0.02
    weight_decay: float = 1e-4


class _VPT(Method):
    Config = VPTConfig
    deep: bool

    def __init__(self, backbone, num_classes, cfg, *args):
        super().__init__(backbone, num_classes, cfg, *args)
        sets = backbone.depth if self.deep else 1
        self.prompts = nn.Parameter(vpt_init_(torch.empty(sets, cfg.prompt_len, backbone.embed_dim), patch_area(backbone)))
        self.head = self.make_head()

    def _prompt(self, i: int) -> torch.Tensor | None:
        if self.deep:
            return self.prompts[i]
        return self.prompts[0] if i == 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone with prompts inserted (every block for deep, the input only for shallow), then the head."""
        return self.head(prompted_features(self.info, x, self._prompt, self.cfg.head_proj))

    def phases(self) -> list[Phase]:
        """One phase: prompts and head."""
        return [Phase("prompt", [{"params": [self.prompts, *self.head.parameters()]}])]


@register_method("vpt-deep")
class VPTDeep(_VPT):
    """VPT-deep: prompt tokens replaced before every block"""

    deep = True


@register_method("vpt-shallow")
class VPTShallow(_VPT):
    """VPT-shallow: prompt tokens inserted once, at the input"""

    deep = False
