import contextlib
import os
from pathlib import Path

import pytest

# A fashion-mnist-lt small enough for a training run in about a second on 2 cores.
TINY_DATA = {"head": 40, "imbalance": 10, "val_per_class": 4, "test_per_class": 6}
TINY_SETS = [f"{k}={v}" for k, v in TINY_DATA.items()]


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """An empty registry home for the test (also what the CLI sees through LTBENCH_HOME)."""
    h = tmp_path / "runs"
    monkeypatch.setenv("LTBENCH_HOME", str(h))
    return h


@pytest.fixture(autouse=True)
def _no_outside_plugins(monkeypatch):
    """Tests see ltbench's own names only, whatever plug-ins the caller's LTBENCH_PLUGINS names."""
    monkeypatch.delenv("LTBENCH_PLUGINS", raising=False)


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))


# -- real servers for the cluster tests (tests/test_cluster.py): started once per session --------
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def postgres():
    """A PostgreSQL server from Debian's `postgresql` package in a temporary folder: its base URL.

    Run as the package's `postgres` user when running as root (the server refuses root); trust
    auth on 127.0.0.1 at a port picked free now; stopped and its folder removed on the way out,
    on failure too. Needs no terminal and no standard input. (benchmarks/bench_suite.py uses it too.)
    """
    import glob
    import shutil
    import subprocess
    import tempfile

    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if not bins:
        raise RuntimeError("PostgreSQL is not installed: `apt-get install -y postgresql` (scripts/setup.sh does it)")
    bindir = Path(bins[-1]).parent
    root = Path(tempfile.mkdtemp(prefix="ltbench-pg-"))  # under /tmp: the postgres user can reach it
    user = None
    if os.geteuid() == 0:
        import pwd

        user = "postgres"
        pw = pwd.getpwnam(user)
        os.chown(root, pw.pw_uid, pw.pw_gid)
    run = dict(user=user, stdin=subprocess.DEVNULL, capture_output=True, text=True, cwd=root)
    data, port = root / "data", _free_port()
    started = False
    try:
        r = subprocess.run([bindir / "initdb", "-D", data, "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"],
                           **run)
        if r.returncode != 0:
            raise RuntimeError(f"initdb failed: {r.stderr}")
        opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        r = subprocess.run([bindir / "pg_ctl", "-D", data, "-o", opts, "-l", root / "log", "-w", "-t", "60", "start"], **run)
        started = True  # pg_ctl may have started it even when it reports a failure: stop it anyway
        if r.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {r.stdout}{r.stderr}{(root / 'log').read_text()}")
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        if started:
            subprocess.run([bindir / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"], **run)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server():
    """The session's PostgreSQL server (see `postgres`): its base URL."""
    with postgres() as url:
        yield url


def new_database(server: str) -> str:
    """The URL of a fresh, empty database on a PostgreSQL server."""
    import uuid

    import sqlalchemy as sa

    db = f"t_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    with engine.connect() as c:
        c.execute(sa.text(f"CREATE DATABASE {db}"))
    engine.dispose()
    return f"{server}/{db}"


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """A fresh, empty database on the session's server, for one test."""
    return new_database(postgres_server)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request, monkeypatch) -> str | None:
    """Run a registry test on both index backends: SQLite in the home (None), or a fresh PostgreSQL
    database set as LTBENCH_REGISTRY (so `Registry(home)` and every subprocess use it)."""
    if request.param == "sqlite":
        monkeypatch.delenv("LTBENCH_REGISTRY", raising=False)
        return None
    url = request.getfixturevalue("postgres_url")
    monkeypatch.setenv("LTBENCH_REGISTRY", url)
    return url


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray cluster: a head node and a second node, one CPU (one worker) each.

    The test process is connected as its driver; every node's processes are stopped by their
    ids at the end of the session (`Cluster.shutdown`), on failure too. Yields the cluster's
    address (what `--address` takes).
    """
    import ray
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    cluster = Cluster(initialize_head=False)
    try:
        cluster.add_node(num_cpus=1, gcs_server_port=_free_port(), include_dashboard=False)
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
