"""Report rows that say whether a run trained: at chance, still improving, diverged, ok; a fusion
that is one expert. Synthetic curves and experts registered directly (seconds)."""
import json

import numpy as np
import pytest
import torch

from ltbench.metrics import shot_groups
from ltbench.metrics import bootstrap_interval, evaluate_logits
from ltbench.store.index import Registry
from ltbench.report import collect, flag_lines, render, write_plots
from ltbench.report import status as st

C = 10
COUNTS = [300, 200, 150, 101, 80, 50, 20, 19, 8, 5]


def expert(reg, name, acc, *, method="lpt", seed=0, per_class=40, history=None, meta=None, gen=0, budget=None):
    """An expert right with probability `acc` on every test image, with an optional learning curve."""
    g = np.random.default_rng(gen)
    labels = np.repeat(np.arange(C), per_class)

    def logits_for(lb):
        lg = g.normal(0, 0.1, (len(lb), C)).astype(np.float32)
        right = g.random(len(lb)) < acc
        wrong = (lb + g.integers(1, C, len(lb))) % C
        lg[np.arange(len(lb)), np.where(right, lb, wrong)] += 5
        return torch.from_numpy(lg)

    splits = {"val": (logits_for(labels[::4]), labels[::4]), "test": (logits_for(labels), labels)}
    groups = shot_groups(np.array(COUNTS))
    metrics = {k: evaluate_logits(lg, lb, groups) for k, (lg, lb) in splits.items()}
    config = {"name": name, "method": method, "backbone": "vit-tiny-test", "dataset": "toy-lt", "seed": seed,
              "method_config": {"lr": 0.01}, "many": 100, "few": 20, **({"budget": budget} if budget else {})}
    m = {"params": {"trainable": 10, "total": 100}, "spent": {"flops": 1e9, "seconds": 1.0}, "budget": budget or "2epochs",
         "class_counts": COUNTS, "created": "now", "config_hash": "x", **(meta or {})}
    return reg.register(name, config, {"w": torch.zeros(2)}, splits, metrics, m, history=history)


def steps(losses, val=None, phase="train"):
    """history.csv rows: one per loss, `val` {step index: accuracy}."""
    val = val or {}
    return [{"step": i + 1, "phase": phase, "epoch": None, "loss": float(v), "lr": 0.1, "images_per_s": 1.0,
             "flops": 1.0, "seconds": 1.0, "val_acc": val.get(i)} for i, v in enumerate(losses)]


# -- the statistics ------------------------------------------------------------------------------
def test_wilson_interval_matches_scipy():
    from scipy.stats import binomtest

    for k, n in ((0, 20), (3, 40), (37, 50), (400, 400)):
        want = binomtest(k, n).proportion_ci(0.95, method="wilson")
        lo, hi = st.wilson_interval(k / n, n)
        assert (lo, hi) == pytest.approx((want.low, want.high), abs=2e-4)  # scipy's z is exact, ours 1.96


def test_at_chance_includes_its_boundaries():
    assert st.at_chance(0.1, 0.3, 10) and st.at_chance(0.05, 0.1, 10)
    assert not st.at_chance(0.1001, 0.3, 10) and not st.at_chance(0.02, 0.0999, 10)


@pytest.mark.parametrize("acc,chance", [(0.1, True), (0.3, False)])
def test_chance_oracle_on_a_bootstrap_interval(acc, chance):
    """Random guessing (10 %) on 400 balanced images is at chance; 30 % is far from it."""
    g = np.random.default_rng(1)
    labels = np.repeat(np.arange(C), 40)
    correct = g.random(len(labels)) < acc
    overall = float(correct.mean())
    lo, hi = bootstrap_interval(correct, labels, C)
    status, why = st.chance_status(overall, lo, hi, C, len(labels))
    assert (status == st.CHANCE) == chance
    assert not chance or "bootstrap interval" in why and "1/10" in why


def test_chance_falls_back_to_wilson_without_an_interval():
    assert st.chance_status(0.13, None, None, 10, 100)[0] == st.CHANCE  # Wilson [0.078, 0.21]
    assert st.chance_status(0.2, None, None, 10, 400)[0] == st.OK  # Wilson [0.164, 0.24]
    assert st.chance_status(float("nan"), None, None, 10, 400)[0] == st.DIVERGED


def test_noise_sigma_recovers_white_noise_on_a_trend():
    g = np.random.default_rng(0)
    x = np.linspace(0, 1, 4000)
    y = 0.3 + 0.4 * x - 0.2 * x ** 2 + g.normal(0, 0.02, len(x))
    assert st.noise_sigma(y) == pytest.approx(0.02, rel=0.08)


def test_still_improving_needs_a_rise_beyond_noise_and_size():
    g = np.random.default_rng(0)
    rising = 0.2 + 0.05 * np.arange(12) + g.normal(0, 0.005, 12)
    plateau = np.r_[0.2 + 0.1 * np.arange(6), np.full(6, 0.7)] + g.normal(0, 0.005, 12)
    assert st.still_improving(rising, st.MIN_ACC_RISE)
    assert not st.still_improving(plateau, st.MIN_ACC_RISE)
    assert not st.still_improving(rising[::-1], st.MIN_ACC_RISE)


def test_still_improving_boundaries():
    """A rise must be more than z standard errors (strictly) and at least the minimum rise."""
    y = np.array([0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.2, 1.4, 1.6])  # noisy, then a straight end
    rise, se, m = st.end_rise(y)
    assert m == 4 and se > 0 and rise == pytest.approx(0.6)
    z = rise / se
    assert st.still_improving(y, 0.0, z=z * 0.999) and not st.still_improving(y, 0.0, z=z * 1.001)
    assert st.still_improving(y, rise, z=0) and not st.still_improving(y, rise * 1.001, z=0)


def test_end_rise_is_the_slope_of_the_last_third():
    y = np.r_[np.zeros(6), 0.1 * np.arange(3)]  # last third: 0, 0.1, 0.2
    rise, se, m = st.end_rise(y)
    assert m == 3 and rise == pytest.approx(0.2)


# -- a learning curve's status -------------------------------------------------------------------------
def test_non_finite_loss_is_diverged():
    s, why = st.curve_status(steps([2.3, 2.0, float("nan"), 1.0]))
    assert s == st.DIVERGED and "step 3" in why
    assert st.curve_status(steps([2.3, float("inf")]))[0] == st.DIVERGED


def test_blow_up_boundary():
    base = [2.0, 2.0, 2.0, 2.0, 2.0, 2.0]
    assert st.curve_status(steps(base[:3] + [4.01] * 3))[0] == st.DIVERGED
    assert st.curve_status(steps(base[:3] + [4.0] * 3))[0] == st.OK  # exactly 2× is not yet a blow-up


def test_validation_curve_rising_at_its_end():
    val = {i: 0.2 + 0.05 * k for k, i in enumerate(range(9, 90, 10))}  # 9 epochs, rising 5 points each
    s, why = st.curve_status(steps(np.full(90, 1.0), val))
    assert s == st.IMPROVING and "validation accuracy rose" in why
    flat = {i: 0.6 + 0.002 * (-1) ** k for k, i in enumerate(range(9, 90, 10))}
    assert st.curve_status(steps(np.linspace(2, 1, 90), flat))[0] == st.OK  # validation wins over the loss


def test_training_loss_stands_in_with_few_validation_points():
    g = np.random.default_rng(0)
    falling = np.linspace(2.3, 1.0, 40) + g.normal(0, 0.02, 40)
    s, why = st.curve_status(steps(falling, {19: 0.3, 39: 0.5}))
    assert s == st.IMPROVING and "training loss fell" in why
    flat = 1.0 + g.normal(0, 0.05, 40)
    assert st.curve_status(steps(flat, {19: 0.3, 39: 0.5}))[0] == st.OK
    assert st.curve_status(steps(falling[:8]))[0] == st.OK  # too short to judge


def test_only_the_last_phase_counts():
    """A multi-phase method's loss restarts at each phase: the first phase's fall is not the run's."""
    first = steps(np.linspace(3, 1, 30), phase="one")
    second = steps(np.full(30, 0.5) + 0.01 * (-1) ** np.arange(30), phase="two")
    assert st.curve_status(first + second)[0] == st.OK
    assert st.curve_status(second + first)[0] == st.IMPROVING


def test_one_expert_fusion():
    meta = {"weights": {"experts": ["a-s0", "b-s0"], "mean_per_split": {"test": [[0.96, 0.95, 0.99], [0.04, 0.05, 0.01]]}},
            "constituents": [{"name": "a-s0", "method": "linear-probe"}, {"name": "b-s0", "method": "lpt"}]}
    assert st.one_expert(meta) == "linear-probe"
    meta["weights"]["mean_per_split"]["test"] = [[0.96, 0.949, 0.99], [0.04, 0.051, 0.01]]
    assert st.one_expert(meta) is None
    meta["weights"]["mean_per_split"]["test"] = [[0.96, 0.01], [0.04, 0.99]]  # a different expert per group
    assert st.one_expert(meta) is None


def test_group_status_is_the_worst_members():
    members = [{"seed": 0, "status": st.OK, "status_why": ""},
               {"seed": 1, "status": st.CHANCE, "status_why": "c"},
               {"seed": 2, "status": st.IMPROVING, "status_why": "i"}]
    assert st.group_status(members) == (st.CHANCE, "1 of 3 seeds (1): c")
    assert st.group_status(members[:1]) == (st.OK, "")


# -- in the report ------------------------------------------------------------------------------------
@pytest.fixture
def reg(home):
    r = Registry(home)
    expert(r, "good", 0.8, history=steps(np.full(30, 0.4) + 0.01 * (-1) ** np.arange(30)), gen=1)
    expert(r, "chance", 0.1, gen=2)
    expert(r, "nan", 0.5, history=steps([2.3, 2.0, float("nan")]), gen=3)
    expert(r, "rising", 0.6, history=steps(np.linspace(2.3, 1.0, 30), {29: 0.6}), gen=4)
    expert(r, "fused", 0.8, method="fuse:moe", gen=5, meta={
        "weights": {"experts": ["good"], "mean_per_split": {"test": [[1.0, 1.0, 1.0]]}},
        "constituents": [{"name": "good", "method": "linear-probe"}]})
    return r


WANT = {"good": st.OK, "chance": st.CHANCE, "nan": st.DIVERGED, "rising": st.IMPROVING, "fused": st.OK}


@pytest.mark.parametrize("ci", [True, False])
def test_every_row_carries_its_status(reg, ci):
    df = collect(reg, ci=ci)
    assert dict(zip(df["expert"], df["status"])) == WANT
    assert df.set_index("expert").loc["fused", "same_as"] == "linear-probe"
    rows = {r["expert"]: r for r in json.loads(render(df, "json"))["rows"]}
    assert {k: r["status"] for k, r in rows.items()} == WANT
    assert "status" in render(df, "csv").splitlines()[0].split(",")
    for fmt in ("md", "latex", "table"):
        text = render(df, fmt)
        assert "at chance" in text and "still improving" in text and "diverged" in text, fmt
        assert "= linear-probe" in text


def test_the_report_ends_with_one_line_per_flagged_run(reg):
    df = collect(reg)
    lines = flag_lines(df)
    assert [ln.split(":")[0] for ln in lines] == ["fused", "chance", "nan", "rising"]  # the table's order
    assert "= linear-probe" in lines[0] and "contains chance 1/10" in lines[1]
    assert "became nan at step 3" in lines[2] and "training loss fell" in lines[3]
    text = render(df, "table")
    assert text.rstrip().splitlines()[-len(lines):] == lines


def test_a_row_names_every_flag_worst_first(home):
    r = Registry(home)
    expert(r, "both", 0.1, history=steps(np.linspace(2.3, 1.0, 30)), gen=2)
    row = collect(r).iloc[0]
    assert row["status"] == st.CHANCE
    assert row["status_why"].index("contains chance") < row["status_why"].index("also still improving: training loss")


def test_a_seed_group_shows_its_worst_seed(home):
    r = Registry(home)
    expert(r, "g_s0", 0.6, seed=0, gen=1)
    expert(r, "g_s1", 0.1, seed=1, gen=2)
    row = collect(r).iloc[0]
    assert row["seeds"] == 2 and row["status"] == st.CHANCE and row["status_why"].startswith("1 of 2 seeds (1):")


def test_flagged_points_are_hollow(reg, tmp_path, monkeypatch):
    from ltbench.report import plots

    figs, real = {}, plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: figs.setdefault(path.stem, fig) and real(fig, path))
    write_plots(collect(reg, with_paths=True), tmp_path)
    for stem in ("accuracy_vs_params", "accuracy_vs_compute", "shot_groups"):
        ax = figs[stem].axes[0]  # (accuracy_vs_compute: its FLOPs panel)
        hollow = sum(len(c.get_offsets()) for c in ax.collections if _hollow(c))
        assert hollow == 3, stem  # chance, nan, rising
        labels = {t.get_text() for a in figs[stem].axes if a.get_legend() for t in a.get_legend().get_texts()}
        assert plots.HOLLOW_LABEL in labels, stem


def _hollow(collection) -> bool:
    from matplotlib.collections import PathCollection

    if not isinstance(collection, PathCollection):  # error bars are LineCollections
        return False
    face = collection.get_facecolor()
    return len(collection.get_offsets()) > 0 and (len(face) == 0 or (face[:, 3] == 0).all())
