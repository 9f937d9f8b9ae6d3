"""`ltbench fuse --storage URL --workers N`: N processes searching one Optuna study.

Optuna's RDB storage already lets processes share a study; two things are added here:

- **An exact trial count.** Each worker, holding a lock, counts the study's trials and asks for a
  new one only while complete + running + waiting < the target; a waiting trial (a retry) is
  always taken. Releasing the lock once its trial exists, workers never overshoot the target
  together. The lock is PostgreSQL's advisory lock on the study's database (so workers on
  several machines agree), or a file lock beside a SQLite study.
- **No lost trial.** The storage runs with a heartbeat: a killed worker's running trial goes
  stale, is failed by the next worker that looks (`fail_stale_trials`), and
  `RetryHeartbeatStaleTrialCallback` enqueues its copy, which a surviving worker runs. Workers that
  find the target reached by running trials wait for them rather than stop, in case one dies.
"""
from __future__ import annotations

import contextlib
import fcntl
import time
import zlib
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from ..errors import FusionError
from ..tuning.study import join, quiet_optuna, rdb_storage, spawn
from .core import ProbStack, make_objective


def weight_sampler(seed: int):
    """TPE over the expert weights, seeded so reruns agree; the search and every worker use it."""
    import optuna

    return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)


def check_workers(workers: int, storage: str | None) -> None:
    """Several search workers need a shared storage to meet in; refuse before any work otherwise."""
    if workers < 1:
        raise FusionError(f"--workers must be at least 1, got {workers}")
    if workers > 1 and not storage:
        raise FusionError("--workers N > 1 needs a shared study: give --storage (postgresql://… or sqlite:///FILE)")
    if workers > 1 and not storage.startswith(("postgresql", "sqlite:///")):
        raise FusionError(f"--workers N > 1 supports PostgreSQL or a SQLite file as --storage, got {storage!r}")


@contextlib.contextmanager
def study_lock(storage: str, study_name: str) -> Iterator[None]:
    """One worker at a time between counting the trials and creating one."""
    if storage.startswith("postgresql"):
        import sqlalchemy as sa

        key = zlib.crc32(study_name.encode())
        engine = sa.create_engine(storage, poolclass=sa.pool.NullPool)
        with engine.connect() as c:
            c.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                c.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        engine.dispose()
    else:
        path = Path(storage[len("sqlite:///"):] + f".{study_name}.lock")
        with open(path, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


def _worker(storage: str, study_name: str, target: int, seed: int, keys: list[list[str]], stack: ProbStack,
            objective: str, labels: np.ndarray, shot_groups: np.ndarray) -> None:
    """One search process: run trials of the shared study until `target` of them are complete."""
    import optuna

    torch.set_num_threads(1)
    score = make_objective(objective, labels, shot_groups)
    E, G = len(keys), len(keys[0])
    with quiet_optuna():
        study = optuna.load_study(study_name=study_name, storage=rdb_storage(storage), sampler=weight_sampler(seed))
        states = optuna.trial.TrialState
        while True:
            lock = study_lock(storage, study_name)
            lock.__enter__()
            held = True
            try:
                optuna.storages.fail_stale_trials(study)  # a dead worker's trial → failed → its retry waits
                _fail_unclaimed(study)
                count = {s: 0 for s in states}
                for t in study.get_trials(deepcopy=False):
                    count[t.state] += 1
                if count[states.COMPLETE] >= target:
                    return
                if not count[states.WAITING] and sum(count[s] for s in (states.COMPLETE, states.RUNNING)) >= target:
                    lock.__exit__(None, None, None)
                    held = False
                    time.sleep(0.25)  # the rest are running: wait in case one dies
                    continue

                def objective_fn(trial: "optuna.Trial") -> float:
                    nonlocal held
                    study._storage.record_heartbeat(trial._trial_id)  # alive from now on, before others count
                    lock.__exit__(None, None, None)  # the trial exists: the next worker may count
                    held = False
                    w = torch.tensor([[trial.suggest_float(keys[e][g], 0.0, 1.0) for g in range(G)]
                                      for e in range(E)], dtype=torch.float32)
                    return score(stack.predict(w))

                study.optimize(objective_fn, n_trials=1)
            finally:
                if held:
                    lock.__exit__(None, None, None)


def _fail_unclaimed(study) -> None:
    """Fail running trials that never had a heartbeat: under the lock, only a dead worker leaves one
    (a live one records its first heartbeat before it lets go of the lock)."""
    import optuna
    import sqlalchemy as sa

    storage = study._storage
    running = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))]
    if not running:
        return
    with getattr(storage, "_backend", storage).engine.connect() as c:  # Optuna wraps the RDB storage in a cache
        beating = set(c.execute(sa.text("SELECT trial_id FROM trial_heartbeats")).scalars())
    for t in running:
        if t._trial_id not in beating:  # it had no parameters yet: its slot is simply free again
            storage.set_trial_state_values(t._trial_id, state=optuna.trial.TrialState.FAIL)


def run_workers(workers: int, storage: str, study_name: str, target: int, seed: int, keys: list[list[str]],
                stack: ProbStack, objective: str, labels: np.ndarray, shot_groups: np.ndarray) -> dict[str, Any]:
    """Run `workers` search processes on the study until it has `target` complete trials."""
    procs = spawn(_worker, [(storage, study_name, target, seed + 1 + i, keys, stack, objective, np.asarray(labels),
                             np.asarray(shot_groups)) for i in range(workers)], daemon=True)
    return {"workers": workers, "worker_exit_codes": join(procs)}
