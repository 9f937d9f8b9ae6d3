import pytest

from ltbench.errors import ConfigError
from ltbench.config import parse_sets, parse_value
from ltbench.spec import resolve_run


def test_values_parse_to_types():
    assert parse_value("1e-3") == 1e-3 and parse_value("7") == 7 and parse_value("true") is True
    assert parse_value("null") is None and parse_value("[1, 2]") == [1, 2] and parse_value("adamw") == "adamw"


def test_keys_route_to_run_method_and_data():
    run = resolve_run({"method": "linear-probe", "loss": "la"},
                         parse_sets(["lr=0.5", "imbalance=50", "img_size=28", "seed=3"]))
    assert run.method_config.lr == 0.5 and run.method_config.loss == "la"
    assert run.data["imbalance"] == 50.0 and run.img_size == 28 and run.seed == 3
    # every default is written out
    assert run.method_config.optimizer == "adamw" and run.data["head"] == 500


def test_unknown_set_key_suggests_the_closest():
    with pytest.raises(ConfigError, match=r"unknown --set key 'imbalanse'.*Did you mean 'imbalance'"):
        resolve_run({}, {"imbalanse": 10})


def test_bad_set_syntax_and_type():
    with pytest.raises(ConfigError, match="key=value"):
        parse_sets(["lr"])
    with pytest.raises(ConfigError, match="expected a finite number"):
        resolve_run({}, {"lr": "fast"})


def test_bad_budget_fails_at_resolution():
    from ltbench.errors import BudgetError

    with pytest.raises(BudgetError, match="3parsecs"):
        resolve_run({"budget": "3parsecs"})
