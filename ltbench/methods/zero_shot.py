"""Zero-shot CLIP: cosine against text embeddings of prompt templates × class names."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
import torch.nn.functional as F

from ..checks import Choice
from ..plugins import register_method
from .base import Method, MethodConfig, Phase


@dataclass(frozen=True)
class ZeroShotConfig(MethodConfig):
    """Only the prompt templates: zero-shot trains nothing."""
    templates: Annotated[str, Choice(("simple", "openai"))] = "simple"  # open_clip's SIMPLE_IMAGENET_TEMPLATES, or "openai" (80 templates)


@register_method("zero-shot")
class ZeroShot(Method):
    """CLIP zero-shot: image embedding · text classifier (no training; needs a clip: backbone)"""

    Config = ZeroShotConfig

    def __init__(self, backbone, num_classes, cfg, *args):
        super().__init__(backbone, num_classes, cfg, *args)
        if not backbone.is_clip:
            raise ValueError(f"zero-shot needs a vision-language backbone (clip:…), got {backbone.name!r}")
        if not self.classnames:
            raise ValueError("zero-shot needs class names")
        if not cfg.head_proj:
            raise ValueError("zero-shot compares joint-space embeddings: head_proj=false does not apply")
        self.register_buffer("classifier", backbone.text_classifier(self.classnames, cfg.templates))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """CLIP's logits: scaled cosine of the image embedding to each class's text embedding."""
        scale = self.backbone.logit_scale.exp()
        return scale * F.normalize(self.info.features(x), dim=-1) @ self.classifier

    def phases(self) -> list[Phase]:
        """None: the text classifier is the model (a budget spends nothing)."""
        return []
