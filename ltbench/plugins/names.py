"""`NameRegistry`: the name lookup shared by datasets, backbones, methods, losses, samplers and scorers.

One pattern everywhere (timm's `register_model`): a decorator registers a builder under a
name, `get(name)` answers an unknown name with the known ones and the closest match. The
registries themselves live in ltbench/plugins/__init__.py; a lookup first imports the outside
plug-ins (ltbench/plugins/external.py), so their names are known wherever a name is.
"""
from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterable, Iterator, TypeVar

from .catalog import first_line, is_ltbench, sees, table
from .external import load as load_outside

T = TypeVar("T")


def closest(name: object, known: Iterable[str], cutoff: float = 0.5) -> str | None:
    """The one "did you mean" rule every lookup shares: the closest of `known` to `name`, or None."""
    close = difflib.get_close_matches(str(name), list(known), n=1, cutoff=cutoff)
    return close[0] if close else None


def suggest(name: object, known: Iterable[str], cutoff: float = 0.5) -> str:
    """" Did you mean 'x'?" for the closest of `known`, or "" (a sentence to append to an error)."""
    close = closest(name, known, cutoff)
    return f" Did you mean {close!r}?" if close else ""


class UnknownNameError(KeyError):
    """An unknown dataset / backbone / method name; the message lists what is known."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


class NameRegistry(Generic[T]):
    """Name -> builder for one pluggable kind (methods, losses, samplers, datasets, backbones, scorers, OOD sets).

    Not to be confused with `ltbench.registry.Registry`, the on-disk store of trained experts: this one
    only maps names to code, so plug-in modules can register themselves with a decorator.
    `listed_as`: the registry's name in ltbench/plugins/__init__.py, under which the catalog's scan
    of the sources finds its registrations (what the listings show without importing); every
    registration from a module the catalog reads (ltbench's own, an outside plug-in's) must be one
    the scan sees. Any other module (a script, a notebook) registers as it likes, unlisted."""

    def __init__(self, kind: str, listed_as: str | None = None) -> None:
        self.kind = kind
        self.listed_as = listed_as
        self._items: dict[str, T] = {}
        self._help: dict[str, str] = {}

    def register(self, name: str, help: str = "") -> Callable[[T], T]:
        """Decorator registering `obj` under `name`, with `help` (default: the first docstring line)
        as its one-line help. Checked against the catalog's scan at import: a registration the scan
        cannot see (a name built at run time, a registry under another name, a call inside a
        function) would be missing from `ltbench methods` etc., so it fails loudly instead."""

        def deco(obj: T) -> T:
            module = getattr(obj, "__module__", None)
            if name in self._items:
                first = getattr(self._items[name], "__module__", "?")
                raise ValueError(f"{self.kind} {name!r} registered twice (by module {first}, then {module})")
            if self.listed_as is not None and isinstance(module, str):
                self._check_listed(name, module)
            self._items[name] = obj
            self._help[name] = help or first_line(getattr(obj, "__doc__", None))
            return obj

        return deco

    def _check_listed(self, name: str, module: str) -> None:
        """A registration the listings would get wrong fails at import: a name of ltbench's taken by
        another module, or one the catalog's scan of a module it reads cannot see (the torch-free
        listings would miss it)."""
        own = table(self.listed_as).get(name, (module,))[0]
        if own != module and not is_ltbench(module):
            raise ValueError(f"{self.kind} {name!r} (module {module}) is ltbench's own (module {own}):"
                             f" a plug-in registers a name of its own")
        if not sees(self.listed_as, name, module):
            raise ValueError(
                f"{self.kind} {name!r} (module {module}) is not found by ltbench/plugins/catalog.py's scan of"
                f" the sources: register it at module level with a literal name, e.g."
                f" @{self.listed_as}.register({name!r}, help='…'), so listings find it without importing")

    def get(self, name: str) -> T:
        """The builder for `name`; an unknown name is a UnknownNameError listing the known ones."""
        load_outside()
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        """The error text for an unknown `name`, for callers that raise their own error type."""
        return f"unknown {self.kind} {name!r}.{suggest(name, self._items)} Known: {', '.join(sorted(self._items))}"

    def help(self, name: str) -> str:
        """The one-line help: the `help=` given at registration, else the builder's first doc line."""
        load_outside()
        return self._help.get(name, "")

    def __contains__(self, name: object) -> bool:
        load_outside()
        return name in self._items

    def registered(self) -> list[str]:
        """The names in the order they were registered (the order a module lists them in, for messages
        that read better in it than sorted: instance, class, sqrt, dual)."""
        load_outside()
        return list(self._items)

    def __iter__(self) -> Iterator[str]:
        load_outside()
        return iter(sorted(self._items))
