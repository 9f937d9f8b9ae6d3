"""`create_backbone`: any backbone by name — an ltbench registration, `clip:<open_clip model>[/<tag>]`,
or a timm ViT name[.tag] (timm's `create_model` habit)."""
from __future__ import annotations


import timm

from ..plugins import BACKBONES, catalog
from ..plugins.names import UnknownNameError, suggest
from .base import Backbone, timm_backbone
from .clip import create_clip_backbone
from .names import parse_backbone_name

catalog.import_registering("BACKBONES", "CLIP_BACKBONES")  # every backbone module registers itself


def create_backbone(name: str, img_size: int | None = None, weights: str | None = None,
                    pretrained: bool = True) -> Backbone:
    """Build a frozen backbone by ltbench name, `clip:<open_clip model>[/<tag>]`, or timm name[.tag]."""
    parsed = parse_backbone_name(name)
    if parsed.kind == "clip":
        return create_clip_backbone(name, img_size=img_size, weights=weights, pretrained=pretrained)
    if parsed.kind == "ltbench":
        return BACKBONES.get(name)(img_size=img_size, weights=weights, pretrained=pretrained)
    if timm.is_model(name):  # any architecture timm knows, with or without a pretrained tag
        return timm_backbone(name, img_size, weights, pretrained)
    vit_names = timm.list_models("vit_*")
    hint = suggest(name, list(BACKBONES) + vit_names)
    raise UnknownNameError(f"unknown backbone {name!r}.{hint} Known: {', '.join(BACKBONES)}, or any timm ViT name")
