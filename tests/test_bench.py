"""`ltbench bench`: suite validation, one budget for every run, resuming, fusion, report files."""
import json

import pytest
import yaml
from conftest import TINY_DATA
from typer.testing import CliRunner

import ltbench.fusion
import ltbench.training.pipeline
import ltbench.training.trainer
from ltbench.cli import app
from ltbench.executors import run_suite
from ltbench.store.index import Registry
from ltbench.suites.schema import SuiteError, builtin_suite, load_suite

runner = CliRunner()

TINY_SUITE = {
    "name": "tiny",
    "dataset": "fashion-mnist-lt",
    "backbone": "vit-tiny-test",
    "budget": "3steps",
    "seeds": [0],
    "set": dict(TINY_DATA),
    "runs": [
        {"method": "linear-probe"},
        {"method": "vpt-deep", "set": {"prompt_len": 2, "batch_size": 8}},
    ],
    "fusions": [{"label": "mean", "experts": ["linear-probe", "vpt-deep"], "scorer": "mean", "trials": 1}],
}


def runs(*specs):
    """TINY_SUITE with other runs (and no fusions)."""
    return {**TINY_SUITE, "runs": list(specs), "fusions": []}


def write(tmp_path, data, name="suite.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def suite_error(tmp_path, data) -> str:
    path = write(tmp_path, data)
    with pytest.raises(SuiteError) as e:
        load_suite(path)
    assert str(path) in str(e.value)  # every message names the file
    return str(e.value)


def test_validation_errors_name_the_file_and_the_bad_key(tmp_path):
    msg = suite_error(tmp_path, {**TINY_SUITE, "budjet": "3steps"})
    assert "'budjet'" in msg and "Did you mean 'budget'" in msg

    bad_method = runs({"method": "lpt+"})
    msg = suite_error(tmp_path, bad_method)
    assert "runs[0]" in msg and "unknown method 'lpt+'" in msg and "Did you mean 'lpt++'" in msg

    no_dataset = {k: v for k, v in TINY_SUITE.items() if k != "dataset"}
    assert "missing required key 'dataset'" in suite_error(tmp_path, no_dataset)

    bad_set = runs({"method": "vpt-deep", "set": {"promt_len": 2}})
    msg = suite_error(tmp_path, bad_set)
    assert "runs[0] (vpt-deep)" in msg and "'promt_len'" in msg and "Did you mean 'prompt_len'" in msg

    assert "unknown key 'lr'" in suite_error(tmp_path, runs({"method": "lpt", "lr": 1}))
    assert "one budget" in suite_error(tmp_path, runs({"method": "lpt", "budget": "1steps"}))
    assert "one budget" in suite_error(tmp_path, runs({"method": "lpt", "set": {"budget": "1steps"}}))
    assert "init: <label" in suite_error(tmp_path, runs({"method": "lpt", "set": {"init": "x"}}))
    assert "cannot parse budget" in suite_error(tmp_path, {**TINY_SUITE, "budget": "lots"})


def test_init_must_name_an_earlier_run(tmp_path):
    later = runs({"method": "lpt", "init": "base"}, {"label": "base", "method": "lpt"})
    msg = suite_error(tmp_path, later)
    assert "init 'base' is a later run" in msg

    unknown = runs({"label": "base", "method": "lpt"}, {"method": "lpt++", "init": "bsae"})
    msg = suite_error(tmp_path, unknown)
    assert "init 'bsae' is no run of this suite" in msg and "Did you mean 'base'" in msg

    fusion = {**TINY_SUITE, "fusions": [{"experts": ["linear-probe", "vpt"], "scorer": "mean"}]}
    assert "expert 'vpt' is no run" in suite_error(tmp_path, fusion)
    scorer = {**TINY_SUITE, "fusions": [{"experts": ["linear-probe", "vpt-deep"], "scorer": "moee"}]}
    assert "Did you mean 'moe'" in suite_error(tmp_path, scorer)


def test_init_resolves_to_the_earlier_runs_expert(tmp_path):
    data = {**runs({"label": "base", "method": "lpt"}, {"label": "next", "method": "lpt", "init": "base"}),
            "seeds": [0, 1]}
    suite = load_suite(write(tmp_path, data))
    jobs = [j for j in suite.jobs if j.kind == "run"]
    assert [j.name for j in jobs] == ["tiny-base-s0", "tiny-next-s0", "tiny-base-s1", "tiny-next-s1"]
    assert jobs[1].run.method_config.init == "tiny-base-s0"
    assert jobs[3].run.method_config.init == "tiny-base-s1"
    assert str(jobs[3].run.budget) == "3steps" and jobs[3].run.seed == 1


def test_the_builtin_demo_suite_is_valid():
    suite = builtin_suite("demo")
    assert suite.dataset == "fashion-mnist-lt" and suite.backbone == "dinov2-s14"
    methods = {j.run.method for j in suite.jobs if j.kind == "run"}
    assert {"linear-probe", "full-ft", "vpt-deep", "lpt", "lpt++", "lit"} <= methods
    assert len({j.run.budget for j in suite.jobs if j.kind == "run"}) == 1  # one budget for all
    assert any(j.kind == "fusion" and j.fusion.scorer == "moe" for j in suite.jobs)


def test_suite_runs_then_resumes_without_retraining(tmp_path, home, monkeypatch):
    calls = {"train": 0, "fuse": 0}
    real_train, real_fuse = ltbench.training.pipeline.train_expert, ltbench.fusion.fuse_experts

    def counting_train(*a, **kw):
        calls["train"] += 1
        return real_train(*a, **kw)

    def counting_fuse(*a, **kw):
        calls["fuse"] += 1
        return real_fuse(*a, **kw)

    monkeypatch.setattr(ltbench.training.pipeline, "train_expert", counting_train)
    monkeypatch.setattr(ltbench.fusion, "fuse_experts", counting_fuse)
    path = write(tmp_path, TINY_SUITE)
    out = tmp_path / "report"

    r = runner.invoke(app, ["bench", str(path), "--out", str(out), "--quiet"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert calls == {"train": 2, "fuse": 1}
    names = ["tiny-linear-probe-s0", "tiny-vpt-deep-s0", "tiny-mean-s0"]
    assert set(Registry(home).names()) == set(names)
    for f in ("report.csv", "report.md", "report.tex", "report.json", "report.txt",
              "accuracy_vs_params.png", "per_class_accuracy.png", "shot_groups.png"):
        assert (out / f).is_file(), f
    doc = json.loads((out / "report.json").read_text())
    assert doc["suite"] == "tiny" and doc["budget"] == "3steps"
    rows = {r["expert"]: r for r in doc["rows"]}
    assert set(rows) == set(names)
    for name in names[:2]:  # budgets are enforced, and the report shows what each run spent
        spent = Registry(home).get(name).meta["spent"]
        assert spent["steps"] <= 3
        assert rows[name]["flops"] > 0 and rows[name]["device_seconds"] > 0 and rows[name]["budget"] == "3steps"
    created = {n: Registry(home).get(n).meta["created"] for n in names}

    r = runner.invoke(app, ["bench", str(path), "--out", str(out), "--quiet", "--no-plots"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert calls == {"train": 2, "fuse": 1}  # the second run trains and fuses nothing
    assert {n: Registry(home).get(n).meta["created"] for n in names} == created
    assert "tiny-vpt-deep-s0" in r.output

    # the default report folder is <LTBENCH_HOME>/reports/<suite name>
    assert run_suite(load_suite(path), Registry(home), quiet=True) == names
    r = runner.invoke(app, ["bench", str(path), "--quiet", "--no-plots"], catch_exceptions=False)
    assert (home / "reports" / "tiny" / "report.json").is_file()

    # a constituent removed (to be retrained) makes its registered fusion stale: an error, not a stale row
    Registry(home).remove("tiny-vpt-deep-s0", force=True)
    with pytest.raises(SuiteError, match=r"'tiny-mean-s0'.*constituent tiny-vpt-deep-s0 is not registered"):
        run_suite(load_suite(path), Registry(home), quiet=True)


def test_a_changed_suite_does_not_reuse_a_stale_expert(tmp_path, home):
    data = runs({"method": "linear-probe"})
    reg = Registry(home)
    run_suite(load_suite(write(tmp_path, data)), reg, quiet=True)
    changed = {**data, "runs": [{"method": "linear-probe", "set": {"lr": 0.5}}]}
    with pytest.raises(SuiteError, match=r"tiny-linear-probe-s0.*registered with a different config.*lr"):
        run_suite(load_suite(write(tmp_path, changed, "changed.yaml")), reg, quiet=True)


def test_cli_bench_errors_are_one_line(tmp_path, home):
    path = write(tmp_path, runs({"method": "lpt+"}))
    r = runner.invoke(app, ["bench", str(path)])
    assert r.exit_code == 2 and "Did you mean 'lpt++'" in r.output and str(path) in r.output
    r = runner.invoke(app, ["bench", str(tmp_path / "missing.yaml")])
    assert r.exit_code == 2 and "no such suite file" in r.output


REPRO = sorted((__import__("pathlib").Path(__file__).resolve().parents[1] / "ltbench" / "suites" / "repro").glob("*.yaml"))


def _vit_flops(layers, dim, tokens, patch, mlp=4):
    """FLOPs (2 × multiply-adds) of a ViT's forward up to its pre-logits, written from its shapes:
    patch embedding, then per block q/k/v + projection (4·N·D²), attention (2·N²·D), MLP (2·mlp·N·D²)."""
    per_block = (4 + 2 * mlp) * tokens * dim ** 2 + 2 * tokens ** 2 * dim
    return 2 * (layers * per_block + (tokens - 1) * dim * 3 * patch ** 2)


@pytest.mark.parametrize("path", REPRO, ids=[p.stem for p in REPRO])
def test_every_repro_suite_validates_and_plans(path):
    from ltbench.api import plan

    suite = load_suite(path)
    assert suite.runs and all(r["source"] for r in suite.references)
    _, rows = plan(suite)
    assert [r["label"] for r in rows] == [r.label for r in suite.runs] + [f.label for f in suite.fusions]
    for row in rows:
        if row["kind"] == "run" and row["backbone"] == "vit_base_patch16_224.augreg_in21k":
            assert row["forward_flops"] == _vit_flops(12, 768, 197, 16)  # ViT-B/16 at 224 px, counted on meta
    if suite.dataset == "places-lt":  # the shipped split file: 62,500 training images
        run = rows[0]
        assert run["train_images"] == 62_500
        assert run["flops_per_seed"] == 3 * run["forward_flops"] * 80 * 62_500
    r = runner.invoke(app, ["bench", str(path), "--plan"])
    assert r.exit_code == 0, r.output
    assert suite.name in r.output and "est. FLOPs" in r.output


def test_plan_says_unknown_without_split_files_and_trains_nothing(tmp_path, home):
    data = {**TINY_SUITE, "dataset": "inat2018", "budget": "2epochs", "set": {}, "fusions": [],
            "runs": [{"method": "linear-probe"}]}
    _, rows = __import__("ltbench.api", fromlist=["plan"]).plan(load_suite(write(tmp_path, data)))
    assert rows[0]["train_images"] is None and rows[0]["flops_per_seed"] is None
    r = runner.invoke(app, ["bench", str(write(tmp_path, data)), "--plan"])
    assert r.exit_code == 0 and "unknown" in r.output
    assert not Registry(home).names()


def test_reference_rows_are_validated(tmp_path):
    ref = {"run": "linear-probe", "source": "a paper, Table 1", "overall": 50.0}
    assert load_suite(write(tmp_path, {**TINY_SUITE, "reference": [ref]})).references[0]["overall"] == 0.5
    cases = [({**ref, "overal": 1}, "Did you mean 'overall'"), ({**ref, "source": ""}, "missing 'source'"),
             ({**ref, "run": "lpt"}, "run 'lpt' is no run or fusion"), ({**ref, "overall": 150}, "percentage"),
             ({"source": "x"}, "gives no number")]
    for bad, expected in cases:
        msg = suite_error(tmp_path, {**TINY_SUITE, "reference": [bad]})
        assert "reference[0]" in msg and expected in msg, msg


def test_places_lt_plan_runs_the_official_lpt_recipe_under_lpt_groups():
    """The LPT suites train what produced the published numbers: the official code's values
    (preset reference, no Mixup in phase 2) and its shot groups (few <= 20)."""
    from ltbench.api import plan

    path = next(p for p in REPRO if p.stem == "lpt-places-lt")
    suite = load_suite(path)
    _, rows = plan(suite)
    lpt = next(r for r in rows if r["label"] == "lpt")
    assert lpt["preset"] == "reference" and lpt["groups"] == "lpt"
    assert lpt["vs_paper"]["phase2_mixup"] == 0.0 and lpt["vs_paper"]["lr"] == 0.02
    job = next(j for j in suite.jobs if j.label == "lpt")
    cfg = job.run.method_config  # the phases read it as it is
    assert (cfg.mixup, cfg.phase2_mixup) == (1.0, 0.0)
    probe = next(j for j in suite.jobs if j.label == "linear-probe-sgd").run.method_config
    assert (probe.solver, probe.optimizer, probe.lr, probe.weight_decay) == ("sgd", "sgd", 0.02, 1e-4)
    assert next(j for j in suite.jobs if j.label == "linear-probe").run.method_config.solver == "lbfgs"
    out = runner.invoke(app, ["bench", str(path), "--plan"], terminal_width=400).output
    assert "reference" in out and "shot groups lpt" in out and "phase2_mixup=0.0" in out


@pytest.mark.parametrize("path", REPRO, ids=[p.stem for p in REPRO])
def test_repro_suites_say_their_recipe_and_protocol(path):
    suite = load_suite(path)
    text = path.read_text()
    assert "Recipe:" in text, "each repro suite's header says which recipe it runs and why"
    lpt_family = any(r.method == "lpt" for r in suite.runs)
    assert all(j.run.groups == ("lpt" if lpt_family else "standard") for j in suite.jobs if j.run)
    for j in suite.jobs:
        if j.run and j.run.method in ("lpt", "lt-soups"):
            assert j.run.method_config.preset == "reference"
    for ref in suite.references:  # table and section, and never a silent number from elsewhere
        assert "Table" in ref["source"] and "Sec." in ref["source"], ref["source"]
        assert bool(ref["quoted"]) == ("not in the paper's text" in ref["source"]), ref


def test_one_shot_group_protocol_per_suite(tmp_path):
    data = {**TINY_SUITE, "groups": "lpt"}
    assert all(j.run.groups == "lpt" for j in load_suite(write(tmp_path, data)).jobs if j.run)
    assert "groups: expected standard or lpt" in suite_error(tmp_path, {**TINY_SUITE, "groups": "few20"})
    assert "contradicts" in suite_error(tmp_path, {**data, "set": {**TINY_SUITE["set"], "groups": "standard"}})
    mixed = {**TINY_SUITE, "fusions": [], "runs": [{"method": "linear-probe"}, {"method": "lpt", "set": {"groups": "lpt"}}]}
    assert "one shot-group protocol" in suite_error(tmp_path, mixed)


def test_quoted_reference_numbers_are_validated(tmp_path):
    ref = {"run": "linear-probe", "source": "a paper, Table 1, Sec. 2", "overall": 50.0, "many": 60.0}
    refs = load_suite(write(tmp_path, {**TINY_SUITE, "reference": [{**ref, "quoted": [ "many"]}]})).references
    assert refs[0]["quoted"] == ["many"]
    assert load_suite(write(tmp_path, {**TINY_SUITE, "reference": [{**ref, "quoted": True}]})).references[0]["quoted"] \
        == ["overall", "many"]
    msg = suite_error(tmp_path, {**TINY_SUITE, "reference": [{**ref, "quoted": ["few"]}]})
    assert "quoted must be" in msg


def test_inat_suite_trains_on_the_whole_train_split():
    """Validation is the official val file (also the test set, as the official code uses it), so no
    image is held out of the published train split."""
    suite = load_suite(next(p for p in REPRO if p.stem == "lpt-inat2018"))
    data = suite.jobs[0].run.data
    assert data["val_file"] == data["test_file"] == "iNaturalist18_val.txt"


def test_a_changed_shot_group_protocol_is_a_stale_expert(tmp_path):
    """An expert registered without the key (evaluated under `standard`) is reused by a suite that
    says `groups: standard`, and refused by one that says `groups: lpt`."""
    from ltbench.suites.execute import _stale

    data = runs({"method": "linear-probe"})
    std = load_suite(write(tmp_path, {**data, "groups": "standard"}, "std.yaml")).jobs[0]
    old = {k: v for k, v in std.run.config.items() if k != "groups"}  # a record that predates the key
    assert _stale(std, old) == []
    lpt = load_suite(write(tmp_path, {**data, "groups": "lpt"}, "lpt.yaml")).jobs[0]
    assert _stale(lpt, old) == ["groups: registered 'standard', suite 'lpt'"]
