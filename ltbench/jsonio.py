"""Strict JSON: everything ltbench writes or prints as JSON is standard JSON that any parser
reads — NaN and ±Infinity become null (Python's json would write bare `NaN`), numpy and
pandas scalars become plain numbers, paths and other objects their text."""
from __future__ import annotations

import json
import math
from typing import Any


def plain(obj: Any) -> Any:
    """`obj` as JSON values only: dicts (str keys), lists, str, int, float (finite), bool, None."""
    if obj is None or isinstance(obj, (bool, str, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [plain(v) for v in (sorted(obj, key=str) if isinstance(obj, (set, frozenset)) else obj)]
    item = getattr(obj, "item", None)  # numpy / torch scalars
    if callable(item) and getattr(obj, "ndim", None) == 0:
        return plain(item())
    tolist = getattr(obj, "tolist", None)  # numpy arrays
    if callable(tolist):
        return plain(tolist())
    if type(obj).__name__ in ("NAType", "NaTType"):  # pandas' missing values
        return None
    return str(obj)


def dumps(obj: Any, **kwargs: Any) -> str:
    """json.dumps of `plain(obj)`; `allow_nan=False` guarantees nothing non-standard got through."""
    return json.dumps(plain(obj), allow_nan=False, **kwargs)
