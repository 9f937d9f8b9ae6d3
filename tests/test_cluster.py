"""The cluster executor and registry on real components: a local Ray cluster (two nodes, one worker each) and a PostgreSQL
server (conftest's session fixtures); nothing mocked."""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import sqlalchemy as sa
import yaml
from conftest import TINY_DATA

from ltbench.errors import ConfigError, TrainingError
from ltbench.executors import check_executor, run_suite
from ltbench.executors.ray import run_suite_ray, torchrun_command
from ltbench.store.index import Registry
from ltbench.suites.schema import SuiteError, load_suite, parse_suite

FOUR = {
    "name": "four",
    "dataset": "fashion-mnist-lt",
    "backbone": "vit-tiny-test",
    "budget": "4steps",
    "seeds": [0],
    "set": dict(TINY_DATA),
    "resources": {"cpus": 1},
    "retries": 1,
    "runs": [
        {"method": "linear-probe"},
        {"method": "vpt-deep", "set": {"prompt_len": 2, "batch_size": 8}},
        {"method": "vpt-shallow", "set": {"prompt_len": 2, "batch_size": 8}},
        {"label": "lp-again", "method": "linear-probe", "init": "linear-probe", "set": {"lr": 0.01}},
    ],
    "fusions": [{"label": "mean", "experts": ["linear-probe", "vpt-deep"], "scorer": "mean", "trials": 1}],
}


def _summary(reg: Registry) -> dict:
    """Everything a run decides: its config (budget included), what it spent in steps, its metrics."""
    out = {}
    for name in reg.names():
        ex = reg.get(name)
        # a fusion's Optuna study is named after its members' creation times: operational, not the result
        config = {k: v for k, v in ex.config.items() if k != "study_name"}
        out[name] = {"config": config, "metrics": ex.metrics,
                     "steps": (ex.meta.get("spent") or {}).get("steps")}
    return json.loads(json.dumps(out, sort_keys=True).replace("NaN", '"nan"'))  # NaN == NaN


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    """The local executor's result of FOUR (one torch thread, like a one-CPU Ray task)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reg = Registry(tmp_path_factory.mktemp("seq"))
        run_suite(parse_suite(FOUR, "four.yaml"), registry=reg, quiet=True)
    finally:
        torch.set_num_threads(threads)
    return _summary(reg)


def test_ray_suite_registers_each_expert_once_in_postgresql_with_the_sequential_metrics(
        ray_cluster, sequential, postgres_url, tmp_path):
    reg = Registry(tmp_path / "runs", url=postgres_url)
    seen: dict[str, set] = {}

    def watch(states):
        for s in states.values():
            if s.node:
                seen.setdefault(s.name, set()).add(s.pid)

    run_suite_ray(parse_suite(FOUR, "four.yaml"), reg, quiet=True, on_update=watch)
    got = _summary(reg)
    assert sorted(got) == sorted(sequential) == sorted(parse_suite(FOUR, "four.yaml").names)
    assert got == sequential  # configs (budget and every value), steps spent, and metrics
    assert len({p for pids in seen.values() for p in pids}) >= 2  # both workers took tasks
    assert not (tmp_path / "runs" / "registry.sqlite").exists() and _leftovers(reg) == []


def _leftovers(reg: Registry) -> list[str]:
    """Anything in the artifact folder that is not a registered expert's (half-written, temporary)."""
    return sorted(p.name for p in reg.experts_dir.iterdir() if p.name not in reg.names())


def test_a_worker_killed_mid_run_is_retried_and_nothing_is_half_registered(ray_cluster, tmp_path):
    suite = parse_suite({**FOUR, "name": "kill", "budget": "60steps", "runs": FOUR["runs"][:2], "fusions": []},
                        "kill.yaml")
    reg = Registry(tmp_path / "runs")
    killed: list[tuple[str, int]] = []

    def kill_one_mid_run(states):
        for s in states.values():
            if not killed and s.state == "running" and s.pid and 0 < s.progress < 0.5:
                os.kill(s.pid, signal.SIGKILL)  # a real worker process of the cluster dies
                killed.append((s.name, s.pid))

    run_suite_ray(suite, reg, quiet=True, on_update=kill_one_mid_run, poll=0.05)
    assert killed, "no run was seen mid-way: nothing was killed"
    assert reg.names() == sorted(suite.names) and _leftovers(reg) == []
    victim = reg.get(killed[0][0])
    assert victim.meta["spent"]["steps"] == 60  # the retry finished the whole budget, once


def test_failed_run_is_reported_retried_and_the_others_finish(ray_cluster, tmp_path):
    # an init expert that is not registered: the run fails on every attempt, its fusion cannot start
    data = {**FOUR, "name": "bad", "retries": 2, "fusions": []}
    suite = parse_suite(data, "bad.yaml")
    bad = next(j for j in suite.jobs if j.label == "vpt-shallow")
    bad.run = bad.run.with_method(init="no-such-expert")
    dependent = next(j for j in suite.jobs if j.label == "lp-again")
    reg = Registry(tmp_path / "runs")
    final = {}

    with pytest.raises(TrainingError, match=r"1 of 4 jobs did not finish: bad-vpt-shallow-s0: failed .*no-such-expert"):
        run_suite_ray(suite, reg, quiet=True, on_update=lambda states: final.update(states))
    assert final[bad.name].attempts == 3
    assert reg.names() == sorted(j.name for j in suite.jobs if j is not bad) and dependent.name in reg.names()


def test_sigkilled_suite_resumes_to_the_uninterrupted_set(ray_cluster, sequential, postgres_url, tmp_path):
    path = tmp_path / "four.yaml"
    path.write_text(yaml.safe_dump(FOUR))
    home = tmp_path / "runs"
    env = {**os.environ, "LTBENCH_HOME": str(home), "LTBENCH_REGISTRY": postgres_url}
    cmd = [sys.executable, "-m", "ltbench", "bench", str(path), "--executor", "ray", "--address",
           ray_cluster.address, "--quiet", "--no-plots"]
    driver = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and driver.poll() is None:
            if Registry(home, url=postgres_url).names():
                break
            time.sleep(0.1)
        assert driver.poll() is None, driver.stderr.read().decode()[-2000:]
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    partial = Registry(home, url=postgres_url).names()
    assert 0 < len(partial) < len(sequential)

    reg = Registry(home, url=postgres_url)
    run_suite_ray(load_suite(path), reg, quiet=True)  # the resumed driver (this process: its workers are warm)
    assert _summary(reg) == sequential and _leftovers(reg) == []


def test_warm_workers_start_one_process_per_cpu_and_never_hang(ray_cluster):
    from ltbench.executors.ray import warm_workers

    assert len(warm_workers()) == 2  # the two nodes' CPUs: two distinct processes, each past its imports
    assert len(warm_workers(3, timeout=2)) >= 2  # more than the cluster's CPUs: the gate gives up after 2 s


def test_the_board_started_at_warm_up_is_the_one_a_suite_reports_to(ray_cluster, tmp_path):
    """Its start costs a CPU-second, which `warm_workers` pays outside the suite: the actor must
    outlive the handle warm-up used (a named actor that is not detached dies with its last one)."""
    import gc

    import ray

    from ltbench.executors.ray import board, warm_workers

    def pid():
        return ray.get(board().__ray_call__.remote(lambda self: os.getpid()))

    warm_workers(1)
    gc.collect()
    time.sleep(1.0)  # Ray reclaims an actor without handles asynchronously
    before = pid()
    gc.collect()
    time.sleep(1.0)
    reg = Registry(tmp_path / "h")
    run_suite_ray(parse_suite({**FOUR, "runs": FOUR["runs"][:1], "fusions": []}, "one.yaml"), reg, quiet=True)
    assert pid() == before


def test_suite_resources_and_retries_are_validated(tmp_path):
    base = {k: v for k, v in FOUR.items() if k != "fusions"}
    ok = parse_suite({**base, "resources": {"cpus": 2}, "runs": [{"method": "linear-probe", "resources": {"gpus": 2}}]},
                     "ok.yaml")
    assert ok.jobs[0].resources == {"cpus": 2, "gpus": 2} and ok.jobs[0].retries == 1
    for bad, msg in [({"resources": {"gpu": 1}}, "unknown key 'gpu'.*Did you mean 'gpus'"),
                     ({"resources": {"cpus": 0}}, "cpus must be a positive number"),
                     ({"resources": {"gpus": 1.5}}, "gpus above 1 must be whole"),
                     ({"retries": -1}, "retries must be a non-negative integer"),
                     ({"resources": [1]}, "resources must be a mapping")]:
        with pytest.raises(SuiteError, match=msg):
            parse_suite({**base, **bad}, "bad.yaml")
    with pytest.raises(ConfigError, match="unknown executor 'rey'"):
        check_executor("rey", None)
    with pytest.raises(ConfigError, match="--address 'auto' needs --executor ray"):
        check_executor("local", "auto")


def test_config_is_the_same_whatever_the_resources(tmp_path):
    plain = parse_suite(FOUR, "a.yaml")
    big = parse_suite({**FOUR, "resources": {"cpus": 8, "gpus": 1}, "retries": 3}, "a.yaml")
    assert [j.run for j in plain.jobs] == [j.run for j in big.jobs]


def test_ddp_task_command():
    """gpus: N > 1 → torchrun over N processes of one node; needs GPUs, so only the command is checked here."""
    cmd = torchrun_command("/x/run.json", 4)
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--standalone" in cmd and "--nproc_per_node=4" in cmd
    assert cmd[-3:] == ["-m", "ltbench.executors.ray", "/x/run.json"]


# -- fusion on a shared study ----------------------------------------------------------------------
def _fusion_registry(tmp_path):
    from test_fusion import HEAD, MID, TAIL, add_expert

    reg = Registry(tmp_path / "fuse")
    for i, profile in enumerate((HEAD, TAIL, MID)):
        add_expert(reg, f"x{i}", profile, i + 1)
    return reg


def _study_counts(storage: str, study_name: str) -> dict[str, int]:
    import optuna

    study = optuna.load_study(study_name=study_name, storage=storage)
    counts: dict[str, int] = {}
    for t in study.trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts


def test_fuse_workers_on_postgresql_run_exactly_the_trials(postgres_url, tmp_path):
    from ltbench.fusion import fuse_experts

    reg = _fusion_registry(tmp_path)
    ex = fuse_experts("x0,x1,x2", "search", trials=24, storage=postgres_url, workers=3, registry=reg, quiet=True,
                      name="shared")
    info = ex.meta["scorer_info"]["search"]
    assert info["workers"] == 3 and info["worker_exit_codes"] == [0, 0, 0]
    assert info["trials_completed"] == 24 and _study_counts(postgres_url, info["study_name"]) == {"COMPLETE": 24}
    # the anchors ran: the search is never below the best single expert
    assert info["best_value"] >= max(info["single_values"].values())


def test_fuse_worker_killed_mid_search_loses_no_trial(postgres_url, tmp_path):
    import multiprocessing as mp

    from ltbench.fusion import fuse_experts

    reg = _fusion_registry(tmp_path)
    result, errors = {}, []

    def fuse():
        try:
            result["ex"] = fuse_experts("x0,x1,x2", "search", trials=60, storage=postgres_url, workers=2,
                                        registry=reg, quiet=True, name="survivor")
        except Exception as e:  # noqa: BLE001  (reported by the assertion below)
            errors.append(e)

    thread = threading.Thread(target=fuse)
    thread.start()
    killed = None
    engine = sa.create_engine(postgres_url, poolclass=sa.pool.NullPool)  # plain SQL: the test creates no table
    deadline = time.monotonic() + 240
    while thread.is_alive() and time.monotonic() < deadline and killed is None:
        if sa.inspect(engine).has_table("trials"):
            with engine.connect() as c:
                states = dict(c.execute(sa.text("SELECT state, count(*) FROM trials GROUP BY state")).all())
            if states.get("COMPLETE", 0) >= 10 and states.get("RUNNING", 0):
                workers = [p for p in mp.active_children() if p.name.startswith("SpawnProcess")]
                killed = workers[0].pid
                os.kill(killed, signal.SIGKILL)  # mid-trial or between two: either way it dies for real
        time.sleep(0.05)
    engine.dispose()
    thread.join(300)
    assert killed is not None, f"the search ended before a worker could be killed {errors}"
    assert not errors, errors
    info = result["ex"].meta["scorer_info"]["search"]
    assert sorted(info["worker_exit_codes"]) == [-signal.SIGKILL, 0]
    counts = _study_counts(postgres_url, info["study_name"])
    assert counts["COMPLETE"] == 60 and info["trials_completed"] == 60
    assert set(counts) <= {"COMPLETE", "FAIL"}  # a failed trial (the killed one's) was retried, none left running


def test_fuse_workers_need_a_shared_storage(tmp_path):
    from ltbench.fusion import FusionError, fuse_experts

    reg = _fusion_registry(tmp_path)
    with pytest.raises(FusionError, match="--workers N > 1 needs a shared study"):
        fuse_experts("x0,x1", "search", workers=2, registry=reg, quiet=True)
    assert reg.names() == ["x0", "x1", "x2"]


# -- two machines' worth of writers on one database --------------------------------------------------
WRITER = """
import json, sys
import numpy as np, torch
from ltbench.store.index import Registry
from ltbench.errors import RegistryError
first, last = int(sys.argv[1]), int(sys.argv[2])
reg = Registry()  # LTBENCH_HOME (the shared folder) and LTBENCH_REGISTRY (the database) from the environment
out = {}
for i in range(first, last):
    name = f"e{i:03d}"
    try:
        reg.register(name, {"method": "m", "backbone": "b", "dataset": "d", "seed": 0}, {"w": torch.full((3,), float(i))},
                     {"val": (torch.zeros(4, 2), np.zeros(4, dtype=np.int64))}, {"val": {"overall": i / 100}},
                     {"created": sys.argv[3]})
        out[name] = "ok"
    except RegistryError as e:
        out[name] = str(e)
print(json.dumps(out))
"""


def test_two_machines_writing_one_database_never_lose_or_duplicate_an_expert(postgres_url, tmp_path):
    """Two writer processes, each from its own working folder (its own machine), on one PostgreSQL
    index and one shared artifact folder; their name ranges overlap on e010–e029."""
    shared = tmp_path / "shared"
    procs = []
    for machine, (first, last) in {"a": (0, 30), "b": (10, 40)}.items():
        cwd = tmp_path / machine
        cwd.mkdir()
        env = {**os.environ, "LTBENCH_HOME": f"file://{shared}", "LTBENCH_REGISTRY": postgres_url}
        procs.append(subprocess.Popen([sys.executable, "-c", WRITER, str(first), str(last), machine], cwd=cwd, env=env,
                                      stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    a, b = (json.loads(out) for out, _ in outs)
    reg = Registry(shared, url=postgres_url)
    names = [f"e{i:03d}" for i in range(40)]
    assert reg.names() == names and sorted(p.name for p in reg.experts_dir.iterdir()) == names
    for i, name in enumerate(names):
        results = [r[name] for r in (a, b) if name in r]
        assert results.count("ok") == 1, (name, results)  # exactly one writer won …
        assert all("already registered" in r or "appeared meanwhile" in r for r in results if r != "ok")  # … the other was told
        ex = reg.get(name)
        winner = "a" if a.get(name) == "ok" else "b"
        assert ex.problem() is None and ex.meta["created"] == winner and ex.delta()["w"].tolist() == [float(i)] * 3
    assert not (tmp_path / "a" / "ltbench-runs").exists() and not (tmp_path / "b" / "ltbench-runs").exists()


def test_ls_show_report_unchanged_against_postgresql(postgres_url, tmp_path):
    """--registry URL (or LTBENCH_REGISTRY) and --home: the same commands read the PostgreSQL index."""
    from test_fusion import HEAD, add_expert

    home = tmp_path / "home"
    add_expert(Registry(home, url=postgres_url), "pg-expert", HEAD, 1)
    env = {k: v for k, v in os.environ.items() if k not in ("LTBENCH_HOME", "LTBENCH_REGISTRY")}
    for args in (["ls"], ["show", "pg-expert"], ["report", "--format", "csv", "--no-ci"]):
        r = subprocess.run([sys.executable, "-m", "ltbench", "--home", f"file://{home}", "--registry", postgres_url,
                            *args], env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and "pg-expert" in r.stdout, (args, r.stderr[-1500:])
    assert not (home / "registry.sqlite").exists()
    r = subprocess.run([sys.executable, "-m", "ltbench", "--home", str(home), "--registry",
                        "postgresql://nobody@127.0.0.1:1/none", "ls"],
                       env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "postgresql://nobody@127.0.0.1:1/none" in r.stderr, r.stderr
