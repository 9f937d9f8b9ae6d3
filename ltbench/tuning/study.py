"""Optuna studies as ltbench opens them, for tuning and fusion alike: one way to create or resume a
study (a bad storage URL is one line, not a traceback), Optuna kept quiet, a heartbeat storage for
studies shared by processes, and one way to run work in spawned processes."""
from __future__ import annotations

import contextlib
import warnings
from typing import Any, Callable, Iterator, Sequence

HEARTBEAT_S = 1
GRACE_S = 3


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna's per-trial INFO lines and experimental-feature warnings off, for the block."""
    import optuna

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(level)


def rdb_storage(url: str):
    """Optuna storage with a heartbeat and retries of failed trials (what a killed worker leaves)."""
    import optuna

    return optuna.storages.RDBStorage(
        url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
        heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3))


def open_study(name: str, storage: str | None, sampler: Any, error: type[Exception], pruner: Any = None,
               heartbeat: bool = False):
    """Create or resume the maximisation study `name` in `storage` (in memory without one).

    A storage that cannot be opened (bad URL, missing driver, unwritable file) or that holds a
    minimisation study of that name raises `error` with one line."""
    import optuna

    try:
        study = optuna.create_study(study_name=name, storage=rdb_storage(storage) if heartbeat else storage,
                                    sampler=sampler, pruner=pruner, direction="maximize", load_if_exists=True)
    except Exception as e:  # noqa: BLE001  (a user error, said in one line)
        hint = " (expected a database URL such as sqlite:///study.db)" if storage and "://" not in storage else ""
        raise error(f"cannot open Optuna storage {storage!r}{hint}: {type(e).__name__}: {e}") from None
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise error(f"Optuna study {name!r} in {storage} is not a maximisation study; use another storage")
    return study


def spawn(target: Callable[..., None], args: Sequence[tuple], daemon: bool = False) -> list[Any]:
    """Start one spawned process per argument tuple (spawn: no forked torch threads or CUDA state)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=target, args=a, daemon=daemon) for a in args]
    for p in procs:
        p.start()
    return procs


def join(procs: list[Any]) -> list[int]:
    """Wait for every process; their exit codes."""
    for p in procs:
        p.join()
    return [p.exitcode for p in procs]
