"""`ltbench report` from the registry alone: formats, seed groups, bootstrap intervals, plots,
--out, filters, the CLI. Experts are registered directly with synthetic logits (seconds)."""
import io
import json
import re

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from ltbench.cli import app
from ltbench.metrics import shot_groups
from ltbench.metrics import bootstrap_interval, class_averaged_accuracy, evaluate_logits
from ltbench.store.index import Registry
from ltbench.report import FILES, collect, records, render, write_plots, write_report
from ltbench.report import logits as report_logits

C, PER_CLASS = 10, 40
COUNTS = [300, 200, 150, 101, 80, 50, 20, 19, 8, 5]  # many 4 / medium 3 / few 3
PNG = b"\x89PNG\r\n\x1a\n"
runner = CliRunner()


def register(reg, name, method="lpt", seed=0, acc=0.7, dataset="toy-lt", lr=0.01, trainable=1000,
             total=100_000, ood=True, gen_seed=None, init=None, protocol=None):
    """An expert whose test predictions are right with probability `acc` (a bit higher on head classes)."""
    g = np.random.default_rng(gen_seed if gen_seed is not None else abs(hash(name)) % 2**32)
    labels = np.repeat(np.arange(C), PER_CLASS)
    p = np.clip(acc + 0.15 * np.linspace(1, -1, C), 0.02, 0.98)

    def logits_for(lb):
        lg = g.normal(0, 0.1, (len(lb), C)).astype(np.float32)
        right = g.random(len(lb)) < p[lb]
        wrong = (lb + g.integers(1, C, len(lb))) % C
        lg[np.arange(len(lb)), np.where(right, lb, wrong)] += 5
        return torch.from_numpy(lg)

    val, sketch = labels[::4].copy(), labels[::2].copy()
    splits = {"val": (logits_for(val), val), "test": (logits_for(labels), labels)}
    if ood:
        splits["ood:sketch"] = (logits_for(sketch), sketch)
    groups = shot_groups(np.array(COUNTS))
    metrics = {k: evaluate_logits(lg, lb, groups) for k, (lg, lb) in splits.items()}
    config = {"name": name, "method": method, "backbone": "vit-tiny-test", "dataset": dataset, "seed": seed,
              "method_config": {"lr": lr, **({"init": init} if init else {})}, "many": 100, "few": 20, "device": "cpu",
              **({"groups": protocol} if protocol else {})}
    meta = {"params": {"trainable": trainable, "total": total}, "spent": {"flops": 1e12 * (1 + seed), "seconds": 3.0 + seed},
            "budget": "2epochs", "class_counts": COUNTS, "created": "now", "config_hash": "x"}
    return reg.register(name, config, {"head.weight": torch.zeros(2)}, splits, metrics, meta)


@pytest.fixture
def reg(home):
    r = Registry(home)
    register(r, "lp_s0", method="linear-probe", trainable=110, acc=0.55)
    for s in range(3):
        register(r, f"lpt_s{s}", method="lpt", seed=s, acc=0.7 + 0.03 * s)
    register(r, "vpt_a", method="vpt", acc=0.65, trainable=5000)
    register(r, "vpt_b", method="vpt", acc=0.6, trainable=5000, dataset="other-lt", ood=False)
    return r


def invoke(*args):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_json_and_csv_hold_the_same_numbers(reg):
    df = collect(reg)
    from_json = pd.DataFrame(json.loads(render(df, "json"))["rows"])
    from_csv = pd.read_csv(io.StringIO(render(df, "csv")))
    assert list(from_json.columns) == list(from_csv.columns)
    assert {"expert", "method", "backbone", "dataset", "overall", "many", "medium", "few", "trainable_params",
            "flops", "device_seconds", "ood:sketch", "ece", "seeds", "overall_lo", "overall_hi",
            "overall_std"} <= set(from_json.columns)
    assert from_json["expert"].tolist() == from_csv["expert"].tolist()
    for col in from_json.columns:
        a, b = from_json[col], from_csv[col]
        if pd.api.types.is_numeric_dtype(b) and not pd.api.types.is_bool_dtype(b):
            np.testing.assert_allclose(pd.to_numeric(a).astype(float), b.astype(float), rtol=1e-12, equal_nan=True,
                                       err_msg=col)
        else:
            assert a.fillna("").astype(str).tolist() == b.fillna("").astype(str).tolist(), col
    # accuracies are fractions
    assert from_json["overall"].between(0, 1).all()


def test_three_seeds_make_one_row_with_mean_and_std(reg):
    df = collect(reg, method="lpt")
    assert len(df) == 1
    row = df.iloc[0]
    assert row["seeds"] == 3 and row["expert"] == "lpt_s{0,1,2}" and row["members"] == "lpt_s0,lpt_s1,lpt_s2"
    members = [reg.get(f"lpt_s{s}").metrics for s in range(3)]
    for col in ("overall", "many", "medium", "few"):
        vals = [m["test"][col] for m in members]
        assert row[col] == pytest.approx(np.mean(vals)) and row[f"{col}_std"] == pytest.approx(np.std(vals, ddof=1))
    sk = [m["ood:sketch"]["overall"] for m in members]
    assert row["ood:sketch"] == pytest.approx(np.mean(sk)) and row["ood:sketch_std"] == pytest.approx(np.std(sk, ddof=1))
    assert row["flops"] == pytest.approx(2e12) and row["device_seconds"] == pytest.approx(4.0)
    assert pd.isna(row["overall_lo"])  # groups get a std, not a bootstrap interval
    cell = render(df, "md").splitlines()[2]
    assert re.search(r"\| \d+\.\d\d ± \d+\.\d\d \(3\) \|", cell), cell
    # seeds that differ in anything else are not grouped, and grouping can be turned off
    assert len(collect(reg, method="lpt", group_seeds=False)) == 3
    register(reg, "lpt_other_lr", method="lpt", seed=3, lr=0.5)
    assert sorted(collect(reg, method="lpt")["seeds"].tolist()) == [1, 3]


def test_runs_started_from_seed_replicates_group_by_their_start(reg):
    """init=lpt_s<k> names a seed; the runs group because their starts are one experiment."""
    for s in range(3):
        register(reg, f"ft_s{s}", method="lpt++", seed=s, init=f"lpt_s{s}")
    register(reg, "ft_from_lp", method="lpt++", seed=3, init="lp_s0")  # another start: its own row
    df = collect(reg, method="lpt++", ci=False).set_index("expert")
    assert df.loc["ft_s{0,1,2}", "seeds"] == 3 and df.loc["ft_from_lp", "seeds"] == 1
    reg.remove("lpt_s1")  # a start no longer registered: that run keeps its own row
    assert sorted(collect(reg, method="lpt++", ci=False)["seeds"].tolist()) == [1, 1, 2]


def test_bootstrap_intervals_contain_the_point_estimate(reg):
    df = collect(reg)
    singles = df[df["seeds"] == 1]
    assert len(singles) == 3
    for _, r in singles.iterrows():
        assert r["overall_lo"] < r["overall"] < r["overall_hi"], r["expert"]
        assert r["overall_hi"] - r["overall_lo"] < 0.2
    md = render(df, "md")
    assert re.search(r"\| \d+\.\d\d \[\d+\.\d, \d+\.\d\] \|", md), md
    # cached in memory: the same numbers again; --no-ci reads no logits and has no interval
    assert collect(reg)["overall_lo"].equals(df["overall_lo"])
    assert collect(reg, ci=False)["overall_lo"].isna().all()


def test_poisson_bootstrap_matches_scipy_bootstrap():
    g = np.random.default_rng(0)
    labels = np.repeat(np.arange(50), 40)
    correct = g.random(len(labels)) < np.linspace(0.3, 0.9, 50)[labels]
    point = class_averaged_accuracy(correct, labels, 50)
    fast = bootstrap_interval(correct, labels, 50, engine="poisson", seed=1)
    ref = bootstrap_interval(correct, labels, 50, engine="scipy", seed=1)
    assert fast[0] < point < fast[1] and ref[0] < point < ref[1]
    width = ref[1] - ref[0]
    assert abs(fast[0] - ref[0]) < 0.1 * width and abs(fast[1] - ref[1]) < 0.1 * width
    assert bootstrap_interval(correct, labels, 50, seed=1) == fast  # seeded
    with pytest.raises(ValueError, match="unknown bootstrap engine"):
        bootstrap_interval(correct, labels, 50, engine="magic")


def test_fast_argmax_matches_torch_on_fp16_edge_cases():
    x = (torch.randn(3000, 37, generator=torch.Generator().manual_seed(0)) * 3).half()
    x[::5] = x[::5].round()  # ties
    x[1], x[1, 5] = -0.0, 0.0
    x[2], x[2, 3] = 0.0, -0.0
    x[3], x[3, 10] = float("-inf"), -65504
    assert np.array_equal(report_logits.fast_argmax(x.numpy(), rows=256), x.float().argmax(1).numpy())


def test_plots_are_valid_pngs(reg, tmp_path):
    df = collect(reg, dataset="toy-lt", with_paths=True)
    files = write_plots(df, tmp_path / "plots")
    assert sorted(p.name for p in files) == ["accuracy_vs_compute.png", "accuracy_vs_params.png",
                                             "per_class_accuracy.png", "shot_groups.png"]
    for p in files:
        data = p.read_bytes()
        assert data[:8] == PNG and len(data) > 10_000, p
    # two datasets: one set per dataset, suffixed
    both = write_plots(collect(reg, with_paths=True), tmp_path / "both")
    assert {p.name for p in both} >= {"accuracy_vs_params-toy-lt.png", "shot_groups-other-lt.png"}


def test_write_report_writes_every_format(reg, tmp_path):
    files = write_report(collect(reg), tmp_path / "out")
    assert sorted(p.name for p in files) == sorted(FILES.values())
    assert json.loads((tmp_path / "out" / "report.json").read_text())["rows"][0]["expert"]
    assert r"\begin{tabular}" in (tmp_path / "out" / "report.tex").read_text()
    assert "lpt_s{0,1,2}" in (tmp_path / "out" / "report.txt").read_text()


def test_filters_and_sort_order(reg):
    df = collect(reg)
    assert list(zip(df["dataset"], df["method"], df["expert"])) == sorted(zip(df["dataset"], df["method"], df["expert"]))
    assert collect(reg, dataset="other-lt")["expert"].tolist() == ["vpt_b"]
    assert collect(reg, method="vpt")["expert"].tolist() == ["vpt_b", "vpt_a"]  # other-lt sorts first
    assert collect(reg, experts=["vpt_a", "lp_s0"])["expert"].tolist() == ["lp_s0", "vpt_a"]
    # filtering to one seed of a group reports it as a single run
    one = collect(reg, experts=["lpt_s1"])
    assert one["seeds"].tolist() == [1] and one["overall_lo"].notna().all()
    assert records(collect(reg, dataset="nope")) == []


def test_cli_report(reg, tmp_path, monkeypatch):
    rows = json.loads(invoke("report", "--format", "json").output)["rows"]
    assert [r["expert"] for r in rows] == ["vpt_b", "lp_s0", "lpt_s{0,1,2}", "vpt_a"]
    lpt = rows[2]
    assert lpt["seeds"] == 3 and lpt["overall_std"] > 0 and lpt["overall_lo"] is None
    assert rows[1]["overall_lo"] < rows[1]["overall"] < rows[1]["overall_hi"]
    assert rows[1]["trainable_params"] == 110 and rows[1]["ood:sketch"] is not None

    no_ci = json.loads(invoke("report", "--format", "json", "--no-ci", "--no-group-seeds").output)["rows"]
    assert len(no_ci) == 6 and all(r["overall_lo"] is None for r in no_ci)

    assert invoke("report", "--method", "vpt", "--format", "csv").output.count("\n") == 3
    assert "lp_s0" in invoke("report", "--experts", "lp_s0").output
    for fmt, marker in (("md", "| lp_s0 |"), ("latex", r"\toprule"), ("table", "lp_s0")):
        assert marker in invoke("report", "--format", fmt).output

    r = invoke("report", "--out", str(tmp_path / "rep"), "--plots", "--format", "json")
    assert r.exit_code == 0
    json.loads(r.stdout)  # stdout stays the requested format; the file list goes to stderr
    names = {p.name for p in (tmp_path / "rep").iterdir()}
    assert set(FILES.values()) <= names and any(n.endswith(".png") for n in names)

    monkeypatch.chdir(tmp_path)  # --plots without --out: ./ltbench-report, plots only
    assert invoke("report", "--plots", "--dataset", "toy-lt").exit_code == 0
    assert sorted(p.name for p in (tmp_path / "ltbench-report").iterdir()) == [
        "accuracy_vs_compute.png", "accuracy_vs_params.png", "per_class_accuracy.png", "shot_groups.png"]


def test_cli_report_errors(reg):
    r = invoke("report", "--experts", "lpt_s7")
    assert r.exit_code == 2 and "Did you mean" in r.output
    r = invoke("report", "--format", "xml")
    assert r.exit_code == 2 and "unknown format 'xml'" in r.output


def test_empty_registry(home):
    Registry(home)
    assert json.loads(invoke("report", "--format", "json").output)["rows"] == []
    assert invoke("report").exit_code == 0


def test_suite_report_shows_published_rows_and_differences(home, tmp_path):
    """`ltbench report --suite` (and the suite's own report): published rows beside the measured
    ones, each measured row of a run with a reference gets measured − published."""
    import yaml

    from ltbench.suites.schema import load_suite
    from ltbench.suites.results import report_suite

    suite = {"name": "toy", "dataset": "fashion-mnist-lt", "backbone": "vit-tiny-test", "budget": "1epochs",
             "seeds": [0, 1], "runs": [{"method": "linear-probe"}, {"method": "lpt"}],
             "reference": [{"run": "lpt", "source": "LPT, Table 3", "overall": 50.0, "few": 40.0, "ood": {"sketch": 30.0}},
                           {"name": "VPT", "source": "LPT, Table 1", "overall": 44.17}]}
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(suite))
    r = Registry(home)
    for s in (0, 1):
        register(r, f"toy-lpt-s{s}", method="lpt", seed=s, acc=0.6 + 0.1 * s)
    for s in (0, 1):
        register(r, f"toy-linear-probe-s{s}", method="linear-probe", seed=s, acc=0.5)
    register(r, "other", method="lpt", acc=0.9)  # not the suite's: not shown

    doc = json.loads(invoke("report", "--suite", str(path), "--format", "json", "--no-ci").output)
    rows = doc["rows"]
    assert doc["suite"] == load_suite(path).name and doc["budget"] == load_suite(path).budget
    names = [x["expert"] for x in rows]
    assert "other" not in names and names[-1] == "published: VPT"
    lpt = next(x for x in rows if x["members"] == "toy-lpt-s0,toy-lpt-s1")
    assert names.index("published: lpt") == names.index(lpt["expert"]) + 1  # right below the measured row
    test = [r.get(f"toy-lpt-s{s}").metrics for s in (0, 1)]
    overall = np.mean([m["test"]["overall"] for m in test])
    assert lpt["delta:overall"] == pytest.approx(overall - 0.5, abs=1e-12)
    assert lpt["delta:few"] == pytest.approx(np.mean([m["test"]["few"] for m in test]) - 0.4, abs=1e-12)
    assert lpt["delta:ood:sketch"] == pytest.approx(np.mean([m["ood:sketch"]["overall"] for m in test]) - 0.3, abs=1e-12)
    assert lpt.get("delta:many") is None  # the reference gives no many-shot number
    published = rows[names.index("published: lpt")]
    assert (published["overall"], published["few"], published["ood:sketch"], published["source"]) == \
        (0.5, 0.4, 0.3, "LPT, Table 3")
    lp = next(x for x in rows if x["method"] == "linear-probe")
    assert lp.get("delta:overall") is None  # no reference for the linear probe

    text = invoke("report", "--suite", str(path), "--format", "md", "--no-ci").output
    assert "published: lpt" in text and "Δ overall" in text and f"{100 * (overall - 0.5):+.2f}" in text
    table, written = report_suite(load_suite(path), r, out=tmp_path / "rep", plots=False)
    on_file = json.loads((tmp_path / "rep" / "report.json").read_text())["rows"]
    assert [x["expert"] for x in on_file if x["expert"].startswith("published")] == ["published: lpt", "published: VPT"]


def test_report_says_its_shot_group_protocol_and_marks_quoted_numbers(home):
    """The JSON wrapper and the caption name the protocol; rows of two protocols in one table get a
    `groups` column; a published row whose numbers are not in the paper's text says "quoted"."""
    from ltbench.report import add_references

    r = Registry(home)
    register(r, "a_s0", method="lpt")  # a record without the key: the standard protocol
    df = collect(r, ci=False)
    doc = json.loads(render(df, "json"))
    assert doc["groups"] == "standard" and doc["rows"][0]["groups"] == "standard"
    assert "shot groups: standard" in render(df, "md") and "| groups |" not in render(df, "md")
    register(r, "b_s0", method="vpt", protocol="lpt")  # evaluated under the official LPT protocol
    mixed = collect(r, ci=False)
    assert json.loads(render(mixed, "json"))["groups"] == "mixed"
    md = render(mixed, "md")
    assert "| groups |" in md and "shot groups: mixed" in md
    assert [row.split("|")[4].strip() for row in md.splitlines()[2:4]] == ["standard", "lpt"]
    refs = [{"run": None, "name": "all", "source": "s", "overall": 0.5, "many": None, "medium": None, "few": None,
             "ood": {}, "quoted": ["overall"]},
            {"run": None, "name": "part", "source": "s", "overall": 0.5, "many": 0.4, "medium": None, "few": None,
             "ood": {}, "quoted": ["many"]},
            {"run": None, "name": "none", "source": "s", "overall": 0.5, "many": None, "medium": None, "few": None,
             "ood": {}, "quoted": []}]
    names = list(add_references(df, refs, {})["expert"])
    assert names[-3:] == ["quoted: all", "published: part (quoted: many)", "published: none"]


# -- plots: compute view, Pareto front, fixed method colours, labelled error bars -------------------
def test_pareto_front_matches_brute_force():
    from ltbench.report.plots import pareto_front

    g = np.random.default_rng(3)
    for _ in range(20):
        cost, acc = g.lognormal(0, 2, 15), g.random(15)
        dominated = {i for i in range(15) for j in range(15)
                     if cost[j] <= cost[i] and acc[j] >= acc[i] and (cost[j] < cost[i] or acc[j] > acc[i])}
        want = sorted(set(range(15)) - dominated, key=lambda i: cost[i])
        assert pareto_front(cost, acc).tolist() == want
    # equal cost: only the most accurate; equal accuracy: only the cheapest
    assert pareto_front(np.array([1.0, 1.0, 2.0, 3.0]), np.array([0.5, 0.6, 0.6, 0.9])).tolist() == [1, 3]


def _figures(monkeypatch):
    from ltbench.report import plots

    figs, real = {}, plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: figs.setdefault(path.stem, fig) and real(fig, path))
    return figs


def _colours(fig) -> dict[str, tuple]:
    """label -> RGB of every labelled scatter and line in a figure."""
    from matplotlib.colors import to_rgb

    out = {}
    for ax in fig.axes:
        for c in ax.collections:
            if not c.get_label().startswith("_") and len(c.get_facecolor()):
                out[c.get_label()] = tuple(np.round(c.get_facecolor()[0][:3], 4))
        for line in ax.lines:
            if not line.get_label().startswith("_"):
                out[line.get_label()] = tuple(np.round(to_rgb(line.get_color()), 4))
    return out


def test_a_method_has_one_colour_in_every_plot_and_report(reg, tmp_path, monkeypatch):
    from matplotlib.colors import to_rgb

    from ltbench.report.plots import method_color

    register(reg, "ft_a", method="full-ft", acc=0.5, trainable=90_000)
    figs = _figures(monkeypatch)
    write_plots(collect(reg, dataset="toy-lt", with_paths=True), tmp_path / "all")
    everything = dict(figs)
    figs.clear()
    write_plots(collect(reg, experts=["vpt_a", "ft_a"], with_paths=True), tmp_path / "two")  # fewer methods
    want = {m: tuple(np.round(to_rgb(method_color(m)), 4)) for m in ("linear-probe", "lpt", "vpt", "full-ft")}
    assert len(set(want.values())) == len(want)
    expert_method = {"lp_s0": "linear-probe", "lpt_s{0,1,2}": "lpt", "vpt_a": "vpt", "ft_a": "full-ft"}
    for run in (everything, figs):
        for stem in ("accuracy_vs_params", "accuracy_vs_compute"):
            got = {k: v for k, v in _colours(run[stem]).items() if k in want}
            assert got and all(got[m] == want[m] for m in got), stem
        lines = _colours(run["per_class_accuracy"])  # one line per expert, in its method's colour
        assert lines and all(lines[e] == want[expert_method[e]] for e in lines)
        ticks = {t.get_text(): tuple(np.round(to_rgb(t.get_color()), 4))
                 for t in run["shot_groups"].axes[0].get_xticklabels()}
        assert ticks and all(ticks[e] == want[expert_method[e]] for e in ticks)


def test_error_bars_say_what_they_show(reg, tmp_path, monkeypatch):
    from ltbench.report.plots import CI_LABEL, STD_LABEL

    figs = _figures(monkeypatch)

    def legend(stem):
        return {t.get_text() for ax in figs[stem].axes if ax.get_legend() for t in ax.get_legend().get_texts()}

    write_plots(collect(reg, dataset="toy-lt", with_paths=True), tmp_path / "a")  # seed group + single runs
    for stem in ("accuracy_vs_params", "accuracy_vs_compute"):
        assert {CI_LABEL, STD_LABEL, *(["Pareto front"] if stem == "accuracy_vs_compute" else [])} <= legend(stem)
    assert STD_LABEL in legend("shot_groups")
    figs.clear()
    write_plots(collect(reg, dataset="toy-lt", with_paths=True, group_seeds=False), tmp_path / "c")  # single runs
    for stem in ("accuracy_vs_params", "accuracy_vs_compute"):
        assert CI_LABEL in legend(stem) and STD_LABEL not in legend(stem), stem
    figs.clear()
    write_plots(collect(reg, dataset="toy-lt", with_paths=True, ci=False, group_seeds=False), tmp_path / "b")
    for stem in ("accuracy_vs_params", "accuracy_vs_compute", "shot_groups"):
        assert not {CI_LABEL, STD_LABEL} & legend(stem), stem  # no bars drawn, none claimed
