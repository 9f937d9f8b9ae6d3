"""The old import path of ltbench/plugins/names.py, for the modules that still import it from here."""
from .plugins.names import UnknownNameError, suggest  # noqa: F401
