import pytest

from ltbench.budget import Budget, Meter, count_flops, parse_budget
from ltbench.errors import BudgetError


@pytest.mark.parametrize("text,amount,unit", [
    ("3epochs", 3, "epochs"), ("1epoch", 1, "epochs"), ("500steps", 500, "steps"),
    ("2e13flops", 2e13, "flops"), ("600s", 600, "seconds"), (" 1.5 epochs ", 1.5, "epochs"),
])
def test_parse(text, amount, unit):
    assert parse_budget(text) == Budget(amount, unit)


@pytest.mark.parametrize("text", ["", "3", "epochs", "3parsecs", "-1steps", "0s", "2.5steps"])
def test_parse_errors_name_the_value(text):
    with pytest.raises(BudgetError, match="budget"):
        parse_budget(text)


def test_meter_fraction_and_exhaustion():
    m = Meter(Budget(10, "steps"))
    m.charge(steps=4)
    assert m.fraction == pytest.approx(0.4) and not m.exhausted
    m.charge(steps=6)
    assert m.exhausted and m.fraction == 1.0


def test_count_flops_of_a_matmul():
    import torch

    a, b = torch.randn(8, 16), torch.randn(16, 4)
    assert count_flops(lambda: a @ b) == 2 * 8 * 16 * 4
