"""The run and expert records: one set of operational keys, and old registries still read."""
import shutil
from pathlib import Path

import pytest

import dataclasses

from ltbench.config import RUN_KEYS
from ltbench.spec import RunSpec, resolve_run
from ltbench.store.provenance import OPERATIONAL, config_hash, experiment_key, result_keys
from ltbench.store.records import SCHEMA_VERSION, ExpertRecord
from ltbench.suites.execute import _stale
from ltbench.suites.schema import Job
from ltbench.store.index import Registry
from ltbench.errors import RegistryError

OLD_REGISTRY = Path(__file__).parent / "data" / "registry_v1"  # written by ltbench before ExpertRecord (main @ 202a8b2)


def _spec():
    return resolve_run({"backbone": "vit-tiny-test"}, {"head": 10, "lr": 0.1})


def _config():
    return _spec().config


def _changed(value):
    return ["changed", value]  # differs from any default, and JSON-serialisable


def test_the_operational_keys_are_run_keys():
    assert OPERATIONAL <= set(RUN_KEYS), sorted(OPERATIONAL - set(RUN_KEYS))


@pytest.mark.parametrize("key", sorted(OPERATIONAL))
def test_an_operational_key_keeps_hash_experiment_and_suite_reuse(key):
    spec = _spec()
    config = spec.config
    other = dataclasses.replace(spec, **{key: _changed(getattr(spec, key))})
    assert config_hash(other.config) == config_hash(config)
    assert experiment_key(other.config) == experiment_key(config)
    job = Job(kind="run", label="x", name="x", seed=0, run=other, explicit={key: other.config[key]})
    assert _stale(job, config) == []


@pytest.mark.parametrize("key", sorted(set(RUN_KEYS) - OPERATIONAL))
def test_a_result_key_changes_the_hash(key):
    config = _config()
    other = {**config, key: _changed(config[key])}
    assert config_hash(other) != config_hash(config)
    if key != "seed":  # replicates of one experiment differ in their seed alone
        assert experiment_key(other) != experiment_key(config)


@pytest.mark.parametrize("part,key", [("method_config", "lr"), ("data", "head")])
def test_method_and_data_keys_change_hash_and_are_seen_by_the_suite(part, key):
    spec = _spec()
    config = spec.config
    other = spec.with_method(lr=0.2) if part == "method_config" else spec.replace(data={**spec.data, "head": 20})
    assert config_hash(other.config) != config_hash(config)
    job = Job(kind="run", label="x", name="x", seed=0, run=other, explicit={key: other.config[part][key]})
    assert _stale(job, config)


def test_a_run_spec_round_trips_through_its_stored_config():
    spec = _spec().with_method(lr=0.25).replace(tune={"budget": 0.5})
    again = RunSpec.from_config(spec.config)
    assert again == spec and again.config == spec.config
    assert isinstance(again.method_config.lr, float) and again.budget.unit == "epochs"
    assert not set(result_keys(spec.config)) & OPERATIONAL and result_keys(spec.config)["method_config"]["lr"] == 0.25


def test_a_run_spec_is_frozen_and_its_method_config_too():
    spec = _spec()
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.seed = 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.method_config.lr = 1.0


def _old_home(tmp_path):
    home = tmp_path / "home"
    shutil.copytree(OLD_REGISTRY, home)
    return Registry(home)


def test_a_registry_written_by_the_previous_layout_still_reads(tmp_path):
    reg = _old_home(tmp_path)
    assert reg.names() == ["old-fused", "old-lp-s0", "old-lp-wd"]
    assert [p.name for p in reg.check()] == []
    for name in reg.names():
        ex = reg.get(name)
        rec = ex.record
        assert rec.schema_version == 1 and "schema_version" not in ex.meta
        assert set(ExpertRecord.REQUIRED_META) <= set(rec.meta), name
        assert len(ex.class_counts) == len(rec.meta["classnames"]) == ex.logits("val").shape[1]
        assert ex.thresholds == (100, 20)
        assert ex.spent["seconds"] > 0 and ex.params["trainable"] > 0
        assert ex.rows("test") == len(ex.labels("test"))
    assert reg.get("old-lp-s0").history() == [] and reg.get("old-fused").history() is None  # L-BFGS: no steps
    lp, wd = reg.get("old-lp-s0"), reg.get("old-lp-wd")
    assert experiment_key(lp.config) != experiment_key(wd.config)  # weight_decay differs


def test_old_experts_fuse_and_report_with_the_new_code(tmp_path):
    from ltbench.fusion import fuse_experts
    from ltbench.report.tables import collect

    reg = _old_home(tmp_path)
    new = fuse_experts("old-lp-s0,old-lp-wd", "mean", name="new-fused", registry=reg, quiet=True)
    assert new.meta["schema_version"] == SCHEMA_VERSION and new.record.schema_version == SCHEMA_VERSION
    old = reg.get("old-fused")
    assert new.metrics["test"]["overall"] == pytest.approx(old.metrics["test"]["overall"])
    assert set(old.meta) - {"created", "format"} <= set(new.meta)  # nothing the old record had is lost
    df = collect(reg, ci=True)
    assert set(df["expert"]) >= {"old-lp-s0", "old-fused", "new-fused"}


def test_a_newer_schema_is_refused_with_a_clear_error():
    with pytest.raises(RegistryError, match="schema_version 99 is newer"):
        ExpertRecord.read({}, {}, {"schema_version": 99}, where="expert x")


def test_experts_without_thresholds_use_the_benchmark_defaults():
    from ltbench.metrics import shot_groups, thresholds

    assert thresholds({}) == (100, 20)  # Liu et al. 2019: many > 100, few < 20 training images
    assert thresholds({"many": 50, "few": 5}) == (50, 5)
    assert shot_groups([101, 100, 20, 19]).tolist() == [0, 1, 1, 2]
