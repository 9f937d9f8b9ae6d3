"""The one "did you mean" helper every lookup uses (ltbench/plugins/names.py)."""
import pytest

from ltbench.plugins.names import closest, suggest
from ltbench.training.tracking import log_targets


def test_suggest_names_the_closest_known_name():
    assert suggest("lpt2", ["lpt", "vpt-deep", "full-ft"]) == " Did you mean 'lpt'?"
    assert closest("vpt_deep", ["lpt", "vpt-deep"]) == "vpt-deep"


def test_suggest_is_empty_when_nothing_is_close():
    assert suggest("zzzz", ["lpt", "vpt-deep"]) == ""
    assert closest("zzzz", ["lpt"]) is None


def test_cutoff_is_honoured():
    # ratio("abcd", "abxy") == 0.5: a match at the registries' 0.5, none at the key checks' 0.6
    assert closest("abcd", ["abxy"], cutoff=0.5) == "abxy"
    assert closest("abcd", ["abxy"], cutoff=0.6) is None


def test_log_target_hint_uses_the_helper():
    with pytest.raises(ValueError, match="did you mean 'tensorboard'"):
        log_targets("tensorbord")


def test_every_pluggable_kind_is_registered_in_plugins():
    """One home: the registry each plug-in module uses is the one in ltbench/plugins.py."""
    import ltbench.backbones.dinov2
    import ltbench.backbones.factory  # noqa: F401  (imports every backbone module)
    import ltbench.backbones.clip
    import ltbench.data
    import ltbench.data.ood
    import ltbench.data.samplers
    import ltbench.fusion.scorers
    import ltbench.losses
    import ltbench.methods
    from ltbench import plugins

    homes = {"METHODS": ltbench.methods, "LOSSES": ltbench.losses, "SAMPLERS": ltbench.data.samplers,
             "SCORERS": ltbench.fusion.scorers, "DATASETS": ltbench.data, "BACKBONES": ltbench.backbones.dinov2,
             "CLIP_BACKBONES": ltbench.backbones.clip, "OOD_SETS": ltbench.data.ood}
    for name, module in homes.items():
        assert getattr(module, name) is getattr(plugins, name), name
        assert list(getattr(plugins, name)), f"{name} is empty once its module is imported"
    assert plugins.SAMPLERS.registered() == ["instance", "class", "sqrt", "dual"]
    assert all(plugins.SAMPLERS.help(n) for n in plugins.SAMPLERS)
