"""LT-Soups: cap rule, merge rule, losses per stage, one budget for the whole run."""
import numpy as np
import pytest
import torch

from conftest import TINY_DATA
from ltbench.config import resolve_config
from ltbench.backbones.base import create_backbone
from ltbench.methods import create_method
from ltbench.methods.lt_soups import capped_subset
from ltbench.registry import Registry
from ltbench.train import train_expert


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


def _soups(**cfg):
    return create_method("lt-soups", create_backbone("vit-tiny-test"), 3, np.array([40, 10, 5]), **cfg)


def _train_each(m, values):
    """Stand-in for stage 1: every soup model is the start plus a constant, then merged."""
    w = m._weights()
    trained = []
    for value in values:
        m._restart()
        with torch.no_grad():
            for p in w.values():
                p.add_(value)
        trained.append({n: p.clone() for n, p in w.items()})
        m._merge()
    return w, trained


def test_sequential_merge_from_the_start():
    m = _soups(factors=[0, 1], inner="lora")
    start = {n: t.clone() for n, t in m._start.items()}
    w, trained = _train_each(m, (1.0, 2.0))
    for n, p in w.items():  # w ← 0.3·w + 0.7·w_k, starting from the start weights
        expected = 0.3 * (0.3 * start[n] + 0.7 * trained[0][n]) + 0.7 * trained[1][n]
        assert torch.allclose(p, expected, atol=1e-6), n


def test_uniform_merge_is_the_mean():
    m = _soups(factors=[0, 1, 2], merge="uniform")
    w, trained = _train_each(m, (1.0, 2.0, 6.0))
    for n, p in w.items():
        assert torch.allclose(p, sum(t[n] for t in trained) / 3, atol=1e-6)


def test_phases_losses_and_shares():
    m = _soups(factors=[0, 1, 2])
    phases = m.phases()
    assert [p.loss for p in phases] == ["ce", "la", "la", "la"]
    assert phases[-1].cache_features and phases[-1].share == pytest.approx(0.1)
    sizes = [int(np.minimum([40, 10, 5], 5 * 2 ** k).sum()) for k in range(3)]
    assert [p.share for p in phases[:3]] == pytest.approx([0.9 * s / sum(sizes) for s in sizes])


@pytest.mark.parametrize("inner", ["lora", "full-ft"])
def test_a_run_respects_one_budget(tmp_path, inner):
    run = resolve_config({"backbone": "vit-tiny-test", "method": "lt-soups", "budget": "4epochs"},
                         {**TINY_DATA, "batch_size": 8, "factors": [0, 1, 2], "inner": inner})
    ex = train_expert(run, Registry(tmp_path), quiet=True)
    phases = ex.meta["phases"]
    counts = np.array(ex.meta["class_counts"])
    n_min = counts.min()
    for k, ph in enumerate(phases[:3]):
        assert ph["train_images"] == int(np.minimum(counts, n_min * 2 ** k).sum())
        share = 4 * 0.9 / 3  # every soup model gets the same epochs; a step that would overrun is not taken
        steps_per_epoch = ph["train_images"] // 8
        assert share - 1 / steps_per_epoch <= ph["spent"]["epochs"] <= share + 1e-9
    assert phases[3]["train_images"] == counts.sum() and phases[3]["loss"] == "la"
    assert 4 - 0.5 < ex.meta["spent"]["epochs"] <= 4 + 1e-9
