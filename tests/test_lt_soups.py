"""LT-Soups against oracles written from the official code's formulas (github Masseeh/LT-Soups):
cap sizes, EMA, best-on-validation per branch, branch averaging, the 0.3 / 0.7 merge, the cosine
head, LoRA on q and v only, and one budget for every branch."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import TINY_DATA
from ltbench.backbones.factory import create_backbone
from ltbench.spec import resolve_run
from ltbench.methods import create_method
from ltbench.methods.adapters import add_lora
from ltbench.methods.lt_soups import capped_subset
from ltbench.store.index import Registry
from ltbench.training.pipeline import train_expert

COUNTS = np.array([40, 10, 5])


def _soups(**cfg):
    return create_method("lt-soups", create_backbone("vit-tiny-test"), 3, COUNTS, **cfg)


def test_capped_subsets_follow_the_cap_rule_and_nest():
    labels = np.repeat(np.arange(5), [100, 40, 12, 6, 3])
    counts = np.bincount(labels)
    prev = set()
    for k in range(6):
        cap = 3 * 2 ** k
        idx = capped_subset(labels, cap, seed=0)
        assert np.array_equal(np.bincount(labels[idx], minlength=5), np.minimum(counts, cap))
        assert prev <= set(idx.tolist())  # a larger cap keeps every image a smaller cap kept
        prev = set(idx.tolist())
    assert not np.array_equal(capped_subset(labels, 6, 0), capped_subset(labels, 6, 1))


def test_phase_subsets_have_the_official_cap_sizes():
    """Official `sample_balance_factor`: minority_num = int(min count · 2^k), per class min(n_c, it);
    two branches per factor on the same subset size, then the classifier on everything."""
    labels = np.repeat(np.arange(3), COUNTS)
    m = _soups(factors=[0, 1, 2, 3])
    phases = m.phases()
    assert len(phases) == 4 * 2 + 1
    for i, ph in enumerate(phases[:-1]):
        k = [0, 1, 2, 3][i // 2]
        cap = int(COUNTS.min() * 2 ** k)
        assert np.array_equal(np.bincount(labels[ph.subset(labels, 0)], minlength=3), [min(n, cap) for n in COUNTS])
        assert ph.loss == ("ce" if k == 0 else "la")
    assert phases[-1].subset is None and phases[-1].cache_features and phases[-1].loss == "la"


def test_budget_shares_count_every_branch():
    m = _soups(factors=[0, 1, 2])
    phases = m.phases()
    sizes = [int(np.minimum(COUNTS, 5 * 2 ** k).sum()) for k in range(3)]
    expected = [0.9 * s / sum(sizes) / 2 for s in sizes for _ in range(2)]
    assert [p.share for p in phases[:-1]] == pytest.approx(expected)
    assert [p.epoch_share for p in phases[:-1]] == pytest.approx([0.9 / 6] * 6)
    assert sum(p.share for p in phases) == pytest.approx(1.0)


def _oracle_branch(start, steps, decay, checks, score):
    """torch.optim.swa_utils.get_ema_avg_fn as the official code uses it: the first update copies,
    then ema ← d·ema + (1 − d)·w; at each check the EMA is scored, the first best one is kept."""
    ema, best, best_score = None, None, -math.inf
    for t, w in enumerate(steps, 1):
        ema = {n: v.clone() for n, v in w.items()} if ema is None else \
            {n: decay * ema[n] + (1 - decay) * w[n] for n in w}
        if t in checks:
            s = score(ema)
            if s > best_score:
                best, best_score = {n: v.clone() for n, v in ema.items()}, s
    return best


def test_stage1_soup_matches_the_official_formulas():
    """EMA (0.99) → best EMA on validation per branch → mean of the 2 branches → w ← 0.3·w + 0.7·w_k."""
    m = _soups(factors=[0, 1, 2], val_checks=2)
    phases = m.phases()[:-1]
    params = m._weights()
    start = {n: p.detach().clone() for n, p in params.items()}
    gen = torch.Generator().manual_seed(0)
    targets: dict = {}

    def score_of(w):  # a validation score that is a real function of the weights evaluated
        return -float(sum(((w[n] - targets[n]) ** 2).sum() for n in w))

    T, checks = 6, {3, 6}
    per_branch = []
    for i, ph in enumerate(phases):
        ph.on_start()
        assert all(torch.equal(p, start[n]) for n, p in params.items())  # every branch from the start
        # the weights drift by t·δ; the score's optimum sits behind them (the first check wins) in
        # even branches and far ahead (the last check wins) in odd ones
        delta = {n: torch.randn(p.shape, generator=gen) for n, p in params.items()}
        steps = [{n: start[n] + t * delta[n] + 0.01 * torch.randn(p.shape, generator=gen) for n, p in params.items()}
                 for t in range(1, T + 1)]
        targets.update({n: start[n] + (0 if i % 2 == 0 else 50) * delta[n] for n in params})
        for t, w in enumerate(steps, 1):
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(w[n])
            ph.on_step()
            if t in checks:
                ph.on_val(lambda: score_of({n: p.detach() for n, p in params.items()}))
        ph.on_end()
        per_branch.append(_oracle_branch(start, steps, 0.99, checks, score_of))
    soup = start
    for k in range(3):
        pair = per_branch[2 * k: 2 * k + 2]
        w_k = {n: (pair[0][n] + pair[1][n]) / 2 for n in start}
        soup = {n: 0.3 * soup[n] + 0.7 * w_k[n] for n in start}
    for n, p in params.items():
        assert torch.allclose(p, soup[n], atol=1e-6), n


def test_stage2_keeps_the_best_ema_of_the_head():
    m = _soups(factors=[0], ema=0.5, val_checks=2)
    stage2 = m.phases()[-1]
    head = dict(m.inner.head.named_parameters())
    stage2.on_start()
    values = [{n: torch.full_like(p, float(v)) for n, p in head.items()} for v in (1.0, 3.0, 5.0, 7.0)]
    scores = iter([1.0, 0.0])  # the first check wins
    for t, w in enumerate(values, 1):
        with torch.no_grad():
            for n, p in head.items():
                p.copy_(w[n])
        stage2.on_step()
        if t in (2, 4):
            stage2.on_val(lambda: next(scores))
    stage2.on_end()
    for n, p in head.items():  # EMA after 2 steps with d = 0.5: 0.5·1 + 0.5·3 = 2
        assert torch.allclose(p, torch.full_like(p, 2.0)), n


def test_uniform_merge_is_the_mean_of_branch_means():
    m = _soups(factors=[0, 1], merge="uniform", ema=0.0, val_checks=0)
    params = m._weights()
    outs = []
    for ph, v in zip(m.phases()[:-1], (1.0, 2.0, 4.0, 9.0)):
        ph.on_start()
        with torch.no_grad():
            for p in params.values():
                p.add_(v)
        outs.append({n: p.detach().clone() for n, p in params.items()})
        ph.on_end()
    for n, p in params.items():
        expected = ((outs[0][n] + outs[1][n]) / 2 + (outs[2][n] + outs[3][n]) / 2) / 2
        assert torch.allclose(p, expected, atol=1e-6), n


def test_cosine_head_scale_30_and_text_initialised_on_clip():
    m = _soups()
    f = torch.randn(4, m.info.feature_dim)
    w = m.inner.head.weight.detach()
    assert torch.allclose(m.classify(f), 30 * F.normalize(f, dim=-1) @ F.normalize(w, dim=-1).T, atol=1e-5)
    assert m.inner.head.bias is None
    names = ["cat", "dog", "car"]
    bb = create_backbone("clip:tiny-test")
    clip = create_method("lt-soups", bb, 3, COUNTS, classnames=names)
    assert torch.allclose(clip.inner.head.weight, bb.text_classifier(names).t(), atol=1e-6)


def _timm_tower_clip():
    """A tiny CLIP whose image tower is timm's (as clip:dinov2-minilm's): its projection is a linear
    layer (weight [joint, pooled]), where open_clip's own tower holds a matrix [pooled, joint]."""
    import open_clip
    import timm

    from ltbench.backbones.clip import _wrap

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = open_clip.CLIP(embed_dim=24, vision_cfg={
            "timm_model_name": "vit_tiny_patch16_224", "timm_model_pretrained": False, "timm_pool": "token",
            "timm_proj": "linear", "image_size": 32},
            text_cfg={"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2})
        model.visual.trunk = timm.models.VisionTransformer(img_size=32, patch_size=8, embed_dim=16, depth=2,
                                                           num_heads=2, num_classes=0)
        model.visual.head.proj = torch.nn.Linear(16, 24, bias=False)
    return _wrap("clip:timm-tower-test", model, open_clip.get_tokenizer("ltbench-tiny-clip"), 32)


def _pooled_before_projection(bb, x):
    """The tower's own forward, read before its projection: the input of the timm tower's projection
    layer, or open_clip's class token after ln_post; projected by hand it gives `encode_image`."""
    seen = {}
    if bb.timm_tower:
        proj = bb.model.visual.head.proj
        hook = proj.register_forward_pre_hook(lambda mod, args: seen.setdefault("x", args[0]))
        joint = bb.model.encode_image(x)
        pooled = seen["x"]
        by_hand = pooled @ proj.weight.T
    else:
        hook = bb.model.visual.ln_post.register_forward_hook(lambda mod, args, out: seen.setdefault("x", out))
        joint = bb.model.encode_image(x)
        pooled = seen["x"][:, 0]
        by_hand = pooled @ bb.model.visual.proj
    hook.remove()
    assert torch.allclose(by_hand, joint, atol=1e-5)
    return pooled


def _text_mapped_back(bb, names):
    """LT-Soups' trainer.py:499-501: the joint-space text classifier [C, joint] @ proj.t(), renormalised;
    proj.t() is the timm projection layer's weight itself."""
    text = bb.text_classifier(names).T
    back = text @ (bb.model.visual.head.proj.weight if bb.timm_tower else bb.model.visual.proj.T)
    return F.normalize(back, dim=-1)


@pytest.mark.parametrize("tower", ["open_clip", "timm"])
def test_reference_head_reads_pooled_features_before_the_projection(tower):
    """use_proj False (utils/config.py:71): the cosine head sits on the pooled class token before the
    visual projection, its weights the text classifier mapped back through the projection's transpose."""
    names = ["cat", "dog", "car"]
    bb = create_backbone("clip:tiny-test") if tower == "open_clip" else _timm_tower_clip()
    m = create_method("lt-soups", bb, 3, COUNTS, classnames=names, preset="reference")
    assert m.cfg.head_proj is False and m.inner.cfg.head_proj is False
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    pooled = _pooled_before_projection(bb, x)
    assert pooled.shape[1] != bb.feature_dim  # the test tells the two widths apart
    w = m.inner.head.weight.detach()
    assert torch.allclose(w, _text_mapped_back(bb, names), atol=1e-5)
    assert torch.allclose(m.embed(x), pooled, atol=1e-5)  # what stage 2 caches
    want = 30 * F.normalize(pooled, dim=-1) @ F.normalize(w, dim=-1).T
    assert torch.allclose(m(x), want, atol=1e-4) and torch.allclose(m.classify(m.embed(x)), want, atol=1e-4)
    paper = create_method("lt-soups", bb, 3, COUNTS, classnames=names)  # the library default: the joint space
    assert torch.allclose(paper.embed(x), bb.model.encode_image(x), atol=1e-5)
    assert torch.allclose(paper.inner.head.weight, bb.text_classifier(names).T, atol=1e-6)


@pytest.mark.parametrize("method", ["full-ft", "lora", "adaptformer", "linear-probe", "vpt-deep", "vpt-shallow",
                                    "lpt", "lpt++"])
def test_every_head_reads_what_head_proj_says(method):
    """The head and what it reads agree in width under head_proj=false (a projected read would not
    even fit the head)."""
    bb = create_backbone("clip:tiny-test")
    extra = {"prompt_len": 2, "pool_size": 4} if method.startswith("lpt") else {}
    m = create_method(method, bb, 3, COUNTS, ["cat", "dog", "car"], head_proj=False, **extra)
    assert m.head.weight.shape[1] == bb.pooled_dim != bb.feature_dim
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 3)


@pytest.mark.parametrize("method", ["zero-shot", "lit"])
def test_methods_without_a_head_of_their_own_refuse_head_proj_false(method):
    with pytest.raises(ValueError, match="head_proj"):
        create_method(method, create_backbone("clip:tiny-test"), 3, COUNTS, ["cat", "dog", "car"], head_proj=False)


def test_head_proj_changes_nothing_on_a_backbone_without_a_projection():
    x = torch.randn(2, 3, 32, 32)
    ref, paper = _soups(preset="reference"), _soups()
    assert ref.cfg.head_proj is False
    assert torch.equal(ref.embed(x), paper.embed(x)) and ref.inner.head.weight.shape == paper.inner.head.weight.shape


def test_a_registered_reference_expert_is_rebuilt_on_the_same_features(tmp_path):
    """The expert rebuilt for prediction reads the pooled features before the projection, as trained:
    its logits are the registered ones and 30·cos(pooled, head) computed by hand on its own tensors."""
    from ltbench.experts.model import load_expert

    reg = Registry(tmp_path)
    run = resolve_run({"backbone": "clip:tiny-test", "method": "lt-soups", "budget": "6steps", "name": "ref"},
                      {**TINY_DATA, "preset": "reference", "batch_size": 8, "factors": [0], "branches": 1,
                       "val_checks": 1})
    ex = train_expert(run, reg, quiet=True)
    assert ex.config["method_config"]["head_proj"] is False
    model = load_expert("ref", registry=reg)
    from ltbench.spec import RunSpec
    from ltbench.training.pipeline import build_all

    test = build_all(RunSpec.from_config(ex.config), reg)[0].test
    x = torch.stack([model.transform(test.image(i)) for i in range(len(test))])
    logits = model(x)
    torch.testing.assert_close(logits, ex.logits("test").float(), atol=2e-2, rtol=0)  # stored as fp16
    bb = model.method.info
    w = model.method.inner.head.weight
    assert w.shape[1] == bb.pooled_dim
    with torch.no_grad():
        want = 30 * F.normalize(_pooled_before_projection(bb, x), dim=-1) @ F.normalize(w, dim=-1).T
    torch.testing.assert_close(logits, want, atol=1e-4, rtol=0)


def test_a_delta_with_a_head_of_another_width_is_refused():
    """A full load never keeps a fresh tensor where the stored one does not fit (a head trained on the
    pooled features loaded into a method reading the joint space): it would predict from text init."""
    names = ["cat", "dog", "car"]
    pooled = create_method("full-ft", create_backbone("clip:tiny-test"), 3, COUNTS, names, head_proj=False)
    joint = create_method("full-ft", create_backbone("clip:tiny-test"), 3, COUNTS, names)
    with pytest.raises(ValueError, match=r"head\.weight is \(3, 32\), the method's \(3, 24\)"):
        joint.load_delta(pooled.delta_state_dict())
    assert "head.weight" in joint.load_delta(joint.delta_state_dict())


def test_lora_on_q_and_v_rows_only():
    bb = create_backbone("vit-tiny-test")
    module, name = bb.qkv_weight(bb.blocks[0])
    w0 = getattr(module, name).detach().clone()
    D = w0.shape[1]
    loras = add_lora(bb, rank=2, alpha=4, targets="qv")
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for part in loras[0].parts.values():
            part.B.copy_(torch.randn(part.B.shape, generator=gen))
    q, v = loras[0].parts["q"], loras[0].parts["v"]
    expected = w0.clone()
    expected[:D] += (4 / 2) * q.B.detach() @ q.A.detach()
    expected[2 * D:] += (4 / 2) * v.B.detach() @ v.A.detach()
    assert torch.allclose(getattr(module, name), expected, atol=1e-6)  # k rows unchanged
    m = _soups()  # lt-soups' LoRA: the k rows of every block stay the frozen weights, whatever it learns
    with torch.no_grad():
        for p in m._weights().values():
            p.copy_(torch.randn(p.shape, generator=gen))
    for block in m.info.blocks:
        module, name = m.info.qkv_weight(block)
        diff = getattr(module, name) - getattr(module.parametrizations, name).original
        assert torch.count_nonzero(diff[D:2 * D]) == 0 and torch.count_nonzero(diff[:D]) > 0
        assert torch.count_nonzero(diff[2 * D:]) > 0


def test_reference_preset_is_the_official_script():
    cfg = _soups(preset="reference").cfg
    assert (cfg.inner, cfg.lr, cfg.weight_decay, cfg.batch_size, cfg.branches, cfg.ema, cfg.head_proj) == \
        ("full-ft", 3e-5, 1e-2, 128, 2, 0.99, False)
    assert _soups().cfg.inner == "lora" and _soups().cfg.head_proj is True


@pytest.mark.parametrize("inner", ["lora", "full-ft"])
def test_a_run_respects_one_budget(tmp_path, inner):
    run = resolve_run({"backbone": "vit-tiny-test", "method": "lt-soups", "budget": "4epochs"},
                         {**TINY_DATA, "batch_size": 8, "factors": [0, 1], "inner": inner, "val_checks": 2})
    ex = train_expert(run, Registry(tmp_path), quiet=True)
    phases = ex.meta["phases"]
    counts = np.array(ex.meta["class_counts"])
    n_min = counts.min()
    assert len(phases) == 2 * 2 + 1
    for i, ph in enumerate(phases[:4]):
        assert ph["train_images"] == int(np.minimum(counts, n_min * 2 ** (i // 2)).sum())
        share = 4 * 0.9 / 4  # every branch gets the same epochs; a step that would overrun is not taken
        steps_per_epoch = -(-ph["train_images"] // 8)
        assert share - 1 / steps_per_epoch <= ph["spent"]["epochs"] <= share + 1e-9
        assert len(ph["val_checks"]) == 2 and all(0 <= s <= 1 for s in ph["val_checks"])
    assert phases[4]["train_images"] == counts.sum() and phases[4]["loss"] == "la"
    assert 4 - 0.5 < ex.meta["spent"]["epochs"] <= 4 + 1e-9


def test_a_resumed_run_ends_like_an_uninterrupted_one(tmp_path, monkeypatch):
    """Killed as the second branch ends (after its last checkpoint): the resumed run restores the
    first branch's result, the EMA and the selection, and ends with the same weights and logits."""
    from ltbench.methods.lt_soups import LTSoups

    reg = Registry(tmp_path)
    run = resolve_run({"backbone": "vit-tiny-test", "method": "lt-soups", "budget": "2epochs"},
                         {**TINY_DATA, "batch_size": 8, "factors": [1], "val_checks": 2, "ema": 0.5})
    straight = train_expert(run.replace(name="straight"), reg, quiet=True)
    real, ends = LTSoups._end_branch, []

    def dies_at_the_second(self):
        ends.append(1)
        if len(ends) == 2:
            raise KeyboardInterrupt
        real(self)

    monkeypatch.setattr(LTSoups, "_end_branch", dies_at_the_second)
    with pytest.raises(KeyboardInterrupt):
        train_expert(run.replace(name="resumed"), reg, quiet=True)
    monkeypatch.setattr(LTSoups, "_end_branch", real)
    resumed = train_expert(run.replace(name="resumed", resume=True), reg, quiet=True)
    assert all(torch.equal(v, straight.delta()[k]) for k, v in resumed.delta().items())
    assert torch.equal(resumed.logits("test"), straight.logits("test"))


def test_each_phase_adjusts_by_its_own_training_prior_with_the_official_sign(tmp_path, monkeypatch):
    """Stage 1: CE at k = 0, LA with the capped subset's counts for k > 0; stage 2: LA with the full
    counts. LA adds + log prior to the logits (official utils/losses.py LogitAdjustedLoss), so at
    equal logits a head-class target costs less than a tail one."""
    import ltbench.training.pipeline
    import ltbench.training.trainer

    built = []
    real = ltbench.training.trainer.build_loss

    def recording(name, counts, **kw):
        built.append((name, np.asarray(counts).copy(), real(name, counts, **kw)))
        return built[-1][2]

    monkeypatch.setattr(ltbench.training.trainer, "build_loss", recording)
    run = resolve_run({"backbone": "vit-tiny-test", "method": "lt-soups", "budget": "4steps"},
                         {**TINY_DATA, "batch_size": 8, "factors": [0, 1], "branches": 1, "val_checks": 0})
    ex = train_expert(run, Registry(tmp_path), quiet=True)
    counts = np.array(ex.meta["class_counts"])
    n_min = counts.min()
    assert [b[0] for b in built] == ["ce", "la", "la"]
    assert np.array_equal(built[1][1], np.minimum(counts, 2 * n_min)) and np.array_equal(built[2][1], counts)
    for _, c, loss in built[1:]:
        prior = torch.log(torch.as_tensor(c / c.sum(), dtype=torch.float32))
        assert torch.allclose(loss.adjust, prior)
        z = torch.zeros(2, len(c))
        head, tail = int(np.argmax(c)), int(np.argmin(c))
        per = loss.per_sample(z, torch.tensor([head, tail]))
        assert per[0] < per[1]


def test_official_step_rule_on_cifar100_lt_and_the_suite_budget():
    """max((n // 128 + 1) · 10, 100) steps for each branch (trainer.py:954-957) and for stage 2
    (277-280): on CIFAR-100-LT IF 100 the k = 0 branch runs 100 steps, not (500 // 128) · 10 = 30."""
    from ltbench.suites.schema import load_suite
    from ltbench.data.base import exponential_profile
    from ltbench.methods.lt_soups import official_steps

    counts = np.array(exponential_profile(100, 500, 100))
    steps = official_steps(counts, list(range(7)), 2)
    assert steps == [100, 100, 100, 100, 140, 140, 230, 230, 380, 380, 580, 580, 780, 780, 850]
    suite = load_suite(__import__("pathlib").Path(__file__).resolve().parents[1] / "ltbench" / "suites" / "repro"
                       / "lt-soups-cifar100-lt.yaml")
    assert suite.budget == f"{sum(steps)}steps"
    run = suite.jobs[0].run
    assert run.data["val_from"] == "test" and run.data["val_per_class"] == 10
    mc = run.method_config
    assert (mc.steps_rule, mc.stage2_augment, mc.branch_epochs, mc.batch_size) == ("official", True, 10, 128)


def test_under_the_official_rule_each_phase_gets_its_official_steps():
    """A budget of sum(official_steps) steps splits into exactly each phase's official count (the
    trainer gives phase i budget · share_i / Σ share); stage 2 trains on augmented images."""
    from ltbench.methods.lt_soups import official_steps

    m = _soups(factors=[0, 1, 2], branches=2, batch_size=4, steps_rule="official", branch_epochs=20,
               stage2_augment=True)
    want = official_steps(COUNTS, [0, 1, 2], 2, 4, 20)
    # subsets of 15, 25, 35 images, then all 55: (n // 4 + 1) · 20 = 80 (→ the 100-step floor), 140, 180, 280
    assert want == [100, 100, 140, 140, 180, 180, 280]
    phases = m.phases()
    total = sum(p.share for p in phases)
    assert [round(sum(want) * p.share / total, 9) for p in phases] == want
    assert [p.epoch_share for p in phases[:-1]] == [p.share for p in phases[:-1]]
    assert not phases[-1].cache_features and _soups().phases()[-1].cache_features


def test_inner_lora_scale_is_alpha_over_rank_with_the_official_alpha_1():
    m = _soups(inner="lora", inner_set={"rank": 4})
    loras = [mod for mod in m.modules() if type(mod).__name__ == "LoRA"]
    assert loras and all(lo.scaling == pytest.approx(1 / 4) for lo in loras)  # models/peft_modules.py:89


def test_docs_cite_the_official_file_and_line_for_every_reference_value():
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "methods.md").read_text()
    section = text[text.index("## LT-Soups"):text.index("## Fusion scorer")]
    rows = {line.split("|")[1].strip(): line for line in section.splitlines() if line.startswith("| ")}
    for value in ("steps", "warm-up", "schedule", "stage 2", "CLIP head width", "LoRA α", "CIFAR val / test",
                  "optimiser", "merge", "EMA of the weights", "head", "shot groups"):
        assert value in rows, value
        assert re.search(r"[\w/]+\.(py|sh):\d+", rows[value]), f"{value}: no official file:line"
