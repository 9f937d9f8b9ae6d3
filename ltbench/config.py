"""Resolve a run's config: CLI flags, an optional config file and `--set key=value` pairs.

Every key lands in exactly one place — the run, the method's config dataclass or the
dataset source's options — and every default is written out, so the stored config is the
whole truth about a run.
"""
from __future__ import annotations

import difflib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from .budget import parse_budget
from .data import create_dataset, dataset_options  # noqa: F401  (re-exported for callers)
from .methods import METHODS, method_config_fields
from .methods.base import resolve_method_config

RUN_DEFAULTS: dict[str, Any] = {
    "dataset": "fashion-mnist-lt",
    "backbone": "dinov2-s14",
    "method": "linear-probe",
    "budget": "5epochs",
    "seed": 0,
    "name": None,
    "weights": None,
    "root": None,
    "img_size": None,  # None: the backbone's own default
    "eval_batch_size": 128,
    "many": 100,  # shot groups: many > this
    "few": 20,  # few < this
    "device": "auto",
    "num_workers": "auto",  # data-loader workers: auto = 0 on CPU, min(8, CPU cores) on CUDA
    "pretrained": True,
    "resume": False,
    "ood": [],  # extra OOD sets, NAME=PATH (imagenet-sketch, imagenet-r, imagenet-a, imagenet-v2)
    "augment": True,  # random resized crop + flip on training images
    "skip_bad_images": False,  # drop unreadable images (counted in the metrics) instead of failing
    "amp": "auto",  # bf16 autocast: auto = on CUDA only
    "channels_last": False,  # CUDA only
    "compile": False,  # torch.compile the training forward: true (inductor) or a backend name
}


from .errors import ConfigError  # noqa: E402,F401


def parse_value(text: str) -> Any:
    """`--set` values: ints, floats (1e-3 too), true/false, null, JSON lists, else strings."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    if text.startswith(("[", "{")):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            pass
    return text


def parse_sets(pairs: list[str]) -> dict[str, Any]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {pair!r}: expected key=value")
        out[key.strip()] = parse_value(value.strip())
    return out


def load_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML or JSON file of run keys, with an optional `set:` mapping of further keys."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: no such file") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"--config {path}: not valid YAML/JSON: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a mapping of keys, got {type(data).__name__}")
    return data


def _coerce(key: str, value: Any, default: Any) -> Any:
    if isinstance(default, bool) or value is None or default is None:
        return value
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, (int, float)) and not isinstance(value, (int, float)):
        raise ConfigError(f"--set {key}={value!r}: expected a number like {default!r}")
    return value


#: Run keys that take "auto" or a value of one kind, checked before any work.
_SWITCHES = {"amp": ("auto", True, False), "num_workers": "auto or an integer >= 0",
             "channels_last": (True, False), "compile": "true, false or a torch.compile backend"}


def _compile_backends() -> list[str]:
    import torch._dynamo

    return torch._dynamo.list_backends(exclude_tags=())


def _check_switches(run: dict[str, Any]) -> None:
    for key, allowed in _SWITCHES.items():
        v = run[key]
        if key == "num_workers":
            ok = v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= 0)
        elif key == "compile":
            ok = isinstance(v, bool) or (isinstance(v, str) and v in _compile_backends())
        else:
            ok = any(v is a or (isinstance(a, str) and v == a) for a in allowed)
        if not ok:
            want = allowed if isinstance(allowed, str) else " or ".join(str(a).lower() for a in allowed)
            raise ConfigError(f"--set {key}={v!r}: expected {want}")


def method_overrides(method: str, sets: dict[str, Any]) -> dict[str, Any]:
    """`--set` keys of a method's config alone (`ltbench params`): checked and coerced, so an
    unknown key is one line naming the closest known one, never a TypeError."""
    cls = METHODS.get(method)
    mfields = method_config_fields(method)
    out = {}
    for key, value in sets.items():
        if key not in mfields:
            close = difflib.get_close_matches(key, list(mfields), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown --set key {key!r} for method {method!r}.{hint}"
                              f" Known keys: {', '.join(sorted(mfields))}")
        out[key] = _coerce(key, value, mfields[key])
    try:
        resolve_method_config(cls, out)
    except TypeError as e:
        raise ConfigError(f"method {method!r}: {e}") from None
    return out


def resolve_config(flags: dict[str, Any], sets: dict[str, Any] | None = None) -> dict[str, Any]:
    """Merge defaults < flags < sets into {run keys…, "method_config": …, "data": …}."""
    flags = {k: v for k, v in flags.items() if v is not None}
    sets = dict(sets or {})
    sets.update(flags.pop("set", None) or {})
    run = {**RUN_DEFAULTS, **{k: v for k, v in flags.items() if k in RUN_DEFAULTS}}
    method_over = {k: flags[k] for k in ("loss", "sampler") if k in flags}
    unknown_flags = set(flags) - set(RUN_DEFAULTS) - {"loss", "sampler"}
    if unknown_flags:
        raise ConfigError(f"unknown config keys {sorted(unknown_flags)}")

    METHODS.get(run["method"])  # an unknown method fails here, with suggestions
    mfields = method_config_fields(run["method"])
    dfields = dataset_options(run["dataset"])
    data_over: dict[str, Any] = {}
    for key, value in sets.items():
        if key in mfields and key in dfields:
            raise ConfigError(f"--set {key}: both method {run['method']!r} and dataset {run['dataset']!r} have this key")
        if key in RUN_DEFAULTS:
            run[key] = _coerce(key, value, RUN_DEFAULTS[key])
        elif key in mfields:
            method_over[key] = _coerce(key, value, mfields[key])
        elif key in dfields:
            data_over[key] = _coerce(key, value, dfields[key])
        else:
            known = sorted(set(RUN_DEFAULTS) | set(mfields) | set(dfields))
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown --set key {key!r} for method {run['method']!r} and dataset"
                              f" {run['dataset']!r}.{hint} Known keys: {', '.join(known)}")
    parse_budget(run["budget"])  # fail before any work
    _check_switches(run)
    cls = METHODS.get(run["method"])
    try:
        mcfg = resolve_method_config(cls, method_over)
    except TypeError as e:
        raise ConfigError(f"method {run['method']!r}: {e}") from None
    run["method_config"] = asdict(mcfg)
    run["data"] = {**dfields, **data_over}
    return run
