"""`ltbench fuse`: scorers on synthetic expert logits in a temporary registry (seconds, no training)."""
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ltbench.cli import app
from ltbench.metrics import shot_groups
from ltbench.fusion import FusionError, FusionModel, apply_fused, fuse_experts
from ltbench.fusion import fuse as fuse_mod
from ltbench.fusion.synthetic import balanced_labels, expert_logits, lt_counts
from ltbench.store.expert import Expert
from ltbench.store.index import Registry

C = 30
COUNTS = lt_counts(C, head=500, imbalance=100)  # 11 many / 10 medium / 9 few
GROUPS = shot_groups(COUNTS)
VAL, TEST, OOD = balanced_labels(C, 20), balanced_labels(C, 10), balanced_labels(C, 4)
#: per-class accuracy by shot group (many, medium, few)
HEAD, TAIL, MID = (0.9, 0.5, 0.1), (0.1, 0.5, 0.9), (0.5, 0.5, 0.5)


def acc_of(profile):
    return np.asarray(profile)[GROUPS]


def add_expert(reg: Registry, name: str, profile, seed: int, *, dataset="synth", num_classes=C,
               val_labels=None, splits=("val", "test", "ood:synth-r"), data_seed=0, stored_test=None,
               family=None, groups=None) -> Expert:
    acc = np.resize(acc_of(profile), num_classes)
    labels = {"val": VAL if val_labels is None else val_labels, "test": TEST, "ood:synth-r": OOD}
    logits = {s: (expert_logits(labels[s] % num_classes, acc, num_classes, seed * 10 + i), labels[s] % num_classes)
              for i, s in enumerate(splits)}
    if stored_test is not None:  # same logits, other labels on file
        logits["test"] = (logits["test"][0], stored_test)
    counts = np.resize(COUNTS, num_classes)
    family = family or name  # experts of one family differ only by seed
    config = {"name": name, "method": "linear-probe", "backbone": f"bb-{family}", "dataset": dataset,
              "seed": data_seed, "budget": "2epochs", "many": 100, "few": 20, "data": {"root": f"/data/{family}"},
              **({"groups": groups} if groups else {})}
    meta = {"class_counts": counts.tolist(), "classnames": [f"c{i}" for i in range(num_classes)],
            "params": {"trainable": 100, "total": 1000}, "spent": {"flops": 1e9, "seconds": 2.0},
            "config_hash": f"h-{name}", "created": "2025-01-01T00:00:00+00:00", "seed": data_seed}
    metrics = {s: {"overall": float((lg.argmax(1).numpy() == lb).mean())} for s, (lg, lb) in logits.items()}
    return reg.register(name, config, {}, logits, metrics, meta)


@pytest.fixture
def reg(tmp_path) -> Registry:
    r = Registry(tmp_path / "reg")
    add_expert(r, "head", HEAD, 1)
    add_expert(r, "tail", TAIL, 2)
    return r


def val_acc(ex: Expert) -> float:
    return float((ex.logits("val").argmax(1).numpy() == ex.labels("val")).mean())


def test_per_group_search_recovers_head_and_tail_weights(reg):
    fused = fuse_experts("head,tail", "search", trials=60, per_group=True, registry=reg, quiet=True, name="f")
    w = np.asarray(fused.meta["weights"]["w_base"])  # [expert, group]: head, tail × many, medium, few
    assert fused.meta["weights"]["groups"] == ["many", "medium", "few"]
    assert w[0, 0] > w[1, 0], w  # many-shot classes: the head expert
    assert w[1, 2] > w[0, 2], w  # few-shot classes: the tail expert
    singles = [val_acc(reg.get(n)) for n in ("head", "tail")]
    assert val_acc(fused) >= max(singles) + 0.1  # complementary experts: fusion clearly helps
    assert fused.meta["best_val"] >= max(fused.meta["scorer_info"]["search"]["single_values"].values())
    assert fused.metrics["test"]["overall"] > max(reg.get(n).metrics["test"]["overall"] for n in ("head", "tail"))
    # registered like any other expert, with its provenance
    cfg, meta = fused.config, fused.meta
    assert cfg["method"] == "fuse:search" and cfg["experts"] == ["head", "tail"] and cfg["dataset"] == "synth"
    assert cfg["backbone"] == "bb-head+bb-tail"
    assert [c["name"] for c in meta["constituents"]] == ["head", "tail"]
    assert meta["params"] == {"trainable": 206, "total": 2006, "fusion": 6}  # constituents' 2 × 100 + 6 weights
    assert meta["spent"]["flops"] == 2e9 and meta["spent"]["seconds"] >= 4.0
    assert meta["trials"]["completed"] == 60 and set(meta) >= {"git", "packages", "config_hash", "created"}
    assert set(fused.splits()) == {"val", "test", "ood:synth-r"}
    assert np.array_equal(fused.labels("test"), TEST)


def test_global_search_is_never_below_the_best_single_expert(tmp_path):
    r = Registry(tmp_path / "r")
    add_expert(r, "good", (0.8, 0.8, 0.8), 1)
    add_expert(r, "bad", (0.2, 0.2, 0.2), 2)
    fused = fuse_experts(["good", "bad"], "search", trials=3, registry=r, quiet=True)  # anchors only
    info = fused.meta["scorer_info"]["search"]
    assert info["trials_completed"] == 3  # equal + one per expert always run, even with fewer trials asked
    assert fused.meta["best_val"] >= info["single_values"]["good"]
    assert val_acc(fused) >= val_acc(r.get("good"))


def test_search_is_deterministic_for_a_seed(reg):
    a = fuse_experts("head,tail", "search", trials=15, seed=7, registry=reg, quiet=True, name="a")
    b = fuse_experts("head,tail", "search", trials=15, seed=7, registry=reg, quiet=True, name="b")
    assert torch.equal(a.delta()["w_base"], b.delta()["w_base"])


def test_mean_is_probability_averaging(reg):
    fused = fuse_experts("head,tail", "mean", registry=reg, quiet=True, name="avg")
    expected = (torch.softmax(reg.get("head").logits("test"), 1) + torch.softmax(reg.get("tail").logits("test"), 1)) / 2
    assert torch.allclose(torch.softmax(fused.logits("test"), 1), expected, atol=2e-3)
    assert fused.meta["weights"]["w_base"] == [[0.5], [0.5]]
    assert fused.meta["trials"] is None and fused.config["method"] == "fuse:mean"
    assert fused.meta["params"] == {"trainable": 200, "total": 2000, "fusion": 0}


def test_moe_reapplies_from_delta(reg):
    add_expert(reg, "mid", MID, 3)
    fused = fuse_experts("head,tail,mid", "moe", trials=40, registry=reg, quiet=True, name="moe")
    again = apply_fused(fused, reg, "test")  # the delta re-applies: same fused logits from the cached ones
    assert torch.allclose(again, fused.logits("test"), atol=0.05)
    model = FusionModel.from_delta(fused.delta())
    assert model.w_base.shape == (3, 1)
    assert fused.meta["params"]["fusion"] == model.num_params()


def test_moe_fits_offsets_on_val_images_the_search_did_not_use(reg):
    """W_base's search and W_offset's fit use disjoint halves of every class's validation images,
    recorded in the fused expert's provenance; refitting each on its recorded rows gives the same result."""
    add_expert(reg, "mid", MID, 3)
    names = ["head", "tail", "mid"]
    fused = fuse_experts(names, "moe", trials=12, seed=4, registry=reg, quiet=True, name="moe")
    split = fused.meta["val_split"]
    s, o = np.asarray(split["search_rows"]), np.asarray(split["offset_rows"])
    assert split["kind"] == "disjoint" and not set(s) & set(o) and sorted([*s, *o]) == list(range(len(VAL)))
    assert np.array_equal(np.bincount(VAL[o], minlength=C), np.full(C, 10))  # half of each class's 20
    assert "split" not in fused.meta["scorer_info"]

    from ltbench.fusion.core import ProbStack, make_objective
    from ltbench.fusion.learned import fit_offsets
    from ltbench.fusion.search import search_weights

    stack = ProbStack.build([reg.get(n).logits("val") for n in names], torch.zeros(C, dtype=torch.long), True)
    w, _ = search_weights(stack.subset(torch.as_tensor(s)), make_objective("balanced", VAL[s], GROUPS), names,
                          None, 12, 4, None, fused.config["study_name"] + "-check")
    assert torch.allclose(w, fused.delta()["w_base"])
    _, info = fit_offsets(stack.subset(torch.as_tensor(o)), VAL[o], w, torch.zeros(C, dtype=torch.long),
                          make_objective("balanced", VAL[o], GROUPS),
                          lambda y: make_objective("balanced", y, GROUPS), 4)
    learned = fused.meta["scorer_info"]["learned"]
    assert learned["fit_rows"] + learned["holdout_rows"] == len(o)
    assert info["holdout_nll"] == learned["holdout_nll"] and info["best_epoch"] == learned["best_epoch"]


def test_moe_uses_w_offset_where_the_offset_was_accepted(reg):
    """On this fixture the learned offsets beat W_base on the held-out rows, so they are accepted and
    the fused expert must apply W_base + W_offset: its stored delta holds the network, its logits are
    those of the full model and differ from W_base's alone."""
    from ltbench.fusion.core import FusionModel

    add_expert(reg, "mid", MID, 3)
    names = ["head", "tail", "mid"]
    fused = fuse_experts(names, "moe", trials=12, seed=1, registry=reg, quiet=True, name="moe")
    learned = fused.meta["scorer_info"]["learned"]
    assert learned["offset_accepted"]
    assert learned["objective_with_offset"]["holdout"] > learned["objective_without_offset"]["holdout"]
    delta = fused.delta()
    assert any(k.startswith("offset.") for k in delta), "an accepted offset is part of the fused expert"
    model = FusionModel.from_delta(delta)
    logits = [reg.get(n).logits("test") for n in names]
    assert torch.allclose(fused.logits("test"), model.log_probs(logits), atol=0.01)  # stored in 16 bits
    base_only = FusionModel(model.w_base, model.groups).log_probs(logits)
    assert (fused.logits("test").argmax(1) != base_only.argmax(1)).any()


def test_moe_base_weights_ignore_the_offset_rows(tmp_path):
    """Rewriting the experts' validation logits on the offset rows changes nothing the search sees."""
    a = Registry(tmp_path / "a")
    add_expert(a, "head", HEAD, 1)
    add_expert(a, "tail", TAIL, 2)
    fa = fuse_experts("head,tail", "moe", trials=15, registry=a, quiet=True, name="f")
    rows = torch.as_tensor(fa.meta["val_split"]["offset_rows"])
    b = Registry(tmp_path / "b")
    for seed, name in enumerate(("head", "tail")):
        src = a.get(name)
        logits = {sp: (src.logits(sp).clone(), src.labels(sp)) for sp in src.splits()}
        logits["val"][0][rows] = 5 * torch.randn(len(rows), C, generator=torch.Generator().manual_seed(seed))
        b.register(name, src.config, {}, logits, src.metrics, src.meta)
    fb = fuse_experts("head,tail", "moe", trials=15, registry=b, quiet=True, name="f")
    assert fa.meta["val_split"] == fb.meta["val_split"]
    assert not torch.equal(fa.logits("val"), fb.logits("val"))  # the logits did differ
    assert torch.equal(fa.delta()["w_base"], fb.delta()["w_base"])


def test_learned_offsets_train_and_are_deterministic(reg):
    a = fuse_experts("head,tail", "learned", registry=reg, quiet=True, name="l1", seed=3)
    b = fuse_experts("head,tail", "learned", registry=reg, quiet=True, name="l2", seed=3)
    info = a.meta["scorer_info"]["learned"]
    assert info["best_epoch"] > 0 and info["holdout_nll"]["best"] < info["holdout_nll"]["init"]
    assert info["holdout_rows"] == len(VAL) // 5 and info["fit_rows"] == len(VAL) - len(VAL) // 5
    assert torch.equal(a.logits("test"), b.logits("test"))
    assert val_acc(a) >= val_acc(reg.get("head"))  # offsets pick the confident expert per sample
    if info["offset_accepted"]:
        assert "offset.net.0.weight" in a.delta()


@pytest.mark.parametrize("kind,expected", [
    ("dataset", "differ in dataset: 'synth' vs 'other'"),
    ("classes", "differ in class count"),
    ("val-order", "differ in validation labels / sample order"),
    ("seed", "differ in data seed"),
    ("splits", "differ in cached splits (not shared: ood:synth-r)"),
    ("groups", "differ in shot-group protocol (groups): 'standard' vs 'lpt'"),
])
def test_mismatched_experts_are_refused(reg, kind, expected):
    if kind == "dataset":
        add_expert(reg, "x", MID, 5, dataset="other")
    elif kind == "classes":
        add_expert(reg, "x", MID, 5, num_classes=C + 2)
    elif kind == "val-order":
        add_expert(reg, "x", MID, 5, val_labels=np.random.default_rng(0).permutation(VAL))
    elif kind == "seed":
        add_expert(reg, "x", MID, 5, data_seed=1)
    elif kind == "groups":  # evaluated with few <= 20 instead of few < 20: the group columns mean other classes
        add_expert(reg, "x", MID, 5, groups="lpt")
    else:
        add_expert(reg, "x", MID, 5, splits=("val", "test"))
    with pytest.raises(FusionError, match="head.*x") as e:
        fuse_experts("head,x", "mean", registry=reg, quiet=True)
    assert expected in str(e.value)
    assert "x" in reg and len(reg.names()) == 3  # nothing registered


def test_a_fusion_records_its_members_protocol_and_groups_by_it(reg):
    """Fusing `lpt`-protocol experts: the fused expert records groups=lpt, and its per-group weights
    use few <= 20 (a class of exactly 20 training images is few)."""
    add_expert(reg, "a", HEAD, 7, groups="lpt")
    add_expert(reg, "b", TAIL, 8, groups="lpt")
    fused = fuse_experts("a,b", "search", trials=4, per_group=True, registry=reg, quiet=True, name="f")
    assert fused.config["groups"] == "lpt" and (fused.config["many"], fused.config["few"]) == (100, 20)
    assert 20 in COUNTS
    from ltbench.metrics import shot_groups, thresholds

    assert fused.meta["shot_groups"] == {"many": int((COUNTS > 100).sum()), "medium": int(((COUNTS > 20) & (COUNTS <= 100)).sum()),
                                         "few": int((COUNTS <= 20).sum())}
    assert shot_groups(COUNTS, *thresholds(fused.config)).tolist() != shot_groups(COUNTS).tolist()


def test_missing_val_logits_refused_with_the_command(reg):
    add_expert(reg, "noval", MID, 5, splits=("test", "ood:synth-r"))
    with pytest.raises(FusionError) as e:
        fuse_experts("head,noval", "search", registry=reg, quiet=True)
    msg = str(e.value)
    assert "'noval' has no cached validation logits" in msg
    assert "ltbench train --dataset synth --backbone bb-noval --method linear-probe --budget 2epochs --seed 0 " \
           "--name noval" in msg


def test_bad_options_are_user_errors(reg):
    with pytest.raises(FusionError, match="at least two experts"):
        fuse_experts("head", "mean", registry=reg)
    with pytest.raises(FusionError, match="unknown objective"):
        fuse_experts("head,tail", "search", objective="f1", registry=reg)
    with pytest.raises(FusionError, match="cannot open Optuna storage"):
        fuse_experts("head,tail", "search", storage="not-a-url", registry=reg, quiet=True)


def test_resumed_study_continues(reg, tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    a = fuse_experts("head,tail", "search", trials=6, storage=storage, registry=reg, quiet=True, name="s1")
    b = fuse_experts("head,tail", "search", trials=10, storage=storage, registry=reg, quiet=True, name="s2")
    ia, ib = a.meta["scorer_info"]["search"], b.meta["scorer_info"]["search"]
    assert ia["study_name"] == ib["study_name"]
    assert (ia["trials_before"], ia["trials_completed"]) == (0, 6)
    assert (ib["trials_before"], ib["trials_run"], ib["trials_completed"]) == (6, 4, 10)
    import optuna

    study = optuna.load_study(study_name=ia["study_name"], storage=storage)
    assert len(study.trials) == 10  # the anchors were not enqueued again
    assert ib["best_value"] >= ia["best_value"]


def test_fitting_never_reads_test_labels(reg, monkeypatch):
    """Non-val labels may be read only after the scorer is fitted (to evaluate, as `train` does)."""
    state = {"fitted": False, "reads": []}
    real_labels, real_fit = Expert.labels, fuse_mod.fit

    def guarded_labels(self, split):
        state["reads"].append((split, state["fitted"]))
        if split != "val" and not state["fitted"]:
            raise AssertionError(f"labels of {split!r} read before the fusion was fitted")
        return real_labels(self, split)

    def spy_fit(scorer, ctx):
        assert np.array_equal(ctx.labels, VAL) and ctx.stack.num_samples == len(VAL)
        out = real_fit(scorer, ctx)
        state["fitted"] = True
        return out

    monkeypatch.setattr(Expert, "labels", guarded_labels)
    monkeypatch.setattr(fuse_mod, "fit", spy_fit)
    fused = fuse_experts("head,tail", "moe", trials=8, registry=reg, quiet=True)
    assert state["fitted"] and ("test", True) in state["reads"]
    assert fused.metrics["test"]["n"] == len(TEST)


def test_weights_do_not_depend_on_test_labels(tmp_path):
    """The same experts with permuted test labels get exactly the same fusion weights."""
    fused = []
    for k, perm in enumerate([np.arange(len(TEST)), np.random.default_rng(1).permutation(len(TEST))]):
        r = Registry(tmp_path / f"r{k}")
        add_expert(r, "head", HEAD, 1, stored_test=TEST[perm])
        add_expert(r, "tail", TAIL, 2, stored_test=TEST[perm])
        fused.append(fuse_experts("head,tail", "moe", trials=10, registry=r, quiet=True, name="f"))
    assert fused[0].metrics["test"] != fused[1].metrics["test"]  # the labels on file did differ
    assert torch.equal(fused[0].delta()["w_base"], fused[1].delta()["w_base"])
    assert torch.equal(fused[0].logits("test"), fused[1].logits("test"))


runner = CliRunner()


def test_cli_round_trip(home):
    reg = Registry(home)
    add_expert(reg, "head", HEAD, 1)
    add_expert(reg, "tail", TAIL, 2)
    r = runner.invoke(app, ["fuse", "--experts", "head,tail", "--scorer", "search", "--trials", "12", "--per-group",
                            "--name", "hf", "--objective", "harmonic", "--quiet"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "registered hf" in r.output and "fuse:search" in r.output
    assert "hf" in runner.invoke(app, ["ls"]).output
    rows = {row["expert"]: row for row in json.loads(runner.invoke(app, ["report", "--format", "json"]).output)["rows"]}
    assert rows["hf"]["method"] == "fuse:search" and 0 <= rows["hf"]["overall"] <= 1 and "ood:synth-r" in rows["hf"]
    assert rows["hf"]["flops"] == 2e9
    shown = json.loads(runner.invoke(app, ["show", "hf"]).output)
    assert shown["config"]["objective"] == "harmonic" and shown["config"]["per_group"] is True

    r = runner.invoke(app, ["fuse", "--experts", "head,nope", "--scorer", "mean"])
    assert r.exit_code == 2 and "no expert named 'nope'" in r.output
    r = runner.invoke(app, ["fuse", "--experts", "head,tail", "--scorer", "moee"])
    assert r.exit_code == 2 and "Did you mean 'moe'" in r.output
    add_expert(reg, "other", MID, 3, dataset="other")
    r = runner.invoke(app, ["fuse", "--experts", "head,other", "--scorer", "mean"])
    assert r.exit_code == 2 and "differ in dataset" in r.output and "Traceback" not in r.output


def test_fusions_over_seeds_group_into_one_report_row(tmp_path):
    """fuse(head_s, tail_s) for s = 0, 1 is one experiment: one report row, mean ± std over 2 seeds."""
    from ltbench.report.tables import collect

    r = Registry(tmp_path / "reg")
    for s in (0, 1):
        for fam, prof in (("head", HEAD), ("tail", TAIL)):
            add_expert(r, f"{fam}_s{s}", prof, 10 * s + len(fam), data_seed=s, family=fam)
        fuse_experts(f"head_s{s},tail_s{s}", "mean", registry=r, quiet=True, name=f"avg_s{s}")
    fuse_experts("head_s1,tail_s1", "search", registry=r, quiet=True, name="searched_s1", trials=5)
    df = collect(r, ci=False).set_index("expert")
    fused = df.loc["avg_s{0,1}"]
    assert fused["seeds"] == 2 and fused["members"] == "avg_s0,avg_s1"
    singles = [r.get(f"avg_s{s}").metrics["test"]["overall"] for s in (0, 1)]
    assert fused["overall"] == pytest.approx(np.mean(singles))
    assert df.loc["head_s{0,1}", "seeds"] == 2
    assert df.loc["searched_s1", "seeds"] == 1  # another scorer is another experiment
