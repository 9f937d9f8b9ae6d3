"""File locks that die with their process: one writer per expert name, per run folder, per tuning study."""
from __future__ import annotations

import errno
import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import RegistryError


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


def is_locked(path: Path) -> bool:
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

