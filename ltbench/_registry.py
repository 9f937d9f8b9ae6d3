"""`NameRegistry`: the name lookup shared by datasets, backbones, methods, losses, samplers and scorers.

One pattern everywhere (timm's `register_model`): a decorator registers a builder under a
name, `get(name)` answers an unknown name with the known ones and the closest match. The
registries themselves live in ltbench/plugins.py.
"""
from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterable, Iterator, TypeVar

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
    `catalog` (ltbench/catalog.py's table for this kind): the names and one-line help known
    without importing; every registration must be listed there, from the module it names."""

    def __init__(self, kind: str, catalog: dict[str, tuple[str, str]] | None = None) -> None:
        self.kind = kind
        self.catalog = catalog
        self._items: dict[str, T] = {}
        self._help: dict[str, str] = {}

    def register(self, name: str, help: str = "") -> Callable[[T], T]:
        """Decorator registering `obj` under `name`; checked against the catalog at import, so a
        registration that `ltbench methods` etc. would not list fails loudly instead of hiding."""

        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            if self.catalog is not None:
                module = getattr(obj, "__module__", None)
                if self.catalog.get(name, (None,))[0] != module:
                    raise ValueError(f"{self.kind} {name!r} (module {module}) is not in ltbench/catalog.py: add"
                                     f" {name!r}: ({module!r}, '<one-line help>') so listings find it without importing")
                doc = self.catalog[name][1]
            else:
                doc = help or (getattr(obj, "__doc__", None) or "").strip().splitlines()
            self._items[name] = obj
            self._help[name] = doc if isinstance(doc, str) else (doc[0] if doc else "")
            return obj

        return deco

    def get(self, name: str) -> T:
        """The builder for `name`; an unknown name is a UnknownNameError listing the known ones."""
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        """The error text for an unknown `name`, for callers that raise their own error type."""
        return f"unknown {self.kind} {name!r}.{suggest(name, self._items)} Known: {', '.join(sorted(self._items))}"

    def help(self, name: str) -> str:
        """The one-line help shown by listings (the catalog's, or the builder's first doc line)."""
        return self._help.get(name, "")

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def registered(self) -> list[str]:
        """The names in the order they were registered (the order a module lists them in, for messages
        that read better in it than sorted: instance, class, sqrt, dual)."""
        return list(self._items)

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))
