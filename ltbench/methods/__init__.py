"""Methods, one module each, registered by name: `create_method(name, backbone, …)`.

Import-only: the registry and `register_method` live in ltbench/plugins.py, building in
build.py. Importing this package imports every module in which ltbench/catalog.py's scan of the
sources finds a method registration, so a new method is its module and its `@register_method`.
"""
from __future__ import annotations

import importlib

from ..plugins import catalog
from ..plugins import METHODS, register_method
from .build import create_method, method_config_fields

for _module in sorted({module for module, _ in catalog.table("METHODS").values()}):
    importlib.import_module(_module)

__all__ = ["METHODS", "create_method", "method_config_fields", "register_method"]
