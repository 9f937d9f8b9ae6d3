"""`RunSpec`: one run, resolved once from every input, typed and frozen.

CLI flags, a config file, `--set` pairs and a suite's keys all go through `resolve_run`, the one
place that checks them: every key lands in exactly one home (a run key, the method's config
dataclass or the dataset source's options), the budget is parsed, the expert name checked (or
made from method, backbone, dataset and seed), and every default written out. Downstream code
reads typed fields and never parses or checks again; it serialises only at the edges
(`RunSpec.config` for config.json, the config hash, checkpoints, the torchrun run file) and
comes back through `RunSpec.from_config`, which resolves the stored form the same way.
`read_budget` is the one reader of budget text.
"""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from typing import Any

from .budget import Budget, parse_budget
from .checks import check_key, dataclass_checks, signature_checks
from .config import RUN_DEFAULTS, RUN_KEYS, check_device
from .data import dataset_options
from .errors import BudgetError, ConfigError
from .methods import METHODS, method_config_fields
from .methods.base import MethodConfig, resolve_method_config
from .metrics import thresholds
from .plugins import DATASETS
from .plugins.names import suggest
from .store.expert import check_name
from .training.tracking import check_log_options


def read_budget(text: Any, where: str | None = None) -> Budget:
    """Budget text ("5epochs", "2e12flops", …) as a `Budget`; a bad one is a BudgetError (naming `where`)."""
    try:
        return parse_budget(str(text))
    except BudgetError as e:
        if where is None:
            raise
        raise BudgetError(f"{where}: {e}") from None


def default_name(method: str, backbone: str, dataset: str, seed: int) -> str:
    """The expert name when none is given: method, backbone, dataset and seed, path-safe."""
    return f"{method}_{backbone.replace('/', '-').replace(':', '-')}_{dataset}_s{seed}"


@dataclass(frozen=True)
class RunSpec:
    """A resolved run. The run keys are `config.RUN_KEYS` (each documented there); `method_config` is
    the method's config dataclass (frozen), `data` the dataset source's options, and `tune` what
    tuning chose for this run (recorded in its config), if it was tuned."""

    dataset: str
    backbone: str
    method: str
    budget: Budget
    seed: int
    name: str
    weights: str | None
    root: str | None
    img_size: int | None
    eval_batch_size: int
    many: int
    few: int
    groups: str
    device: str
    num_workers: int | str
    pretrained: bool
    resume: bool
    ood: tuple[str, ...]
    augment: bool
    skip_bad_images: bool
    amp: bool | str
    channels_last: bool
    compile: bool | str
    log: tuple[str, ...]
    log_dir: str | None
    mlflow_uri: str | None
    reproducible: bool
    val_each_epoch: bool
    method_config: MethodConfig
    data: dict[str, Any]  # read-only by convention (a dict pickles and serialises as it is)
    tune: dict[str, Any] | None = None

    @property
    def config(self) -> dict[str, Any]:
        """The config.json form: every run key (the budget as text), `method_config`, `data`, and
        `tune` when tuned. What the config hash, checkpoints and run files are made of."""
        out = {k: getattr(self, k) for k in RUN_KEYS}
        out.update(budget=str(self.budget), ood=list(self.ood), log=list(self.log))
        out["method_config"] = asdict(self.method_config)
        out["data"] = dict(self.data)
        if self.tune is not None:
            out["tune"] = self.tune
        return out

    def replace(self, **changes: Any) -> "RunSpec":
        """A copy with typed `changes` (a `Budget`, a method config, …); names are checked again."""
        if "name" in changes:
            check_name(changes["name"])
        return dataclasses.replace(self, **changes)

    def with_method(self, **values: Any) -> "RunSpec":
        """A copy whose method config has `values` (tuned values: they come from the method's search space)."""
        return dataclasses.replace(self, method_config=dataclasses.replace(self.method_config, **values))

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "RunSpec":
        """A stored config (config.json, a run file) resolved again, checked as any input is."""
        flags = {k: v for k, v in config.items() if k in RUN_DEFAULTS}
        sets = {**(config.get("method_config") or {}), **(config.get("data") or {})}
        spec = resolve_run(flags, sets)
        return spec.replace(tune=config["tune"]) if config.get("tune") is not None else spec


def _check_run(run: dict[str, Any]) -> None:
    """Checks across run keys and the ones a Check cannot express (names, devices)."""
    for key, spec in RUN_KEYS.items():
        run[key] = check_key(key, run[key], spec.check)
    if thresholds(run)[1] > run["many"] + 1:
        raise ConfigError(f"--set few={run['few']} many={run['many']} groups={run['groups']}: few and many (> many)"
                          " shot groups would overlap; need few <= many + 1 (groups=lpt: few <= many)")
    if run["name"] is not None:
        check_name(run["name"])
    check_device(run["device"])


def resolve_run(flags: dict[str, Any], sets: dict[str, Any] | None = None) -> RunSpec:
    """Merge defaults < flags < sets into a `RunSpec`; any bad key, value, name or budget is one
    ConfigError (or BudgetError / UnknownNameError) before any work."""
    flags = {k: v for k, v in flags.items() if v is not None}
    sets = dict(sets or {})
    sets.update(flags.pop("set", None) or {})
    run = {**RUN_DEFAULTS, **{k: v for k, v in flags.items() if k in RUN_DEFAULTS}}
    method_over = {k: flags[k] for k in ("loss", "sampler") if k in flags}
    unknown_flags = set(flags) - set(RUN_DEFAULTS) - {"loss", "sampler"}
    if unknown_flags:
        raise ConfigError(f"unknown config keys {sorted(unknown_flags)}")

    for key in ("method", "dataset", "backbone"):  # looked up by name below
        if not isinstance(run[key], str):
            raise ConfigError(f"{key}: expected a name, got {type(run[key]).__name__} {str(run[key])[:60]}")
    cls = METHODS.get(run["method"])  # an unknown method fails here, with suggestions
    mfields = method_config_fields(run["method"])
    dfields = dataset_options(run["dataset"])
    mchecks = dataclass_checks(cls.Config)
    dchecks = signature_checks(DATASETS.get(run["dataset"]))
    data_over: dict[str, Any] = {}
    for key, value in sets.items():
        if key in mfields and key in dfields:
            raise ConfigError(f"--set {key}: both method {run['method']!r} and dataset {run['dataset']!r} have this key")
        if key in RUN_DEFAULTS:
            run[key] = value
        elif key in mfields:
            method_over[key] = check_key(key, value, mchecks[key][0])
        elif key in dfields:
            data_over[key] = check_key(key, value, dchecks[key][0])
        else:
            known = sorted(set(RUN_DEFAULTS) | set(mfields) | set(dfields))
            hint = suggest(key, known, cutoff=0.6)
            raise ConfigError(f"unknown --set key {key!r} for method {run['method']!r} and dataset"
                              f" {run['dataset']!r}.{hint} Known keys: {', '.join(known)}")
    _check_run(run)  # fail before any work
    budget = read_budget(run["budget"])
    for key in ("loss", "sampler"):  # the --loss / --sampler flags
        if key in method_over:
            method_over[key] = check_key(key, method_over[key], mchecks[key][0])
    check_log_options(run["log"])  # the sinks' packages are installed
    try:
        mcfg = resolve_method_config(cls, method_over)
    except TypeError as e:
        raise ConfigError(f"method {run['method']!r}: {e}") from None
    name = run["name"] or default_name(run["method"], run["backbone"], run["dataset"], run["seed"])
    return RunSpec(**{**run, "budget": budget, "name": check_name(name), "ood": tuple(run["ood"]),
                      "log": tuple(run["log"])}, method_config=mcfg, data={**dfields, **data_over})
