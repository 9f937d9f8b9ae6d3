"""LoRA (Hu et al. 2022) on every block's fused q/k/v projection (or its q and v rows), plus a head."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar

from ..checks import Choice, Float, Int
from ..plugins import register_method
from .adapters import PEFTMethod, add_lora
from .base import MethodConfig, optimizer_space


@dataclass(frozen=True)
class LoRAConfig(MethodConfig):
    """LoRA's defaults: rank 8, α 16 (a scale of 2), over the whole fused q/k/v weight."""
    SEARCH_SPACE: ClassVar[dict[str, tuple]] = optimizer_space(sgd=(1e-4, 1e-1), adamw=(1e-4, 1e-2))
    rank: Annotated[int, Int(lo=1, hi=65536)] = 8
    alpha: Annotated[float, Float(lo=0, hi=1e6, lo_open=True)] = 16.0
    targets: Annotated[str, Choice(("qkv", "qv"))] = "qkv"  # qkv: one factor pair over the fused weight | qv: a pair each for q and v
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4


@register_method("lora")
class LoRAMethod(PEFTMethod):
    """LoRA on the q/k/v projections + head; a PEFT baseline"""

    Config = LoRAConfig

    def insert(self, backbone, cfg):
        """A LoRA parametrization on every block's q/k/v weight."""
        return add_lora(backbone, cfg.rank, cfg.alpha, cfg.targets)
