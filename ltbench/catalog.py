"""The old import path of ltbench/plugins/catalog.py, for the modules that still import it from here."""
from .plugins.catalog import table  # noqa: F401
