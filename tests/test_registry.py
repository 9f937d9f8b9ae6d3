
import numpy as np
import pytest
import sqlalchemy as sa
import torch

from ltbench.store.expert import FORMAT_VERSION
from ltbench.store.index import Registry
from ltbench.errors import RegistryError


def _register(reg, name="a", **kw):
    logits = {"val": (torch.randn(4, 3), np.array([0, 1, 2, 0])), "ood:sketch": (torch.randn(2, 3), np.array([1, 2]))}
    return reg.register(name, {"method": "m", "backbone": "b", "dataset": "d", "seed": 1}, {"head.weight": torch.ones(3, 2)},
                        logits, {"val": {"overall": 0.5}}, {"config_hash": "abc", "created": "now"}, **kw)


def test_round_trip(tmp_path, backend):
    reg = Registry(tmp_path)
    ex = _register(reg)
    again = Registry(tmp_path).get("a")
    assert again.config["method"] == "m" and again.metrics["val"]["overall"] == 0.5
    assert again.meta["format"] == FORMAT_VERSION
    assert sorted(again.splits()) == ["ood:sketch", "val"]
    assert again.logits("val").dtype == torch.float32 and again.logits("val").shape == (4, 3)
    assert torch.allclose(again.logits("val"), ex.logits("val"))
    assert again.labels("ood:sketch").tolist() == [1, 2]
    assert torch.equal(again.delta()["head.weight"], torch.ones(3, 2))
    assert Registry(tmp_path).rows()[0]["name"] == "a"
    assert (tmp_path / "registry.sqlite").exists() == (backend is None)  # PostgreSQL: no file in the home


def test_duplicate_name_refused_and_nothing_overwritten(tmp_path, backend):
    reg = Registry(tmp_path)
    _register(reg)
    with pytest.raises(RegistryError, match="already registered"):
        _register(reg)
    assert reg.names() == ["a"]


def test_failed_write_leaves_nothing(tmp_path, monkeypatch, backend):
    reg = Registry(tmp_path)
    calls = []

    def failing_save(tensors, path):  # the delta is written, then the disk "fills up"
        calls.append(path)
        if len(calls) > 1:
            raise OSError("No space left on device")
        real_save(tensors, path)

    import safetensors.torch

    real_save = safetensors.torch.save_file  # the registry imports it when it writes
    monkeypatch.setattr(safetensors.torch, "save_file", failing_save)
    with pytest.raises(OSError, match="No space"):
        _register(reg)
    assert reg.names() == [] and not list(reg.experts_dir.iterdir())


def test_rm_removes_row_and_folder(tmp_path, backend):
    reg = Registry(tmp_path)
    _register(reg)
    reg.remove("a")
    assert reg.names() == [] and not list(reg.experts_dir.iterdir())
    with pytest.raises(RegistryError, match="no expert named 'a'"):
        reg.remove("a")


def test_missing_split_and_newer_format(tmp_path, backend):
    reg = Registry(tmp_path)
    _register(reg)
    with pytest.raises(RegistryError, match="no cached logits for split 'test'"):
        reg.get("a").logits("test")
    with reg._connect() as db:
        db.execute(sa.text("UPDATE experts SET format=:f WHERE name='a'"), {"f": FORMAT_VERSION + 1})
    with pytest.raises(RegistryError, match="newer ltbench"):
        reg.get("a")
