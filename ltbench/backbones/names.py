"""One parser for backbone names; light (no torch, no timm), so configs and suites can be read
and checked cheaply.

    dinov2-s14                          a backbone registered by ltbench (found by ltbench/catalog.py)
    clip:dinov2-minilm                  one of ltbench's assembled open_clip backbones
    clip:ViT-B-32/openai                an open_clip model with its pretrained tag
    vit_base_patch16_224.augreg_in21k   a timm architecture with its pretrained tag (timm's own
                                        `<architecture>.<tag>` form, split at the first dot)
"""
from __future__ import annotations

from dataclasses import dataclass

from .. import catalog


@dataclass(frozen=True)
class BackboneName:
    kind: str  # "ltbench" | "clip" | "timm"
    model: str  # the registered name, the open_clip model (or assembled name), the timm architecture
    tag: str | None = None  # the pretrained tag, if the name carries one

    @property
    def assembled(self) -> bool:
        """An ltbench-assembled clip: backbone (clip:dinov2-minilm …) rather than an open_clip model."""
        return self.kind == "clip" and self.model in catalog.table("CLIP_BACKBONES")


def parse_backbone_name(name: str) -> BackboneName:
    """Split a backbone name into kind, model and pretrained tag (nothing is looked up in timm)."""
    if name.startswith("clip:"):
        model, _, tag = name[len("clip:"):].partition("/")
        return BackboneName("clip", model, tag or None)
    if name in catalog.table("BACKBONES"):
        return BackboneName("ltbench", name)
    arch, _, tag = name.partition(".")
    return BackboneName("timm", arch, tag or None)
