"""A run's inputs: the run keys (defaults and checks), config files and `--set key=value` pairs as
read, and the checks a key's type cannot express. `spec.resolve_run` turns them into a `RunSpec`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from .checks import (
    Bool,
    Choice,
    Either,
    Int,
    Key,
    ListOf,
    Opt,
    Str,
    check_key,
    dataclass_checks,
)
from .errors import ConfigError
from .methods import METHODS, method_config_fields
from .methods.base import resolve_method_config
from .metrics import FEW_THRESHOLD, GROUP_PROTOCOLS, MANY_THRESHOLD
from .plugins.names import suggest
from .training.tracking import LogTargets


def _compile_backends() -> list[str]:
    import torch._dynamo

    return torch._dynamo.list_backends(exclude_tags=())


_AUTO = Choice(("auto",))

#: Every run key: its default and its check (type and range), so `--set`, a config file and a
#: suite are checked alike before any work.
RUN_KEYS: dict[str, Key] = {
    "dataset": Key("fashion-mnist-lt", Str()),  # names are checked by their registries ("did you mean")
    "backbone": Key("dinov2-s14", Str()),
    "method": Key("linear-probe", Str()),
    "budget": Key("5epochs", Str()),  # parsed and bounded by spec.read_budget
    "seed": Key(0, Int(lo=0, hi=2**63 - 1)),
    "name": Key(None, Opt(Str())),  # and registry.check_name
    "weights": Key(None, Opt(Str())),
    "root": Key(None, Opt(Str())),
    "img_size": Key(None, Opt(Int(lo=1, hi=8192))),  # None: the backbone's own default
    "eval_batch_size": Key(128, Int(lo=1, hi=2**20)),
    "many": Key(MANY_THRESHOLD, Int(lo=0)),  # shot groups: many > this
    "few": Key(FEW_THRESHOLD, Int(lo=0)),  # few < this (groups=lpt: few <= this)
    "groups": Key("standard", Choice(tuple(GROUP_PROTOCOLS))),  # shot-group protocol (metrics.GROUP_PROTOCOLS)
    "device": Key("auto", Str()),  # and check_device: auto | cpu | cuda[:N] | mps, available here
    "num_workers": Key("auto", Either((_AUTO, Int(lo=0, hi=1024)), "auto or an integer >= 0")),  # auto = 0 on CPU, min(8, cores) on CUDA
    "pretrained": Key(True, Bool()),
    "resume": Key(False, Bool()),
    "ood": Key([], ListOf(Str())),  # extra OOD sets, NAME=PATH (imagenet-sketch, imagenet-r, imagenet-a, imagenet-v2)
    "augment": Key(True, Bool()),  # random resized crop + flip on training images
    "skip_bad_images": Key(False, Bool()),  # drop unreadable images (counted in the metrics) instead of failing
    "amp": Key("auto", Either((_AUTO, Bool()), "auto or true or false")),  # bf16 autocast: auto = on CUDA only
    "channels_last": Key(False, Bool()),  # CUDA only
    "compile": Key(False, Either((Bool(), Choice(_compile_backends)), "true, false or a torch.compile backend")),  # true (inductor) or a backend name
    "log": Key([], LogTargets()),  # extra sinks for the learning curve: tensorboard, mlflow (history.csv always)
    "log_dir": Key(None, Opt(Str())),  # TensorBoard event files (default $LTBENCH_HOME/tensorboard/<name>)
    "mlflow_uri": Key(None, Opt(Str())),  # MLflow tracking URI (default $MLFLOW_TRACKING_URI, else SQLite in the home)
    "reproducible": Key(False, Bool()),  # the same bits on any x86-64 CPU (ltbench/reproducible.py)
    "val_each_epoch": Key(True, Bool()),  # validation accuracy in the history after every epoch (one eval pass)
}
RUN_DEFAULTS: dict[str, Any] = {k: v.default for k, v in RUN_KEYS.items()}


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
    """`--set key=value` pairs into a mapping; values typed by `parse_value`, so YAML and CLI agree."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {pair!r}: expected key=value")
        out[key.strip()] = parse_value(value.strip())
    return out


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (YAML would keep the last one silently)."""


class DuplicateKeyError(yaml.YAMLError):
    """A mapping key given twice (a YAMLError, so callers report it like any other parse error)."""


def _no_duplicates(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, (str, int, float, bool, type(None))):
            raise DuplicateKeyError(f"line {key_node.start_mark.line + 1}: a key must be a plain value, not a"
                                    f" {type(key).__name__}")
        if key in seen:
            raise DuplicateKeyError(f"key {key!r} appears twice (lines {seen[key] + 1} and"
                                    f" {key_node.start_mark.line + 1}); YAML would keep the last one silently")
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


#: the most nodes a config or suite may hold with its aliases expanded (an alias bomb holds billions)
MAX_YAML_NODES = 100_000


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """Nodes under `node` with every alias expanded, counted once per distinct node (memoised)."""
    key = id(node)
    if key not in sizes:
        sizes[key] = 1  # a recursive alias counts once
        if isinstance(node, yaml.SequenceNode):
            sizes[key] = 1 + sum(min(_expanded_size(c, sizes), MAX_YAML_NODES + 1) for c in node.value)
        elif isinstance(node, yaml.MappingNode):
            sizes[key] = 1 + sum(min(_expanded_size(k, sizes) + _expanded_size(v, sizes), MAX_YAML_NODES + 1)
                                 for k, v in node.value)
    return sizes[key]


def load_yaml(text: str) -> Any:
    """YAML (or JSON) with duplicate keys an error and alias expansion bounded (MAX_YAML_NODES);
    what `--config` and suite files are read with."""
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}) > MAX_YAML_NODES:
            raise yaml.YAMLError(f"more than {MAX_YAML_NODES} values once its aliases (*name) are expanded;"
                                 " an alias bomb?")
        return loader.construct_document(node)
    except RecursionError:
        raise yaml.YAMLError("nested too deeply") from None
    finally:
        loader.dispose()


def load_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML or JSON file of run keys, with an optional `set:` mapping of further keys."""
    path = Path(path)
    try:
        data = load_yaml(path.read_text(encoding="utf-8-sig")) or {}
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--config {path}: cannot read it ({e})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"--config {path}: not valid YAML/JSON: {' '.join(str(e).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a mapping of keys, got {type(data).__name__}")
    if not isinstance(data.get("set", {}) or {}, dict):
        raise ConfigError(f"--config {path}: set: expected a mapping of key: value, got {type(data['set']).__name__}")
    for key in [*data, *(data.get("set") or {})]:
        if not isinstance(key, str):
            raise ConfigError(f"--config {path}: key {str(key)[:60]}: keys must be names (strings)")
    return data


def check_device(name: str) -> None:
    """A device request this machine can meet, else a one-line ConfigError (before any work)."""
    import torch

    if name == "auto":
        return
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"--set device={name!r}: expected auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ConfigError(f"--set device={name!r}: CUDA is not available on this machine; use device=cpu or auto")
        if dev.index is not None and dev.index >= n:
            raise ConfigError(f"--set device={name!r}: this machine has {n} CUDA device(s), cuda:0..cuda:{n - 1}")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ConfigError(f"--set device={name!r}: MPS is not available on this machine; use device=cpu or auto")
    elif dev.type != "cpu":
        raise ConfigError(f"--set device={name!r}: expected auto, cpu, cuda, cuda:N or mps")


def method_overrides(method: str, sets: dict[str, Any]) -> dict[str, Any]:
    """`--set` keys of a method's config alone (`ltbench params`): checked and coerced, so an
    unknown key is one line naming the closest known one, never a TypeError."""
    cls = METHODS.get(method)
    mfields = method_config_fields(method)
    mchecks = dataclass_checks(cls.Config)
    out = {}
    for key, value in sets.items():
        if key not in mfields:
            hint = suggest(key, mfields, cutoff=0.6)
            raise ConfigError(f"unknown --set key {key!r} for method {method!r}.{hint}"
                              f" Known keys: {', '.join(sorted(mfields))}")
        out[key] = check_key(key, value, mchecks[key][0])
    try:
        resolve_method_config(cls, out)
    except TypeError as e:
        raise ConfigError(f"method {method!r}: {e}") from None
    return out
