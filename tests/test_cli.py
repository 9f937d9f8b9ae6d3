"""The command line end to end with a tiny random ViT (seconds, no weights)."""
import json
import re
import subprocess
import sys

import pytest
import yaml
from typer.testing import CliRunner

import ltbench
from conftest import TINY_SETS
from ltbench.cli import app
from ltbench.store.index import Registry

runner = CliRunner()
TINY = ["--backbone", "vit-tiny-test", "--budget", "2epochs", "--quiet"] + [a for s in TINY_SETS for a in ("--set", s)]


def invoke(*args):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_train_report_show_rm(home):
    r = invoke("train", "--method", "linear-probe", "--name", "lp", *TINY, "--set", "solver=sgd")
    assert r.exit_code == 0, r.output
    assert "registered lp" in r.output

    doc = json.loads(invoke("report", "--format", "json").output)
    assert set(doc) == {"ltbench_version", "git_hash", "date", "suite", "budget", "groups", "rows"}
    assert doc["ltbench_version"] == ltbench.__version__ and doc["budget"] == "2epochs" and doc["suite"] is None
    assert doc["groups"] == "standard"
    rows = doc["rows"]
    assert len(rows) == 1
    row = rows[0]
    for key in ("expert", "method", "backbone", "dataset", "overall", "many", "medium", "few",
                "trainable_params", "flops", "device_seconds", "ood:fashion-mnist-sketch"):
        assert key in row, key
    assert row["expert"] == "lp" and 0 <= row["overall"] <= 1 and row["flops"] > 0
    assert row["trainable_params"] == 32 * 10 + 10

    csv = invoke("report", "--format", "csv").output
    assert csv.splitlines()[0].startswith("expert,method,backbone")
    assert "| lp |" in invoke("report", "--format", "md").output

    shown = json.loads(invoke("show", "lp").output)
    assert shown["config"]["method_config"]["lr"] == 1e-2 and shown["meta"]["seed"] == 0
    assert set(shown["meta"]["packages"]) >= {"torch", "timm"} and shown["meta"]["spent"]["epochs"] == 2
    assert "lp" in invoke("ls").output

    assert invoke("rm", "lp").exit_code == 0
    assert Registry(home).names() == []


def test_the_api_returns_data_and_the_cli_renders_it(home):
    """What a notebook gets from `ltbench.api` is data (rows, frames, views), the same the CLI prints."""
    import pandas as pd

    from ltbench import api
    from ltbench.report.views import ReportView, show

    assert invoke("train", "--method", "linear-probe", "--name", "lp", *TINY, "--set", "solver=sgd").exit_code == 0
    rows = api.ls()
    assert [r["name"] for r in rows] == ["lp"] and set(rows[0]) == set(api.LS_COLUMNS)
    assert json.loads(invoke("ls", "--format", "json").output) == json.loads(json.dumps(rows, default=str))
    view, written = api.report("json")
    assert isinstance(view, ReportView) and isinstance(view.frame, pd.DataFrame) and written == []
    assert list(view.frame["expert"]) == ["lp"]
    printed, shown = json.loads(invoke("report", "--format", "json").output), json.loads(show(view, "json"))
    assert [r["overall"] for r in printed["rows"]] == [r["overall"] for r in shown["rows"]]
    history = api.show_history("lp")
    assert isinstance(history, list) and history[0]["step"] == 1 and "loss" in history[0]
    suite, plan = api.plan(ltbench.__path__[0] + "/suites/demo.yaml")
    assert suite.name == "demo" and {r["label"] for r in plan} >= {"linear-probe", "lpt", "moe-all"}


def test_params_json():
    r = invoke("params", "--method", "linear-probe", "--backbone", "vit-tiny-test", "--num-classes", "7")
    counts = json.loads(r.output)
    assert counts["trainable"] == 32 * 7 + 7 and counts["total"] > counts["trainable"]


@pytest.mark.parametrize("flag,value,expected", [
    ("--method", "linear-prob", "Did you mean 'linear-probe'"),
    ("--backbone", "dinov2-s15", "Did you mean 'dinov2-s14'"),
    ("--dataset", "fashion-mnist", "Did you mean 'fashion-mnist-lt'"),
    ("--budget", "3parsecs", "cannot parse budget '3parsecs'"),
])
def test_unknown_names_exit_2_with_suggestion(home, flag, value, expected):
    args = ["train", "--backbone", "vit-tiny-test", "--quiet", flag, value]
    r = invoke(*args)
    assert r.exit_code == 2
    assert expected in r.output
    assert Registry(home).names() == []


def _split_setup(tmp_path, lines):
    root = tmp_path / "imgs"
    (root / "a").mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (8, 8)).save(root / "a" / "x.jpg")
    (tmp_path / "Places_LT_train.txt").write_text("\n".join(lines) + "\n")
    for split in ("val", "test"):
        (tmp_path / f"Places_LT_{split}.txt").write_text("a/x.jpg 0\na/x.jpg 1\n")
    (tmp_path / "classnames.txt").write_text("a 0\nb 1\n")
    return ["train", "--dataset", "places-lt", "--root", str(root), "--backbone", "vit-tiny-test", "--quiet",
            "--set", f"split_dir={tmp_path}", "--set", "num_classes=2", "--set", "classnames_file=classnames.txt"]


@pytest.mark.parametrize("lines,expected", [
    (["a/x.jpg 0", "a/x.jpg"], "Places_LT_train.txt:2"),
    (["a/x.jpg 0", "a/x.jpg 5"], "Places_LT_train.txt:2"),
    (["a/x.jpg 0", "a/missing.jpg 1"], "Places_LT_train.txt:2"),
])
def test_bad_split_file_fails_before_training(home, tmp_path, lines, expected):
    r = invoke(*_split_setup(tmp_path, lines))
    assert r.exit_code == 2, r.output
    assert expected in r.output
    assert Registry(home).names() == [] and not list((home / "runs").glob("*"))  # no run folder left


def test_listing_commands():
    assert "fashion-mnist-lt" in invoke("datasets").output
    assert "dinov2-s14" in invoke("backbones").output
    out = invoke("methods").output
    assert "linear-probe" in out and "full-ft" in out


# --------------------------------------------------------------------------- global options, errors, startup


def run_home(home, *args):
    """`ltbench --home HOME ARGS`; LTBENCH_HOME is restored afterwards (--home sets it for the process)."""
    return runner.invoke(app, ["--home", str(home), *args], env={"LTBENCH_HOME": None}, catch_exceptions=False)


def strict_json(text):
    """json.loads that refuses NaN / Infinity (what a JavaScript or jq reader would do)."""
    def refuse(const):
        raise ValueError(f"non-standard JSON constant {const}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A home with one tiny expert `lp` (fashion-mnist-lt's tiny split has no many-shot class)."""
    home = tmp_path_factory.mktemp("cli") / "runs"
    r = run_home(home, "train", "--method", "linear-probe", "--name", "lp", *TINY)
    assert r.exit_code == 0, r.output
    assert Registry(home).names() == ["lp"]
    return home


LIGHT = [["--help"], ["-h"], ["--version"], ["ls"], ["ls", "--format", "json"], ["show", "lp"],
         ["methods"], ["datasets"], ["backbones"], ["losses"], ["samplers"], ["scorers"], ["train", "-h"], ["fuse", "-h"]]


def test_light_commands_do_not_import_torch(trained, tmp_path):
    """Run in a fresh interpreter: after each command, is torch in sys.modules?"""
    script = (
        "import json, sys\n"
        "from ltbench.cli import app\n"
        "seen = []\n"
        "for args in json.loads(sys.argv[1]):\n"
        "    try:\n"
        "        app(args, prog_name='ltbench')\n"
        "    except SystemExit as e:\n"
        "        seen.append([args, e.code, 'torch' in sys.modules])\n"
        "open(sys.argv[2], 'w').write(json.dumps(seen))\n"
    )
    result = tmp_path / "seen.json"
    env = {**__import__("os").environ, "LTBENCH_HOME": str(trained)}
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(LIGHT), str(result)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(result.read_text())
    assert [(args, code) for args, code, _ in seen] == [(args, 0) for args in LIGHT], proc.stderr
    assert [args for args, _, torch_loaded in seen if torch_loaded] == []
    assert '"name": "lp"' in proc.stdout and "linear-probe" in proc.stdout


def test_version_short_help_completion_and_home_help():
    from ltbench.store.provenance import git_hash

    r = invoke("--version")
    assert r.exit_code == 0
    assert re.fullmatch(r"ltbench (\S+) \(git (\S+)\)\n", r.output).groups() == (ltbench.__version__, git_hash() or "unknown")
    top = invoke("-h").output
    assert top == invoke("--help").output
    for text in ("--home", "LTBENCH_HOME", "--version", "--install-completion", "--show-completion"):
        assert text in top, text
    assert "--budget" in invoke("train", "-h").output


def test_home_option_is_where_experts_are_found(trained):
    assert [r["name"] for r in json.loads(run_home(trained, "ls", "--format", "json").output)] == ["lp"]
    assert json.loads(run_home(trained, "show", "lp").output)["name"] == "lp"


@pytest.mark.parametrize("args", [["ls"], ["ls", "--format", "json"], ["show", "lp"], ["report"],
                                  ["report", "--format", "json"], ["rm", "lp"], ["doctor"]])
@pytest.mark.parametrize("via", ["--home", "LTBENCH_HOME"])
def test_read_only_commands_on_a_missing_home_fail_naming_it_and_create_nothing(tmp_path, args, via):
    missing = tmp_path / "typo-runs"
    if via == "--home":
        r = run_home(missing, *args)
    else:
        r = runner.invoke(app, args, env={"LTBENCH_HOME": str(missing)}, catch_exceptions=False)
    assert r.exit_code == 2, r.output
    assert r.stderr.count("\n") == 1 and f"no ltbench registry in {missing}" in r.stderr
    assert not missing.exists()


def _bad_suite(tmp_path):
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "dataset": "fashion-mnist-lt", "backbone": "vit-tiny-test",
                                    "budgett": "3steps", "runs": [{"method": "linear-probe"}]}))
    return str(path)


# one bad option or --set key per command: exit 2, one line on stderr, the closest name suggested
BAD = {
    "train --set": (["train", "--backbone", "vit-tiny-test", "--set", "lrr=1"], "did you mean 'lr'?"),
    "train option": (["train", "--metod", "lpt"], "did you mean '--method'?"),
    "params --set": (["params", "--method", "linear-probe", "--backbone", "vit-tiny-test", "--num-classes", "3",
                      "--set", "lrr=1"], "did you mean 'lr'?"),
    "fuse": (["fuse", "--experts", "lp,lq", "--scorer", "moee"], "did you mean 'moe'?"),
    "report": (["report", "--format", "jsn"], "did you mean 'json'?"),
    "ls": (["ls", "--format", "jsn"], "did you mean 'json'?"),
    "show": (["show", "l"], "did you mean 'lp'?"),
    "rm": (["rm", "lq"], "did you mean 'lp'?"),
    "bench": (["bench", "SUITE"], "did you mean 'budget'?"),
    "demo": (["demo", "--plot"], "did you mean '--plots'?"),
    "doctor": (["doctor", "--repiar"], "did you mean '--repair'?"),
    "methods": (["methods", "--hlp"], "did you mean '--help'?"),
    "datasets": (["datasets", "--hlp"], "did you mean '--help'?"),
    "backbones": (["backbones", "--hlp"], "did you mean '--help'?"),
    "command": (["trian"], "did you mean 'train'?"),
    "global": (["--verison"], "did you mean '--version'?"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_option_errors_are_one_line_with_did_you_mean(trained, tmp_path, case):
    args, expected = BAD[case]
    args = [_bad_suite(tmp_path) if a == "SUITE" else a for a in args]
    r = run_home(trained, *args)
    assert r.exit_code == 2, r.output
    assert r.stdout == "" and "Traceback" not in r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0].lower(), r.stderr
    assert Registry(trained).names() == ["lp"]


def test_params_accepts_method_keys():
    r = invoke("params", "--method", "vpt-deep", "--backbone", "vit-tiny-test", "--num-classes", "7",
               "--set", "prompt_len=3")
    counts = json.loads(r.output)
    wider = json.loads(invoke("params", "--method", "vpt-deep", "--backbone", "vit-tiny-test", "--num-classes", "7",
                              "--set", "prompt_len=4").output)
    assert wider["trainable"] - counts["trainable"] == 4 * 32  # one more prompt token of width 32 in each of 4 blocks


def test_json_outputs_are_strict(trained):
    """The tiny split has no many-shot class: `many` is NaN inside, null in every JSON written or printed."""
    metrics = strict_json((trained / "experts" / "lp" / "metrics.json").read_text())
    assert metrics["test"]["many"] is None and 0 <= metrics["test"]["few"] <= 1
    assert strict_json(run_home(trained, "show", "lp").output)["metrics"]["test"]["many"] is None
    doc = strict_json(run_home(trained, "report", "--format", "json").output)
    assert doc["rows"][0]["many"] is None and doc["rows"][0]["overall"] > 0
    rows = strict_json(run_home(trained, "ls", "--format", "json").output)
    assert rows == [{"name": "lp", "method": "linear-probe", "backbone": "vit-tiny-test", "dataset": "fashion-mnist-lt",
                     "seed": 0, "created": rows[0]["created"]}]


def test_strict_json_conversion():
    import numpy as np
    import pandas as pd

    from ltbench.jsonio import dumps

    obj = {"a": float("nan"), "b": [float("inf"), -float("inf"), 1.5], "c": np.float32(np.nan), "d": np.int64(3),
           "e": np.array([1.0, np.nan]), "f": (pd.NA, np.bool_(True)), 7: {"g": np.float64(0.25)}}
    assert strict_json(dumps(obj)) == {"a": None, "b": [None, None, 1.5], "c": None, "d": 3, "e": [1.0, None],
                                       "f": [None, True], "7": {"g": 0.25}}


def test_a_piped_table_keeps_its_natural_width(home):
    """Output that is not a terminal (CI logs, files) gets the whole table: squeezed to a fixed width,
    rich would cut the expert's name into narrow wrapped cells."""
    name = "demo-" + "a-long-expert-name-" * 5 + "s0"
    assert invoke("train", "--method", "linear-probe", "--name", name, *TINY, "--set", "solver=sgd").exit_code == 0
    for args in (["report"], ["ls"]):
        printed = invoke(*args).output
        assert name in printed, args
