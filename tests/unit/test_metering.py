from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.errors import InvalidInput
from common.resources import Resources
from quotas.metering import (
    ConservationViolation,
    ResourceKind,
    UsageRecord,
    clipped_quantity,
    conservation_violations,
    cost_of,
    meter,
    totals_by_resource,
)
from quotas.pricing import RateCard, price

resources_st = st.builds(Resources, st.integers(0, 64_000), st.integers(0, 8), st.integers(0, 262_144))
rate_st = st.one_of(st.integers(0, 1_000), st.fractions(min_value=0, max_value=1_000, max_denominator=1_000))
card_st = st.builds(RateCard, st.just(1), rate_st, rate_st, rate_st)
T0 = 1_764_000_000_000


def test_meter_is_allocation_times_elapsed_for_each_nonzero_resource() -> None:
    records = meter("job1", Resources(milli_cpu=1_500, gpus=0, memory_mib=2_048), T0, T0 + 10_000)
    assert records == [
        UsageRecord("job1", ResourceKind.CPU, 15_000_000, T0, T0 + 10_000),
        UsageRecord("job1", ResourceKind.MEMORY, 20_480_000, T0, T0 + 10_000),
    ]


def test_meter_of_an_instant_job_is_empty_and_time_cannot_run_backwards() -> None:
    assert meter("j", Resources(1_000, 1, 1), T0, T0) == []
    with pytest.raises(InvalidInput):
        meter("j", Resources(1_000, 1, 1), T0, T0 - 1)


def test_usage_record_validates_and_accepts_string_resource() -> None:
    record = UsageRecord("j", "gpu", 5, 0, 5)  # type: ignore[arg-type]
    assert record.resource is ResourceKind.GPU
    with pytest.raises(InvalidInput):
        UsageRecord("j", ResourceKind.CPU, -1, 0, 1)
    with pytest.raises(InvalidInput):
        UsageRecord("j", ResourceKind.CPU, 1, 2, 1)
    with pytest.raises(ValueError):
        UsageRecord("j", "disk", 1, 0, 1)  # type: ignore[arg-type]


@given(resources_st, st.integers(0, 7 * 24 * 3_600_000), card_st)
def test_metered_cost_equals_the_price_for_the_same_duration(res: Resources, d: int, card: RateCard) -> None:
    assert cost_of(meter("j", res, T0, T0 + d), card) == price(res, d, card)


@given(st.lists(st.tuples(resources_st, st.integers(0, 3_600_000)), max_size=10), card_st)
def test_cost_of_many_jobs_rounds_once_over_the_total(
    jobs: list[tuple[Resources, int]], card: RateCard
) -> None:
    records = [r for i, (res, d) in enumerate(jobs) for r in meter(f"j{i}", res, T0, T0 + d)]
    total = cost_of(records, card)
    assert total <= sum(price(res, d, card) for res, d in jobs)
    assert total == cost_of(reversed(records), card)


def test_totals_by_resource_has_every_kind() -> None:
    assert totals_by_resource([]) == {ResourceKind.CPU: 0, ResourceKind.GPU: 0, ResourceKind.MEMORY: 0}


def test_clipping_is_pro_rata_and_exact() -> None:
    record = UsageRecord("j", ResourceKind.CPU, 3_000, 0, 3)
    assert clipped_quantity(record, 0, 3) == 3_000
    assert clipped_quantity(record, 1, 2) == 1_000
    assert clipped_quantity(record, 2, 10) == 1_000
    assert clipped_quantity(record, 3, 10) == 0
    assert clipped_quantity(UsageRecord("j", ResourceKind.CPU, 1, 0, 3), 0, 1) == Fraction(1, 3)


def test_conservation_holds_for_jobs_that_fit_the_cluster() -> None:
    capacity = Resources(milli_cpu=4_000, gpus=1, memory_mib=8_192)
    records = [
        *meter("a", Resources(2_000, 1, 4_096), 0, 100),
        *meter("b", Resources(2_000, 0, 4_096), 0, 100),
        *meter("c", Resources(4_000, 1, 8_192), 100, 200),
    ]
    assert conservation_violations(records, capacity, 0, 200) == []
    assert conservation_violations(records, capacity, 50, 150) == []


def test_conservation_reports_metering_beyond_capacity() -> None:
    capacity = Resources(milli_cpu=4_000, gpus=1, memory_mib=8_192)
    records = [*meter("a", Resources(3_000, 1, 0), 0, 100), *meter("b", Resources(3_000, 0, 0), 50, 150)]
    # Over [0, 100): 3000*100 + 3000*50 = 450_000 > 4000*100.
    assert conservation_violations(records, capacity, 0, 100) == [
        ConservationViolation(ResourceKind.CPU, Fraction(450_000), 400_000)
    ]
    assert conservation_violations(records, capacity, 0, 100)[0].excess_unit_ms == 50_000
    assert str(conservation_violations(records, capacity, 0, 100)[0]) == (
        "cpu: 450000 milli-CPU·ms metered in the window, but the capacity allows only 400000 milli-CPU·ms "
        "(excess 50000)"
    )
    assert conservation_violations(records, capacity, 0, 150) == []


@given(
    st.lists(st.tuples(st.integers(0, 1_000), st.integers(0, 1_000)), max_size=12),
    st.integers(0, 1_000),
    st.integers(0, 1_000),
)
def test_jobs_run_one_after_another_never_violate(
    durations: list[tuple[int, int]], window_a: int, window_b: int
) -> None:
    # Jobs that each take the whole cluster, strictly one after another: always conserved, in every window.
    capacity = Resources(2_000, 1, 1_024)
    records, t = [], 0
    for i, (gap, d) in enumerate(durations):
        t += gap
        records += meter(f"j{i}", capacity, t, t + d)
        t += d
    lo, hi = sorted((window_a, window_b))
    assert conservation_violations(records, capacity, lo, hi) == []
