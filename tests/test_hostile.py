"""Hostile input, one case a row: exit code, the one-line message, and nothing changed.

Every case runs the real CLI in process (CliRunner) inside a temporary working folder that
also holds the registry home, a registered expert and a file outside the home that a bad
`--name` could reach. After the command, every file there must be as before, except the
run's own checkpoint folder (`<home>/runs/<name>`), and the index must list the same experts.
docs/reliability.md lists the same cases with their messages.
"""
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from conftest import TINY_SETS
from ltbench.cli import app
from ltbench.store.index import Registry

TINY = ["--backbone", "vit-tiny-test", "--quiet", "--method", "linear-probe", "--budget", "1steps"] + \
    [a for s in TINY_SETS for a in ("--set", s)]


def _train(*extra):
    return ["train", *TINY, *extra]


def _places(tmp, train="a/x.jpg 0\na/y.jpg 1\n", test="a/x.jpg 0\na/y.jpg 1\n", classnames="a 0\nb 1\n",
            bad=None, encoding="utf-8"):
    """Places-LT-style split files over 8×8 JPEGs (`bad`: bytes written as a/bad.jpg)."""
    data = tmp / "data"
    root = data / "imgs"
    (root / "a").mkdir(parents=True, exist_ok=True)
    for n in ("x.jpg", "y.jpg"):
        Image.new("RGB", (8, 8), (120, 30, 30)).save(root / "a" / n)
    if bad is not None:
        (root / "a" / "bad.jpg").write_bytes(bad)
    (data / "Places_LT_train.txt").write_text(train, encoding=encoding)
    (data / "Places_LT_val.txt").write_text("a/x.jpg 0\na/y.jpg 1\n")
    (data / "Places_LT_test.txt").write_text(test)
    (data / "classnames.txt").write_text(classnames)
    return ["train", "--dataset", "places-lt", "--root", str(root), "--backbone", "vit-tiny-test", "--quiet",
            "--budget", "1steps", "--set", f"split_dir={data}", "--set", "num_classes=2",
            "--set", "classnames_file=classnames.txt", "--set", "batch_size=2"]


def _truncated_jpeg(tmp) -> bytes:
    Image.new("RGB", (64, 64), (10, 200, 10)).save(tmp / "full.jpg", quality=95)
    data = (tmp / "full.jpg").read_bytes()[:300]
    (tmp / "full.jpg").unlink()
    return data


def _suite(tmp, body: str):
    path = tmp / "suite.yaml"
    path.write_text("name: s\ndataset: fashion-mnist-lt\nbackbone: vit-tiny-test\n" + body)
    return ["bench", str(path), "--quiet", "--no-plots"]


def _unindexed_folder(tmp, home):
    """An expert folder whose index row is gone (an emptied registry.sqlite)."""
    (home / "experts" / "old").mkdir(parents=True)
    (home / "experts" / "old" / "meta.json").write_text("{}")
    return _train("--name", "old")


def _garbage_index(tmp, home):
    for extra in ("-wal", "-shm"):
        Path(str(home / "registry.sqlite") + extra).unlink(missing_ok=True)
    (home / "registry.sqlite").write_bytes(b"not a database " * 300)
    return ["ls"]


def _config_twice(tmp, home):
    (tmp / "c.yaml").write_text("budget: 1steps\nbudget: 9epochs\n")
    return _train("--config", str(tmp / "c.yaml"))


def _user_file(tmp, home):
    (tmp / "mine.safetensors").write_bytes(b"a user's file")
    (tmp / "mine.safetensors.tmp").write_bytes(b"another user's file")
    return ["export", "kept", str(tmp / "mine.safetensors")]


def _fused(tmp, home):
    """A fused expert over `kept`."""
    Registry(home).register("fz", {"method": "fuse:moe", "experts": ["kept"], "backbone": "b", "dataset": "d"},
                            {"w": torch.ones(1)}, {"val": (torch.zeros(2, 2), np.array([0, 1]))}, {}, {})
    return ["rm", "kept"]


def _foreign_sqlite(tmp, home):
    import sqlite3

    db = sqlite3.connect(tmp / "app.db")
    db.execute("CREATE TABLE users (id INTEGER)")
    db.commit()
    db.close()
    return ["--registry", str(tmp / "app.db"), "ls"]


BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi"))


def _bomb_suite(key: str):
    def make(tmp, home):
        body = {"set": "set: {batch_size: *i}\n", "ood": "ood: *i\n", "description": "description: *i\n",
                "seeds": "seeds: *i\n", "runs": "runs: *i\n", "reference": "reference: *i\n"}[key]
        return _suite(tmp, "x-anchors:\n" + "".join("  " + line + "\n" for line in BOMB.splitlines())
                      + "budget: 1steps\n" + body + ("runs: [{method: linear-probe}]\n" if key != "runs" else ""))
    return make


def _config(text: str):
    def make(tmp, home):
        (tmp / "c.yaml").write_text(text)
        return _train("--config", str(tmp / "c.yaml"))
    return make


def _binary_suite(tmp, home):
    (tmp / "suite.bin").write_bytes(bytes(range(256)) * 4)
    return ["bench", str(tmp / "suite.bin"), "--quiet"]


def _damage(rel: str, data: bytes | None, args: list[str]):
    """`kept`'s file `rel` truncated to `data` (None: deleted), then `args`."""
    def make(tmp, home):
        Image.new("RGB", (8, 8), (200, 10, 10)).save(tmp / "img.png")
        f = home / "experts" / "kept" / rel
        f.unlink() if data is None else f.write_bytes(data)
        return [str(tmp / a[1:]) if a.startswith("@") else a for a in args]
    return make


def _huge_png(tmp, home):
    """A tiny PNG whose header claims 60000×60000 pixels."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    (tmp / "huge.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 60000, 60000, 8, 0, 0, 0, 0))
                                   + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return ["predict", "kept", str(tmp / "huge.png")]


def _second_expert(tmp, home):
    Registry(home).register("other", {"method": "m", "backbone": "b", "dataset": "d", "seed": 0},
                            {"w": torch.ones(2)}, {"val": (torch.zeros(2, 2), np.array([0, 1]))}, {}, {})
    (home / "experts" / "other" / "logits" / "val.safetensors").write_bytes(b"\x08" + b"\0" * 7 + b"{")
    return ["fuse", "--experts", "kept,other", "--scorer", "mean", "--quiet"]


# case -> (args, or a function (tmp, home) -> args; exit code; what the one line must contain)
CASES = {
    # -- data loss ------------------------------------------------------------------------------
    "name's folder exists without an index row": (_unindexed_folder, 2, "exists but is not indexed"),
    "name with ../": (_train("--name", "../../victim"), 2, "invalid expert name '../../victim'"),
    "absolute name": (lambda t, h: _train("--name", str(t / "victim")), 2, "invalid expert name '/"),
    "300-character name": (_train("--name", "n" * 300), 2, "longer than 200 characters"),
    "name with a space": (_train("--name", "a b"), 2, "invalid expert name 'a b'"),
    "name already registered": (_train("--name", "kept"), 2, "expert 'kept' is already registered"),
    # -- the registry -------------------------------------------------------------------------------
    "garbage registry.sqlite": (_garbage_index, 2, "registry.sqlite is damaged"),
    "show an unknown name": (["show", "kep"], 2, "no expert named 'kep'"),
    "rm an unknown name": (["rm", "nope"], 2, "no expert named 'nope'"),
    "show a non-UTF-8 name": (["show", "a\udcff"], 2, "invalid expert name 'a\\udcff'"),
    "rm a non-UTF-8 name": (["rm", "a\udcff"], 2, "invalid expert name"),
    "export a non-UTF-8 name": (["export", "a\udcff", "x.safetensors"], 2, "invalid expert name"),
    "report a non-UTF-8 name": (["report", "--experts", "a\udcff"], 2, "invalid expert name"),
    "params --num-classes -5": (["params", "--method", "linear-probe", "--backbone", "vit-tiny-test",
                                 "--num-classes", "-5"], 2, "--num-classes -5: expected an integer >= 1"),
    "show --history of a damaged history.csv": (_damage("history.csv", b"step,loss\n1,abc\n", ["show", "kept", "--history"]),
                                                2, "history.csv is damaged"),
    "export with a truncated delta": (_damage("delta.safetensors", b"\x01\x02", ["export", "kept", "@x.safetensors"]),
                                      2, "delta.safetensors is damaged"),
    "export with a missing delta": (_damage("delta.safetensors", None, ["export", "kept", "@x.safetensors"]),
                                    2, "delta.safetensors is missing"),
    "predict with a missing delta": (_damage("delta.safetensors", None, ["predict", "kept", "@img.png"]),
                                     2, "delta.safetensors is missing"),
    "predict after config.json changed": (_damage("config.json", b'{"method": "m", "backbone": "other"}',
                                                  ["predict", "kept", "@img.png"]), 2, "config.json changed since registration"),
    "predict a 60000×60000 PNG": (_huge_png, 2, "huge.png: not an image PIL can read"),
    "fuse with damaged logits": (_second_expert, 2, "val.safetensors is damaged"),
    "rm a fusion's member": (_fused, 2, "member of the fused expert(s) fz"),
    "a foreign SQLite file as the index": (_foreign_sqlite, 2, "is not an ltbench registry index"),
    # -- export -----------------------------------------------------------------------------------------
    "export onto a user's file": (_user_file, 2, "mine.safetensors exists; pass --force"),
    "export onto /dev/full": (["export", "kept", "/dev/full"], 2, "/dev/full exists and is not a regular file"),
    "export --force onto /dev/null": (["export", "kept", "/dev/null", "--force"], 2, "is not a regular file"),
    "export onto the index": (lambda t, h: ["export", "kept", str(h / "registry.sqlite"), "--force"], 2,
                              "inside the registry home"),
    "export into an expert": (lambda t, h: ["export", "kept", str(h / "experts" / "kept" / "x.safetensors")], 2,
                              "inside the registry home"),
    "export onto a folder": (lambda t, h: ["export", "kept", str(t / "victim"), "--force"], 2, "not a regular file"),
    "export into a missing folder": (lambda t, h: ["export", "kept", str(t / "no" / "x.safetensors")], 2,
                                     "does not exist"),
    # -- values: run keys -----------------------------------------------------------------------
    "batch_size=0": (_train("--set", "batch_size=0"), 2, "--set batch_size=0: expected an integer >= 1"),
    "batch_size=-4": (_train("--set", "batch_size=-4"), 2, "--set batch_size=-4: expected an integer >= 1"),
    "batch_size=2.5": (_train("--set", "batch_size=2.5"), 2, "--set batch_size=2.5: expected an integer"),
    "lr=-1": (_train("--set", "lr=-1"), 2, "--set lr=-1: expected a finite number > 0"),
    "lr=nan": (_train("--set", "lr=nan"), 2, "--set lr=nan: expected a finite number > 0"),
    "eval_batch_size=0": (_train("--set", "eval_batch_size=0"), 2, "--set eval_batch_size=0: expected an integer >= 1"),
    "img_size=0": (_train("--set", "img_size=0"), 2, "--set img_size=0: expected null or an integer >= 1"),
    "img_size=-14": (_train("--set", "img_size=-14"), 2, "--set img_size=-14: expected null or an integer >= 1"),
    "img_size=13 on dinov2-s14": (_train("--backbone", "dinov2-s14", "--set", "img_size=13"), 2,
                                  "img_size must be a positive multiple of 14"),
    "augment=maybe": (_train("--set", "augment=maybe"), 2, "--set augment='maybe': expected true or false"),
    "pretrained=nope": (_train("--set", "pretrained=nope"), 2, "--set pretrained='nope': expected true or false"),
    "few=-5": (_train("--set", "few=-5"), 2, "--set few=-5: expected an integer >= 0"),
    "few above many": (_train("--set", "few=50", "--set", "many=10"), 2, "would overlap"),
    "device=foo": (_train("--set", "device=foo"), 2, "--set device='foo': expected auto, cpu, cuda"),
    "device=cuda:99": (_train("--set", "device=cuda:99"), 2, "--set device='cuda:99'"),
    "num_workers=-1": (_train("--set", "num_workers=-1"), 2, "--set num_workers=-1: expected auto or an integer >= 0"),
    "unknown --set key": (_train("--set", "lrr=0.1"), 2, "unknown --set key 'lrr'"),
    # -- values: method keys --------------------------------------------------------------------------
    "sampler=foo": (_train("--set", "sampler=foo"), 2, "--set sampler='foo': expected one of instance"),
    "--sampler foo": (_train("--sampler", "foo"), 2, "sampler='foo': expected one of instance"),
    "--loss foo": (_train("--loss", "foo"), 2, "loss='foo': expected one of agcl, bs, ce"),
    "optimizer=adam": (_train("--set", "optimizer=adam"), 2, "--set optimizer='adam': expected one of sgd, adamw"),
    "prompt_len=0 (vpt)": (_train("--method", "vpt-deep", "--set", "prompt_len=0"), 2,
                           "--set prompt_len=0: expected an integer >= 1"),
    # -- values: dataset keys -------------------------------------------------------------------------
    "val_per_class=0": (_train("--set", "val_per_class=0"), 2, "--set val_per_class=0: expected an integer >= 1"),
    "test_per_class=0": (_train("--set", "test_per_class=0"), 2, "--set test_per_class=0: expected null or an integer >= 1"),
    "imbalance=0.5": (_train("--set", "imbalance=0.5"), 2, "--set imbalance=0.5: expected a finite number >= 1"),
    # -- budgets ------------------------------------------------------------------------------------------
    "budget 3 parsecs": (_train("--budget", "3 parsecs"), 2, "cannot parse budget '3 parsecs'"),
    "budget 1e999flops": (_train("--budget", "1e999flops"), 2, "budget '1e999flops': at most 1e+21 flops"),
    "budget 1e7epochs": (_train("--budget", "1e7epochs"), 2, "at most 1e+06 epochs"),
    "budget 1e-30s": (_train("--budget", "1e-30s"), 2, "budget '1e-30s': at least 1 second"),
    "budget 0.5s": (_train("--budget", "0.5s"), 2, "at least 1 second"),
    "budget 0.001epochs": (_train("--budget", "0.001epochs", "--set", "solver=sgd"), 2, "budget 0.001epochs is below one training step"),
    "budget 1e-300epochs": (_train("--budget", "1e-300epochs", "--set", "solver=sgd"), 2, "is below one training step"),
    "budget 1e-9flops": (_train("--budget", "1e-9flops", "--set", "solver=sgd"), 2,
                         "budget 1e-09flops was spent before the first training step"),
    "budget 1000flops (full-ft)": (_train("--budget", "1000flops", "--method", "full-ft"), 2,
                                   "budget 1000flops is below one training step"),
    # -- files: config and suites ---------------------------------------------------------------------------
    "--config with a key twice": (_config_twice, 2, "key 'budget' appears twice (lines 1 and 2)"),
    "suite with budget twice": (lambda t, h: _suite(t, "budget: 1steps\nbudget: 1e999flops\nruns: [{method: linear-probe}]\n"),
                                2, "key 'budget' appears twice"),
    "suite set: {batch_size: 0}": (lambda t, h: _suite(t, "budget: 1steps\nset: {batch_size: 0}\nruns: [{method: linear-probe}]\n"),
                                   2, "set: batch_size=0: expected an integer >= 1"),
    "suite budget 1e999flops": (lambda t, h: _suite(t, "budget: 1e999flops\nruns: [{method: linear-probe}]\n"),
                                2, "at most 1e+21 flops"),
    "suite: alias bomb in set:": (_bomb_suite("set"), 2, "once its aliases (*name) are expanded"),
    "suite: alias bomb in ood:": (_bomb_suite("ood"), 2, "once its aliases (*name) are expanded"),
    "suite: alias bomb in description:": (_bomb_suite("description"), 2, "once its aliases (*name) are expanded"),
    "suite: alias bomb in seeds:": (_bomb_suite("seeds"), 2, "once its aliases (*name) are expanded"),
    "suite: alias bomb in runs:": (_bomb_suite("runs"), 2, "once its aliases (*name) are expanded"),
    "suite: alias bomb in reference:": (_bomb_suite("reference"), 2, "once its aliases (*name) are expanded"),
    "--config: alias bomb": (_config(BOMB + "set: {batch_size: *i}\n"), 2, "once its aliases (*name) are expanded"),
    "--config: set: [1, 2]": (_config("set: [1, 2]\n"), 2, "set: expected a mapping"),
    "--config: method: [x]": (lambda t, h: _config("method: [x]\n")(t, h)[:1] + ["--config", str(t / "c.yaml")],
                              2, "method: expected a name, got list"),
    "--config: a complex key": (_config("? [a, b]\n: 1\n"), 2, "line 1: a key must be a plain value"),
    "bench a binary file": (_binary_suite, 2, "not a text file"),
    "bench --out at a file": (lambda t, h: _suite(t, "budget: 1steps\nruns: [{method: linear-probe}]\n")
                              + ["--out", str(t / "victim" / "checkpoint.pt")], 2, "is a file, not a folder"),
    "bench --out under a file": (lambda t, h: _suite(t, "budget: 1steps\nruns: [{method: linear-probe}]\n")
                                 + ["--out", str(t / "victim" / "checkpoint.pt" / "r")], 2, "is a file, not a folder"),
    # -- split files and images (the train split, and now every split) --------------------------------------
    "malformed line": (lambda t, h: _places(t, train="a/x.jpg 0\nonlyone\n"), 2, "Places_LT_train.txt:2: expected"),
    "label not an integer": (lambda t, h: _places(t, train="a/x.jpg 0\na/y.jpg one\n"), 2,
                             "Places_LT_train.txt:2: label 'one' is not an integer"),
    "path with a space and no label": (lambda t, h: _places(t, train="a/x.jpg 0\na/y y.jpg\n"), 2,
                                       "the label must be the line's last field"),
    "label out of range": (lambda t, h: _places(t, train="a/x.jpg 0\na/y.jpg 7\n"), 2, "Places_LT_train.txt:2: label 7"),
    "missing image": (lambda t, h: _places(t, train="a/x.jpg 0\na/nope.jpg 1\n"), 2, "Places_LT_train.txt:2"),
    "classnames length": (lambda t, h: _places(t, classnames="a 0\nb 1\nc 2\n"), 2, "has 3 names but num_classes is 2"),
    "empty class": (lambda t, h: _places(t, train="a/x.jpg 0\na/y.jpg 0\n"), 2, "class 1 ('b') has no training images"),
    "truncated train image": (lambda t, h: _places(t, train="a/x.jpg 0\na/y.jpg 1\na/bad.jpg 1\n", bad=_truncated_jpeg(t)),
                              2, "Places_LT_train.txt:3 (a/bad.jpg)"),
    "unreadable test image": (lambda t, h: _places(t, test="a/x.jpg 0\na/bad.jpg 1\n", bad=b"not an image"),
                              2, "Places_LT_test.txt:2 (a/bad.jpg)"),
}


def _snapshot(root: Path, skip: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p == skip or skip in p.parents:
            continue
        if p.name.endswith(("-wal", "-shm")):  # SQLite's own journal files change on any open
            continue
        out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_input(case, tmp_path, monkeypatch):
    args, code, message = CASES[case]
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # anything written to the working folder is seen
    home = work / "home"
    monkeypatch.setenv("LTBENCH_HOME", str(home))
    Registry(home).register("kept", {"method": "m", "backbone": "b", "dataset": "d", "seed": 0},
                            {"w": torch.ones(2)}, {"val": (torch.zeros(2, 2), np.array([0, 1]))}, {}, {})
    (work / "victim").mkdir()
    (work / "victim" / "checkpoint.pt").write_bytes(b"someone else's file")
    if callable(args):
        args = args(work, home)
    names = Registry(home).names() if "garbage" not in case else None
    name = args[args.index("--name") + 1] if "--name" in args else ""
    safe = name and "/" not in name and len(name) <= 200
    own = home / "runs" / name if safe else home / "runs" / "-none-"  # the run's own folder may change
    before = _snapshot(work, own)

    monkeypatch.delenv("LTBENCH_REGISTRY", raising=False)
    r = CliRunner().invoke(app, args)
    os.environ.pop("LTBENCH_REGISTRY", None)  # `--registry` sets it for this process

    assert r.exit_code == code, f"{case}: exit {r.exit_code}\n{r.output}\n{r.exception!r}"
    lines = r.output.strip().splitlines()
    assert lines and lines[0].startswith("error:") and message in " ".join(r.output.split()), r.output
    assert len(r.output.strip()) <= 600 and len(lines) <= 4, r.output  # one line (the terminal may wrap it)
    assert _snapshot(work, own) == before, case
    if names is not None:
        assert Registry(home).names() == names


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_cuda(home):
    r = CliRunner().invoke(app, _train("--set", "device=cuda"))
    assert r.exit_code == 2 and "CUDA is not available on this machine" in r.output


# -- inputs that are handled, not refused ---------------------------------------------------------------

def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    from ltbench.data.base import load_image

    grey = np.array([[0, 16384], [32768, 65535]], dtype=np.uint16)
    Image.fromarray(grey).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")  # really a 16-bit file
    rgb = np.asarray(load_image(tmp_path / "g16.png"))
    assert rgb.shape == (2, 2, 3)
    assert rgb[..., 0].tolist() == [[0, 64], [128, 255]]  # value >> 8; clipping would give 255 for all but 0


def test_split_file_with_bom_and_a_path_with_spaces(home, tmp_path):
    args = _places(tmp_path, train="a/x.jpg 0\na/y y.jpg 1\n", encoding="utf-8-sig")
    Image.new("RGB", (8, 8), (0, 90, 200)).save(tmp_path / "data" / "imgs" / "a" / "y y.jpg")
    assert (tmp_path / "data" / "Places_LT_train.txt").read_bytes().startswith(b"\xef\xbb\xbf")
    r = CliRunner().invoke(app, args + ["--name", "ok"])
    assert r.exit_code == 0, r.output
    assert Registry(home).get("ok").meta["class_counts"] == [1, 1]


# -- every key declares its check next to its default ------------------------------------------------------

def test_every_set_key_declares_a_type_and_a_range():
    from ltbench.checks import Check, dataclass_checks, signature_checks
    from ltbench.config import RUN_KEYS
    from ltbench.plugins import DATASETS
    from ltbench.methods import METHODS

    assert all(isinstance(k.check, Check) for k in RUN_KEYS.values())
    missing = [f"{m}.{k}" for m in METHODS for k, (_, declared) in dataclass_checks(METHODS.get(m).Config).items()
               if not declared]
    missing += [f"{d}.{k}" for d in DATASETS for k, (_, declared) in signature_checks(DATASETS.get(d)).items()
                if not declared and k not in ("root", "seed")]  # run keys
    assert missing == [], f"declare a check (Annotated[type, Check]) for: {missing}"


def test_a_subclass_that_changes_a_default_keeps_the_base_check():
    from ltbench.checks import dataclass_checks
    from ltbench.methods import METHODS

    check, declared = dataclass_checks(METHODS.get("linear-probe").Config)["batch_size"]  # `batch_size: int = 64`
    assert declared and check(64) == 64
    with pytest.raises(ValueError):
        check(0)


@pytest.mark.parametrize("check,good,bad", [
    ("Int(lo=1, hi=4)", [1, 4], [0, 5, 2.0, True, "2", None]),
    ("Float(lo=0, lo_open=True)", [1e-9, 3], [0, -1.0, float("nan"), float("inf"), False, "1"]),
    ("Float(lo=0, hi=1, hi_open=True)", [0, 0.5], [1, 1.5]),
    ("Bool()", [True, False], [0, 1, "true", None]),
    ("Choice(('auto', True, False))", ["auto", True, False], [1, 0, "yes"]),
    ("Opt(Int(lo=1))", [None, 3], [0]),
    ("ListOf(Int(lo=0), nonempty=True)", [[0, 2]], [[], [-1], 3]),
])
def test_checks_accept_and_refuse(check, good, bad):
    from ltbench import checks

    c = eval(check, vars(checks))
    for v in good:
        assert c(v) == v
    for v in bad:
        with pytest.raises(ValueError):
            c(v)


# -- a stalled writer: readers go on, writers are told who holds the lock -------------------------------------

def test_a_stalled_writer_blocks_no_reader_and_writers_name_its_pid(home, monkeypatch):
    import subprocess
    import sys

    from ltbench.store import database

    Registry(home).register("kept", {"method": "linear-probe", "backbone": "b", "dataset": "d", "seed": 0},
                            {"w": torch.ones(2)}, {"val": (torch.zeros(2, 2), np.array([0, 1]))}, {}, {})
    monkeypatch.setattr(database, "LOCK_TIMEOUT_S", 1.0)
    index = home / "registry.sqlite"
    script = ("import os, sqlite3, sys, time\n"  # a writer stopped between its BEGIN and its commit
              "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
              "db.execute('BEGIN IMMEDIATE')\n"
              "open(sys.argv[1] + '.writer', 'w').write(f'{os.getpid()}\\n')\n"
              "print('locked', flush=True)\n"
              "time.sleep(120)\n")
    writer = subprocess.Popen([sys.executable, "-c", script, str(index)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "locked"
        r = CliRunner().invoke(app, ["ls", "--format", "json"])
        assert r.exit_code == 0 and '"kept"' in r.output, r.output
        r = CliRunner().invoke(app, ["rm", "kept"])
        assert r.exit_code == 2 and f"is locked by process {writer.pid}" in r.output, r.output
        assert "damaged" not in r.output and len(r.output.strip().splitlines()) <= 3
    finally:
        writer.kill()
        writer.wait()
    assert Registry(home).names() == ["kept"]


def test_report_skips_and_names_an_expert_whose_logits_are_gone(home):
    reg = Registry(home)
    for name in ("a", "b"):
        reg.register(name, {"method": "linear-probe", "backbone": "b", "dataset": "d", "seed": 0},
                     {"w": torch.ones(2)}, {s: (torch.eye(2), np.array([0, 1])) for s in ("val", "test")},
                     {"test": {"overall": 1.0}}, {})
    (reg.experts_dir / "b" / "logits" / "test.safetensors").unlink()
    from ltbench.errors import BrokenExpertWarning

    with pytest.warns(BrokenExpertWarning, match="skipping expert 'b': .*test.safetensors is missing"):
        r = CliRunner().invoke(app, ["report", "--format", "csv"])
    assert r.exit_code == 0, r.output
    assert "\na," in r.output and "\nb," not in r.output
    r = CliRunner().invoke(app, ["doctor"])
    assert r.exit_code == 1 and "unreadable b:" in r.output, r.output


def test_report_refuses_the_metrics_of_changed_logits(home):
    from safetensors.torch import save_file

    from ltbench.errors import BrokenExpertWarning

    reg = Registry(home)
    for name in ("a", "b"):
        reg.register(name, {"method": "linear-probe", "backbone": "b", "dataset": "d", "seed": 0},
                     {"w": torch.ones(2)}, {s: (torch.eye(2), np.array([0, 1])) for s in ("val", "test")},
                     {"test": {"overall": 1.0}}, {})
    save_file({"logits": torch.eye(2).flip(0).half(), "labels": torch.tensor([0, 1])},  # now all wrong, same size
              str(reg.experts_dir / "b" / "logits" / "test.safetensors"))
    with pytest.warns(BrokenExpertWarning, match="skipping expert 'b': stale metrics: .*test.safetensors changed"):
        r = CliRunner().invoke(app, ["report", "--format", "csv", "--no-ci"])
    assert r.exit_code == 0 and "\na," in r.output and "\nb," not in r.output, r.output


def test_doctor_finds_a_changed_delta_an_unknown_method_and_a_future_format(home):
    import json

    reg = Registry(home)
    for name in ("ok", "flip", "meth", "future"):
        reg.register(name, {"method": "linear-probe", "backbone": "b", "dataset": "d", "seed": 0},
                     {"w": torch.ones(2)}, {"val": (torch.eye(2), np.array([0, 1]))}, {}, {})
    delta = reg.experts_dir / "flip" / "delta.safetensors"
    data = bytearray(delta.read_bytes())
    data[-1] ^= 0xFF  # one bit pattern of the tensor bytes: same size, same header
    delta.write_bytes(bytes(data))
    cfg = reg.experts_dir / "meth" / "config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "method": "no-such-method"}))
    meta = reg.experts_dir / "future" / "meta.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "format": 99}))
    (reg.experts_dir / "notes.txt").write_text("a user's stray file")
    r = CliRunner().invoke(app, ["doctor"])
    lines = r.output.strip().splitlines()
    assert r.exit_code == 1, r.output
    assert any(l.startswith("damaged flip:") and "sha256 differs" in l for l in lines), r.output
    assert any(l.startswith("damaged meth:") and "unknown method 'no-such-method'" in l for l in lines), r.output
    assert any(l.startswith("damaged future:") and "format 99" in l for l in lines), r.output
    assert any(l.startswith("stray notes.txt:") for l in lines) and not any(" ok:" in l for l in lines)
    r = CliRunner().invoke(app, ["doctor", "--repair", "--remove-broken"])
    assert reg.names() == ["ok"] and (reg.experts_dir / "notes.txt").read_text() == "a user's stray file"


def test_doctor_repair_on_a_shared_index_keeps_another_homes_rows(tmp_path, monkeypatch):
    index = tmp_path / "shared.sqlite"
    monkeypatch.setenv("LTBENCH_REGISTRY", str(index))
    a, b = Registry(tmp_path / "a"), Registry(tmp_path / "b")
    a.register("from-a", {"method": "linear-probe", "backbone": "b", "dataset": "d"}, {"w": torch.ones(1)}, {}, {}, {})
    b.register("from-b", {"method": "linear-probe", "backbone": "b", "dataset": "d"}, {"w": torch.ones(1)}, {}, {}, {})
    import shutil

    shutil.rmtree(a.experts_dir / "from-a")  # an orphan row of home a
    monkeypatch.setenv("LTBENCH_HOME", str(tmp_path / "b"))
    r = CliRunner().invoke(app, ["doctor", "--repair"])
    assert r.exit_code == 0 and a.names() == ["from-a", "from-b"], r.output  # home b: nothing of a's touched
    monkeypatch.setenv("LTBENCH_HOME", str(tmp_path / "a"))
    r = CliRunner().invoke(app, ["doctor", "--repair"])
    assert r.exit_code == 0 and a.names() == ["from-b"], r.output


def test_an_empty_home_is_an_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LTBENCH_HOME", "")
    for args in (["ls"], ["doctor", "--repair"], _train()):
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 2 and "empty" in r.output, r.output
    assert list(tmp_path.iterdir()) == []


def test_export_force_replaces_a_file_and_leaves_no_temporary(home, tmp_path):
    from ltbench.experts.model import Spec

    spec = Spec("x", {"method": "linear-probe"}, ["a"], [1], {"w": torch.ones(1)})
    target = tmp_path / "out" / "x.safetensors"
    target.parent.mkdir()
    target.write_bytes(b"old")
    spec.save(target, force=True)
    assert Spec.from_file(target).delta["w"].tolist() == [1.0]
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.safetensors"]


def test_predict_reads_every_image_mode_as_training_does(home, tmp_path):
    """predict's input for a file equals what training's loader (data.base.load_image) makes of it:
    a 16-bit mid-grey gets the probabilities of 8-bit mid-grey, not of white."""
    from ltbench.api import predict
    from ltbench.data.base import load_image

    r = CliRunner().invoke(app, _train("--name", "e"))
    assert r.exit_code == 0, r.output
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (16, 16)).astype(np.uint16) * 257  # 16-bit values
    files = []
    for mode in ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F"]:
        if mode == "I;16":
            im = Image.fromarray(grey)
        elif mode == "I":
            im = Image.fromarray(grey.astype(np.int32))
        elif mode == "F":
            im = Image.fromarray((grey >> 8).astype(np.float32))
        else:
            im = Image.fromarray(rng.integers(0, 256, (16, 16, 3)).astype(np.uint8), "RGB").convert(mode)
        src = tmp_path / (mode.replace(";", "_") + (".tif" if mode in ("CMYK", "F", "I") else ".png"))
        im.save(src)
        assert Image.open(src).mode == mode
        ref = src.with_name(src.stem + "-ref.png")
        load_image(src).save(ref)  # what training feeds the model, as a plain RGB file
        files += [src, ref]
    rows = predict("e", [str(f) for f in files], top=3, fmt="json")
    for got, want in zip(rows[::2], rows[1::2]):
        assert got["predictions"] == want["predictions"], got["file"]


# -- a full disk: one line, nothing half-written, no temporary left ---------------------------------------------

def _disk_full(*a, **k):
    import errno

    path = a[1] if len(a) > 1 else a[0]
    Path(path).write_bytes(b"x" * 1000)  # a partial write first
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_while_checkpointing_leaves_the_last_checkpoint_and_no_temporary(tmp_path, monkeypatch):
    from ltbench.errors import TrainingError
    from ltbench.training import checkpoint as train

    ckpt = tmp_path / "run" / "checkpoint.pt"
    ckpt.parent.mkdir()
    train.atomic_save({"step": 1}, ckpt)
    before = ckpt.read_bytes()
    monkeypatch.setattr(train.torch, "save", _disk_full)
    with pytest.raises(TrainingError, match=r"cannot write the checkpoint .*No space left on device.* free at least"):
        train.atomic_save({"step": 2}, ckpt)
    assert [p.name for p in ckpt.parent.iterdir()] == ["checkpoint.pt"] and ckpt.read_bytes() == before


def test_a_full_disk_while_registering_leaves_the_index_and_no_temporary(home, monkeypatch):
    from ltbench.errors import RegistryError
    from ltbench.store import index

    reg = Registry(home)
    reg.register("kept", {"method": "linear-probe", "backbone": "b", "dataset": "d"}, {"w": torch.ones(1)}, {}, {}, {})
    monkeypatch.setattr(index, "write_history", lambda path, rows: _disk_full(path))
    with pytest.raises(RegistryError, match=r"cannot register 'new': writing .*experts failed \(No space left on device\);"
                                            r" nothing was registered — free at least"):
        reg.register("new", {"method": "linear-probe", "backbone": "b", "dataset": "d"}, {"w": torch.ones(1)}, {}, {},
                     {}, history=[])
    assert reg.names() == ["kept"] and sorted(p.name for p in reg.experts_dir.iterdir()) == ["kept"]


def test_an_unreachable_hub_fails_within_seconds_with_the_weights_hint(home, monkeypatch):
    import socket
    import time

    from ltbench.backbones import base

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(home / "empty-hf-cache"))  # nothing cached
    monkeypatch.setattr(base.os, "environ", dict(base.os.environ))  # the switch stays in this test
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", hub_constants.HF_HUB_OFFLINE)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(home / "empty-hf-cache"))

    def unreachable(*a, **k):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    t0 = time.monotonic()
    r = CliRunner().invoke(app, ["train", "--backbone", "vit_tiny_patch16_224.augreg_in21k", "--quiet",
                                 "--method", "linear-probe", "--budget", "1steps", *[a for s in TINY_SETS for a in ("--set", s)]])
    assert r.exit_code == 2 and "pass --weights FILE" in r.output, r.output
    assert time.monotonic() - t0 < 30


def test_alias_expansion_is_bounded_and_plain_anchors_still_load():
    import yaml

    from ltbench.config import load_yaml

    def nested(levels: int) -> str:
        text = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n"
        for i in range(1, levels):
            text += f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]\n"
        return text

    assert len(load_yaml(nested(4))["a3"]) == 10  # 10^4 values expanded: fine
    with pytest.raises(yaml.YAMLError, match=r"more than 100000 values once its aliases"):
        load_yaml(nested(6))  # 10^6 (harmless here: PyYAML shares aliased objects)
