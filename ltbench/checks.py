"""A type and a range for every configurable value, declared next to its default.

    batch_size: Annotated[int, Int(lo=1)] = 32                  # a method config field
    def fashion_mnist_lt(..., head: Annotated[int, Int(lo=1)] = 500)   # a dataset option
    "eval_batch_size": Key(128, Int(lo=1)),                     # a run key (config.RUN_KEYS)

`check_key` is the one check that `train`, `bench` and `--config` go through (via
`spec.resolve_run`); a value that fails it is a one-line ConfigError naming the key,
the value and what is expected, raised before any work starts. A subclass that only changes
a default (`batch_size: int = 64`) keeps its base class's check.
"""
from __future__ import annotations

import math
import sys
import typing
from dataclasses import dataclass, fields, is_dataclass
from typing import Any, Callable, Iterable

from .errors import ConfigError


class Check:
    """A callable that returns the (possibly coerced) value or raises ValueError; `what` says what it wants."""

    what = "a value"

    def __call__(self, value: Any) -> Any:
        return value


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v: float) -> str:
    return str(v) if _is_int(v) else f"{v:g}"


def _range_text(lo, hi, lo_open, hi_open) -> str:
    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {_num(lo)}")
    if hi is not None:
        parts.append(f"{'<' if hi_open else '<='} {_num(hi)}")
    return " and ".join(parts)


@dataclass(frozen=True)
class Int(Check):
    """An integer in an optional closed range (booleans refused)."""
    lo: int | None = None
    hi: int | None = None

    @property
    def what(self) -> str:
        """What the check expects, for the error message."""
        r = _range_text(self.lo, self.hi, False, False)
        return f"an integer {r}" if r else "an integer"

    def __call__(self, value: Any) -> int:
        if not _is_int(value) or (self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi):
            raise ValueError(self.what)
        return value


@dataclass(frozen=True)
class Float(Check):
    """A finite number in an optional range, either end optionally open."""
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False  # lo itself excluded (e.g. a learning rate > 0)
    hi_open: bool = False

    @property
    def what(self) -> str:
        """What the check expects, for the error message."""
        r = _range_text(self.lo, self.hi, self.lo_open, self.hi_open)
        return f"a finite number {r}" if r else "a finite number"

    def __call__(self, value: Any) -> float:
        if not (_is_int(value) or isinstance(value, float)) or not math.isfinite(value):
            raise ValueError(self.what)
        v = float(value)
        if self.lo is not None and (v < self.lo or (self.lo_open and v == self.lo)):
            raise ValueError(self.what)
        if self.hi is not None and (v > self.hi or (self.hi_open and v == self.hi)):
            raise ValueError(self.what)
        return v


@dataclass(frozen=True)
class Bool(Check):
    """true or false, never a number or a string that looks like one."""
    what = "true or false"

    def __call__(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise ValueError(self.what)
        return value


@dataclass(frozen=True)
class Str(Check):
    """A string, non-empty unless told otherwise."""
    nonempty: bool = True

    @property
    def what(self) -> str:
        """What the check expects, for the error message."""
        return "a non-empty string" if self.nonempty else "a string"

    def __call__(self, value: Any) -> str:
        if not isinstance(value, str) or (self.nonempty and not value.strip()):
            raise ValueError(self.what)
        return value


@dataclass(frozen=True)
class Choice(Check):
    """One of fixed values, or of the names a callable lists (a registry, read when checked)."""

    options: tuple | Callable[[], Iterable[Any]] = ()

    def _options(self) -> list[Any]:
        return list(self.options() if callable(self.options) else self.options)

    @property
    def what(self) -> str:
        """The allowed values, as a user would type them."""
        return "one of " + ", ".join(str(o).lower() if isinstance(o, bool) else str(o) for o in self._options())

    def __call__(self, value: Any) -> Any:
        # `is` for booleans, so that 1 is not taken for true
        if not any(value is o if isinstance(o, bool) or isinstance(value, bool) else value == o
                   for o in self._options()):
            raise ValueError(self.what)
        return value


@dataclass(frozen=True)
class Opt(Check):
    """None, or what `inner` accepts."""

    inner: Check = Check()

    @property
    def what(self) -> str:
        """What the check expects, for the error message."""
        return f"null or {self.inner.what}"

    def __call__(self, value: Any) -> Any:
        if value is None:
            return None
        try:
            return self.inner(value)
        except ValueError:
            raise ValueError(self.what) from None


@dataclass(frozen=True)
class Either(Check):
    """The first of several checks that accepts the value."""

    options: tuple[Check, ...] = ()
    label: str | None = None  # a shorter description than the options' own

    @property
    def what(self) -> str:
        """What the check expects, for the error message."""
        return self.label or " or ".join(c.what for c in self.options)

    def __call__(self, value: Any) -> Any:
        for c in self.options:
            try:
                return c(value)
            except ValueError:
                pass
        raise ValueError(self.what)


@dataclass(frozen=True)
class ListOf(Check):
    """A list whose every item passes `inner`."""
    inner: Check = Check()
    nonempty: bool = False

    @property
    def what(self) -> str:
        """What the check expects, for the error message."""
        return f"a {'non-empty ' if self.nonempty else ''}list of {self.inner.what.removeprefix('a ').removeprefix('an ')}s"

    def __call__(self, value: Any) -> list:
        if not isinstance(value, (list, tuple)) or (self.nonempty and not value):
            raise ValueError(self.what)
        try:
            return [self.inner(v) for v in value]
        except ValueError:
            raise ValueError(self.what) from None


@dataclass(frozen=True)
class Mapping(Check):
    """A mapping, e.g. a nested section of a YAML config."""
    what = "a mapping of key: value"

    def __call__(self, value: Any) -> dict:
        if not isinstance(value, dict):
            raise ValueError(self.what)
        return value


@dataclass(frozen=True)
class Key:
    """A run key: its default and its check (config.RUN_KEYS)."""

    default: Any
    check: Check


def check_key(key: str, value: Any, check: Check | None) -> Any:
    """`value` checked (and coerced: 1 → 1.0 for a float key) or a one-line ConfigError."""
    if check is None:
        return value
    try:
        return check(value)
    except ValueError as e:
        raise ConfigError(f"--set {key}={value!r}: expected {e}") from None


# -- finding the check declared next to a default -------------------------------------------------
def _from_hint(hint: Any) -> Check | None:
    """The Check in an `Annotated[...]` hint, else one from the plain type (type only, no range)."""
    if typing.get_origin(hint) is typing.Annotated:
        for extra in hint.__metadata__:
            if isinstance(extra, Check):
                return extra
        hint = typing.get_args(hint)[0]
    return None if hint is None else _from_type(hint)


def _from_type(tp: Any) -> Check | None:
    args = typing.get_args(tp)
    origin = typing.get_origin(tp)
    if args and type(None) in args and len(args) == 2:
        inner = _from_type(next(a for a in args if a is not type(None)))
        return Opt(inner) if inner is not None else None
    if tp is bool:
        return Bool()
    if tp is int:
        return Int()
    if tp is float:
        return Float()
    if tp is str:
        return Str(nonempty=False)
    if origin in (list, tuple):
        inner = _from_type(args[0]) if args else None
        return ListOf(inner or Check())
    if origin is dict or tp is dict:
        return Mapping()
    return None


def declared(hint: Any) -> bool:
    """Whether a hint carries an explicit Check (not only a type)."""
    return typing.get_origin(hint) is typing.Annotated and any(isinstance(e, Check) for e in hint.__metadata__)


def _class_hint(cls: type, name: str) -> Any:
    """The annotation of field `name` from the nearest class in the MRO that declares a Check for it,
    else the nearest annotation at all."""
    first = None
    for klass in cls.__mro__:
        ann = klass.__dict__.get("__annotations__", {})
        if name not in ann:
            continue
        hint = ann[name]
        if isinstance(hint, str):
            module = sys.modules.get(klass.__module__)
            ns = {**vars(typing), **(vars(module) if module else {})}
            hint = eval(hint, ns)  # noqa: S307  (our own annotations)
        if declared(hint):
            return hint
        first = hint if first is None else first
    return first


def dataclass_checks(cls: type) -> dict[str, tuple[Check | None, bool]]:
    """field -> (its check, whether the check was declared explicitly) for a config dataclass."""
    assert is_dataclass(cls)
    out = {}
    for f in fields(cls):
        hint = _class_hint(cls, f.name)
        out[f.name] = (_from_hint(hint), declared(hint))
    return out


def signature_checks(fn: Callable) -> dict[str, tuple[Check | None, bool]]:
    """parameter -> (its check, declared explicitly) for a builder's keyword options."""
    import inspect

    out = {}
    for p in inspect.signature(fn, eval_str=True).parameters.values():
        if p.annotation is not p.empty:
            out[p.name] = (_from_hint(p.annotation), declared(p.annotation))
    return out
