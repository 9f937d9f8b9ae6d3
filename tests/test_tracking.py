"""Learning curves: history.csv, `show --history`, plain progress lines, TensorBoard and MLflow
read back with their own readers."""
import io
import re

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from conftest import TINY_DATA
from ltbench.cli import app
from ltbench.spec import read_budget, resolve_run
from ltbench.errors import ConfigError
from ltbench.store.index import Registry
from ltbench.training.tracking import HISTORY_COLUMNS
from ltbench.training.trainer import Trainer
from ltbench.training.pipeline import build_all, train_expert

runner = CliRunner()


def tiny_run(method="vpt-deep", budget="2epochs", name=None, **sets):
    return resolve_run({"backbone": "vit-tiny-test", "method": method, "budget": budget, "name": name},
                          {**TINY_DATA, **sets})


def test_history_holds_every_step_and_each_epochs_val_accuracy(tmp_path):
    ex = train_expert(tiny_run("lpt", "4epochs", prompt_len=2, pool_size=4), Registry(tmp_path), quiet=True)
    header = (ex.path / "history.csv").read_text().splitlines()[0]
    assert header == ",".join(HISTORY_COLUMNS)
    rows = ex.history()
    spent = ex.meta["spent"]
    assert [r["step"] for r in rows] == list(range(1, spent["steps"] + 1))
    assert [r["phase"] for r in rows] == ["shared-prompt"] * (len(rows) // 2) + ["group-prompts"] * (len(rows) // 2)
    # compute so far is cumulative over the whole run and ends at what the expert spent
    flops = [r["flops"] for r in rows]
    assert flops == sorted(flops) and flops[-1] == pytest.approx(spent["flops"])
    assert rows[-1]["seconds"] == pytest.approx(spent["seconds"])
    assert all(r["loss"] > 0 and r["lr"] > 0 and r["images_per_s"] > 0 for r in rows)
    # 4 epochs over two phases: two epochs each, one validation accuracy at each epoch's last step
    val = [r for r in rows if r["val_acc"] is not None]
    assert [(r["phase"], r["epoch"]) for r in val] == [(p, pytest.approx(e)) for p in ("shared-prompt", "group-prompts")
                                                       for e in (1.0, 2.0)]
    # after the last epoch the model is the registered one: its val accuracy is the registered val metric
    assert val[-1]["val_acc"] == pytest.approx(ex.metrics["val"]["overall"])


def test_validation_passes_do_not_change_training(tmp_path):
    """An eval pass draws a DataLoader seed from torch's RNG; the trainer must hide that."""
    reg = Registry(tmp_path)
    on = train_expert(tiny_run("vpt-deep", "2epochs", name="on"), reg, quiet=True)
    off = train_expert(tiny_run("vpt-deep", "2epochs", name="off", val_each_epoch=False), reg, quiet=True)
    assert sum(r["val_acc"] is not None for r in on.history()) == 2
    assert all(r["val_acc"] is None for r in off.history())
    a, b = on.delta(), off.delta()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in on.history()] == [r["loss"] for r in off.history()]
    assert on.meta["config_hash"] == off.meta["config_hash"]  # where numbers go is not the experiment


def test_resumed_run_keeps_the_history_of_its_first_part(tmp_path):
    reg = Registry(tmp_path)
    run = tiny_run("full-ft", "2epochs").replace(name="resumed")
    data, method = build_all(run)
    run = run.replace(img_size=method.info.img_size)  # as train_expert records it (part of the checkpoint's config hash)
    torch.manual_seed(run.seed)
    first = Trainer(method, data, run, torch.device("cpu"), ckpt_dir=reg.run_dir("resumed"), quiet=True)
    first.fit(read_budget("1epochs"))  # stands for a run killed after its first epoch's checkpoint
    before = first.tracker.state()
    ex = train_expert(run.replace(resume=True), reg, quiet=True)
    rows = ex.history()
    assert [r["step"] for r in rows] == list(range(1, len(rows) + 1)) and len(rows) > len(before)
    assert [r["loss"] for r in rows[:len(before)]] == pytest.approx([r["loss"] for r in before])
    assert rows[len(before) - 1]["val_acc"] == pytest.approx(before[-1]["val_acc"])


def test_plain_progress_lines_when_stderr_is_not_a_terminal(tmp_path):
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=False, width=200)
    train_expert(tiny_run("linear-probe", "20steps", batch_size=8, solver="sgd"), Registry(tmp_path), console=console)
    lines = buf.getvalue().splitlines()
    pattern = r"linear-probe head +(\d+)% step (\d+) loss \d+\.\d{4} lr \S+ \d+ img/s ETA \d+:\d\d:\d\d"
    found = [re.fullmatch(pattern, line) for line in lines]
    assert all(found), lines
    assert [int(m.group(1)) for m in found] == list(range(10, 101, 10))  # every 10 % of the phase
    assert [int(m.group(2)) for m in found] == list(range(2, 21, 2))
    quiet = io.StringIO()
    train_expert(tiny_run("linear-probe", "4steps", name="q"), Registry(tmp_path),
                 console=Console(file=quiet, force_terminal=False), quiet=True)
    assert quiet.getvalue() == ""


def test_tensorboard_event_files_read_back(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ex = train_expert(tiny_run("linear-probe", "3epochs", name="tb", solver="sgd", log="tensorboard", log_dir=str(tmp_path / "tb")),
                      Registry(tmp_path / "runs"), quiet=True)
    acc = EventAccumulator(str(tmp_path / "tb" / "tb"))
    acc.Reload()
    rows = ex.history()
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == [r["step"] for r in rows]
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in rows], rel=1e-6)
    assert [e.value for e in acc.Scalars("compute/flops")] == pytest.approx([r["flops"] for r in rows], rel=1e-6)
    val = [(r["step"], r["val_acc"]) for r in rows if r["val_acc"] is not None]
    assert [(e.step, pytest.approx(e.value)) for e in acc.Scalars("val/acc")] == val
    assert acc.Scalars("final/test/overall")[0].value == pytest.approx(ex.metrics["test"]["overall"])


def test_mlflow_run_reads_back_params_metrics_and_artifacts(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    home = tmp_path / "runs"
    ex = train_expert(tiny_run("linear-probe", "3epochs", name="ml", log="mlflow", lr=0.02), Registry(home), quiet=True)
    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")  # the default store: SQLite in the home
    [run] = client.search_runs([client.get_experiment_by_name("ltbench").experiment_id])
    assert run.info.run_name == "ml" and run.info.status == "FINISHED"
    params = run.data.params
    assert params["method"] == "linear-probe" and float(params["method_config.lr"]) == 0.02
    assert params["data.head"] == str(TINY_DATA["head"])
    rows = ex.history()
    loss = client.get_metric_history(run.info.run_id, "loss")
    assert sorted((m.step, m.value) for m in loss) == [(r["step"], pytest.approx(r["loss"])) for r in rows]
    val = client.get_metric_history(run.info.run_id, "val_acc")
    assert sorted((m.step, m.value) for m in val) == [(r["step"], pytest.approx(r["val_acc"]))
                                                      for r in rows if r["val_acc"] is not None]
    assert run.data.metrics["test/overall"] == pytest.approx(ex.metrics["test"]["overall"])
    files = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"config.json", "delta.safetensors", "history.csv", "metrics.json", "meta.json", "logits"} <= files
    assert not (tmp_path / "mlruns").exists()  # artifacts stay in the home, not in the working directory


def test_log_option_errors_come_before_any_work(monkeypatch):
    with pytest.raises(ConfigError, match=re.escape("--set log='tensorbord': expected tensorboard, mlflow or both"
                                                    " (a list or comma-separated); did you mean 'tensorboard'?")):
        tiny_run(log="tensorbord")
    with pytest.raises(ConfigError, match="--set val_each_epoch=3: expected"):
        tiny_run(val_each_epoch=3)
    import ltbench.training.tracking as tracking

    monkeypatch.setitem(tracking.LOG_TARGETS, "mlflow", ("ltbench_no_such_package", "mlflow"))
    with pytest.raises(ConfigError, match=re.escape("--log mlflow needs the 'ltbench_no_such_package' package: "
                                                    "pip install 'ltbench[mlflow]'")):
        tiny_run(log="mlflow")
    assert tiny_run(log="tensorboard,tensorboard").log == ("tensorboard",)
    assert tiny_run().log == ()


def test_show_history_prints_the_learning_curve(tmp_path, home):
    train_expert(tiny_run("linear-probe", "3epochs", name="v", solver="sgd"), Registry(home), quiet=True)
    r = runner.invoke(app, ["show", "v", "--history"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    ex = Registry(home).get("v")
    epochs = [row for row in ex.history() if row["val_acc"] is not None]
    assert "val acc" in r.output
    for row in epochs:
        assert f"{100 * row['val_acc']:.2f}%" in r.output
    assert re.search(r"loss \S+: [▁▂▃▄▅▆▇█]+", r.output)
    r = runner.invoke(app, ["show", "nope", "--history"], catch_exceptions=False)
    assert r.exit_code == 2 and "no expert named 'nope'" in r.output
