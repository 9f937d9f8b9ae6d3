"""LiT-style alignment: both towers locked, the two projections trained contrastively.

This is how ltbench makes its offline vision-language expert (`clip:dinov2-minilm`) from a
visual-only and a text-only tower. Images are scored against the *unique* captions of the
classes (every template of every class name; a class's embedding is its captions'
normalised mean), so the many images that share a caption are never each other's
negatives. Both towers are frozen, so the image features are cached once and the text
features of the captions are computed once: training touches only the projections.
The registered expert's logits are its text classifier's; later experts start from its
aligned projections with `--set init=<this expert>`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar

import torch
import torch.nn.functional as F

from ..checks import Choice
from ..plugins import register_method
from .base import Method, MethodConfig, Phase, optimizer_space


@dataclass(frozen=True)
class LiTConfig(MethodConfig):
    """LiT's defaults: AdamW, batch 128 (on cached features a step is nearly free; the batch size is tuned too)."""
    # Batch size matters here: on cached features a step is nearly free, and the batch sets the negatives.
    # The loss too: plain CE over the class captions learns the training split's prior (on a long-tailed
    # split, the head classes only); logit adjustment (la) removes it for a balanced test. Batches of 16 or
    # 32: under a short budget a batch of 128 leaves a tuning trial one or two steps, too few to rank it.
    SEARCH_SPACE: ClassVar[dict[str, tuple]] = optimizer_space(sgd=(1e-3, 1.0), adamw=(1e-4, 1e-1),
                                                               batch_size=("choice", [16, 32]),
                                                               loss=("choice", ["ce", "la"]))
    templates: Annotated[str, Choice(("simple", "openai"))] = "simple"
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 128


@register_method("lit")
class LiT(Method):
    """align a clip: backbone's projections on the training split (LiT: locked towers)"""

    Config = LiTConfig

    def __init__(self, backbone, num_classes, cfg, *args):
        super().__init__(backbone, num_classes, cfg, *args)
        if not backbone.is_clip:
            raise ValueError(f"lit needs a vision-language backbone (clip:…), got {backbone.name!r}")
        if not cfg.head_proj:
            raise ValueError("lit trains the projections themselves: head_proj=false does not apply")
        captions = backbone.captions(self.classnames, cfg.templates)
        self.templates_per_class = len(captions) // num_classes
        # pooled, unprojected text features of every caption: the text tower runs once
        self.register_buffer("caption_features", backbone.text_features(captions, project=False))

    def class_embeddings(self) -> torch.Tensor:
        """[C, D]: each class's normalised mean over its captions' normalised projections."""
        t = F.normalize(self.info.project_text(self.caption_features), dim=-1)
        return F.normalize(t.view(self.num_classes, self.templates_per_class, -1).mean(1), dim=-1)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled, unprojected image features: the towers are locked, so they are cached once."""
        return self.info.finish(self.info.tokens(x), project=False)

    def classify(self, feats: torch.Tensor) -> torch.Tensor:
        """CLIP-style logits: the trained projections' cosine to each class embedding, times the learnt temperature."""
        img = F.normalize(self.info.project_image(feats), dim=-1)
        return self.backbone.logit_scale.exp() * img @ self.class_embeddings().t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """embed then classify, for prediction on images."""
        return self.classify(self.embed(x))

    def phases(self) -> list[Phase]:
        """One phase on cached features: both projections and the logit scale, nothing in the towers."""
        params = [*self.info.projection_parameters(), self.backbone.logit_scale]
        return [Phase("projections", [{"params": params}], cache_features=True)]
