"""Methods, one module each, registered by name: `create_method(name, backbone, …)`."""
from __future__ import annotations

from dataclasses import fields
from typing import Any

import numpy as np

from .. import catalog
from .._registry import NameRegistry
from ..backbones.base import Backbone
from .base import resolve_method_config

METHODS: NameRegistry[type] = NameRegistry("method", catalog.METHODS)


def register_method(name: str):
    def deco(cls):
        cls.name = name
        return METHODS.register(name)(cls)

    return deco


def method_config_fields(name: str) -> dict[str, Any]:
    """The method's config keys and defaults (what `--set` may change)."""
    cls = METHODS.get(name)
    return {f.name: f.default for f in fields(cls.Config)}


def create_method(name: str, backbone: Backbone, num_classes: int, class_counts: np.ndarray | None = None,
                  classnames: list[str] | None = None, **overrides: Any):
    cls = METHODS.get(name)
    return cls(backbone, num_classes, resolve_method_config(cls, overrides), class_counts, classnames)


from . import adaptformer, full_ft, linear_probe, lit, lora, lpt, lpt_pp, lt_soups, vpt, zero_shot  # noqa: E402,F401
