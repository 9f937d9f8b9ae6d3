"""One parser for backbone names; light (no torch, no timm), so configs and suites can be read
and checked cheaply.

    dinov2-s14                          a registered backbone (ltbench's, found by ltbench/plugins/catalog.py,
                                        or an outside plug-in's)
    clip:dinov2-minilm                  one of ltbench's assembled open_clip backbones
    clip:ViT-B-32/openai                an open_clip model with its pretrained tag
    vit_base_patch16_224.augreg_in21k   a timm architecture with its pretrained tag (timm's own
                                        `<architecture>.<tag>` form, split at the first dot)
"""
from __future__ import annotations

from dataclasses import dataclass

from ..plugins import BACKBONES, CLIP_BACKBONES, NameRegistry, catalog


@dataclass(frozen=True)
class BackboneName:
    kind: str  # "ltbench" | "clip" | "timm"
    model: str  # the registered name, the open_clip model (or assembled name), the timm architecture
    tag: str | None = None  # the pretrained tag, if the name carries one

    @property
    def assembled(self) -> bool:
        """An ltbench-assembled clip: backbone (clip:dinov2-minilm …) rather than an open_clip model."""
        return self.kind == "clip" and _registered("CLIP_BACKBONES", CLIP_BACKBONES, self.model)


def _registered(listed_as: str, registry: NameRegistry, name: str) -> bool:
    """Whether `name` is registered: ltbench's names are read from the sources (no torch); any
    other is looked up in the registry, which imports the outside plug-ins first."""
    return name in catalog.table(listed_as) or name in registry


def parse_backbone_name(name: str) -> BackboneName:
    """Split a backbone name into kind, model and pretrained tag (nothing is looked up in timm)."""
    if name.startswith("clip:"):
        model, _, tag = name[len("clip:"):].partition("/")
        return BackboneName("clip", model, tag or None)
    if _registered("BACKBONES", BACKBONES, name):
        return BackboneName("ltbench", name)
    arch, _, tag = name.partition(".")
    return BackboneName("timm", arch, tag or None)
