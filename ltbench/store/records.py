"""The two records a run leaves: its config (`RunConfig`) and the registered expert (`ExpertRecord`).

Both were plain dicts that several modules built and read in their own way; here each has one
schema. `OPERATIONAL` is the one declared set of run keys that do not change results (where
numbers are reported, how fast they are computed): `config_hash`, `experiment_key` and a
suite's "same config?" check all leave exactly these out, so they cannot disagree.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import RegistryError
from .provenance import OPERATIONAL, result_keys

#: Version of the config / metrics / meta schema. 1: written before it was recorded (no
#: `schema_version` in the meta record); 2: adds `schema_version`. Read upgrades older records.
SCHEMA_VERSION = 2


@dataclass(frozen=True)
class RunConfig:
    """A run's resolved config, split the way `config.resolve_config` resolves it.

    `keys` are the run keys (dataset, backbone, method, budget, seed, … and the operational
    ones), `method_config` the method's config dataclass as a dict, `data` the dataset
    source's options. `to_dict` gives back the stored config.json form.
    """

    keys: dict[str, Any]
    method_config: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> "RunConfig":
        """From a stored or resolved config (a fusion's has no method config or data options of its own)."""
        keys = {k: v for k, v in config.items() if k not in ("method_config", "data")}
        return cls(keys, dict(config.get("method_config") or {}), dict(config.get("data") or {}))

    def to_dict(self) -> dict[str, Any]:
        """The config.json form: run keys, then `method_config` and `data`."""
        out = dict(self.keys)
        if self.method_config:
            out["method_config"] = dict(self.method_config)
        if self.data:
            out["data"] = dict(self.data)
        return out

    def operational(self) -> dict[str, Any]:
        """The keys set here that do not change results."""
        return {k: v for k, v in self.keys.items() if k in OPERATIONAL}

    def results(self) -> dict[str, Any]:
        """Everything that decides the numbers (what `config_hash` hashes)."""
        return result_keys(self.to_dict())


@dataclass
class ExpertRecord:
    """Schema of an expert's three records (config, metrics, meta; their files are the registry's), with a version.

    Built by `expert_record` (training and fusion alike) and read back by `ExpertRecord.read`,
    which accepts every older schema version.
    """

    config: dict[str, Any]
    metrics: dict[str, Any]
    meta: dict[str, Any]
    schema_version: int = SCHEMA_VERSION

    #: meta keys every record has, whatever built it
    REQUIRED_META = ("created", "seed", "config_hash", "budget", "spent", "params", "class_counts", "classnames")

    @classmethod
    def read(cls, config: dict[str, Any], metrics: dict[str, Any], meta: dict[str, Any],
             where: str = "expert") -> "ExpertRecord":
        """The record from its three files; version 1 (no `schema_version`) reads as it was written."""
        version = int(meta.get("schema_version", 1))
        if version > SCHEMA_VERSION:
            raise RegistryError(f"{where}: meta record schema_version {version} is newer than this ltbench's"
                                f" {SCHEMA_VERSION}; upgrade ltbench")
        meta = {k: v for k, v in meta.items() if k != "schema_version"}
        return cls(dict(config), dict(metrics), meta, version)

    def files(self) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """(config, metrics, meta) as written to the registry; meta carries the current schema version."""
        return self.config, self.metrics, {**self.meta, "schema_version": SCHEMA_VERSION}


def expert_record(
    config: dict[str, Any],
    metrics: dict[str, Any],
    *,
    seed: Any,
    budget: str,
    spent: dict[str, Any],
    params: dict[str, Any],
    class_counts: list[int],
    classnames: list[str] | None,
    groups: Any,
    device: Any = "cpu",
    **meta: Any,
) -> ExpertRecord:
    """The one builder of a new expert's record: provenance (versions, git, environment, config
    hash, time) and the fields every expert has, plus the builder's own `meta` fields, so a
    trained and a fused expert cannot drift apart in what they record."""
    from ..metrics import group_sizes
    from .provenance import config_hash, environment, git_hash, now, package_versions

    config = {k: v for k, v in config.items() if k != "resume"}  # how it was invoked, not what it is
    record_meta = {
        "created": now(), "git": git_hash(), "packages": package_versions(), "env": environment(device),
        "seed": seed, "config_hash": config_hash(config), "budget": budget, "spent": spent, "params": params,
        "shot_groups": group_sizes(groups), "class_counts": list(class_counts), "classnames": classnames,
        **meta,
    }
    return ExpertRecord(config, metrics, record_meta)
