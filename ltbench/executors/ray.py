"""`ltbench bench SUITE --executor ray`: every (run, seed) and fusion of a suite as a Ray task.

Ray does the scheduling (resources, placement on nodes, worker processes); this module only
turns a suite's jobs into tasks and keeps the books:

- a job is submitted once what it needs is registered (an `init:` run, a fusion's members), so
  the dependency graph lives in the driver, not in chained object refs a retry would break;
- a failed attempt (an exception, or its worker process dying) is reported and the job
  resubmitted up to `retries:` times, resuming from its last epoch checkpoint; the others go on;
- each task runs `suites.execute.execute`, as the local executor does, against the same
  registry (its URL and home travel with the task), so the budget and every config value are
  those of the local executor, and the registry's commit-last write is what makes a killed
  attempt leave nothing half-registered;
- registered jobs are skipped before anything is submitted, so a killed suite resumes.

A task's worker process imports torch, timm and the trainer on its first task (seconds); Ray
reuses a job's workers, so later tasks skip that, and `warm_workers` pays it up front for a
driver that starts a cluster ahead of its suites (the benchmark counts it with the start).

`resources: {gpus: N}` with N > 1 runs the job as `torchrun --nproc_per_node N` inside its task
(DDP over N GPUs of the task's node). `python -m ltbench.executors.ray RUN.json` is that command's
entry point: it trains one resolved run against $LTBENCH_HOME / $LTBENCH_REGISTRY.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from rich.console import Console
from rich.live import Live
from rich.table import Table

from ..errors import TrainingError
from ..training.callbacks import Callback

if TYPE_CHECKING:
    from ..spec import RunSpec
    from ..store.index import Registry
    from ..suites.schema import Job, Suite

@dataclass
class TaskState:
    """What the live table shows of one job."""

    name: str
    kind: str
    state: str = "waiting"  # waiting | queued | running | retrying | done | registered | failed | skipped
    node: str = ""
    pid: int | None = None
    phase: str = ""
    progress: float = 0.0
    attempts: int = 0
    error: str = ""
    needs: list[str] = field(default_factory=list)


def torchrun_command(run_file: str | Path, gpus: int) -> list[str]:
    """The command a `gpus: N > 1` task runs: DDP over N GPUs of its node (one process each)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={int(gpus)}",
            "-m", "ltbench.executors.ray", str(run_file)]


# -- inside a task -------------------------------------------------------------------------------
class _Reporter(Callback):
    """A trainer callback that pushes a task's state to the board actor, at most once a second: each call costs the
    actor milliseconds of CPU, which on a small machine the training tasks are short of."""

    def __init__(self, board, key: str, name: str, attempt: int, every: float = 1.0):
        self.board, self.key, self.name, self.attempt, self.every, self.last = board, key, name, attempt, every, 0.0

    def on_step(self, trainer, event) -> None:
        now = time.monotonic()
        if now - self.last > self.every:
            self.last = now
            self.board.update.remote(self.key, self.name, phase=event.phase, progress=float(event.fraction),
                                     attempts=self.attempt)


def _execute(job: "Job", registry_args: dict[str, Any], board, key: str, attempt: int) -> dict[str, Any]:
    """The body of one Ray task (attempt 1, 2 …): `suites.execute.execute`, or torchrun for a run over
    several GPUs; a retry resumes from the last epoch checkpoint."""
    import torch

    from ..store.index import Registry
    from ..suites.execute import execute

    name, cpus = job.name, job.resources.get("cpus", 1)
    torch.set_num_threads(max(1, int(cpus)))
    board.update.remote(key, name, state="running", node=socket.gethostname(), pid=os.getpid(), attempts=attempt)
    registry = Registry(**registry_args)
    if name in registry:  # an earlier attempt committed just before its worker died
        return {"name": name, "state": "registered"}
    gpus = int(job.resources.get("gpus", 0))
    if job.kind == "run" and job.tune is None and gpus > 1:
        _train_ddp(job.run.replace(resume=attempt > 1), registry, gpus)
    else:
        execute(job, registry, quiet=True, callbacks=[_Reporter(board, key, name, attempt)], resume=attempt > 1)
    return {"name": name, "state": "done"}


def _train_ddp(run: "RunSpec", registry: "Registry", gpus: int) -> None:
    scratch = registry.run_dir(run.name)
    scratch.mkdir(parents=True, exist_ok=True)
    run_file = scratch / "run.json"
    run_file.write_text(json.dumps(run.config))
    env = {**os.environ, **registry.env()}
    done = subprocess.run(torchrun_command(run_file, gpus), env=env, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise TrainingError(f"torchrun over {gpus} GPUs failed ({done.returncode}): {tail[0]}")


def _make_board():
    import ray

    @ray.remote(num_cpus=0)
    class Board:
        """The tasks' reported states (node, pid, phase, progress) by suite key and job, read by the
        driver's table."""

        def __init__(self):
            self.states: dict[str, dict[str, dict[str, Any]]] = {}

        def update(self, key: str, name: str, **fields) -> None:
            self.states.setdefault(key, {}).setdefault(name, {}).update(fields)

        def snapshot(self, key: str) -> dict[str, dict[str, Any]]:
            return self.states.get(key, {})

        def forget(self, key: str) -> None:
            self.states.pop(key, None)

    return Board


#: The board handle per (driver node, job): a named actor that is not detached dies with its last
#: handle, so without this one a board started by `warm_workers` would be gone by the suite.
_BOARDS: dict[tuple[str, str], Any] = {}


def board():
    """This driver's board actor, started on first use and then shared by its suites: starting an
    actor's process costs about a CPU-second, which on a busy small cluster its tasks would pay."""
    import ray

    ctx = ray.get_runtime_context()
    key = (ctx.get_node_id(), ctx.get_job_id())  # a new cluster, a new node id: never a dead actor
    if key not in _BOARDS:
        _BOARDS[key] = _make_board().options(name="ltbench-board", get_if_exists=True).remote()
    return _BOARDS[key]


# -- warming a cluster's workers -----------------------------------------------------------------
def _import_task_modules() -> None:
    """What a task imports (torch, timm, torchvision through the trainer; fusion, tune): seconds."""
    from .. import fusion  # noqa: F401
    from ..store import index  # noqa: F401
    from ..training import pipeline  # noqa: F401
    from ..tuning import tuner  # noqa: F401


def _make_gate():
    import ray

    @ray.remote(num_cpus=0)
    class Gate:
        """Holds each warm-up task until `n` of them run at once, so each warms its own worker."""

        def __init__(self, n: int):
            import asyncio

            self.n, self.pids, self.open = n, set(), asyncio.Event()

        async def arrive(self, pid: int, timeout: float) -> list[int]:
            import asyncio

            self.pids.add(pid)
            if len(self.pids) >= self.n:
                self.open.set()
            try:
                await asyncio.wait_for(self.open.wait(), timeout)
            except asyncio.TimeoutError:
                pass
            return sorted(self.pids)

    return Gate


def _warm(gate, timeout: float) -> int:
    import ray

    _import_task_modules()
    try:
        ray.get(gate.arrive.remote(os.getpid(), timeout))
    except ray.exceptions.RayActorError:  # late: `warm_workers` returned and killed the gate
        pass
    return os.getpid()


def warm_workers(workers: int | None = None, timeout: float = 300.0) -> list[int]:
    """Start `workers` worker processes of the connected cluster (default: one per CPU) and have
    each import what a task imports, and start this driver's board actor; the workers' pids.

    A part of starting a cluster, for a driver that starts one ahead of its suites: Ray keeps a
    job's idle workers (up to one per CPU), so the suite's first tasks skip the imports (several
    seconds each). The results of the tasks are the same warm or cold.
    """
    import ray

    n = workers or int(ray.cluster_resources().get("CPU", 1))
    ray.get(board().snapshot.remote(""))  # its process up, before any suite's tasks need the CPUs
    gate = _make_gate().remote(n)
    try:
        warm = ray.remote(_warm).options(num_cpus=1, max_retries=0)
        refs = [warm.remote(gate, timeout) for _ in range(n)]
        # CPUs busy elsewhere: fewer. The late ones are left to finish, not cancelled: a cancel
        # interrupts a task mid-import, and the worker keeps the half-imported module (sympy under
        # torch) for every later task it runs.
        ready, _late = ray.wait(refs, num_returns=n, timeout=timeout + 30)
        return sorted(set(ray.get(ready)))
    finally:
        ray.kill(gate)


# -- the driver ----------------------------------------------------------------------------------
def _table(suite: "Suite", states: dict[str, TaskState]) -> Table:
    t = Table(title=f"suite {suite.name} on Ray", title_justify="left")
    for col in ("expert", "kind", "state", "node", "progress", "attempt"):
        t.add_column(col)
    colour = {"done": "green", "registered": "green", "failed": "red", "retrying": "yellow", "running": "cyan",
              "skipped": "red"}
    for s in states.values():
        prog = f"{s.phase} {100 * s.progress:3.0f}%" if s.state == "running" and s.phase else ""
        state = f"[{colour[s.state]}]{s.state}[/]" if s.state in colour else s.state
        t.add_row(s.name, s.kind, state + (f" ({s.error})" if s.error else ""), s.node, prog,
                  str(s.attempts) if s.attempts else "")
    return t


class _Driver:
    """The driver's books for one suite: each job's state, the attempts in flight (object ref →
    job name), the board the tasks report to."""

    def __init__(self, suite: "Suite", registry: "Registry", console: Console, done: set[str]):
        import ray

        self.suite, self.console = suite, console
        self.jobs = {j.name: j for j in suite.jobs}
        self.states = {j.name: TaskState(j.name, j.kind, needs=list(j.needs),
                                         state="registered" if j.name in done else "waiting") for j in suite.jobs}
        self.pending: dict[Any, str] = {}
        self.args = registry.task_args()
        self.board, self.key = board(), uuid.uuid4().hex
        self.task = ray.remote(_execute)

    def submit(self, name: str) -> None:
        res, s = self.jobs[name].resources, self.states[name]
        opts = {"num_cpus": res.get("cpus", 1), "num_gpus": res.get("gpus", 0), "max_retries": 0, "name": name}
        s.attempts += 1
        ref = self.task.options(**opts).remote(self.jobs[name], self.args, self.board, self.key,
                                                 s.attempts)
        self.pending[ref] = name
        s.state = "queued" if s.attempts == 1 else "retrying"

    def settle(self) -> None:
        """Submit what became ready; skip what can never be."""
        for name, s in self.states.items():
            if s.state != "waiting":
                continue
            needed = [self.states[n] for n in s.needs if n in self.states]
            if any(n.state in ("failed", "skipped") for n in needed):
                s.state, s.error = "skipped", "needs " + ", ".join(n.name for n in needed if n.state != "done")
            elif all(n.state in ("done", "registered") for n in needed):
                self.submit(name)

    def read_board(self) -> None:
        """The tasks' reports (node, pid, phase, progress); only the current attempt's count."""
        import ray

        for name, fields in ray.get(self.board.snapshot.remote(self.key)).items():
            s = self.states[name]
            if s.state in ("queued", "retrying", "running") and fields.get("attempts") == s.attempts:
                for k, v in fields.items():
                    setattr(s, k, v)

    def finish(self, ref) -> None:
        """A finished attempt: done (or registered meanwhile), else retried or failed."""
        import ray

        name = self.pending.pop(ref)
        s, job = self.states[name], self.jobs[name]
        try:
            s.state, s.error = ray.get(ref)["state"], ""
            s.progress = 1.0
        except Exception as e:  # the task raised, or its worker died
            s.error = _one_line(e)
            if s.attempts <= job.retries:
                self.console.print(f"[yellow]{name}: attempt {s.attempts} failed ({s.error}); retrying[/]",
                                   highlight=False)
                self.submit(name)
            else:
                s.state = "failed"
                self.console.print(f"[red]{name}: failed after {s.attempts} attempt(s): {s.error}[/]",
                                   highlight=False)

    def unfinished(self) -> list[TaskState]:
        return [s for s in self.states.values() if s.state in ("failed", "skipped")]


def _drive(d: _Driver, quiet: bool, on_update: Callable[[dict[str, TaskState]], None] | None,
           poll: float) -> None:
    """Submit, then wait: a finished attempt is handled at once, the board is read every `poll` s."""
    import ray

    live = Live(_table(d.suite, d.states), console=d.console, refresh_per_second=4, transient=False)
    if not quiet:
        live.start()
    try:
        d.settle()
        while d.pending:
            ready, _ = ray.wait(list(d.pending), num_returns=1, timeout=poll)
            if ready:  # and any other that finished meanwhile
                ready, _ = ray.wait(list(d.pending), num_returns=len(d.pending), timeout=0)
            d.read_board()
            for ref in ready:
                d.finish(ref)
            d.settle()
            if on_update is not None:
                on_update(d.states)
            live.update(_table(d.suite, d.states))
    finally:
        d.board.forget.remote(d.key)
        live.update(_table(d.suite, d.states))
        live.stop()


def run_suite_ray(suite: "Suite", registry: "Registry", address: str | None = None,
                  console: Console | None = None, quiet: bool = False,
                  on_update: Callable[[dict[str, TaskState]], None] | None = None, poll: float = 1.0) -> list[str]:
    """Run the suite's unregistered jobs as Ray tasks; the suite's expert names.

    Connects to `address` (auto, ray://HOST:PORT, HOST:PORT), to the cluster this process is
    already connected to, or else starts a local one (and stops it at the end). Raises
    TrainingError listing the jobs that failed every attempt, after all the others finished.
    `on_update` sees the states after each finished attempt and at least every `poll` seconds
    (the table's data, read from the board).
    """
    import ray

    from ..suites.execute import check_registered

    console = console or Console(stderr=True)
    done = set(check_registered(suite, registry))
    started = not ray.is_initialized()
    if started:
        from .. import reproducible

        env = {**reproducible.PINS, reproducible.ENV: "1"} if reproducible.active() else {}
        if os.environ.get("LTBENCH_PLUGINS"):  # outside plug-ins: the same paths must exist on every node
            env["LTBENCH_PLUGINS"] = os.environ["LTBENCH_PLUGINS"]
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False,
                 runtime_env={"env_vars": env} if env else None)  # workers start pinned, before they load torch
    try:
        driver = _Driver(suite, registry, console, done)
        _drive(driver, quiet, on_update, poll)
        bad = driver.unfinished()
        if bad:
            raise TrainingError(f"{suite.source}: {len(bad)} of {len(driver.states)} jobs did not finish: "
                                + "; ".join(f"{s.name}: {s.state} ({s.error})" for s in bad))
        return suite.names
    finally:
        if started:
            ray.shutdown()


def _one_line(e: BaseException) -> str:
    """The last line of a task's error (Ray wraps the remote traceback around it)."""
    cause = getattr(e, "cause", None)
    text = str(cause) if cause is not None else str(e)
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else type(e).__name__)[:300]


def main(argv: list[str] | None = None) -> None:
    """`python -m ltbench.executors.ray RUN.json`: train one resolved run (a DDP task's torchrun target)."""
    from ..spec import RunSpec
    from ..training.pipeline import train_expert

    argv = sys.argv[1:] if argv is None else argv
    train_expert(RunSpec.from_config(json.loads(Path(argv[0]).read_text())), quiet=True)


if __name__ == "__main__":
    main()
