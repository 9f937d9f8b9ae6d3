"""One expert's folder: its name rule, its layout and `Expert`, the only reader of it.
"""
from __future__ import annotations

import csv
import json
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

if TYPE_CHECKING:
    import torch

    from .records import ExpertRecord
# torch and safetensors are imported where tensors are read or written, so that `ltbench ls`
# and `show` (JSON and SQLite only) start without them (tests/test_cli.py checks sys.modules).

from ..errors import RegistryError

#: Version of an expert folder's layout (meta.json `format`, the index's `format` column).
FORMAT_VERSION = 1
#: sha256 of files already checked, by (path, size, mtime)
_HASHED: dict[tuple[str, int, int], str] = {}

#: Expert names: they become folder names, so a safe charset, no separators, a bounded length.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=-]*")
NAME_MAX = 200
RECORDS = ("config.json", "metrics.json", "meta.json")


def check_name(name: str) -> str:
    """Return `name` if it is a safe expert name, else raise a one-line RegistryError (before any work)."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or len(name) > NAME_MAX:
        why = (f"longer than {NAME_MAX} characters" if isinstance(name, str) and len(name) > NAME_MAX
               else "use letters, digits and . _ + = - only, starting with a letter or digit (no / or spaces)")
        shown = name if not isinstance(name, str) or len(name) <= 60 else name[:57] + "..."
        raise RegistryError(f"invalid expert name {shown!r}: {why}")
    return name

DELTA_FILE = "delta.safetensors"
LOGITS_DIR = "logits"
EXTRA_SUFFIX = ".json"


@dataclass
class Expert:
    """A registered expert, read lazily from its folder.

    The only reader of an expert's folder: everything else (fusion, report, the API) asks for
    records, logits, counts and artifacts here, so the layout can change, or move to another
    store, in this one class.
    """

    name: str
    path: Path

    @classmethod
    def at(cls, path: str | Path) -> "Expert":
        """The expert in folder `path` (report tables carry folders, not registry handles)."""
        return cls(Path(path).name, Path(path))

    def _json(self, file: str) -> dict[str, Any]:
        try:
            obj = json.loads((self.path / file).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise RegistryError(f"expert {self.name!r}: {self.path / file} is unreadable"
                                f" ({type(e).__name__}: {e}); run `ltbench doctor`") from None
        if not isinstance(obj, dict):
            raise RegistryError(f"expert {self.name!r}: {self.path / file} is not a JSON object; run `ltbench doctor`")
        return obj

    @property
    def config(self) -> dict[str, Any]:
        """The resolved run config (config.json): the whole truth about what was run."""
        return self._json(RECORDS[0])

    @property
    def metrics(self) -> dict[str, Any]:
        """Accuracy per split and shot group, ECE (metrics.json)."""
        return self._json(RECORDS[1])

    @property
    def meta(self) -> dict[str, Any]:
        """Provenance and cost (meta.json): versions, environment, compute, parameters, classes."""
        return self._json(RECORDS[2])

    @property
    def record(self) -> "ExpertRecord":
        """config, metrics and meta as one typed record, upgraded from older schema versions."""
        from .records import ExpertRecord

        return ExpertRecord.read(self.config, self.metrics, self.meta, where=str(self.path))

    @property
    def class_counts(self) -> np.ndarray | None:
        """Training images per class (what shot groups are computed from); None if not recorded."""
        counts = self.meta.get("class_counts")
        return None if counts is None else np.asarray(counts)

    @property
    def thresholds(self) -> tuple[int, int]:
        """The (many, few) shot-group thresholds the expert was evaluated with."""
        from ..metrics import thresholds

        return thresholds(self.config)

    @property
    def spent(self) -> dict[str, Any]:
        """Compute spent (FLOPs, seconds); a fusion's includes its constituents'."""
        return dict(self.meta.get("spent") or {})

    @property
    def params(self) -> dict[str, Any]:
        """Parameter counts (trainable, total)."""
        return dict(self.meta.get("params") or {})

    def artifacts(self) -> dict[str, dict[str, Any]]:
        """Extra JSON files a method wrote beside the records (e.g. LPT's prompt choices), by stem."""
        return {f.stem: self._json(f.name) for f in sorted(self.path.glob(f"*{EXTRA_SUFFIX}")) if f.name not in RECORDS}

    def splits(self) -> list[str]:
        """Cached logit splits: val, test, ood:<name> …"""
        return sorted(unquote_split(p.stem) for p in (self.path / LOGITS_DIR).glob("*.safetensors"))

    def _logits_file(self, split: str) -> Path:
        file = self.path / LOGITS_DIR / f"{quote_split(split)}.safetensors"
        if not file.is_file():
            raise RegistryError(f"expert {self.name!r} has no cached logits for split {split!r} ({file})")
        return file

    def logits_version(self, split: str) -> tuple:
        """A key that changes whenever the split's cached logits change (for readers' caches)."""
        file = self._logits_file(split)
        st = file.stat()
        return (str(file), st.st_size, st.st_mtime_ns)

    @contextmanager
    def _tensors(self, file: Path, framework: str = "pt") -> Iterator[Any]:
        """safe_open on one of the expert's tensor files; a missing or damaged file is a one-line RegistryError."""
        from safetensors import safe_open

        try:
            with safe_open(str(file), framework) as f:
                yield f
        except RegistryError:
            raise
        except Exception as e:  # noqa: BLE001  (safetensors raises its own types for a damaged file)
            why = "is missing" if isinstance(e, FileNotFoundError) else f"is damaged ({_first_line(e)})"
            raise RegistryError(f"expert {self.name!r}: {file} {why}; run `ltbench doctor`") from None

    def logits(self, split: str) -> torch.Tensor:
        """fp32 logits of a split; never returns labels, so fusion cannot peek at test labels."""
        with self._tensors(self._logits_file(split)) as f:
            return f.get_tensor("logits").float()

    def stored_logits(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(logits as stored, fp16; labels) of a split: the report's bulk read, no fp32 copy."""
        with self._tensors(self._logits_file(split)) as f:
            return f.get_tensor("logits").numpy(), f.get_tensor("labels").numpy().astype(np.int64, copy=False)

    def rows(self, split: str) -> int:
        """Samples in a split, read from the header alone."""
        with self._tensors(self._logits_file(split)) as f:
            return int(f.get_slice("logits").get_shape()[0])

    def labels(self, split: str) -> np.ndarray:
        """A split's labels: fusion reads validation ones to fit, the others only to evaluate."""
        with self._tensors(self._logits_file(split)) as f:
            return f.get_tensor("labels").numpy()

    def delta(self) -> dict[str, torch.Tensor]:
        """The trained tensors (what differs from the backbone), to load the expert back as a model."""
        with self._tensors(self.path / DELTA_FILE) as f:
            return {k: f.get_tensor(k) for k in f.keys()}

    def problem(self) -> str | None:
        """Why this folder is not a complete, readable expert (None if it is); reads headers only."""
        from safetensors import safe_open

        if not self.path.is_dir():
            return f"its folder {self.path} is missing"
        try:
            for file in RECORDS:
                self._json(file)
            for file in [self.path / DELTA_FILE, *sorted((self.path / LOGITS_DIR).glob("*.safetensors"))]:
                with safe_open(str(file), "numpy") as f:  # headers only: no torch needed (`ltbench ls`)
                    f.keys()
            recorded = self.meta.get("files")
        except RegistryError as e:
            return str(e).split(": ", 1)[1].removesuffix("; run `ltbench doctor`")
        except Exception as e:  # noqa: BLE001  (safetensors raises its own types for a damaged header)
            return f"{file} is unreadable ({type(e).__name__}: {_first_line(e)})"
        for rel, info in (recorded if isinstance(recorded, dict) else {}).items():
            if rel in RECORDS:  # a record is judged by reading it, above
                continue
            try:
                size = (self.path / rel).stat().st_size
            except OSError:
                return f"{self.path / rel} is missing"
            if isinstance(info, dict) and size != info.get("bytes", size):
                return f"{self.path / rel} has {size} bytes, {info.get('bytes')} when registered"
        return None

    def verify(self, methods: set[str] | None = None, registered: set[str] | None = None) -> str | None:
        """What `doctor` checks beyond `problem`: the config names a known method, the records' format
        is one this ltbench reads, the tensor files hash as when registered, a fusion's members exist."""
        config, meta = self.config, self.meta
        method = str(config.get("method", ""))
        if method.startswith("fuse:"):
            missing = [m for m in config.get("experts") or [] if registered is not None and m not in registered]
            if missing:
                return f"its member expert(s) {', '.join(map(str, missing))} are no longer registered"
        elif methods is not None and method not in methods:
            return f"config.json names an unknown method {method!r}"
        if not isinstance(meta.get("format", FORMAT_VERSION), int) or meta.get("format", FORMAT_VERSION) > FORMAT_VERSION:
            return f"meta.json has format {meta.get('format')!r}; this ltbench reads up to {FORMAT_VERSION}"
        return self.changed()

    def stale_metrics(self) -> str | None:
        """Why the recorded metrics no longer describe the cached logits (a logits file changed), or None."""
        return self.changed(LOGITS_DIR + "/")

    def recipe_changed(self) -> str | None:
        """Why config.json is not the config the expert was trained with (changed since), or None."""
        return self.changed(RECORDS[0])

    def changed(self, prefix: str = "") -> str | None:
        """Which recorded tensor file (under `prefix`) no longer hashes as when registered: its metrics
        were computed from other bytes, so a report must not show them. Hashes are kept per (file, size,
        mtime) in this process."""
        recorded = self.meta.get("files") or {}
        for rel, info in sorted(recorded.items()) if isinstance(recorded, dict) else []:
            if not rel.startswith(prefix) or not isinstance(info, dict):
                continue
            file = self.path / rel
            try:
                st = file.stat()
            except OSError:
                return f"{file} is missing"
            key = (str(file), st.st_size, st.st_mtime_ns)
            if key not in _HASHED:
                _HASHED[key] = sha256(file)
            if _HASHED[key] != info.get("sha256"):
                return f"{file} changed since registration (its sha256 differs)"
        return None

    def history(self) -> list[dict[str, Any]] | None:
        """The learning curve (history.csv, one row per step; see tracking.HISTORY_COLUMNS), or None
        for an expert that has none (a fusion, or one registered before histories were kept)."""
        try:
            return read_history(self.path / "history.csv")
        except (ValueError, OSError, UnicodeDecodeError, csv.Error) as e:
            raise RegistryError(f"expert {self.name!r}: {self.path / 'history.csv'} is damaged"
                                f" ({_first_line(e)}); run `ltbench doctor`") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines() or [""])[0][:200]


def quote_split(split: str) -> str:
    return split.replace(":", "__")


def unquote_split(stem: str) -> str:
    return stem.replace("__", ":")


def write_history(path: Path, rows: list[dict[str, Any]]) -> None:
    from ..training.tracking import HISTORY_COLUMNS

    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=HISTORY_COLUMNS, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        w.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)


def read_history(path: Path) -> list[dict[str, Any]] | None:
    if not path.is_file():
        return None

    def value(k: str, v: str) -> Any:
        if k == "phase":
            return v
        if v == "":
            return None
        return int(v) if k == "step" else float(v)

    with path.open(newline="") as f:
        return [{k: value(k, v) for k, v in r.items()} for r in csv.DictReader(f)]


def write_json(path: Path, obj: Any) -> None:
    from ..jsonio import dumps

    path.write_text(dumps(obj, indent=2, sort_keys=True) + "\n")


def sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_hashes(folder: Path) -> dict[str, dict[str, Any]]:
    """{relative path: {sha256, bytes}} of config.json and the tensor files, recorded in meta.json at
    registration so `doctor` can tell a damaged delta or logits file (and `Expert.problem` a missing
    one), and `predict` a config changed since (it would rebuild another model)."""
    files = [folder / RECORDS[0], folder / DELTA_FILE, *sorted((folder / LOGITS_DIR).glob("*.safetensors"))]
    return {str(f.relative_to(folder)): {"sha256": sha256(f), "bytes": f.stat().st_size} for f in files if f.is_file()}

