"""The one "did you mean" helper every lookup uses (ltbench/_registry.py)."""
import pytest

from ltbench._registry import closest, suggest
from ltbench.tracking import log_targets


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
