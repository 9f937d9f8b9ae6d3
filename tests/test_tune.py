"""Tuning: an Optuna study of short trials on the validation split, then the final run.

Tiny runs of the minibatch linear probe (`solver=sgd`: trials on cached features take well
under a second). A test that needs a particular space declares it on the method's config,
as a method does (SEARCH_SPACE), rather than replacing any part of the study.
"""
import json
import math

import numpy as np
import optuna
import pytest
import torch
import yaml
from conftest import TINY_DATA, TINY_SETS
from typer.testing import CliRunner

import ltbench.training.pipeline
import ltbench.training.trainer
from ltbench.cli import app
from ltbench.spec import resolve_run
from ltbench.data.base import LTDataset
from ltbench.errors import ConfigError
from ltbench.executors import run_suite
from ltbench.methods.linear_probe import LinearProbeConfig
from ltbench.store.index import Registry
from ltbench.suites.results import report_suite
from ltbench.suites.schema import SuiteError, load_suite
from ltbench.tuning.tuner import TuneSpec, parse_tune, storage_url, tune, tune_and_train

GOOD, BAD = 0.1, 1e-6


def sgd_probe(budget="4epochs", **sets):
    return resolve_run({"backbone": "vit-tiny-test", "method": "linear-probe", "budget": budget, "name": "probe"},
                       {**TINY_DATA, "solver": "sgd", **sets})


@pytest.fixture
def lr_space(monkeypatch):
    """The probe's space: a useless learning rate and a good one, nothing else."""
    monkeypatch.setattr(LinearProbeConfig, "SEARCH_SPACE", {"lr": ("choice", [BAD, GOOD])})


def test_tuning_picks_the_good_learning_rate(tmp_path, lr_space):
    reg = Registry(tmp_path)
    ex = tune_and_train(sgd_probe(), TuneSpec(trials=4, share=0.5, pruner="none"), reg, quiet=True)
    record = ex.meta["tuning"]
    tried = {t["params"]["lr"] for t in record["trials"]}
    assert tried == {BAD, GOOD}  # both were tried, and the good one won
    assert record["best_params"] == {"lr": GOOD} and ex.config["method_config"]["lr"] == GOOD
    by_lr = {lr: max(t["value"] for t in record["trials"] if t["params"]["lr"] == lr) for lr in tried}
    assert by_lr[GOOD] > by_lr[BAD] and record["best_value"] == by_lr[GOOD]
    # what was tuned, from what, is in the config; the trials and their compute are in the provenance
    assert ex.config["tune"]["base"] == {"lr": 1e-2} and ex.config["tune"]["trials"] == 4
    assert len(record["trials"]) == 4 and all(t["state"] == "COMPLETE" for t in record["trials"])
    assert record["compute"]["seconds"] == pytest.approx(sum(t["spent"]["seconds"] for t in record["trials"]))
    assert record["compute"]["flops"] > 0
    # each trial trained on its share of the budget: half of 4 epochs
    assert all(t["spent"]["epochs"] == pytest.approx(2) for t in record["trials"])
    assert ex.meta["spent"]["epochs"] == pytest.approx(4)  # the final run has the whole budget


def test_the_first_trial_is_the_methods_own_values(tmp_path, monkeypatch):
    """Trial 0 is the config's value where the space holds it; a space without it draws every trial."""
    monkeypatch.setattr(LinearProbeConfig, "SEARCH_SPACE", {"lr": ("log", 1e-6, 1.0)})
    best, record = tune(sgd_probe(lr=3e-3), TuneSpec(trials=3, share=0.5, pruner="none"), Registry(tmp_path / "a"))
    assert record["trials"][0]["params"] == {"lr": 3e-3}
    assert all(t["params"]["lr"] != 3e-3 for t in record["trials"][1:])
    assert record["best_value"] >= record["trials"][0]["value"]
    monkeypatch.setattr(LinearProbeConfig, "SEARCH_SPACE", {"lr": ("log", 1e-6, 1e-3)})  # 3e-3 lies outside it
    best, record = tune(sgd_probe(lr=3e-3), TuneSpec(trials=2, share=0.5, pruner="none"), Registry(tmp_path / "b"))
    assert all(1e-6 <= t["params"]["lr"] <= 1e-3 for t in record["trials"])


def test_tuning_never_reads_test_labels(tmp_path, lr_space, monkeypatch):
    """No trial touches the test split; only the final run (registering the expert) evaluates on it."""
    state = {"tuning": True, "final": 0}

    def get(self):
        split = self.__dict__["_test"]
        if state["tuning"] and len(split):
            raise AssertionError("the test split was read while tuning")
        return split

    def set_(self, split):
        self.__dict__["_test"] = split

    real_train = ltbench.training.pipeline.train_expert

    def final(run, **kw):
        state["tuning"] = False
        state["final"] += 1
        return real_train(run, **kw)

    monkeypatch.setattr(LTDataset, "test", property(get, set_), raising=False)
    monkeypatch.setattr(ltbench.training.pipeline, "train_expert", final)
    ex = tune_and_train(sgd_probe(), TuneSpec(trials=3, share=0.5), Registry(tmp_path), quiet=True)
    assert state["final"] == 1 and len(ex.meta["tuning"]["trials"]) == 3
    assert ex.metrics["test"]["n"] > 0  # the final run did evaluate on the test split


def test_same_seed_same_best_values(tmp_path):
    """The probe's own declared space (lr, weight decay, batch size) twice from empty storages."""
    spec = TuneSpec(trials=3, share=0.5)
    a = tune(sgd_probe(), spec, Registry(tmp_path / "a"))
    b = tune(sgd_probe(), spec, Registry(tmp_path / "b"))
    c = tune(sgd_probe(seed=1), spec, Registry(tmp_path / "c"))
    assert set(a[0]) == {"optimizer", "lr", "weight_decay", "warmup", "batch_size"} and a[0] == b[0]
    assert [t["params"] for t in a[1]["trials"]] == [t["params"] for t in b[1]["trials"]]
    assert [t["value"] for t in a[1]["trials"]] == [t["value"] for t in b[1]["trials"]]
    assert [t["params"] for t in a[1]["trials"]] != [t["params"] for t in c[1]["trials"]]


def test_pruned_trials_are_recorded_as_pruned(tmp_path, lr_space):
    """Fixed trials report at their points (a quarter, half, all of a trial here); the median pruner
    stops one whose report falls below the median of earlier trials' reports at that point."""
    reg = Registry(tmp_path)
    spec = TuneSpec(trials=6, share=0.5, eta=2, rungs=3, startup=1)
    best, record = tune(sgd_probe(budget="48steps"), spec, reg)
    states = [t["state"] for t in record["trials"]]
    assert "PRUNED" in states and "COMPLETE" in states
    stored = optuna.load_study(study_name=record["study"], storage=storage_url(reg))
    assert [t.state.name for t in stored.trials] == states  # the storage says the same
    done = []
    for t in record["trials"]:
        steps = {int(k): v for k, v in t["intermediate"].items()}
        if t["state"] == "PRUNED":
            # the median rule, recomputed: its best report so far fell below the median of the
            # completed trials' reports at its last point
            last = max(steps)
            earlier = [d[last] for d in done if last in d]
            assert earlier and max(steps.values()) < np.median(earlier)
            assert last < 4 and 0 < t["spent"]["steps"] < 24  # stopped before its end, compute counted
        else:
            assert sorted(steps) == spec.steps() and t["spent"]["steps"] == 24
            done.append(steps)
    assert record["compute"]["seconds"] == pytest.approx(sum(t["spent"]["seconds"] for t in record["trials"]))


def test_a_trial_runs_no_learning_curve_pass_the_final_run_does(tmp_path, lr_space, monkeypatch):
    """The history's per-epoch validation pass is not charged to the budget, so a trial (never
    registered, its history unread) must not run it; the final run keeps its curve."""
    calls = {"n": 0}
    real = ltbench.training.trainer.Trainer.epoch_val_accuracy

    def counted(self, *a, **kw):
        calls["n"] += 1
        return real(self, *a, **kw)

    monkeypatch.setattr(ltbench.training.trainer.Trainer, "epoch_val_accuracy", counted)
    tune(sgd_probe(), TuneSpec(trials=2, share=0.5, pruner="none"), Registry(tmp_path / "a"))
    assert calls["n"] == 0
    ltbench.training.pipeline.train_expert(sgd_probe(budget="2epochs"), registry=Registry(tmp_path / "b"), quiet=True)
    assert calls["n"] == 2  # one point per epoch of the registered run


def test_the_pruner_hears_at_the_points_of_the_whole_budget_however_many_phases():
    """LT-Soups trains 7 short phases (3 caps x 2 branches, then the head): its reports come when the
    phases' summed spending passes each point of the run's budget, sub-epoch points included."""
    from ltbench.training.callbacks import AtProgress
    from ltbench.training.pipeline import build_all
    from ltbench.training.trainer import Trainer

    run = resolve_run({"backbone": "vit-tiny-test", "method": "lt-soups", "budget": "3epochs", "name": "soup"},
                      {**TINY_DATA, "factors": [0, 1, 2], "val_checks": 0})
    data, method = build_all(run, tuning=True)
    heard = []
    points = [1 / 9, 1 / 3, 2 / 3]
    trainer = Trainer(method, data, run, torch.device("cpu"), quiet=True,
                      callbacks=[AtProgress(points, lambda k, spent: heard.append((k, spent.epochs)))])
    result = trainer.fit(run.budget)
    assert len(result.phases) == 7
    assert [k for k, _ in heard] == sorted({k for k, _ in heard}) and heard[-1][0] == 3
    step = max(1 / p["spent"]["steps"] * p["spent"]["epochs"] for p in result.phases if p["spent"]["steps"])
    for k, epochs in heard:  # heard as the point is passed: within one step of it
        assert 3 * points[k - 1] - 1e-6 <= epochs < 3 * points[k - 1] + step + 1e-6


def test_trials_run_in_parallel_processes_sharing_the_study(tmp_path, lr_space):
    reg = Registry(tmp_path)
    best, record = tune(sgd_probe(), TuneSpec(trials=4, share=0.5, jobs=2, pruner="none"), reg)
    pids = {t["pid"] for t in record["trials"]}
    assert len(record["trials"]) == 4 and len(pids) == 2  # two processes, one study
    assert best == {"lr": GOOD}
    again, rerun = tune(sgd_probe(), TuneSpec(trials=4, share=0.5, jobs=2, pruner="none"), reg)
    assert rerun["trials"] == record["trials"]  # a finished study in the storage runs no more trials


def test_the_study_name_ignores_exactly_the_operational_keys():
    """Moving a study to another device or worker count resumes its trials; a result key starts a new one."""
    from ltbench.store.provenance import OPERATIONAL
    from ltbench.tuning.tuner import study_name

    run, spec, space = sgd_probe(), TuneSpec(trials=2), {"lr": ("choice", [BAD, GOOD])}
    name = study_name(run, spec, space)
    moved = run.replace(device="cuda:1", num_workers=7, eval_batch_size=3, resume=True, log=("tensorboard",))
    assert {"device", "num_workers", "eval_batch_size", "resume", "log"} <= OPERATIONAL
    assert study_name(moved, spec, space) == name
    assert study_name(run.replace(seed=run.seed + 1), spec, space) != name
    assert study_name(run, TuneSpec(trials=3), space) != name


def test_a_method_without_a_space_runs_no_trials(tmp_path):
    probe = sgd_probe().with_method(solver="lbfgs", max_iter=20)
    best, record = tune(probe, TuneSpec(trials=3), Registry(tmp_path))
    assert best == {} and record["trials"] == [] and record["space"] == {}


@pytest.mark.parametrize("value,match", [
    ({"trials": 0}, "trials must be an integer >= 1"),
    ({"trials": 2, "share": 0}, "share must be a number in"),
    ({"trials": 2, "sharre": 0.5}, "Did you mean 'share'"),
    ({"share": 0.5}, "give either 'budget'"),
    ({"trials": 2, "budget": 0.5}, "give either 'budget'"),
    ({"budget": 0.01, "share": 0.25}, "does not pay for one trial"),
    ({"budget": 0.3, "share": 0.25}, "does not pay for one trial"),
    ({"budget": 0}, "budget must be a number in"),
    ({"budget": 0.5, "eta": 1}, "eta must be an integer >= 2"),
    ({"trials": 2, "pruner": "hyperband"}, "pruner must be one of"),
    ("8", "expected a number of trials or a mapping"),
])
def test_bad_tune_settings_fail_before_work(value, match):
    with pytest.raises(ConfigError, match=match):
        parse_tune(value, "tune")


SUITE = {"name": "t", "dataset": "fashion-mnist-lt", "backbone": "vit-tiny-test", "budget": "2epochs",
         "set": {**TINY_DATA, "solver": "sgd"}, "tune": {"trials": 2, "share": 0.5},
         "runs": [{"method": "linear-probe"}]}


def test_suite_tune_block_is_equal_for_every_run_and_the_report_marks_tuned_rows(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(SUITE))
    suite = load_suite(path)
    assert all(j.tune == TuneSpec(trials=2, share=0.5) for j in suite.jobs)
    reg = Registry(tmp_path / "home")
    run_suite(suite, reg, quiet=True)
    ex = reg.get("t-linear-probe-s0")
    assert len(ex.meta["tuning"]["trials"]) == 2
    table, _ = report_suite(suite, reg, out=tmp_path / "rep", plots=False)
    row = json.loads((tmp_path / "rep" / "report.json").read_text())["rows"][0]
    assert row["tuned"] == 2 and row["tune_seconds"] == pytest.approx(ex.meta["tuning"]["compute"]["seconds"])
    assert "tuning s" in (tmp_path / "rep" / "report.txt").read_text()
    # a changed tune: block is a different experiment, not a stale row
    path.write_text(yaml.safe_dump({**SUITE, "tune": {"trials": 3, "share": 0.5}}))
    with pytest.raises(SuiteError, match="tune: registered"):
        run_suite(load_suite(path), reg, quiet=True)


@pytest.mark.parametrize("change,match", [
    ({"tune": {"trials": 2, "share": 2}}, "share must be a number in"),
    ({"runs": [{"method": "linear-probe", "set": {"lr": 0.5}}]}, "lr is tuned"),
])
def test_suite_tune_errors_name_the_file(tmp_path, change, match):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({**SUITE, **change}))
    with pytest.raises(SuiteError, match=match) as e:
        load_suite(path)
    assert str(path) in str(e.value)


def test_cli_train_tune(home, lr_space):
    args = ["train", "--method", "linear-probe", "--backbone", "vit-tiny-test", "--budget", "2epochs", "--quiet",
            "--name", "p", "--tune", "2", "--tune-share", "0.5", "--set", "solver=sgd"]
    r = CliRunner().invoke(app, args + [a for s in TINY_SETS for a in ("--set", s)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "tuned" in r.output and "2 trials" in r.output
    ex = Registry(home).get("p")
    assert ex.meta["tuning"]["spec"]["trials"] == 2 and (home / "studies.sqlite").is_file()


def test_the_demo_suite_tunes_every_run_alike_and_hand_picks_nothing():
    from ltbench.suites.schema import builtin_suite

    suite = builtin_suite("demo")
    picked = {"lr", "optimizer", "batch_size", "lr_ref_batch", "weight_decay", "momentum"}
    assert not picked & set(suite.sets) and all(not picked & set(r.sets) for r in suite.runs)
    assert suite.tune is not None and {j.tune for j in suite.jobs if j.kind == "run"} == {suite.tune}


def toy_trial(run, registry, reporter=None, val_images=0):
    """A toy problem in place of training: after t steps at learning rate lr the validation accuracy is
    0.1 + 0.8·g(lr)·(1 − e^(−t/8)), g a bump 0.25 decades wide around lr* = 0.03 in a 6-decade space
    (1e-5 … 10): a short trial already ranks lrs, and 3 draws rarely land in the bump."""
    from ltbench.budget import Spent
    from ltbench.tuning.tuner import TrialCompute

    lr, steps = run.method_config.lr, run.budget.amount
    g = math.exp(-0.5 * (math.log10(lr / 0.03) / 0.25) ** 2)
    cost = TrialCompute("steps", Spent(steps=int(steps), epochs=steps / 10))
    learnt = g * (1 - math.exp(-steps / 8))
    return 0.1 + 0.8 * learnt, 0.1 + 0.5 * learnt, cost.as_dict()


def chance_trial(run, registry, reporter=None, val_images=0):
    """A toy problem whose short trials are at chance in accuracy: below 90 steps the accuracy is 1/10 plus
    argmax noise that here happens to favour the lrs farthest from the good one, while the probability
    of the true class already rises with g(lr), a bump one decade wide around lr* = 0.03."""
    from ltbench.budget import Spent
    from ltbench.tuning.tuner import TrialCompute

    lr, steps = run.method_config.lr, run.budget.amount
    g = math.exp(-0.5 * (math.log10(lr / 0.03) / 0.5) ** 2)
    cost = TrialCompute("steps", Spent(steps=int(steps), epochs=steps / 10))
    noise = 0.05 * (1 - g)
    acc = 0.1 + 0.8 * g if steps >= 90 else 0.1 + noise
    return acc, 0.1 + 0.3 * g * (1 - math.exp(-steps / 8)), cost.as_dict()


@pytest.mark.parametrize("seed", [0, 1])
def test_halving_promotes_by_the_true_class_probability_where_short_trials_are_at_chance(tmp_path, monkeypatch, seed):
    """Trials of 10 and 30 steps are at chance in accuracy but not in the probability they give the true
    class: each rung passes on its best third by the mean of the two, so the final choice is the best lr
    the first rung drew, not its luckiest argmax."""
    import ltbench.tuning.tuner

    monkeypatch.setattr(LinearProbeConfig, "SEARCH_SPACE", {"lr": ("log", 1e-5, 10.0)})
    monkeypatch.setattr(ltbench.tuning.tuner, "run_trial", chance_trial)
    best, record = tune(sgd_probe(budget="360steps", seed=seed), TuneSpec(budget=0.75, share=0.25),
                        Registry(tmp_path))
    first = [t for t in record["trials"] if t["rung"] == 0]
    assert len(first) == 9 and all(t["val_p_true"] is not None for t in first)
    closest = min(first, key=lambda t: abs(math.log10(t["params"]["lr"] / 0.03)))
    luckiest = max(first, key=lambda t: t["value"])
    assert luckiest["params"] != closest["params"]  # accuracy at chance would promote another lr
    assert best == closest["params"]
    for r in (1, 2):  # each rung: the best third of the one before
        prev = sorted((t for t in record["trials"] if t["rung"] == r - 1), key=lambda t: -t["value"] - t["val_p_true"])
        assert sorted(t["params"]["lr"] for t in record["trials"] if t["rung"] == r) == \
            sorted(t["params"]["lr"] for t in prev[:len(prev) // 3])


def test_promotion_weighs_accuracy_and_the_true_class_probability_alike():
    """Neither alone: a more accurate, less confident trial goes before a confident, less accurate one
    (7-step VPT trials: 19.0 % / p 0.128 and 12.5 % / p 0.149); a trial without a score, or failed, last."""
    from types import SimpleNamespace

    from ltbench.tuning.tuner import _promote

    def trial(n, acc, p):
        return SimpleNamespace(number=n, value=acc, user_attrs={"val_p_true": p})

    ranked = _promote([trial(0, 0.125, 0.149), trial(1, None, None), trial(2, 0.1, None), trial(3, 0.19, 0.128)])
    assert [t.number for t in ranked] == [3, 0, 2, 1]


def test_validation_scores_are_averaged_per_class_and_broken_logits_score_none():
    """9 images of class 0 predicted right, 1 of class 1 predicted wrong, all with p = σ(4): per class the
    accuracy is 1/2 and the true class's probability the mean of the two classes', not of the ten images'."""
    from ltbench.tuning.tuner import scores

    logits = torch.tensor([[4.0, 0.0]] * 10)
    labels = np.array([0] * 9 + [1])
    acc, p_true = scores(logits, labels, 2)
    right = 1 / (1 + math.exp(-4.0))
    assert acc == pytest.approx(0.5) and p_true == pytest.approx((right + (1 - right)) / 2)
    assert scores(torch.zeros(10, 2), labels, 2)[1] == pytest.approx(0.5)  # uniform: 1/C
    assert scores(torch.tensor([[float("nan"), 0.0]] * 10), labels, 2)[1] is None




@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_successive_halving_finds_the_lr_a_fixed_share_search_of_the_same_compute_misses(tmp_path, monkeypatch, seed):
    """Same compute (0.75 of the run), same space: 3 trials of a quarter each miss the narrow good
    learning rate; successive halving spends the same on 9 + 3 + 1 trials of 1/36, 1/12, 1/4 and finds it."""
    import ltbench.tuning.tuner

    monkeypatch.setattr(LinearProbeConfig, "SEARCH_SPACE", {"lr": ("log", 1e-5, 10.0)})
    monkeypatch.setattr(ltbench.tuning.tuner, "run_trial", toy_trial)
    run = sgd_probe(budget="360steps", seed=seed)
    fixed = tune(run, TuneSpec(trials=3, share=0.25, pruner="none"), Registry(tmp_path / "fixed"))[1]
    sha = tune(run, TuneSpec(budget=0.75, share=0.25), Registry(tmp_path / "sha"))[1]
    for record in (fixed, sha):  # neither spends more than 0.75 of the run's 360 steps
        assert sum(t["spent"]["steps"] for t in record["trials"]) == 270
    assert sha["budget"] == {"unit": "steps", "cap": 270, "used": 270}
    assert [sum(t["rung"] == r for t in sha["trials"]) for r in range(3)] == [9, 3, 1]
    # the rungs' lengths, each trial a run of its own: 10, 30, 90 steps
    assert {t["rung"]: t["spent"]["steps"] for t in sha["trials"]} == {0: 10, 1: 30, 2: 90}
    # each rung trains again the best third of the rung before
    for r in (1, 2):
        prev = sorted((t for t in sha["trials"] if t["rung"] == r - 1), key=lambda t: -t["value"])
        assert sorted(t["params"]["lr"] for t in sha["trials"] if t["rung"] == r) == \
            sorted(t["params"]["lr"] for t in prev[:len(prev) // 3])
    near = [abs(math.log10(r["best_params"]["lr"] / 0.03)) for r in (fixed, sha)]
    assert near[1] < 0.25 < near[0]  # within the bump / outside it


def test_halving_on_the_real_pipeline_spends_its_budget_and_resumes(tmp_path, lr_space):
    """A budget's halving with real trials: the plan's trials, within the budget, and a second call on
    the same storage runs nothing more (a killed tuning resumes with what it has)."""
    from ltbench.tuning.tuner import halving_plan

    reg = Registry(tmp_path)
    spec = TuneSpec(budget=1.0, share=0.5, eta=2, rungs=2)
    assert halving_plan(spec) == [(2, 0.25), (1, 0.5)]  # 2 × 0.25 + 1 × 0.5 = 1.0 run
    best, record = tune(sgd_probe(budget="40steps"), spec, reg)
    assert [(t["rung"], t["spent"]["steps"]) for t in record["trials"]] == [(0, 10), (0, 10), (1, 20)]
    assert all(0 < t["val_p_true"] < 1 for t in record["trials"])
    assert record["budget"] == {"unit": "steps", "cap": 40.0, "used": 40.0}
    assert best["lr"] == GOOD and record["trials"][-1]["rung"] == 1
    again = tune(sgd_probe(budget="40steps"), spec, reg)[1]
    assert again["trials"] == record["trials"]


def test_a_trial_runs_its_own_whole_schedule(tmp_path, monkeypatch):
    """Warm-up and cosine are scaled to the trial's own length, as to the final run's: a quarter-length
    trial warms up for its first 10 % of steps and decays to its own end."""
    seen = []
    real = ltbench.training.trainer.lr_factor
    monkeypatch.setattr(ltbench.training.trainer, "lr_factor", lambda p, w, *a: seen.append((p, w)) or real(p, w, *a))
    monkeypatch.setattr(LinearProbeConfig, "SEARCH_SPACE", {"lr": ("choice", [GOOD])})
    tune(sgd_probe(budget="80steps", warmup=0.1), TuneSpec(trials=1, share=0.25), Registry(tmp_path))
    progress = [p for p, _ in seen]
    assert len(progress) == 20 and progress[-1] == pytest.approx(19 / 20)
    factors = [real(p, 0.1) for p in progress]
    assert max(factors) == factors[2] and factors[-1] < 0.05  # peak after 2 warm-up steps, cosine to ~0
