"""Building a registered method by name, and the config keys it takes (what `--set` may change)."""
from __future__ import annotations

from dataclasses import fields
from typing import Any

import numpy as np

from ..backbones.base import Backbone
from ..plugins import METHODS
from .base import MethodConfig, resolve_method_config


def method_config_fields(name: str) -> dict[str, Any]:
    """The method's config keys and defaults (what `--set` may change)."""
    cls = METHODS.get(name)
    return {f.name: f.default for f in fields(cls.Config)}


def create_method(name: str, backbone: Backbone, num_classes: int, class_counts: np.ndarray | None = None,
                  classnames: list[str] | None = None, config: MethodConfig | None = None, **overrides: Any):
    """The method `name` on `backbone` with `config` (a run's, already resolved), else its config
    resolved from the defaults and `overrides` (checked, so a typo fails before anything trains)."""
    cls = METHODS.get(name)
    if config is not None and overrides:
        raise TypeError("create_method: give a resolved config or overrides, not both")
    return cls(backbone, num_classes, config if config is not None else resolve_method_config(cls, overrides),
               class_counts, classnames)
