"""Every error a user can cause, in one light module.

The CLI prints these as one line and exits 2; anything else is a bug and keeps its
traceback. Keeping them here (not beside the heavy modules that raise them) lets the CLI
know them without importing torch, timm or open_clip.
"""
from __future__ import annotations

from .plugins.external import PluginError
from .plugins.names import UnknownNameError


class ConfigError(ValueError):
    """A bad flag, `--set` key or value, or config file."""


class BudgetError(ValueError):
    """A budget string that does not parse."""


class DataError(ValueError):
    """Bad input data; the message names the file, line or value at fault."""


class BackboneError(RuntimeError):
    """A backbone that cannot be built or loaded (names the weights file or how to pass one)."""


class RegistryError(RuntimeError):
    """A registry lookup or write that cannot be done (unknown or duplicate name, newer format)."""


class BrokenExpertWarning(UserWarning):
    """An indexed expert whose folder is missing or unreadable: `ls`/`report` skip it and name it."""


class TrainingError(RuntimeError):
    """A run that cannot go on (NaN loss, unreadable checkpoint …)."""


class FusionError(ValueError):
    """A user error in fusion (mismatched experts, missing val logits, bad option)."""


class ExpertError(ValueError):
    """An expert that cannot be loaded, exported or asked to predict (bad file, other backbone, bad option)."""


USER_ERRORS: tuple[type[Exception], ...] = (UnknownNameError, PluginError, ConfigError, BudgetError, DataError,
                                            BackboneError, RegistryError, TrainingError, FusionError, ExpertError)
