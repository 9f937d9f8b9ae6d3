"""The expert registry: a SQLite index plus one complete folder per expert.

An expert is written to a temporary folder, renamed into place, then inserted in one
transaction, so readers (`ls`, `report`) never see a half-written expert.
"""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

FORMAT_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS experts (
    name TEXT PRIMARY KEY,
    method TEXT NOT NULL,
    backbone TEXT NOT NULL,
    dataset TEXT NOT NULL,
    seed INTEGER,
    config_hash TEXT,
    created TEXT NOT NULL,
    format INTEGER NOT NULL
)
"""


from .errors import RegistryError  # noqa: E402,F401


def _set_wal(db: sqlite3.Connection, timeout: float = 30.0) -> None:
    """Switch a registry to WAL (persistent in the file, so once per open is enough).

    SQLite does not call the busy handler while another process creates the same fresh
    database, so processes opening a new home together (the ranks of a torchrun job) can get
    'database is locked' here; retry until the timeout instead.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def default_home() -> Path:
    return Path(os.environ.get("LTBENCH_HOME", "ltbench-runs"))


@dataclass
class Expert:
    """A registered expert, read lazily from its folder."""

    name: str
    path: Path

    def _json(self, file: str) -> dict[str, Any]:
        return json.loads((self.path / file).read_text())

    @property
    def config(self) -> dict[str, Any]:
        return self._json("config.json")

    @property
    def metrics(self) -> dict[str, Any]:
        return self._json("metrics.json")

    @property
    def meta(self) -> dict[str, Any]:
        return self._json("meta.json")

    def splits(self) -> list[str]:
        """Cached logit splits: val, test, ood:<name> …"""
        return sorted(_unquote(p.stem) for p in (self.path / "logits").glob("*.safetensors"))

    def logits(self, split: str) -> torch.Tensor:
        """fp32 logits of a split; never returns labels, so fusion cannot peek at test labels."""
        file = self.path / "logits" / f"{_quote(split)}.safetensors"
        if not file.is_file():
            raise RegistryError(f"expert {self.name!r} has no cached logits for split {split!r} ({file})")
        with safe_open(str(file), "pt") as f:
            return f.get_tensor("logits").float()

    def labels(self, split: str) -> np.ndarray:
        file = self.path / "logits" / f"{_quote(split)}.safetensors"
        with safe_open(str(file), "pt") as f:
            return f.get_tensor("labels").numpy()

    def delta(self) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        return load_file(str(self.path / "delta.safetensors"))


def _quote(split: str) -> str:
    return split.replace(":", "__")


def _unquote(stem: str) -> str:
    return stem.replace("__", ":")


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


class Registry:
    def __init__(self, home: str | Path | None = None):
        self.home = Path(home) if home is not None else default_home()
        self.experts_dir = self.home / "experts"
        self.experts_dir.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            _set_wal(db)
            db.execute(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.home / "registry.sqlite", timeout=30, isolation_level=None)
        try:
            db.execute("PRAGMA busy_timeout=30000")
            yield db
        finally:
            db.close()

    # -- reading -----------------------------------------------------------------------
    def names(self) -> list[str]:
        with self._connect() as db:
            return [r[0] for r in db.execute("SELECT name FROM experts ORDER BY name")]

    def rows(self) -> list[dict[str, Any]]:
        with self._connect() as db:
            db.row_factory = sqlite3.Row
            return [dict(r) for r in db.execute("SELECT * FROM experts ORDER BY dataset, method, name")]

    def __contains__(self, name: str) -> bool:
        with self._connect() as db:
            return db.execute("SELECT 1 FROM experts WHERE name=?", (name,)).fetchone() is not None

    def get(self, name: str) -> Expert:
        with self._connect() as db:
            row = db.execute("SELECT format FROM experts WHERE name=?", (name,)).fetchone()
        if row is None:
            import difflib

            close = difflib.get_close_matches(name, self.names(), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise RegistryError(f"no expert named {name!r} in {self.home}.{hint}")
        if row[0] > FORMAT_VERSION:
            raise RegistryError(
                f"expert {name!r} was written by a newer ltbench (format {row[0]} > {FORMAT_VERSION}); upgrade ltbench"
            )
        return Expert(name, self.experts_dir / name)

    # -- writing -----------------------------------------------------------------------
    def register(
        self,
        name: str,
        config: dict[str, Any],
        delta: dict[str, torch.Tensor],
        logits: dict[str, tuple[torch.Tensor, np.ndarray]],
        metrics: dict[str, Any],
        meta: dict[str, Any],
        extra_files: dict[str, Any] | None = None,
    ) -> Expert:
        """Write the folder completely, move it into place, then index it in one transaction."""
        if not name or "/" in name or name.startswith("."):
            raise RegistryError(f"invalid expert name {name!r}")
        if name in self:
            raise RegistryError(f"expert {name!r} is already registered in {self.home}; pick --name or `ltbench rm {name}`")
        tmp = self.experts_dir / f".tmp-{name}-{uuid.uuid4().hex[:8]}"
        final = self.experts_dir / name
        try:
            (tmp / "logits").mkdir(parents=True)
            _write_json(tmp / "config.json", config)
            save_file({k: v.detach().contiguous().cpu() for k, v in delta.items()}, str(tmp / "delta.safetensors"))
            for split, (lg, labels) in logits.items():
                save_file(
                    {"logits": lg.detach().to(torch.float16).contiguous().cpu(),
                     "labels": torch.as_tensor(np.ascontiguousarray(labels), dtype=torch.int64)},
                    str(tmp / "logits" / f"{_quote(split)}.safetensors"),
                )
            _write_json(tmp / "metrics.json", metrics)
            _write_json(tmp / "meta.json", {**meta, "format": FORMAT_VERSION})
            for file, obj in (extra_files or {}).items():
                _write_json(tmp / file, obj)
            if final.exists():  # a folder without an index row: left by a crash between rename and insert
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        try:
            with self._connect() as db:
                db.execute(
                    "INSERT INTO experts (name, method, backbone, dataset, seed, config_hash, created, format)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (name, config.get("method"), config.get("backbone"), config.get("dataset"),
                     config.get("seed"), meta.get("config_hash"), meta.get("created", ""), FORMAT_VERSION),
                )
        except BaseException:
            shutil.rmtree(final, ignore_errors=True)
            raise
        return Expert(name, final)

    def remove(self, name: str) -> None:
        """Drop the row and the folder together (row first: readers never list a missing folder)."""
        self.get(name)
        trash = self.experts_dir / f".rm-{name}-{uuid.uuid4().hex[:8]}"
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("DELETE FROM experts WHERE name=?", (name,))
            os.replace(self.experts_dir / name, trash)
            db.execute("COMMIT")
        shutil.rmtree(trash, ignore_errors=True)
