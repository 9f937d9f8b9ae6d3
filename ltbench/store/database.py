"""The registry's index: SQLAlchemy Core tables in SQLite (the default, in the home) or any
database URL, and where a home and its index are.
"""
from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import sqlalchemy as sa

from ..errors import RegistryError

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
COLUMNS = ("name", "method", "backbone", "dataset", "seed", "config_hash", "created", "format")
#: which home wrote each row, so `doctor --repair` on a shared index touches only its own home's rows
HOMES = sa.Table("expert_homes", _META, sa.Column("name", sa.Text, primary_key=True),
                 sa.Column("home", sa.Text, nullable=False))


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


def engine(url: str, read_only: bool = False) -> sa.Engine:
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
        shown = shown_url(url)
        hint = " (pip install 'ltbench[cluster]' for PostgreSQL)" if "postgres" in url else ""
        raise RegistryError(f"cannot open the registry database {shown}: {e}{hint}") from None
    _ENGINES[key] = engine
    return engine


def shown_url(url: str) -> str:
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return url


