"""Tiny random ViTs (the same weights every time) that unit tests build in milliseconds."""
from __future__ import annotations

from typing import Callable

import torch
from timm.models import VisionTransformer

from ..plugins import BACKBONES
from .base import Backbone, finish_timm, weights_record


def _tiny(name: str, reg_tokens: int = 0) -> Callable[..., Backbone]:
    """The builder of a tiny random ViT (the same weights every time) for tests."""
    def build(img_size: int | None = None, weights: str | None = None, pretrained: bool = True) -> Backbone:
        img_size = img_size or 32
        with torch.random.fork_rng(devices=[]):  # the caller's seeded RNG stays untouched
            torch.manual_seed(0)  # the tiny test backbones are random but always the same
            model = VisionTransformer(
                img_size=img_size, patch_size=8, embed_dim=32, depth=4, num_heads=2, mlp_ratio=2.0,
                num_classes=0, reg_tokens=reg_tokens, no_embed_class=reg_tokens > 0,
            )
        if weights:
            model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        return finish_timm(name, model, img_size, weights_record("file", weights) if weights else
                       weights_record("random init (seed 0)"))
    return build


# The call form: the builders are made by `_tiny`, so their help is the `help=` keyword.
BACKBONES.register("vit-tiny-test", help="tiny random ViT for tests (dim 32, depth 4)")(_tiny("vit-tiny-test"))
BACKBONES.register("vit-tiny-reg-test", help="tiny random ViT for tests (dim 32, depth 4, 2 register tokens)")(
    _tiny("vit-tiny-reg-test", reg_tokens=2))
