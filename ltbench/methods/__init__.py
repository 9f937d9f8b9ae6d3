"""Methods, one module each, registered by name: `create_method(name, backbone, …)`.

Import-only: the registry and `register_method` live in ltbench/plugins/, building in build.py.
Importing this package imports every module in which the plug-in catalog's scan of the sources
finds a method registration, so a new method is its module and its `@register_method`.
"""
from __future__ import annotations


from ..plugins import METHODS, catalog, register_method
from .build import create_method, method_config_fields

catalog.import_registering("METHODS")

__all__ = ["METHODS", "create_method", "method_config_fields", "register_method"]
