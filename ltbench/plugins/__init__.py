"""The plug-in machinery: the registries of every pluggable kind, in one home that plug-ins import.

A plug-in is one module and one registration: `@LOSSES.register("name", help=…)` on a loss
class, `@register_method("name")` on a method class, and so on. The registries live here,
apart from the code that uses them, so a plug-in imports only this small package (no torch),
and a listing or a "did you mean" can read every kind the same way. The decorator is the only
line a name needs, inside the package or outside it:

- names.py     `NameRegistry` (register, look up, "did you mean"), the class of every registry here;
- catalog.py   the listings, read from the sources without importing them (each registry is
               found under its name here, the second argument); a registration that scan cannot
               see fails at import and says so;
- external.py  plug-ins from outside the package (entry points in the group `ltbench.plugins`,
               `.py` files and folders in `LTBENCH_PLUGINS`), imported at the first lookup.
"""
from __future__ import annotations

from typing import Any, Callable

from .names import NameRegistry

#: method classes (`ltbench.methods.base.Method` subclasses), by `--method` name
METHODS: NameRegistry[type] = NameRegistry("method", "METHODS")
#: loss classes `cls(class_counts=…, **options) -> nn.Module`, by `--set loss=` name
LOSSES: NameRegistry[Callable[..., Any]] = NameRegistry("loss", "LOSSES")
#: training samplers, by `--set sampler=` name: a builder `(labels, seed, num_samples) -> LTSampler`,
#: or `data.samplers.Parts` for batches made of several samplers' parts (LPT's "dual")
SAMPLERS: NameRegistry[Any] = NameRegistry("sampler", "SAMPLERS")
#: fusion scorers `fit(FitContext) -> (FusionModel, info)`, by `ltbench fuse --scorer` name
SCORERS: NameRegistry[Callable[..., Any]] = NameRegistry("scorer", "SCORERS")
#: dataset builders `fn(root, seed, **options) -> LTDataset`, by `--dataset` name
DATASETS: NameRegistry[Callable[..., Any]] = NameRegistry("dataset", "DATASETS")
#: backbone builders `fn(img_size, weights, pretrained) -> Backbone`, by `--backbone` name
BACKBONES: NameRegistry[Callable[..., Any]] = NameRegistry("backbone", "BACKBONES")
#: backbones ltbench assembles from open_clip towers, named `clip:<name>` on the command line
CLIP_BACKBONES: NameRegistry[Callable[..., Any]] = NameRegistry("clip backbone", "CLIP_BACKBONES")
#: OOD set loaders `fn(path, wnids) -> FileSplit`, by `--set ood=` name
OOD_SETS: NameRegistry[Callable[..., Any]] = NameRegistry("OOD set", "OOD_SETS")


def register_method(name: str, help: str = "") -> Callable[[type], type]:
    """Register a method class under `name`, which is also its `name` attribute (what records and
    tables show), so the two cannot drift apart; `help` as in `NameRegistry.register`."""

    def deco(cls: type) -> type:
        cls.name = name
        return METHODS.register(name, help)(cls)

    return deco
