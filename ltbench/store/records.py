"""The record a run leaves: the registered expert's config, metrics and meta (`ExpertRecord`).

Training and fusion build it the same way (`expert_record`), so what an expert records cannot
drift between the two; `ExpertRecord.read` accepts every older schema version.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import RegistryError

#: Version of the config / metrics / meta schema. 1: written before it was recorded (no
#: `schema_version` in the meta record); 2: adds `schema_version`. Read upgrades older records.
SCHEMA_VERSION = 2


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
