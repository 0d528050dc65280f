"""Exact DP sums cannot wrap: the policy limits (datasets.policy) and the checked aggregation (privacy.queries)
at their edge, compared with Python's unbounded integers."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from common.numbers import INT64_MAX, OutOfRange
from datasets.policy import MAX_ABS_UNITS, ColumnSpec, DatasetPolicy, PolicyError, check_sum_range
from datasets.prepare import bound_contributions
from privacy.queries import QuerySpec, _exact_aggregates, run_query

M = MAX_ABS_UNITS  # the largest per-row bound a policy may declare, in fixed-point units
EDGE_ROWS = INT64_MAX // M  # the most rows whose sum of M each still fits Int64


def _policy(lo: object = -M, hi: object = M, decimals: int = 0) -> DatasetPolicy:
    return DatasetPolicy(
        privacy_unit="pid",
        max_rows_per_unit=1,
        columns=(
            ColumnSpec.unit("pid"),
            ColumnSpec.numeric("x", lo, hi, decimals),
            ColumnSpec.categorical("g", ["a", "b"]),
        ),
        total_epsilon_micro=10_000_000,
        sme_cap_epsilon_micro=10_000_000,
    )


def _raw(values: list[int]) -> pl.DataFrame:
    n = len(values)
    return pl.DataFrame({"pid": list(range(n)), "x": values, "g": ["a"] * n})


def test_the_policy_of_the_issue_is_refused() -> None:
    with pytest.raises(PolicyError, match="2\\^53"):
        _policy(lo=0, hi=10**9, decimals=9)  # 10^18 units per row: two rows could wrap a 64-bit sum
    assert _policy(lo=0, hi="9007199.254740992", decimals=9).column("x").max_abs_units == M


@pytest.mark.parametrize("sign", [1, -1])
def test_sum_at_the_registration_edge_is_exact(sign: int) -> None:
    policy = _policy()
    values = [sign * M] * EDGE_ROWS
    bounded = bound_contributions(_raw(values), policy, np.random.default_rng(1))
    exact = _exact_aggregates([QuerySpec.make("sum", 1_000_000, column="x")], policy, bounded.drop("pid"))
    assert exact.scalar["sum:x"] == sum(values)  # Python's integers: no wrap
    assert abs(sum(values)) <= INT64_MAX < abs(sum(values)) + M
    grouped = _exact_aggregates(
        [QuerySpec.make("sum", 1_000_000, column="x", group_by="g")], policy, bounded.drop("pid")
    )
    assert grouped.grouped["g"]["sum:x"] == {"a": sum(values), "b": 0, "__other__": 0}


def test_one_row_more_is_refused_at_registration() -> None:
    policy = _policy()
    check_sum_range(policy, EDGE_ROWS)
    with pytest.raises(PolicyError, match=f"at most {EDGE_ROWS} rows"):
        bound_contributions(_raw([M] * (EDGE_ROWS + 1)), policy, np.random.default_rng(1))


def test_a_frame_past_the_edge_saturates_instead_of_wrapping() -> None:
    """A bounded frame that bypassed registration: Polars' own Int64 sum wraps, ours saturates (1-Lipschitz,
    so the sensitivity and the guarantee hold) and never changes sign."""
    policy = _policy()
    n = EDGE_ROWS + 2
    frame = pl.DataFrame({"x": [M] * n, "g": ["a"] * n}).with_columns(
        pl.col("g").cast(pl.Enum(["a", "b", "__other__"]))
    )
    assert frame.select(pl.col("x").sum()).item() < 0  # what the unchecked sum did
    exact = _exact_aggregates([QuerySpec.make("sum", 1_000_000, column="x")], policy, frame)
    assert exact.scalar["sum:x"] == min(n * M, INT64_MAX)
    released = run_query(QuerySpec.make("sum", 10_000_000, column="x"), policy, frame)
    assert released.values["*"] > 0


def test_budgets_beyond_64_bits_are_refused_with_the_policy() -> None:
    with pytest.raises(OutOfRange, match="total_epsilon_micro"):
        DatasetPolicy(
            privacy_unit="pid",
            max_rows_per_unit=1,
            columns=(ColumnSpec.unit("pid"),),
            total_epsilon_micro=10**30,
            sme_cap_epsilon_micro=1,
        )
