"""Methods, one module each, registered by name: `create_method(name, backbone, …)`.

Import-only: the registry and `register_method` live in ltbench/plugins.py, building in
build.py. Importing this package imports every module that ltbench/catalog.py names for a
method, so a new method is its module, its `@register_method` and its catalog line.
"""
from __future__ import annotations

import importlib

from .. import catalog
from ..plugins import METHODS, register_method
from .build import create_method, method_config_fields

for _module in sorted({module for module, _ in catalog.METHODS.values()}):
    importlib.import_module(_module)

__all__ = ["METHODS", "create_method", "method_config_fields", "register_method"]
