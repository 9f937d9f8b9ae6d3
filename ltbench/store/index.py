"""`Registry`: the index plus one complete folder per expert, and `doctor` over both.

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

import errno
import os
import shutil
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

from ..errors import BrokenExpertWarning, RegistryError
from .database import (
    COLUMNS,
    EXPERTS,
    HOMES,
    database_url,
    default_home,
    default_url,
    engine,
    local_home,
    shown_url,
)
from .expert import (
    DELTA_FILE,
    FORMAT_VERSION,
    LOGITS_DIR,
    RECORDS,
    Expert,
    check_name,
    file_hashes,
    quote_split,
    write_history,
    write_json,
)
from .locks import file_lock, is_locked


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
        self.index: Path | str = Path(sa.engine.make_url(self.url).database or "") if self.sqlite else shown_url(self.url)
        #: this home as the index records it (`expert_homes`); a shared index holds other homes' rows too
        self.home_key = str(self.home.absolute())
        self.shared = not (self.sqlite and Path(self.index).absolute().parent == self.home.absolute())
        if not read_only:
            try:
                self.experts_dir.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise RegistryError(f"cannot create the registry in {self.home} ({e.strerror}); make it writable"
                                    " or point LTBENCH_HOME at a writable folder") from None
        self._engine = engine(self.url, read_only)
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
        """The same registry for a subprocess (`torchrun … -m ltbench.executors.ray`)."""
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
            from ..plugins.names import suggest

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
                write_json(tmp / RECORDS[0], config)
                save_file({k: v.detach().contiguous().cpu() for k, v in delta.items()}, str(tmp / DELTA_FILE))
                for split, (lg, labels) in logits.items():
                    save_file(
                        {"logits": lg.detach().to(torch.float16).contiguous().cpu(),
                         "labels": torch.as_tensor(np.ascontiguousarray(labels), dtype=torch.int64)},
                        str(tmp / LOGITS_DIR / f"{quote_split(split)}.safetensors"),
                    )
                write_json(tmp / RECORDS[1], metrics)
                write_json(tmp / RECORDS[2], {**meta, "format": FORMAT_VERSION, "files": file_hashes(tmp)})
                for file, obj in (extra_files or {}).items():
                    write_json(tmp / file, obj)
                if history is not None:
                    write_history(tmp / "history.csv", history)
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
                if not is_locked(lock):
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
            if is_locked(folder / ".lock"):
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
        from ..plugins import METHODS
        from ..plugins.catalog import table

        return set(table("METHODS")) | set(METHODS)
    except Exception:  # noqa: BLE001  (a check must not fail on the listing)
        return None


def _row(name: str, config: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    values = (name, config.get("method"), config.get("backbone"), config.get("dataset"), config.get("seed"),
              meta.get("config_hash"), meta.get("created", ""), int(meta.get("format", FORMAT_VERSION)))
    return dict(zip(COLUMNS, values))
