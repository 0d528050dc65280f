from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.errors import DomainError, InvalidInput
from datasets.policy import ColumnSpec, DatasetPolicy
from privacy.budget import (
    BudgetExceeded,
    PrivacyCost,
    check_fits,
    compose,
    dataset_sme_cap,
    dataset_total_budget,
    format_insufficient_budget,
)

costs = st.builds(PrivacyCost, st.integers(0, 10**9), st.integers(0, 10**6))


def test_values_are_validated() -> None:
    for bad in ((-1, 0), (0, -1), (0, 10**12), (1.5, 0), (True, 0)):
        with pytest.raises(InvalidInput):
            PrivacyCost(*bad)  # type: ignore[arg-type]


def test_from_float_rounds_up_never_down() -> None:
    assert PrivacyCost.from_float(1.0) == PrivacyCost(1_000_000)
    assert PrivacyCost.from_float(0.1).epsilon_micro == 100_001  # 0.1 as a float is 0.1000000000000000055...
    assert PrivacyCost.from_float(0.5, 1e-6) == PrivacyCost(500_000, 1_000_000)
    assert PrivacyCost.from_fraction(Fraction(1, 3)) == PrivacyCost(333_334)
    with pytest.raises(InvalidInput):
        PrivacyCost.from_float(float("nan"))


@given(st.floats(0, 100, allow_nan=False), st.floats(0, 0.5, allow_nan=False))
def test_from_float_never_undercharges(eps: float, delta: float) -> None:
    cost = PrivacyCost.from_float(eps, delta)
    assert cost.epsilon >= Fraction(eps) > cost.epsilon - Fraction(1, 10**6)
    assert cost.delta >= Fraction(delta)


@given(costs, costs, costs)
def test_composition_is_exact_addition(a: PrivacyCost, b: PrivacyCost, c: PrivacyCost) -> None:
    assert (a + b) + c == a + (b + c) == compose([a, b, c])
    assert (a + b).epsilon == a.epsilon + b.epsilon
    assert a.fits_within(a + b) and b.fits_within(a + b)
    assert (a + b).remaining_after(b) == a


def test_fits_within_is_componentwise() -> None:
    assert PrivacyCost(5, 5).fits_within(PrivacyCost(5, 5))
    assert not PrivacyCost(6, 0).fits_within(PrivacyCost(5, 5))
    assert not PrivacyCost(0, 6).fits_within(PrivacyCost(5, 5))
    assert compose([]) == PrivacyCost.zero()


def test_display_is_exact() -> None:
    assert PrivacyCost(1_500_000).to_display() == "ε=1.5"
    assert PrivacyCost(3).to_display() == "ε=0.000003"
    assert PrivacyCost(2_000_000, 1_000_000).to_display() == "ε=2, δ=0.000001"


def test_insufficient_budget_message_and_error() -> None:
    requested, remaining = PrivacyCost(1_250_000), PrivacyCost(1_000_000)
    text = format_insufficient_budget(requested, remaining, what="grant")
    assert "requested ε=1.25" in text and "remaining ε=1" in text and "short by ε=0.25" in text
    with pytest.raises(BudgetExceeded) as err:
        check_fits(requested, remaining, what="grant")
    assert isinstance(err.value, DomainError)
    assert err.value.code == "budget_exceeded"
    assert (err.value.requested, err.value.remaining) == (requested, remaining)
    with pytest.raises(BudgetExceeded):
        remaining.remaining_after(requested)


def test_json_roundtrip_and_policy_budgets() -> None:
    cost = PrivacyCost(7, 9)
    assert PrivacyCost.from_dict(cost.to_dict()) == cost
    with pytest.raises(InvalidInput):
        PrivacyCost.from_dict({"epsilon_micro": 1, "eps": 2})
    policy = DatasetPolicy("u", 1, (ColumnSpec.unit("u"),), 3_000_000, 1_000_000, 10, 5)
    assert dataset_total_budget(policy) == PrivacyCost(3_000_000, 10)
    assert dataset_sme_cap(policy) == PrivacyCost(1_000_000, 5)


def test_reservation_check_names_the_cap_that_refuses() -> None:
    from privacy.budget import check_all_fit

    ask = PrivacyCost(500_000)
    check_all_fit(ask, {"dataset budget": PrivacyCost(600_000), "grant": PrivacyCost(500_000)})
    with pytest.raises(BudgetExceeded, match=r"insufficient grant: requested ε=0\.5, remaining ε=0\.4"):
        check_all_fit(ask, {"dataset budget": PrivacyCost(900_000), "grant": PrivacyCost(400_000)})
