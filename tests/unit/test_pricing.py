from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.errors import InvalidInput
from common.resources import Resources
from quotas.pricing import Quote, RateCard, ceil_credits, exact_cost, max_cost, price, quote, split_cost

CARD = RateCard(1, Fraction(1, 3), 50, Fraction(1, 7))

resources_st = st.builds(
    Resources,
    milli_cpu=st.integers(0, 256_000),
    gpus=st.integers(0, 16),
    memory_mib=st.integers(0, 1_048_576),
)
rate_st = st.one_of(
    st.integers(0, 10_000), st.fractions(min_value=0, max_value=10_000, max_denominator=10_000)
)
card_st = st.builds(RateCard, st.integers(0, 100), rate_st, rate_st, rate_st)
duration_st = st.integers(0, 30 * 24 * 3_600_000)


def _card_json(cpu_rate: str) -> str:
    return f'{{"version": 1, "credits_per_cpu_second": {cpu_rate}, "credits_per_gpu_second": 1, ' + (
        '"credits_per_gib_second": 1}'
    )


def test_one_cpu_for_one_second_costs_the_cpu_rate() -> None:
    card = RateCard(1, 5, 0, 0)
    assert price(Resources(milli_cpu=1000), 1000, card) == 5


def test_units_convert_milli_cpu_mib_and_ms_exactly() -> None:
    card = RateCard(1, 3_600, 36_000, 360)
    one_hour = 3_600_000
    assert price(Resources(milli_cpu=500), one_hour, card) == 1_800 * 3_600
    assert price(Resources(gpus=2), one_hour, card) == 72_000 * 3_600
    assert price(Resources(memory_mib=512), one_hour, card) == 180 * 3_600


def test_price_rounds_up_once_not_per_resource() -> None:
    card = RateCard(1, Fraction(1, 3), 0, Fraction(1, 3))
    # 1 CPU-second and 1 GiB-second: 1/3 + 1/3 = 2/3 -> 1, not ceil(1/3) + ceil(1/3) = 2.
    assert price(Resources(milli_cpu=1000, memory_mib=1024), 1000, card) == 1
    assert exact_cost(Resources(milli_cpu=1000, memory_mib=1024), 1000, card) == Fraction(2, 3)


def test_any_positive_usage_costs_at_least_one_credit() -> None:
    assert price(Resources(milli_cpu=1), 1, CARD) == 1
    assert price(Resources(milli_cpu=1), 0, CARD) == 0


def test_max_cost_is_price_over_max_runtime() -> None:
    res = Resources(2000, 1, 4096)
    assert max_cost(res, 600, CARD) == price(res, 600_000, CARD)
    with pytest.raises(InvalidInput):
        max_cost(res, 0, CARD)


@pytest.mark.parametrize("bad", [-1, 0.5, True, "1"])
def test_rate_card_refuses_negative_or_inexact_rates(bad: object) -> None:
    with pytest.raises(InvalidInput):
        RateCard(1, bad, 0, 0)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [-1, True])
def test_rate_card_version_is_a_non_negative_integer(bad: int) -> None:
    with pytest.raises(InvalidInput):
        RateCard(bad, 1, 1, 1)


def test_rate_card_stores_fractions_and_compares_by_value() -> None:
    card = RateCard(2, 3, Fraction(6, 4), 0)
    assert card.credits_per_cpu_second == Fraction(3)
    assert isinstance(card.credits_per_cpu_second, Fraction)
    assert card == RateCard(2, Fraction(3), Fraction(3, 2), Fraction(0))


@given(card_st)
def test_rate_card_json_round_trip(card: RateCard) -> None:
    assert RateCard.from_json(card.to_json()) == card
    assert RateCard.from_dict(card.to_dict()) == card


@pytest.mark.parametrize(
    "text",
    [
        "[]",
        "not json",
        '{"version": 1}',
        _card_json("0.5"),
        _card_json('"1/0"'),
        _card_json('"0.5"'),
        _card_json('"x/2"'),
    ],
)
def test_rate_card_from_json_refuses_bad_input(text: str) -> None:
    with pytest.raises(InvalidInput):
        RateCard.from_json(text)


def test_ceil_credits() -> None:
    assert ceil_credits(Fraction(0)) == 0
    assert ceil_credits(Fraction(1, 10**9)) == 1
    assert ceil_credits(Fraction(7)) == 7
    assert ceil_credits(Fraction(15, 2)) == 8


@given(resources_st, resources_st, duration_st, duration_st, card_st)
def test_price_is_monotone_in_resources_and_duration(
    a: Resources, extra: Resources, d: int, more: int, card: RateCard
) -> None:
    assert price(a, d, card) <= price(a + extra, d, card)
    assert price(a, d, card) <= price(a, d + more, card)


@given(resources_st, duration_st, card_st)
def test_price_is_the_ceiling_of_the_exact_cost(res: Resources, d: int, card: RateCard) -> None:
    exact = exact_cost(res, d, card)
    assert exact <= price(res, d, card) < exact + 1


@given(resources_st, duration_st, duration_st, card_st)
def test_pricing_in_two_pieces_never_costs_less(res: Resources, d1: int, d2: int, card: RateCard) -> None:
    # Rounding once over the whole is never more than rounding each piece.
    assert price(res, d1 + d2, card) <= price(res, d1, card) + price(res, d2, card)


@given(st.integers(0, 10**12), st.integers(0, 10_000))
def test_split_cost_adds_up_and_never_overpays_coverage(cost: int, bps: int) -> None:
    covered, copay = split_cost(cost, bps)
    assert covered + copay == cost
    assert covered >= 0 and copay >= 0
    assert covered * 10_000 <= cost * bps < (covered + 1) * 10_000


def test_split_cost_examples() -> None:
    assert split_cost(101, 5000) == (50, 51)
    assert split_cost(100, 10_000) == (100, 0)
    assert split_cost(100, 0) == (0, 100)
    with pytest.raises(InvalidInput):
        split_cost(100, 10_001)
    with pytest.raises(InvalidInput):
        split_cost(-1, 5000)


def test_quote_splits_max_cost_and_checks_affordability() -> None:
    card = RateCard(3, 1, 0, 0)
    q = quote(Resources(milli_cpu=1000), 101, card, 5000)
    assert q == Quote(rate_card_version=3, max_cost=101, coverage_bps=5000, covered=50, copay=51)
    assert q.affordable(available_credit=50, copay_headroom=51)
    assert not q.affordable(available_credit=49, copay_headroom=51)
    assert not q.affordable(available_credit=50, copay_headroom=50)
