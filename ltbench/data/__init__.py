"""Data sources for ltbench: one registry, one way in.

    ds = create_dataset("fashion-mnist-lt", seed=0, imbalance=100)
    ds = create_dataset("places-lt", root="/data/places365")  # the split files ship with ltbench

A source is a builder `fn(root, seed, **options) -> LTDataset` registered with
`@DATASETS.register("name")`; its keyword defaults are its options. `create_dataset`
checks the options against the builder's signature, so a typo fails before any file is
read, with the closest known option named. Importing this package imports (and so registers) every source module.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable

from ..errors import DataError
from ..plugins import DATASETS, catalog
from ..plugins.names import suggest
from .base import LTDataset

catalog.import_registering("DATASETS", "OOD_SETS")  # every source module registers itself

Builder = Callable[..., LTDataset]

#: Arguments every builder takes that are not source options.
_COMMON = ("root", "seed")


def _option_params(name: str) -> dict[str, inspect.Parameter]:
    builder = DATASETS.get(name)
    out = {}
    for p in inspect.signature(builder).parameters.values():
        if p.name in _COMMON or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        out[p.name] = p
    return out


def dataset_options(name: str) -> dict[str, Any]:
    """The source's options with their defaults (what goes in a resolved config)."""
    return {k: (None if p.default is p.empty else p.default) for k, p in _option_params(name).items()}


def check_options(name: str, options: dict[str, Any]) -> None:
    """Raise DataError for the first option the source does not know."""
    known = list(_option_params(name))
    for key in options:
        if key not in known:
            hint = suggest(key, known)
            raise DataError(
                f"unknown option {key!r} for dataset {name!r}.{hint}"
                f" Known options: {', '.join(known) if known else '(none)'}"
            )


def create_dataset(name: str, root: str | None = None, seed: int = 0, **options: Any) -> LTDataset:
    """Build a registered dataset; `options` override the source's defaults."""
    check_options(name, options)
    resolved = {**dataset_options(name), **options}
    ds = DATASETS.get(name)(root=root, seed=seed, **resolved)
    ds.name = name
    ds.options = dict(resolved)
    return ds


def train_image_count(name: str, root: str | None = None, seed: int = 0, **options: Any) -> int | None:
    """Training images of a source with `options`, without reading an image where the source can
    count them (a `count_train(root, **options)` attribute on its builder: split-file lines, an LT
    profile); else the source is built and its train split counted. None when it cannot be known."""
    builder = DATASETS.get(name)
    resolved = {**dataset_options(name), **options}
    try:
        count = getattr(builder, "count_train", None)
        if count is not None:
            return count(root=root, **resolved)
        return len(create_dataset(name, root=root, seed=seed, **options).train)
    except (DataError, OSError, KeyError):
        return None
