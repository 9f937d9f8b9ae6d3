"""The registries of every pluggable kind, in one home that plug-in modules import.

A plug-in is one module and one registration: `@LOSSES.register("name", help=…)` on a loss
class, `@register_method("name")` on a method class, and so on. The registries live here,
apart from the code that uses them, so a plug-in imports only this small module (no torch,
no package `__init__`), and a listing or a "did you mean" can read every kind the same way.
Registries with a catalog (methods, datasets, backbones) also need the name's line in
ltbench/catalog.py, which the CLI's listings read without importing anything; registering a
name that is not there fails at import and says so.
"""
from __future__ import annotations

from typing import Any, Callable

from . import catalog
from ._registry import NameRegistry

#: method classes (`ltbench.methods.base.Method` subclasses), by `--method` name
METHODS: NameRegistry[type] = NameRegistry("method", catalog.METHODS)
#: loss classes `cls(class_counts=…, **options) -> nn.Module`, by `--set loss=` name
LOSSES: NameRegistry[Callable[..., Any]] = NameRegistry("loss")
#: training samplers, by `--set sampler=` name: a builder `(labels, seed, num_samples) -> LTSampler`,
#: or `data.samplers.Parts` for batches made of several samplers' parts (LPT's "dual")
SAMPLERS: NameRegistry[Any] = NameRegistry("sampler")
#: fusion scorers `fit(FitContext) -> (FusionModel, info)`, by `ltbench fuse --scorer` name
SCORERS: NameRegistry[Callable[..., Any]] = NameRegistry("scorer")
#: dataset builders `fn(root, seed, **options) -> LTDataset`, by `--dataset` name
DATASETS: NameRegistry[Callable[..., Any]] = NameRegistry("dataset", catalog.DATASETS)
#: backbone builders `fn(img_size, weights, pretrained) -> Backbone`, by `--backbone` name
BACKBONES: NameRegistry[Callable[..., Any]] = NameRegistry("backbone", catalog.BACKBONES)
#: backbones ltbench assembles from open_clip towers, named `clip:<name>` on the command line
CLIP_BACKBONES: NameRegistry[Callable[..., Any]] = NameRegistry("clip backbone", catalog.CLIP_BACKBONES)
#: OOD set loaders `fn(path, wnids) -> FileSplit`, by `--set ood=` name
OOD_SETS: NameRegistry[Callable[..., Any]] = NameRegistry("OOD set")


def register_method(name: str) -> Callable[[type], type]:
    """Register a method class under `name`, which is also its `name` attribute (what records and
    tables show), so the two cannot drift apart."""

    def deco(cls: type) -> type:
        cls.name = name
        return METHODS.register(name)(cls)

    return deco
