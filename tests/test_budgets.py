"""Accuracy against budget: a suite at several budgets (`budgets:` / --budgets), its plan, its
report (one line per experiment across budgets, where the ranking changes), `report --by budget`."""
import json

import pandas as pd
import pytest
from typer.testing import CliRunner

import ltbench.training.pipeline

import ltbench.training.trainer
from ltbench.suites.schema import SuiteError, load_suite, read_budgets
from ltbench.cli import app
from ltbench.store.index import Registry
from ltbench.report import collect, render
from ltbench.report import budgets as bb
from test_bench import TINY_SUITE, write
from test_status import expert

runner = CliRunner()


def suite_error(tmp_path, data) -> str:
    path = write(tmp_path, data)
    with pytest.raises(SuiteError) as e:
        load_suite(path)
    assert str(path) in str(e.value)
    return str(e.value)


# -- the suite ------------------------------------------------------------------------------------
def test_budgets_make_one_job_per_budget_with_distinct_names(tmp_path):
    data = {**TINY_SUITE, "budgets": ["2steps", "3steps"], "seeds": [0, 1],
            "runs": [*TINY_SUITE["runs"], {"label": "ft", "method": "lpt", "init": "vpt-deep"}]}
    data["runs"][2]["method"] = "vpt-deep"
    data["runs"][2]["set"] = {"prompt_len": 2}
    s = load_suite(write(tmp_path, data))
    assert s.budgets == ["2steps", "3steps"] and s.budget == "3steps"
    names = [j.name for j in s.jobs]
    assert len(names) == len(set(names)) == 2 * 2 * 4
    at2 = {j.name: j for j in s.jobs if j.budget == "2steps"}
    assert "tiny-vpt-deep-2steps-s1" in at2 and "tiny-mean-2steps-s0" in at2
    assert "tiny-vpt-deep-s1" in names  # the suite's own budget keeps its names: registered runs are reused
    for j in s.jobs:  # each job runs (and, when the suite tunes, is tuned) at its own budget
        if j.kind == "run":
            assert str(j.run.budget) == j.budget and j.explicit["budget"] == j.budget
    assert at2["tiny-ft-2steps-s0"].run.method_config.init == "tiny-vpt-deep-2steps-s0"
    assert at2["tiny-mean-2steps-s1"].members == ["tiny-linear-probe-2steps-s1", "tiny-vpt-deep-2steps-s1"]
    # without budget: the last of budgets is the suite's own
    no_budget = {k: v for k, v in data.items() if k != "budget"}
    assert load_suite(write(tmp_path, {**no_budget, "budgets": ["1steps", "4steps"]}, "b.yaml")).budget == "4steps"


@pytest.mark.parametrize("budgets,match", [
    (["2steps", "2 steps"], "listed twice"),
    (["2steps", "1epochs"], "share one unit"),
    (["2stepz"], "cannot parse budget '2stepz'"),
    ({"a": 1}, "expected a list of budgets"),
    ([], "missing required key 'budget'"),
])
def test_bad_budgets_name_the_file(tmp_path, budgets, match):
    data = {k: v for k, v in TINY_SUITE.items() if k != "budget"}
    assert match in suite_error(tmp_path, {**data, "budgets": budgets})


def test_read_budgets_normalises():
    assert read_budgets("1epoch, 2epochs,4.0epochs") == ["1epochs", "2epochs", "4epochs"]


def test_cli_budgets_are_checked_before_any_work(tmp_path, home, monkeypatch):
    monkeypatch.setattr(ltbench.training.pipeline, "train_expert", lambda *a, **k: pytest.fail("trained"))
    path = write(tmp_path, TINY_SUITE)
    for bad, says in (("1steps,x", "cannot parse budget 'x'"), ("1steps,1epochs", "share one unit"),
                      ("2steps,2steps", "listed twice")):
        r = runner.invoke(app, ["bench", str(path), "--budgets", bad])
        assert r.exit_code == 2 and says in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not Registry(home).names()


def test_plan_lists_every_budget(tmp_path):
    r = runner.invoke(app, ["bench", str(write(tmp_path, TINY_SUITE)), "--budgets", "1steps,2steps", "--plan"])
    assert r.exit_code == 0, r.output
    assert "budgets 1steps, 2steps" in r.output and r.output.count("1steps") >= 4 and r.output.count("2steps") >= 4


def test_the_demo_plans_at_two_budgets():
    from pathlib import Path

    demo = Path(__file__).resolve().parents[1] / "ltbench" / "suites" / "demo.yaml"
    r = runner.invoke(app, ["bench", str(demo), "--budgets", "1epochs,2epochs", "--plan"])
    assert r.exit_code == 0, r.output
    assert "1epochs" in r.output and "2epochs" in r.output


def test_a_suite_at_two_budgets_trains_the_new_budget_only_and_reports_against_budget(tmp_path, home, monkeypatch):
    calls = []
    real = ltbench.training.pipeline.train_expert
    monkeypatch.setattr(ltbench.training.pipeline, "train_expert", lambda run, **kw: calls.append(run.name) or real(run, **kw))
    vpt = {"method": "vpt-deep", "set": {"prompt_len": 1, "batch_size": 8}}  # cheaper than the probe's L-BFGS
    data = {**TINY_SUITE, "fusions": [], "runs": [{**vpt, "label": "a"}, {**vpt, "label": "b", "set": {"prompt_len": 2}}]}
    path = write(tmp_path, data)
    r = runner.invoke(app, ["bench", str(path), "--quiet", "--no-plots", "--out", str(tmp_path / "one")])
    assert r.exit_code == 0, r.output
    assert sorted(calls) == ["tiny-a-s0", "tiny-b-s0"]
    calls.clear()
    out = tmp_path / "two"
    r = runner.invoke(app, ["bench", str(path), "--quiet", "--budgets", "1steps,3steps", "--out", str(out)],
                      catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert sorted(calls) == ["tiny-a-1steps-s0", "tiny-b-1steps-s0"]  # 3steps was registered
    for f in ("by_budget.csv", "by_budget.json", "by_budget.md", "by_budget.txt", "accuracy_vs_budget.png"):
        assert (out / f).is_file(), f
    doc = json.loads((out / "by_budget.json").read_text())
    assert {(r["series"], r["budget"]) for r in doc["rows"]} == {
        (s, b) for s in ("tiny-a", "tiny-b") for b in ("1steps", "3steps")}
    assert all(r["status"] in ("ok", "still improving", "at chance", "diverged") for r in doc["rows"])
    assert doc["ranking_changes"] and "against budget" in r.output
    report = json.loads((out / "report.json").read_text())
    assert report["budget"] == "mixed" and len(report["rows"]) == 4 and all(r["status"] for r in report["rows"])


# -- the view ---------------------------------------------------------------------------------------
def frame(points):
    """A budget frame from (series, method, budget, overall, std, seeds, status)."""
    rows = []
    for series, method, budget, overall, std, seeds, status in points:
        rows.append({"dataset": "d", "series": series, "method": method, "backbone": "b", "budget": budget,
                     "amount": float(budget.rstrip("epochs")), "unit": "epochs", "seeds": seeds, "overall": overall,
                     "overall_std": std, "status": status, "experts": series, "_series": series})
    return pd.DataFrame(rows).sort_values(["series", "amount"]).reset_index(drop=True)


POINTS = [("a", "lpt", "1epochs", 0.30, 0.01, 3, "ok"), ("a", "lpt", "2epochs", 0.40, 0.02, 3, "ok"),
          ("a", "lpt", "4epochs", 0.50, 0.01, 3, "ok"),
          ("b", "vpt", "1epochs", 0.20, 0.01, 3, "at chance"), ("b", "vpt", "2epochs", 0.45, 0.01, 3, "ok"),
          ("b", "vpt", "4epochs", 0.60, 0.01, 3, "still improving"),
          ("c", "lp", "1epochs", 0.10, None, 1, "ok"), ("c", "lp", "2epochs", 0.12, None, 1, "ok"),
          ("c", "lp", "4epochs", 0.13, None, 1, "ok")]


def test_ranking_changes_oracle():
    lines = bb.ranking_changes(frame(POINTS))
    assert len(lines) == 1 and "between 1epochs and 2epochs" in lines[0] and "b overtakes a" in lines[0]
    same = [p for p in POINTS if p[0] != "b"]
    assert bb.ranking_changes(frame(same)) == ["d: the ranking is the same at every budget (1epochs, 2epochs, 4epochs)"]
    tie = [("a", "m", "1epochs", 0.3, None, 1, "ok"), ("b", "m", "1epochs", 0.3, None, 1, "ok"),
           ("a", "m", "2epochs", 0.4, None, 1, "ok"), ("b", "m", "2epochs", 0.5, None, 1, "ok")]
    assert "same at every budget" in bb.ranking_changes(frame(tie))[0]  # a tie then an order is no flip


def test_pivot_marks_statuses_and_spreads():
    header, rows = bb.pivot(frame(POINTS))
    assert header == ["line", "method", "1epochs", "2epochs", "4epochs"]
    b = next(r for r in rows if r[0] == "b")
    assert b[2:] == ["20.00 ± 1.00 [at chance]", "45.00 ± 1.00", "60.00 ± 1.00 [still improving]"]
    assert next(r for r in rows if r[0] == "c")[2] == "10.00"
    text = bb.render(frame(POINTS), "table")  # the terminal's text: marks are not swallowed as markup
    assert "20.00 ± 1.00 [at chance]" in text and "[status]" in text


def test_series_names_drop_seed_and_budget():
    assert bb._series_name("demo-lpt-1epochs-s0", "1epochs") == "demo-lpt"
    assert bb._series_name("demo-lpt-s0", "2epochs") == "demo-lpt"
    assert bb._series_name("demo-lpt-0.5epochs_s{0,1,2}", "0.5epochs") == "demo-lpt"


def test_budget_plot_has_bands_and_hollow_points(tmp_path, monkeypatch):
    from matplotlib.collections import PathCollection, PolyCollection

    from ltbench.report import plots

    figs, real = {}, plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: figs.setdefault(path.stem, fig) and real(fig, path))
    bb.plot(frame(POINTS), tmp_path)
    ax = figs["accuracy_vs_budget"].axes[0]
    assert sum(isinstance(c, PolyCollection) for c in ax.collections) == 2  # std bands: a and b (c is one seed)
    hollow = sum(len(c.get_offsets()) for c in ax.collections
                 if isinstance(c, PathCollection) and len(c.get_offsets()) and len(c.get_facecolor()) == 0)
    assert hollow == 2


def test_report_by_budget_from_the_registry(home, tmp_path):
    reg = Registry(home)
    for budget, acc_a, acc_b in (("1epochs", 0.5, 0.3), ("2epochs", 0.6, 0.7)):
        for seed in (0, 1):
            expert(reg, f"x-a-{budget}-s{seed}", acc_a, method="lpt", seed=seed, budget=budget, gen=seed)
            expert(reg, f"x-b-{budget}-s{seed}", acc_b, method="vpt-deep", seed=seed, budget=budget, gen=10 + seed)
    bf = bb.budget_frame(collect(reg))
    assert sorted(set(bf["series"])) == ["x-a", "x-b"] and (bf["seeds"] == 2).all()
    assert "budget" in render(collect(reg), "md").splitlines()[0]  # runs at two budgets: the table says which
    assert "budget" not in render(collect(reg, experts=["x-a-1epochs-s0", "x-b-1epochs-s0"]), "md").splitlines()[0]
    r = runner.invoke(app, ["report", "--by", "budget", "--out", str(tmp_path / "o"), "--plots"])
    assert r.exit_code == 0, r.output
    assert "x-b overtakes x-a" in r.output and (tmp_path / "o" / "accuracy_vs_budget.png").is_file()
    r = runner.invoke(app, ["report", "--by", "budget", "--format", "json"])
    assert json.loads(r.output)["by"] == "budget"
    r = runner.invoke(app, ["report", "--by", "budgte"])
    assert r.exit_code == 2 and "Did you mean 'budget'" in r.output
