"""The expert registry: an index (SQLite or PostgreSQL) plus one complete folder per expert.

The index is a SQLite file in the home (the default, no server) or any database URL
(`LTBENCH_REGISTRY` / `Registry(url=…)`, e.g. postgresql://…), reached through one SQLAlchemy
Core code path; the folders live in `LTBENCH_HOME`, a local or shared path (or a `file://` URL)
that every writer of the index must see. An expert is written under a unique temporary key,
renamed into place, then inserted in one transaction, so readers (`ls`, `report`) never see a
half-written expert. The registry never
destroys what it did not write: a name whose folder exists (indexed or not) is refused, two
writers of one name are serialised by the index's write lock, and `doctor` reports (and with
`repair` fixes) what a crash or outside damage left behind.
"""
from __future__ import annotations

import csv
import errno
import fcntl
import json
import os
import re
import shutil
import sqlite3
import time
import uuid
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import sqlalchemy as sa

if TYPE_CHECKING:
    import torch

    from .records import ExpertRecord
# torch and safetensors are imported where tensors are read or written, so that `ltbench ls`
# and `show` (JSON and SQLite only) start without them (tests/test_cli.py checks sys.modules).

FORMAT_VERSION = 1
_META = sa.MetaData()
EXPERTS = sa.Table(  # the same table the SQLite-only registry created: old homes open unchanged
    "experts", _META,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("method", sa.Text, nullable=False),
    sa.Column("backbone", sa.Text, nullable=False),
    sa.Column("dataset", sa.Text, nullable=False),
    sa.Column("seed", sa.Integer),
    sa.Column("config_hash", sa.Text),
    sa.Column("created", sa.Text, nullable=False),
    sa.Column("format", sa.Integer, nullable=False),
)
_COLUMNS = ("name", "method", "backbone", "dataset", "seed", "config_hash", "created", "format")
#: which home wrote each row, so `doctor --repair` on a shared index touches only its own home's rows
HOMES = sa.Table("expert_homes", _META, sa.Column("name", sa.Text, primary_key=True),
                 sa.Column("home", sa.Text, nullable=False))


from .errors import BrokenExpertWarning, RegistryError  # noqa: E402,F401

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


class LockHeld(RegistryError):
    """Another live process holds the lock file."""


@contextmanager
def file_lock(path: Path, what: str, remove_dir: bool = False) -> Iterator[None]:
    """An exclusive, non-blocking flock on `path` (pid written inside); released when the process dies.

    The lock file is removed on release (with `remove_dir`, its folder and that folder's parent
    too, if nothing else is left in them); a process that opened the old file sees it unlinked
    and takes a new one.
    """
    for _ in range(10):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # the folder was removed by a releasing holder just now
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise LockHeld(f"{what} is in use by process {holder} (lock {path}); wait for it to finish") from None
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)  # the holder removed the file after we opened it: take the new one
    else:
        raise LockHeld(f"{what}: cannot take the lock {path}")
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:  # still ours (not removed and re-created)
                path.unlink()
        except FileNotFoundError:
            pass
        if remove_dir:  # the folder, and the one above (runs/), if this left them empty
            for folder in (path.parent, path.parent.parent):
                try:
                    folder.rmdir()
                except FileNotFoundError:
                    continue
                except OSError:  # not empty
                    break
        os.close(fd)


def _is_locked(path: Path) -> bool:
    """Whether a live process holds the flock on `path` (False if there is no such file)."""
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


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
    """Where experts live unless told otherwise: $LTBENCH_HOME, else ./ltbench-runs (one home per project)."""
    home = os.environ.get("LTBENCH_HOME", "ltbench-runs")
    if not home.strip():
        raise RegistryError("LTBENCH_HOME is set but empty; unset it (default ./ltbench-runs) or give a folder")
    return local_home(home)


def local_home(home: str | Path) -> Path:
    """The artifact folder of a home: a path, or an fsspec URL of a filesystem mounted here.

    `file://` (and any fsspec URL whose filesystem is the local one) resolves to its path. Object
    stores (s3://, gs:// …) are refused: the registry's locks and renames need a POSIX
    filesystem, so mount the bucket (s3fs, gcsfuse) or use a shared filesystem and give its path.
    """
    text = str(home)
    if not text.strip():
        raise RegistryError("the registry home is empty (--home / LTBENCH_HOME); give a folder")
    if "://" not in text:
        return Path(text)
    import fsspec
    from fsspec.implementations.local import LocalFileSystem

    try:
        fs, path = fsspec.core.url_to_fs(text)
    except (ValueError, ImportError) as e:
        raise RegistryError(f"LTBENCH_HOME {text!r}: {e}") from None
    if not isinstance(fs, LocalFileSystem):
        raise RegistryError(f"LTBENCH_HOME {text!r}: artifacts need a mounted filesystem (locks and atomic renames);"
                            f" mount the {fs.protocol[0] if isinstance(fs.protocol, tuple) else fs.protocol} store and"
                            " point LTBENCH_HOME at the mount")
    return Path(path)


def default_url(home: Path) -> str:
    """$LTBENCH_REGISTRY (a database URL or a SQLite file path), else the SQLite file in the home."""
    return database_url(os.environ.get("LTBENCH_REGISTRY") or home / "registry.sqlite")


def database_url(url: str | Path) -> str:
    """A database URL; a plain path is a SQLite file."""
    text = str(url)
    return text if "://" in text else f"sqlite:///{Path(text).absolute()}"


_ENGINES: dict[tuple[str, bool, int], sa.Engine] = {}
#: how long a writer waits for the SQLite index's write lock before naming its holder
LOCK_TIMEOUT_S = 30.0


def _engine(url: str, read_only: bool = False) -> sa.Engine:
    """One engine per URL, mode and process (a pool for servers; a fresh connection per use for SQLite).

    A read-only SQLite engine opens the file with mode=ro: it never takes the write lock, so a
    stalled writer cannot block `ls`, `show` or `report`, and a read-only home can be listed."""
    key = (url, read_only and url.startswith("sqlite"), os.getpid())
    if key in _ENGINES:
        return _ENGINES[key]
    try:
        if url.startswith("sqlite") and key[1]:
            from urllib.parse import quote

            file = sa.engine.make_url(url).database or ""
            engine = sa.create_engine("sqlite://", poolclass=sa.pool.NullPool, creator=lambda: sqlite3.connect(
                f"file:{quote(file)}?mode=ro", uri=True, timeout=LOCK_TIMEOUT_S, check_same_thread=False))

            @sa.event.listens_for(engine, "connect")
            def _sqlite_ro_connect(dbapi, _record):
                dbapi.isolation_level = None
                dbapi.execute(f"PRAGMA busy_timeout={int(LOCK_TIMEOUT_S * 1000)}")

            @sa.event.listens_for(engine, "begin")
            def _sqlite_ro_begin(conn):
                conn.exec_driver_sql("BEGIN")
        elif url.startswith("sqlite"):
            engine = sa.create_engine(url, poolclass=sa.pool.NullPool, connect_args={"timeout": LOCK_TIMEOUT_S})

            @sa.event.listens_for(engine, "connect")
            def _sqlite_connect(dbapi, _record):  # SQLite's own transactions, driven by the begin event
                dbapi.isolation_level = None
                dbapi.execute(f"PRAGMA busy_timeout={int(LOCK_TIMEOUT_S * 1000)}")
                _set_wal(dbapi)

            @sa.event.listens_for(engine, "begin")
            def _sqlite_begin(conn):  # a writer takes the write lock at BEGIN (PostgreSQL: LOCK TABLE)
                conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.info.pop("write", False) else "BEGIN")
        else:
            engine = sa.create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=4)
    except (ModuleNotFoundError, sa.exc.NoSuchModuleError, sa.exc.ArgumentError) as e:
        shown = _shown(url)
        hint = " (pip install 'ltbench[cluster]' for PostgreSQL)" if "postgres" in url else ""
        raise RegistryError(f"cannot open the registry database {shown}: {e}{hint}") from None
    _ENGINES[key] = engine
    return engine


def _shown(url: str) -> str:
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return url


#: The folder layout of one expert (the registry's alone: others ask `Expert`).
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
        from .metrics import thresholds

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
        return sorted(_unquote(p.stem) for p in (self.path / LOGITS_DIR).glob("*.safetensors"))

    def _logits_file(self, split: str) -> Path:
        file = self.path / LOGITS_DIR / f"{_quote(split)}.safetensors"
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
                _HASHED[key] = _sha256(file)
            if _HASHED[key] != info.get("sha256"):
                return f"{file} changed since registration (its sha256 differs)"
        return None

    def history(self) -> list[dict[str, Any]] | None:
        """The learning curve (history.csv, one row per step; see tracking.HISTORY_COLUMNS), or None
        for an expert that has none (a fusion, or one registered before histories were kept)."""
        try:
            return _read_history(self.path / "history.csv")
        except (ValueError, OSError, UnicodeDecodeError, csv.Error) as e:
            raise RegistryError(f"expert {self.name!r}: {self.path / 'history.csv'} is damaged"
                                f" ({_first_line(e)}); run `ltbench doctor`") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines() or [""])[0][:200]


def _quote(split: str) -> str:
    return split.replace(":", "__")


def _unquote(stem: str) -> str:
    return stem.replace("__", ":")


def _write_history(path: Path, rows: list[dict[str, Any]]) -> None:
    from .tracking import HISTORY_COLUMNS

    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=HISTORY_COLUMNS, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        w.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)


def _read_history(path: Path) -> list[dict[str, Any]] | None:
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


def _write_json(path: Path, obj: Any) -> None:
    from .jsonio import dumps

    path.write_text(dumps(obj, indent=2, sort_keys=True) + "\n")


@dataclass
class Problem:
    """One thing `doctor` found: what, which name, where, and what `repair` would do."""

    kind: str  # orphan-row | orphan-folder | unreadable | damaged | temporary | stray | checkpoint | stale-checkpoint
    name: str
    path: Path
    detail: str
    fix: str


class Registry:
    """The expert store: an index (SQLite or any SQLAlchemy URL) plus one complete folder per expert.

    Writers never overwrite or half-write (see the module docstring); readers get `Expert` handles,
    the one interface to what an expert folder holds."""
    def __init__(self, home: str | Path | None = None, url: str | Path | None = None, read_only: bool = False):
        self.home = local_home(home) if home is not None else default_home()
        self.experts_dir = self.home / "experts"
        self.url = database_url(url) if url is not None else default_url(self.home)
        self.sqlite = self.url.startswith("sqlite")
        self.read_only = read_only
        #: what messages name: the SQLite file, or the server's URL without its password
        self.index: Path | str = Path(sa.engine.make_url(self.url).database or "") if self.sqlite else _shown(self.url)
        #: this home as the index records it (`expert_homes`); a shared index holds other homes' rows too
        self.home_key = str(self.home.absolute())
        self.shared = not (self.sqlite and Path(self.index).absolute().parent == self.home.absolute())
        if not read_only:
            try:
                self.experts_dir.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise RegistryError(f"cannot create the registry in {self.home} ({e.strerror}); make it writable"
                                    " or point LTBENCH_HOME at a writable folder") from None
        self._engine = _engine(self.url, read_only)
        self._create_table()

    def _create_table(self) -> None:
        """Check that the index is an ltbench one (never write into another database), then create
        what is missing; an index that has its tables is not locked for writing."""
        with self._connect() as db:
            tables = set(sa.inspect(db).get_table_names())
        if tables and "experts" not in tables:
            shown = ", ".join(sorted(tables)[:5])
            raise RegistryError(f"{self.index} is not an ltbench registry index (it holds {shown}); nothing was"
                                " written to it — point LTBENCH_HOME / LTBENCH_REGISTRY elsewhere")
        if {"experts", "expert_homes"} <= tables or self.read_only:
            if "experts" not in tables:
                raise RegistryError(f"{self.index} holds no ltbench registry index (an empty database)")
            self.has_homes = "expert_homes" in tables
            return
        for attempt in range(3):
            try:  # SQLite: under the write lock (a fresh file's check-then-create would not wait for it)
                with self._connect(write=True, lock_table=False) as db:
                    EXPERTS.create(db, checkfirst=True)
                    HOMES.create(db, checkfirst=True)
                self.has_homes = True
                return
            except (RegistryError, sa.exc.IntegrityError, sa.exc.ProgrammingError):
                if self.sqlite or attempt == 2:
                    raise
                # PostgreSQL: another process created it between our check and create; check again

    @classmethod
    def existing(cls, home: str | Path | None = None, read_only: bool = True) -> "Registry":
        """The registry at `home` (default $LTBENCH_HOME), opened read-only unless told; one that is
        not there is an error naming the folder, never created (a mistyped home must not look empty)."""
        path = local_home(home) if home is not None else default_home()
        url = default_url(path)
        index = Path(sa.engine.make_url(url).database or "") if url.startswith("sqlite") else None
        if not (index.is_file() if index is not None else path.is_dir()):
            raise RegistryError(f"no ltbench registry in {path.resolve()} (--home / LTBENCH_HOME, default"
                                f" ./ltbench-runs): nothing has been registered there")
        return cls(path, read_only=read_only)

    @contextmanager
    def _connect(self, write: bool = False, lock_table: bool = True) -> Iterator[sa.Connection]:
        """One transaction, committed at the end; the database's errors become one line naming it.

        `write` holds the index's write lock from the start (SQLite BEGIN IMMEDIATE, PostgreSQL
        LOCK TABLE): writers are serialised, readers go on.
        """
        if write and self.read_only:
            raise RegistryError(f"the registry {self.home} was opened read-only")
        writer = Path(str(self.index) + ".writer") if self.sqlite else None
        try:
            with self._engine.connect() as db:
                if write and self.sqlite:
                    db.info["write"] = True
                with db.begin():
                    if write and lock_table and not self.sqlite:
                        db.execute(sa.text("LOCK TABLE experts IN SHARE ROW EXCLUSIVE MODE"))
                    if write and writer is not None:  # who holds the lock, for those who wait on it
                        try:
                            writer.write_text(f"{os.getpid()}\n")
                        except OSError:
                            writer = None
                    try:
                        yield db
                    finally:
                        if write and writer is not None:
                            writer.unlink(missing_ok=True)
        except sa.exc.IntegrityError:
            raise
        except sa.exc.DBAPIError as e:
            text = str(e.orig).strip().splitlines()[0] if e.orig is not None else str(e)
            if self.sqlite and "locked" in text:
                try:
                    holder = Path(str(self.index) + ".writer").read_text().strip() or "?"
                except OSError:
                    holder = "?"
                raise RegistryError(f"the registry index {self.index} is locked by process {holder}, a writer that"
                                    " has not finished (stopped or hung?); wait for it, or end it and retry") from None
            if not self.sqlite:
                raise RegistryError(f"the registry database {self.index} failed ({type(e.orig).__name__}: {text});"
                                    " is the server up and LTBENCH_REGISTRY right?") from None
            if any(w in text for w in ("readonly", "read-only", "unable to open", "disk I/O")):
                raise RegistryError(f"cannot write the registry index {self.index} ({text}); make {self.home}"
                                    " writable or point LTBENCH_HOME at a writable folder") from None
            raise RegistryError(f"the registry index {self.index} is damaged ({text}); move it and its -wal/-shm"
                                " files aside, then `ltbench doctor --repair` re-indexes the expert folders") from None

    def task_args(self) -> dict[str, Any]:
        """What another process (a Ray task) needs to open this same registry: `Registry(**args)`."""
        return {"home": str(self.home), "url": self.url}

    def env(self) -> dict[str, str]:
        """The same registry for a subprocess (`torchrun … -m ltbench.executors`)."""
        return {"LTBENCH_HOME": str(self.home), "LTBENCH_REGISTRY": self.url}

    def _has(self, db: sa.Connection, name: str) -> bool:
        return db.execute(sa.select(EXPERTS.c.name).where(EXPERTS.c.name == name)).first() is not None

    # -- reading -----------------------------------------------------------------------
    def names(self) -> list[str]:
        """Registered names, sorted: what `ls` lists and what "did you mean" suggests from."""
        with self._connect() as db:
            return list(db.execute(sa.select(EXPERTS.c.name).order_by(EXPERTS.c.name)).scalars())

    def rows(self) -> list[dict[str, Any]]:
        """The index rows (name, method, backbone, dataset, seed, config_hash, created, format), cheap: no folder is read."""
        with self._connect() as db:
            q = sa.select(EXPERTS).order_by(EXPERTS.c.dataset, EXPERTS.c.method, EXPERTS.c.name)
            return [dict(r._mapping) for r in db.execute(q)]

    def healthy_rows(self) -> list[dict[str, Any]]:
        """`rows()` minus experts whose folder is missing or unreadable, each named in a BrokenExpertWarning."""
        out = []
        for r in self.rows():
            why = Expert(r["name"], self.experts_dir / r["name"]).problem()
            if why is None:
                out.append(r)
            else:
                warnings.warn(f"skipping expert {r['name']!r}: {why}; `ltbench doctor` for details",
                              BrokenExpertWarning, stacklevel=2)
        return out

    def __contains__(self, name: str) -> bool:
        with self._connect() as db:
            return self._has(db, name)

    def get(self, name: str) -> Expert:
        """The registered expert `name`; an unknown name is a RegistryError with a suggestion, and one
        written by a newer ltbench is refused rather than misread."""
        check_name(name)  # also a name no index could hold (a non-UTF-8 byte from the shell)
        with self._connect() as db:
            row = db.execute(sa.select(EXPERTS.c.format).where(EXPERTS.c.name == name)).first()
        if row is None:
            from ._registry import suggest

            hint = suggest(name, self.names())
            if os.path.lexists(self.experts_dir / name):
                hint = f" Its folder {self.experts_dir / name} exists without an index row: see `ltbench doctor`."
            raise RegistryError(f"no expert named {name!r} in {self.home}.{hint}")
        if row[0] > FORMAT_VERSION:
            raise RegistryError(
                f"expert {name!r} was written by a newer ltbench (format {row[0]} > {FORMAT_VERSION}); upgrade ltbench"
            )
        return Expert(name, self.experts_dir / name)

    # -- runs in progress ----------------------------------------------------------------
    def run_dir(self, name: str) -> Path:
        """The checkpoint folder of a run not registered yet."""
        return self.home / "runs" / check_name(name)

    def lock_run(self, name: str):
        """Hold the run's checkpoint folder for this process: a second run of `name` stops at once."""
        return file_lock(self.run_dir(name) / ".lock", f"run {name!r}", remove_dir=True)

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
        history: list[dict[str, Any]] | None = None,
    ) -> Expert:
        """Write the folder completely, then (under the index's write lock) move it into place and index it.

        Refuses — and touches nothing of it — a name that is indexed or whose folder exists.
        """
        import torch
        from safetensors.torch import save_file

        check_name(name)
        with self._connect(write=True) as db:  # before any work; under the lock, so a writer mid-commit
            self.check_free(name, db)          # is seen registered, not as a folder without its row
        token = uuid.uuid4().hex[:8]
        tmp = self.experts_dir / f".tmp-{name}-{token}"
        final = self.experts_dir / name
        with file_lock(self.experts_dir / f".tmp-{name}-{token}.lock", f"registration of {name!r}"):
            try:
                (tmp / LOGITS_DIR).mkdir(parents=True)
                _write_json(tmp / RECORDS[0], config)
                save_file({k: v.detach().contiguous().cpu() for k, v in delta.items()}, str(tmp / DELTA_FILE))
                for split, (lg, labels) in logits.items():
                    save_file(
                        {"logits": lg.detach().to(torch.float16).contiguous().cpu(),
                         "labels": torch.as_tensor(np.ascontiguousarray(labels), dtype=torch.int64)},
                        str(tmp / LOGITS_DIR / f"{_quote(split)}.safetensors"),
                    )
                _write_json(tmp / RECORDS[1], metrics)
                _write_json(tmp / RECORDS[2], {**meta, "format": FORMAT_VERSION, "files": _file_hashes(tmp)})
                for file, obj in (extra_files or {}).items():
                    _write_json(tmp / file, obj)
                if history is not None:
                    _write_history(tmp / "history.csv", history)
                with self._connect(write=True) as db:  # one writer at a time from here to the commit
                    self.check_free(name, db)
                    os.rename(tmp, final)  # fails, replacing nothing, if a non-empty `final` appeared
                    try:
                        db.execute(sa.insert(EXPERTS).values(_row(name, config, meta)))
                        self._own(db, name)
                        db.commit()  # the index row last: only now is the expert there
                    except BaseException:
                        os.rename(final, tmp)  # ours: put it back so the cleanup below removes it
                        raise
            except OSError as e:
                if e.errno in (errno.ENOTEMPTY, errno.EEXIST) and Path(e.filename or "") == tmp:
                    raise RegistryError(f"cannot register {name!r}: {final} appeared meanwhile (another"
                                        " process?); it was left as it is") from None
                if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
                    need = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file()) if tmp.is_dir() else 0
                    raise RegistryError(f"cannot register {name!r}: writing {self.experts_dir} failed ({e.strerror});"
                                        f" nothing was registered — free at least {need / 1e6:.1f} MB more there"
                                        " (or make it writable) and run again") from None
                raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return Expert(name, final)

    def check_free(self, name: str, db: sa.Connection | None = None) -> None:
        """Raise RegistryError if `name` is indexed or its folder exists (callers check before any work).

        With `db` (a write transaction: `register`'s own checks) the answer is final. Without it
        (the fast-fail checks of `train` and `fuse`, before any work) it is a plain read, and a
        folder seen without its row may be another writer's between its rename and its commit:
        that is confirmed under the write lock, which such a writer holds until its row is
        committed, before the folder is called unindexed. So the loser of a race is told "already
        registered" whether it lost by a millisecond or by a minute.
        """
        if db is not None:
            taken = self._taken(db, name)
        else:
            with self._connect() as db2:
                taken = self._taken(db2, name)
            if taken == "unindexed":
                try:  # waits for a writer mid-commit; then its row is there (or its folder gone)
                    with self._connect(write=True) as db3:
                        taken = self._taken(db3, name)
                except RegistryError:  # no write access to the index: keep what the plain read saw
                    pass
        if taken == "indexed":
            raise RegistryError(f"expert {name!r} is already registered in {self.home}; pick --name or `ltbench rm {name}`")
        if taken == "unindexed":
            raise RegistryError(f"cannot register {name!r}: {self.experts_dir / name} exists but is not indexed;"
                                " it was left as it is — `ltbench doctor --repair` re-indexes it if complete,"
                                " or pick another --name")

    def _taken(self, db: sa.Connection, name: str) -> str | None:
        """What holds `name`: "indexed", "unindexed" (a folder without its row) or None.

        The row is read before the folder: a writer's commit between the two reads is seen as a
        folder without its row (which `check_free` then confirms under the lock), never as free."""
        if self._has(db, name):
            return "indexed"
        return "unindexed" if os.path.lexists(self.experts_dir / name) else None

    def _own(self, db: sa.Connection, name: str) -> None:
        """Record that this home holds `name`'s folder (see HOMES)."""
        if getattr(self, "has_homes", False):
            db.execute(sa.delete(HOMES).where(HOMES.c.name == name))
            db.execute(sa.insert(HOMES).values(name=name, home=self.home_key))

    def _drop(self, db: sa.Connection, name: str) -> None:
        db.execute(sa.delete(EXPERTS).where(EXPERTS.c.name == name))
        if getattr(self, "has_homes", False):
            db.execute(sa.delete(HOMES).where(HOMES.c.name == name))

    def fusions_of(self, name: str) -> list[str]:
        """Registered fused experts that have `name` as a member (they cannot predict without it)."""
        out = []
        for r in self.rows():
            if str(r["method"]).startswith("fuse:") and r["name"] != name:
                try:
                    members = Expert(r["name"], self.experts_dir / r["name"]).config.get("experts") or []
                except RegistryError:
                    continue
                if name in members:
                    out.append(r["name"])
        return out

    def remove(self, name: str, force: bool = False) -> None:
        """Drop the row and the folder together (row first: readers never list a missing folder).

        An orphan row (its folder gone) is dropped alone. A member of a registered fusion is
        refused unless `force` (the fusion could no longer predict).
        """
        self.get(name)
        users = self.fusions_of(name)
        if users and not force:
            raise RegistryError(f"expert {name!r} is a member of the fused expert(s) {', '.join(users)}, which could"
                                f" no longer predict without it; `ltbench rm {users[0]}` first, or rm --force")
        trash = self.experts_dir / f".rm-{name}-{uuid.uuid4().hex[:8]}"
        with self._connect(write=True) as db:
            self._drop(db, name)
            folder = self.experts_dir / name
            if os.path.lexists(folder):
                os.replace(folder, trash)
        shutil.rmtree(trash, ignore_errors=True)

    # -- checking and repair -------------------------------------------------------------
    def _homes(self) -> dict[str, str]:
        """name -> the home that registered it (rows written before `expert_homes` have none)."""
        if not getattr(self, "has_homes", False):
            return {}
        with self._connect() as db:
            return {n: h for n, h in db.execute(sa.select(HOMES.c.name, HOMES.c.home))}

    def check(self) -> list[Problem]:
        """Orphan rows, orphan folders, unreadable or damaged experts (unknown method, newer format,
        files changed since registration, missing fusion members), stale temporaries and checkpoints
        left in runs/. On a shared index, rows another home registered are not this home's to judge."""
        found: list[Problem] = []
        indexed = set(self.names())
        homes = self._homes()
        methods = _known_methods()
        for name in sorted(indexed):
            folder = self.experts_dir / name
            if homes.get(name, self.home_key) != self.home_key:
                continue  # another home's expert on a shared index
            if not os.path.lexists(folder):
                fix = ("--repair drops the index row" if name in homes or not self.shared else
                       "not repaired: the shared index does not say which home wrote it; `ltbench rm` it from its home")
                found.append(Problem("orphan-row", name, folder, "indexed, but its folder is missing", fix))
                continue
            ex = Expert(name, folder)
            why = ex.problem()
            if why:
                found.append(Problem("unreadable", name, folder, why, "--repair --remove-broken removes it"))
            elif why := ex.verify(methods, indexed):
                found.append(Problem("damaged", name, folder, why, "--repair --remove-broken removes it"))
        for entry in sorted(self.experts_dir.iterdir()) if self.experts_dir.is_dir() else []:
            n = entry.name
            if n.startswith((".tmp-", ".rm-")):
                lock = entry if n.endswith(".lock") else entry.with_name(n + ".lock")
                if not _is_locked(lock):
                    found.append(Problem("temporary", n, entry, "left by an interrupted write or removal",
                                         "--repair deletes it"))
            elif n not in indexed:
                if entry.is_symlink() or not entry.is_dir() or not any((entry / f).exists() for f in RECORDS):
                    found.append(Problem("stray", n, entry, "not an expert folder that ltbench wrote",
                                         "left as it is: move it out of the registry"))
                    continue
                why = Expert(n, entry).problem()
                if why is None:
                    found.append(Problem("orphan-folder", n, entry, "a complete expert folder without an index row",
                                         "--repair re-indexes it"))
                else:
                    found.append(Problem("unreadable", n, entry, f"not indexed and incomplete: {why}",
                                         "--repair --remove-broken removes it"))
        runs = self.home / "runs"
        for folder in sorted(p for p in runs.iterdir() if p.is_dir()) if runs.is_dir() else []:
            if _is_locked(folder / ".lock"):
                continue  # a run in progress
            for tmp in sorted(folder.glob("checkpoint.pt.tmp*")):
                found.append(Problem("temporary", folder.name, tmp, "a half-written checkpoint", "--repair deletes it"))
            if (folder / "checkpoint.pt").is_file():
                if folder.name in indexed:
                    found.append(Problem("stale-checkpoint", folder.name, folder,
                                         "the checkpoint of a run that is registered", "--repair deletes it"))
                else:
                    found.append(Problem("checkpoint", folder.name, folder, "an unfinished or failed run's checkpoint",
                                         f"`ltbench train --name {folder.name} --resume …` continues it;"
                                         " --repair --remove-broken deletes it"))
        return found

    def repair(self, remove_broken: bool = False) -> list[Problem]:
        """Fix what `check` finds: re-index complete folders, drop this home's orphan rows, delete stale
        temporaries and checkpoints; broken experts and unfinished runs' checkpoints are removed only
        with `remove_broken`. Nothing `check` calls stray is touched. Returns what was done."""
        done = []
        homes = self._homes()
        for p in self.check():
            if p.kind == "orphan-row":
                if p.name not in homes and self.shared:
                    continue
                with self._connect() as db:
                    self._drop(db, p.name)
            elif p.kind == "orphan-folder":
                ex = Expert(p.name, p.path)
                try:
                    with self._connect() as db:
                        db.execute(sa.insert(EXPERTS).values(_row(p.name, ex.config, ex.meta)))
                        self._own(db, p.name)
                except sa.exc.IntegrityError:  # indexed meanwhile
                    continue
            elif p.kind == "temporary":
                if p.path.is_dir() and not p.path.is_symlink():
                    shutil.rmtree(p.path, ignore_errors=True)
                else:
                    p.path.unlink(missing_ok=True)
            elif p.kind == "stale-checkpoint" or (p.kind == "checkpoint" and remove_broken):
                shutil.rmtree(p.path, ignore_errors=True)
            elif p.kind in ("unreadable", "damaged") and remove_broken:
                with self._connect() as db:
                    self._drop(db, p.name)
                trash = self.experts_dir / f".rm-{p.name}-{uuid.uuid4().hex[:8]}"
                os.replace(p.path, trash)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                continue
            done.append(p)
        return done


def _known_methods() -> set[str] | None:
    """Method names a config may name (read from the sources, no torch); None if they cannot be read."""
    try:
        from .catalog import table
        from .plugins import METHODS

        return set(table("METHODS")) | set(METHODS)
    except Exception:  # noqa: BLE001  (a check must not fail on the listing)
        return None


_HASHED: dict[tuple[str, int, int], str] = {}


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _file_hashes(folder: Path) -> dict[str, dict[str, Any]]:
    """{relative path: {sha256, bytes}} of config.json and the tensor files, recorded in meta.json at
    registration so `doctor` can tell a damaged delta or logits file (and `Expert.problem` a missing
    one), and `predict` a config changed since (it would rebuild another model)."""
    files = [folder / RECORDS[0], folder / DELTA_FILE, *sorted((folder / LOGITS_DIR).glob("*.safetensors"))]
    return {str(f.relative_to(folder)): {"sha256": _sha256(f), "bytes": f.stat().st_size} for f in files if f.is_file()}


def _row(name: str, config: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    values = (name, config.get("method"), config.get("backbone"), config.get("dataset"), config.get("seed"),
              meta.get("config_hash"), meta.get("created", ""), int(meta.get("format", FORMAT_VERSION)))
    return dict(zip(_COLUMNS, values))
