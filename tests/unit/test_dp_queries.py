from fractions import Fraction

import numpy as np
import polars as pl
import pytest

from common.errors import InvalidInput
from datasets.policy import OTHER_CATEGORY, ColumnSpec, DatasetPolicy
from datasets.prepare import bound_contributions
from privacy.budget import PrivacyCost
from privacy.queries import (
    TOTAL_KEY,
    QueryError,
    QueryKind,
    QuerySpec,
    estimate_cost,
    quantile_candidates,
    run_queries,
    run_query,
    validate,
)

K = 3
POLICY = DatasetPolicy(
    "pid",
    K,
    (
        ColumnSpec.unit("pid"),
        ColumnSpec.numeric("x", 0, 100, decimals=2),
        ColumnSpec.categorical("g", ["a", "b", "c", "never"]),
    ),
    total_epsilon_micro=100_000_000,
    sme_cap_epsilon_micro=50_000_000,
)
EPS = 1_000_000


@pytest.fixture(scope="module")
def bounded() -> pl.DataFrame:
    rng = np.random.default_rng(7)
    n = 400_000
    raw = pl.DataFrame(
        {
            "pid": rng.integers(0, n // 2, n),
            "x": rng.uniform(0, 100, n),
            "g": rng.choice(["a", "b", "c", "zzz"], n, p=[0.5, 0.3, 0.15, 0.05]),
        }
    )
    return bound_contributions(raw, POLICY, np.random.default_rng(8))


def all_specs(eps: int = EPS) -> list[QuerySpec]:
    return [
        QuerySpec.make("count", eps),
        QuerySpec.make("count", eps, group_by="g"),
        QuerySpec.make("sum", eps, column="x"),
        QuerySpec.make("sum", eps, column="x", group_by="g"),
        QuerySpec.make("mean", eps, column="x"),
        QuerySpec.make("mean", eps, column="x", group_by="g"),
        QuerySpec.make("histogram", eps, column="g"),
        QuerySpec.make("quantile", eps, column="x", quantiles=[0.1, "1/2", Fraction(9, 10)]),
    ]


@pytest.mark.parametrize("eps", [3, 1_000_001, 2_500_000])
def test_estimate_equals_charge_equals_asked(bounded: pl.DataFrame, eps: int) -> None:
    specs = all_specs(eps)
    results = run_queries(specs, POLICY, bounded)
    for spec, result in zip(specs, results, strict=True):
        assert estimate_cost(spec, POLICY) == result.charged == PrivacyCost(eps)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (QuerySpec.make("sum", EPS), "needs a column"),
        (QuerySpec.make("sum", EPS, column="g"), "must be a numeric column"),
        (QuerySpec.make("sum", EPS, column="pid"), "must be a numeric column"),
        (QuerySpec.make("mean", EPS, column="nope"), "not declared"),
        (QuerySpec.make("count", EPS, column="x"), "takes no column"),
        (QuerySpec.make("count", EPS, group_by="x"), "categorical"),
        (QuerySpec.make("count", EPS, group_by="pid"), "categorical"),
        (QuerySpec.make("histogram", EPS, column="x"), "categorical"),
        (QuerySpec.make("quantile", EPS, column="x"), "1..20 levels"),
        (QuerySpec.make("quantile", EPS, column="x", quantiles=[0.5], group_by="g"), "no group_by"),
        (QuerySpec.make("mean", 1, column="x"), "too small"),
        (QuerySpec.make("count", PrivacyCost(EPS, 5)), "δ = 0"),
        (QuerySpec.make("count", EPS, quantiles=[0.5]), "only a quantile"),
    ],
)
def test_invalid_queries_fail_before_any_data(spec: QuerySpec, message: str) -> None:
    with pytest.raises(QueryError, match=message) as err:
        validate(spec, POLICY)
    assert err.value.code == "invalid_query"
    not_a_bounded_version = pl.DataFrame({"anything": [1]})
    with pytest.raises(QueryError):  # validation runs before the frame is even looked at
        run_query(spec, POLICY, not_a_bounded_version)


@pytest.mark.parametrize(
    ("levels", "code"),
    [
        ([1], "out_of_range"),
        ([0], "out_of_range"),
        (["1e-99999999"], "invalid_number"),
        ([True], "invalid_number"),
    ],
)
def test_levels_are_parsed_bounded_when_the_spec_is_built(levels: list[object], code: str) -> None:
    with pytest.raises(InvalidInput) as err:
        QuerySpec.make("quantile", EPS, column="x", quantiles=levels)  # type: ignore[arg-type]
    assert err.value.code == code
    assert "quantiles[0]" in err.value.detail


def test_duplicate_levels_are_refused_as_exact_values() -> None:
    with pytest.raises(InvalidInput, match="repeats") as err:
        QuerySpec.from_dict(
            {"kind": "quantile", "epsilon_micro": EPS, "column": "x", "quantiles": [0.5, "1/2"]}
        )
    assert err.value.code == "duplicate_value"
    with pytest.raises(InvalidInput):
        QuerySpec.make("quantile", EPS, column="x", quantiles=["0.50", 0.5])


@pytest.mark.parametrize("eps", [0, 10**30, 2**63, True, 1.5])
def test_epsilon_micro_is_range_checked(eps: object) -> None:
    with pytest.raises(InvalidInput) as err:
        QuerySpec.from_dict({"kind": "count", "epsilon_micro": eps})
    assert err.value.code in {"out_of_range", "invalid_number"}


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(QueryError):
        QuerySpec.make("max", EPS, column="x")


def test_frames_that_are_not_bounded_versions_are_refused(bounded: pl.DataFrame) -> None:
    with pytest.raises(ValueError, match="Int64 fixed-point"):
        run_query(QuerySpec.make("count", EPS), POLICY, bounded.with_columns(pl.col("x").cast(pl.Float64)))


def test_sensitivities_in_noise_scales(bounded: pl.DataFrame) -> None:
    count, s, mean = run_queries(
        [
            QuerySpec.make("count", 2 * EPS),
            QuerySpec.make("sum", 2 * EPS, column="x"),
            QuerySpec.make("mean", 2 * EPS, column="x"),
        ],
        POLICY,
        bounded,
    )
    assert count.noise_scale["count"] == pytest.approx(K / 2)  # Δ = k rows per unit, ε = 2
    assert s.noise_scale["sum"] == pytest.approx(K * 100 / 2)  # Δ = k · max|bound|
    assert mean.noise_scale == pytest.approx({"sum": K * 100, "count": K})  # ε split in halves


def test_accuracy_on_large_data(bounded: pl.DataFrame) -> None:
    eps = 10 * EPS
    exact = bounded.select(pl.len(), pl.col("x").sum().alias("s"))
    n, total = exact["len"].item(), exact["s"].item() / 100
    by_g = dict(bounded.group_by(pl.col("g").cast(pl.String)).len().iter_rows())
    results = run_queries(all_specs(eps), POLICY, bounded)
    count, gcount, s, gsum, mean, gmean, hist, quant = results
    # Laplace tails beyond 40 scales have probability e^-40: these bounds cannot fail by chance.
    assert abs(count.values[TOTAL_KEY] - n) <= 40 * K / 10
    assert abs(s.values[TOTAL_KEY] - total) <= 40 * K * 100 / 10
    assert abs(mean.values[TOTAL_KEY] - total / n) < 0.01
    for key in POLICY.column("g").key_set:
        assert abs(hist.values[key] - by_g.get(key, 0)) <= 40 * K / 10
        assert abs(gcount.values[key] - by_g.get(key, 0)) <= 40 * K / 10
    assert set(gsum.values) == set(gmean.values) == {"a", "b", "c", "never", OTHER_CATEGORY}
    assert gmean.values["a"] == pytest.approx(50, abs=1)
    assert 0 <= gmean.values["never"] <= 100  # an absent group is still released, clamped to bounds
    assert list(quant.values) == ["0.1", "0.5", "0.9"]
    for level, value in zip((10, 50, 90), quant.values.values(), strict=True):
        assert value == pytest.approx(level, abs=2)
    lo, hi = count.confidence_interval[TOTAL_KEY]
    assert lo < count.values[TOTAL_KEY] < hi


def test_results_hold_only_public_keys_and_candidates(bounded: pl.DataFrame) -> None:
    results = run_queries(all_specs(), POLICY, bounded)
    grid = {c / 100 for c in quantile_candidates(POLICY.column("x"))}
    for spec, result in zip(all_specs(), results, strict=True):
        if spec.kind is QueryKind.QUANTILE:
            assert set(result.values.values()) <= grid
        elif spec.group_by or spec.kind is QueryKind.HISTOGRAM:
            assert tuple(result.values) == POLICY.column("g").key_set
        else:
            assert tuple(result.values) == (TOTAL_KEY,)
        assert set(result.to_dict()) == {"kind", "values", "charged", "noise_scale", "confidence_interval"}


def test_out_of_bounds_storage_cannot_enlarge_sensitivity(bounded: pl.DataFrame) -> None:
    corrupt = bounded.with_columns(pl.lit(10**12, dtype=pl.Int64).alias("x"))
    result = run_query(QuerySpec.make("sum", 50 * EPS, column="x"), POLICY, corrupt)
    assert abs(result.values[TOTAL_KEY] - 100 * corrupt.height) <= 40 * K * 100 / 50


def test_quantile_candidates_are_public_and_bounded() -> None:
    small = ColumnSpec.numeric("s", 0, 10)
    assert quantile_candidates(small) == list(range(11))
    grid = quantile_candidates(POLICY.column("x"))
    assert grid[0] == 0 and grid[-1] == 10_000 and len(grid) <= 1025


def test_specs_roundtrip_through_json() -> None:
    for spec in all_specs():
        assert QuerySpec.from_dict(spec.to_dict()) == spec
    assert QuerySpec.from_dict({"kind": "count", "epsilon_micro": 5}) == QuerySpec.make("count", 5)
    for bad in (
        {"kind": "count"},
        {"kind": "count", "epsilon_micro": 1.5},
        {"kind": "count", "epsilon_micro": 5, "sql": "select *"},
        {"kind": "quantile", "epsilon_micro": 5, "column": "x", "quantiles": "0.5"},
        {"kind": "quantile", "epsilon_micro": 5, "column": "x", "quantiles": [True]},
        {"kind": "sum", "epsilon_micro": 5, "column": 3},
    ):
        with pytest.raises(InvalidInput):  # QueryError, or the bounded parser's invalid_number
            QuerySpec.from_dict(bad)


@pytest.mark.parametrize("scale", [0.3, 1.0, 3.0, 250.0])
def test_confidence_half_width_covers_95_percent_of_opendp_noise(scale: float) -> None:
    from privacy.queries import CI_MISS, laplace_half_width

    h = laplace_half_width(scale, CI_MISS)

    # Exact tail of the discrete Laplace: P(|Z| > h) <= 5%, and h is the smallest such integer.
    def tail(t: int) -> float:
        return 2 * np.exp(-t / scale) / (1 + np.exp(-1 / scale)) if t >= 1 else 1.0

    assert tail(h + 1) <= CI_MISS < tail(h)
    # And OpenDP's sampler agrees (20,000 draws; 4.9 sigma margin so the check is not flaky).
    from privacy.queries import _laplace_vector

    noise = np.asarray(_laplace_vector(scale)(np.zeros(20_000, dtype=np.int64)))
    miss = float(np.mean(np.abs(noise) > h))
    assert miss <= CI_MISS + 4.9 * np.sqrt(CI_MISS * (1 - CI_MISS) / 20_000)
