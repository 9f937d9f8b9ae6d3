"""LPT's dual sampler (a PartsBatchSampler: class-balanced part + instance part) and build_batch_sampler."""
import numpy as np
import pytest
import torch
from torch.utils.data import BatchSampler, DataLoader, TensorDataset

from ltbench.data.samplers import PartsBatchSampler, build_batch_sampler, build_sampler


def DualBatchSampler(labels, batch_size, seed=0, drop_last=True):
    return PartsBatchSampler(labels, batch_size, ("class", "instance"), seed, drop_last)

LT_LABELS = np.repeat(np.arange(4), [1000, 100, 10, 2])  # 1112 images


def _epoch(s):
    return np.array(list(s))


def test_dual_halves_class_balanced_and_instance():
    s = DualBatchSampler(LT_LABELS, batch_size=32, seed=0)
    assert len(s) == 1112 // 32 == 34
    freq_c, freq_i = np.zeros(4), np.zeros(4)
    for _ in range(10):
        b = _epoch(s)
        assert b.shape == (34, 64)
        freq_c += np.bincount(LT_LABELS[b[:, :32]].ravel(), minlength=4)
        inst = b[:, 32:].ravel()
        assert len(set(inst)) == len(inst)  # one shuffled pass, no repeats within an epoch
        freq_i += np.bincount(LT_LABELS[inst], minlength=4)
    freq_c, freq_i = freq_c / freq_c.sum(), freq_i / freq_i.sum()
    assert np.allclose(freq_c, 0.25, atol=0.02)
    assert np.allclose(freq_i, np.bincount(LT_LABELS) / len(LT_LABELS), atol=0.01)


def test_dual_deterministic_and_set_epoch_replays():
    s = DualBatchSampler(LT_LABELS, 16, seed=3)
    e0, e1 = _epoch(s), _epoch(s)
    assert not np.array_equal(e0, e1)
    assert np.array_equal(_epoch(DualBatchSampler(LT_LABELS, 16, seed=3)), e0)
    assert not np.array_equal(_epoch(DualBatchSampler(LT_LABELS, 16, seed=4)), e0)
    r = DualBatchSampler(LT_LABELS, 16, seed=3)
    r.set_epoch(1)
    assert np.array_equal(_epoch(r), e1)
    s.set_epoch(0)
    assert np.array_equal(_epoch(s), e0)


def test_dual_keep_last_and_errors():
    s = DualBatchSampler(LT_LABELS, 100, seed=0, drop_last=False)
    batches = list(s)
    assert len(s) == len(batches) == 12 and len(batches[-1]) == 2 * 12
    assert sorted(i for b in batches for i in b[len(b) // 2 :]) == list(range(1112))
    with pytest.raises(ValueError, match="no full batch"):
        DualBatchSampler(LT_LABELS[:10], 32, seed=0)
    with pytest.raises(ValueError, match="build_batch_sampler"):
        build_sampler("dual", LT_LABELS, seed=0)


def test_build_batch_sampler_all_kinds_in_a_dataloader():
    ds = TensorDataset(torch.arange(len(LT_LABELS)))
    for kind in ("instance", "class", "sqrt", "dual"):
        bs = build_batch_sampler(kind, LT_LABELS, 32, seed=1)
        assert isinstance(bs, BatchSampler if kind != "dual" else PartsBatchSampler)
        width = 64 if kind == "dual" else 32
        loader = DataLoader(ds, batch_sampler=bs)
        bs.set_epoch(2)
        first = [x.tolist() for (x,) in loader]
        assert len(first) == len(loader) == 1112 // 32 and all(len(b) == width for b in first)
        bs.set_epoch(2)
        assert [x.tolist() for (x,) in loader] == first
    b = build_batch_sampler("class", LT_LABELS, 32, seed=1)
    assert b.kind == "class" and b.drop_last
    assert len(build_batch_sampler("instance", LT_LABELS, 100, seed=1, drop_last=False)) == 12
    with pytest.raises(ValueError, match="instance, class, sqrt, dual"):
        build_batch_sampler("balanced", LT_LABELS, 32, seed=0)


def test_class_part_follows_kangs_two_step_draw():
    # oracle (Kang et al. 2020; LPT 3.1): P(image i) = 1 / (C · n_{c(i)}), independent of the instance part
    s = DualBatchSampler(LT_LABELS, batch_size=32, seed=5)
    hits = np.zeros(len(LT_LABELS))
    for _ in range(60):
        b = _epoch(s)
        np.add.at(hits, b[:, :32].ravel(), 1)
    n = np.bincount(LT_LABELS)
    want = hits.sum() / (4 * n[LT_LABELS])
    rare = LT_LABELS >= 2  # 12 images, ≈ 1,600 and 8,200 draws each expected
    assert np.allclose(hits[rare], want[rare], rtol=0.08)


def test_parts_sampler_takes_any_kinds_in_order():
    s = PartsBatchSampler(LT_LABELS, 16, ("instance", "class", "sqrt"), seed=0)
    b = _epoch(s)
    assert b.shape == (1112 // 16, 48)
    first = b[:, :16].ravel()
    assert len(set(first)) == len(first)  # the instance part: one shuffled pass
    freq = np.bincount(LT_LABELS[b[:, 32:].ravel()], minlength=4) / b[:, 32:].size
    sq = np.sqrt(np.bincount(LT_LABELS))
    assert np.allclose(freq, sq / sq.sum(), atol=0.03)  # the sqrt part: class probability ∝ √n_c


def test_a_new_sampler_is_one_registration(monkeypatch):
    """Registered (here: for this test only), a sampler is a config value and a part of a batch like any other."""
    from ltbench.spec import resolve_run
    from ltbench.data.samplers import SAMPLERS, InstanceSampler, Parts

    def every_other(labels, seed, num_samples=None):
        return InstanceSampler(labels[::2], seed, num_samples)

    monkeypatch.setitem(SAMPLERS._items, "every-other", every_other)
    monkeypatch.setitem(SAMPLERS._items, "every-other+class", Parts(("every-other", "class")))
    bs = build_batch_sampler("every-other", LT_LABELS, 32, seed=0)
    assert bs.kind == "every-other" and max(i for b in bs for i in b) < len(LT_LABELS) // 2
    assert isinstance(build_batch_sampler("every-other+class", LT_LABELS, 32, seed=0), PartsBatchSampler)
    run = resolve_run({"backbone": "vit-tiny-test", "method": "linear-probe", "budget": "1epochs"},
                         {"sampler": "every-other"})
    assert run.method_config.sampler == "every-other"


def test_the_registered_dual_sampler_is_class_balanced_then_instance():
    """`--set sampler=dual` (build_batch_sampler("dual")): the first part class-balanced, the second one
    shuffled pass, as LPT's phase 2 draws its two parts (PartSpec("class"), PartSpec("instance"))."""
    bs = build_batch_sampler("dual", LT_LABELS, 32, seed=2)
    assert bs.kinds == ("class", "instance")
    freq_c = np.zeros(4)
    for epoch in range(10):
        bs.set_epoch(epoch)
        b = np.array(list(bs))
        freq_c += np.bincount(LT_LABELS[b[:, :32].ravel()], minlength=4)
        inst = b[:, 32:].ravel()
        assert len(set(inst)) == len(inst)
    assert np.allclose(freq_c / freq_c.sum(), 0.25, atol=0.02)  # instance-balanced would give 0.9 / 0.09 / …
