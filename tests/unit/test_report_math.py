from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.errors import InvalidInput
from common.resources import Resources
from quotas.metering import meter
from quotas.report import (
    TOTAL_ROW_ID,
    CreditSummary,
    ReportRow,
    SettledLine,
    SmeTotals,
    aggregate,
    build_report,
    display_hours,
    subsidy_report,
)

HOUR = 3_600_000


def test_one_sme_row_has_hours_cost_split_and_credit() -> None:
    usage = [("acme", r) for r in meter("j1", Resources(2_000, 1, 2_048), 0, HOUR)]
    usage += [("acme", r) for r in meter("j2", Resources(500, 0, 0), 0, HOUR // 2)]
    lines = [SettledLine("acme", "j1", 100, 60, 40), SettledLine("acme", "j2", 7, 3, 4)]
    credits = [CreditSummary("acme", redeemed=1_000, expired=50, remaining=887)]
    report = subsidy_report(lines, usage, credits)
    assert report.rows == (
        ReportRow(
            org_id="acme",
            jobs=2,
            cpu_hours=Fraction(9, 4),
            gpu_hours=Fraction(1),
            gib_hours=Fraction(2),
            cost=107,
            voucher_share=63,
            copay=44,
            credit_redeemed=1_000,
            credit_expired=50,
            credit_left=887,
        ),
    )
    assert report.totals == ReportRow(TOTAL_ROW_ID, *[getattr(report.rows[0], f) for f in _FIELDS[1:]])


_FIELDS = [
    "org_id",
    "jobs",
    "cpu_hours",
    "gpu_hours",
    "gib_hours",
    "cost",
    "voucher_share",
    "copay",
    "credit_redeemed",
    "credit_expired",
    "credit_left",
]


def test_every_sme_seen_anywhere_gets_a_row_sorted_by_org() -> None:
    report = subsidy_report(
        [SettledLine("b", "j", 1, 1, 0)],
        [("c", r) for r in meter("k", Resources(1_000), 0, HOUR)],
        [CreditSummary("a", 10, 0, 10)],
    )
    assert [row.org_id for row in report.rows] == ["a", "b", "c"]
    assert report.rows[2].cpu_hours == 1 and report.rows[2].jobs == 0


def test_inconsistent_inputs_are_refused() -> None:
    with pytest.raises(InvalidInput):
        SettledLine("a", "j", 10, 6, 5)
    with pytest.raises(InvalidInput):
        SmeTotals("a", cost=10, voucher_share=6, copay=5)
    with pytest.raises(InvalidInput):
        CreditSummary("a", -1, 0, 0)
    with pytest.raises(InvalidInput):
        build_report([SmeTotals("a"), SmeTotals("a")])
    with pytest.raises(InvalidInput):
        aggregate([], [], [CreditSummary("a", 1, 0, 1), CreditSummary("a", 1, 0, 1)])


@pytest.mark.parametrize(
    ("value", "places", "text"),
    [
        (Fraction(0), 2, "0.00"),
        (Fraction(1, 8), 2, "0.13"),  # 0.125 rounds half up
        (Fraction(1, 3), 2, "0.33"),
        (Fraction(2, 3), 3, "0.667"),
        (Fraction(12345, 100), 1, "123.5"),  # 123.45 -> 123.5
        (Fraction(5, 2), 0, "3"),
        (Fraction(7), 2, "7.00"),
    ],
)
def test_display_hours_rounds_half_up(value: Fraction, places: int, text: str) -> None:
    assert display_hours(value, places) == text


def test_display_row_keeps_credits_exact() -> None:
    row = build_report([SmeTotals("a", 1, cpu_milli_ms=1_000 * HOUR // 3, cost=5, voucher_share=5)]).rows[0]
    assert row.display() == {
        "org_id": "a",
        "jobs": 1,
        "cpu_hours": "0.33",
        "gpu_hours": "0.00",
        "gib_hours": "0.00",
        "cost": 5,
        "voucher_share": 5,
        "copay": 0,
        "credit_redeemed": 0,
        "credit_expired": 0,
        "credit_left": 0,
    }


totals_st = st.builds(
    SmeTotals,
    org_id=st.text("abcdef", min_size=1, max_size=3),
    jobs=st.integers(0, 10**6),
    cpu_milli_ms=st.integers(0, 10**15),
    gpu_ms=st.integers(0, 10**12),
    memory_mib_ms=st.integers(0, 10**15),
    cost=st.just(0),
    credit_redeemed=st.integers(0, 10**9),
    credit_expired=st.integers(0, 10**9),
    credit_left=st.integers(0, 10**9),
).flatmap(
    lambda t: st.tuples(st.integers(0, 10**9), st.integers(0, 10**9)).map(
        lambda vc: SmeTotals(
            t.org_id, t.jobs, t.cpu_milli_ms, t.gpu_ms, t.memory_mib_ms, sum(vc), vc[0], vc[1],
            t.credit_redeemed, t.credit_expired, t.credit_left,
        )
    )
)  # fmt: skip


@given(st.lists(totals_st, max_size=20, unique_by=lambda t: t.org_id))
def test_totals_equal_the_sums_of_the_rows_exactly(aggregates: list[SmeTotals]) -> None:
    report = build_report(aggregates)
    for name in _FIELDS[1:]:
        assert getattr(report.totals, name) == sum(getattr(row, name) for row in report.rows)
    assert report.totals.cost == report.totals.voucher_share + report.totals.copay
    assert all(row.cost == row.voucher_share + row.copay for row in report.rows)


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c"]),
            st.builds(Resources, st.integers(0, 8_000), st.integers(0, 2), st.integers(0, 16_384)),
            st.integers(0, 10 * HOUR),
            st.integers(0, 1_000),
            st.integers(0, 1_000),
        ),
        max_size=30,
    )
)
def test_raw_and_pre_aggregated_paths_agree(
    jobs: list[tuple[str, Resources, int, int, int]],
) -> None:
    lines, usage = [], []
    sums: dict[str, list[int]] = {}
    for i, (org, res, duration, voucher, copay) in enumerate(jobs):
        lines.append(SettledLine(org, f"j{i}", voucher + copay, voucher, copay))
        usage += [(org, r) for r in meter(f"j{i}", res, 0, duration)]
        s = sums.setdefault(org, [0] * 7)
        for k, v in enumerate(
            (
                1,
                res.milli_cpu * duration,
                res.gpus * duration,
                res.memory_mib * duration,
                voucher + copay,
                voucher,
                copay,
            )
        ):
            s[k] += v
    pre = [SmeTotals(org, *s) for org, s in sums.items()]
    assert subsidy_report(lines, usage, []) == build_report(pre)
