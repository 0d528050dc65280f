import hashlib
from collections import Counter

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datasets.policy import OTHER_CATEGORY, ColumnSpec, DatasetPolicy, PolicyError
from datasets.prepare import (
    DatasetFormatError,
    bound_contributions,
    content_hash,
    natural_units,
    prepare_bounded,
    read_bounded,
    read_table,
    schema_of,
    to_parquet_bytes,
)

POLICY = DatasetPolicy(
    "pid",
    2,
    (
        ColumnSpec.unit("pid"),
        ColumnSpec.numeric("income", 0, "100.5", decimals=1),
        ColumnSpec.categorical("district", ["north", "south"]),
    ),
    total_epsilon_micro=5_000_000,
    sme_cap_epsilon_micro=1_000_000,
)


def raw(n: int = 5000, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    return pl.DataFrame(
        {
            "pid": rng.integers(0, n // 4, n),
            "income": rng.uniform(-50, 150, n),
            "district": rng.choice(["north", "south", "east"], n),
        }
    )


def test_each_unit_keeps_at_most_k_rows_and_all_units_survive() -> None:
    df = raw()
    bounded = bound_contributions(df, POLICY, np.random.default_rng(1))
    per_unit = bounded.group_by("pid").len()
    assert per_unit["len"].max() == 2
    assert set(per_unit["pid"]) == set(df["pid"])
    expected = df.group_by("pid").len().select(pl.col("len").clip(0, 2).sum()).item()
    assert bounded.height == expected


def test_kept_rows_are_a_random_subset() -> None:
    df = pl.DataFrame({"pid": [1] * 10, "income": [float(i) for i in range(10)], "district": ["north"] * 10})
    picks = {
        tuple(sorted(bound_contributions(df, POLICY, np.random.default_rng(s))["income"].to_list()))
        for s in range(30)
    }
    assert len(picks) > 5  # not always the first k rows
    assert all(len(p) == 2 for p in picks)


def test_numeric_clamped_to_fixed_point_and_categoricals_mapped() -> None:
    df = pl.DataFrame(
        {
            "pid": [1, 2, 3, 4, 5],
            "income": [-3.0, 200.0, 12.34, None, float("nan")],
            "district": ["north", "east", None, "south", "north"],
        }
    )
    out = bound_contributions(df, POLICY, np.random.default_rng(0)).sort("pid")
    assert out.schema["income"] == pl.Int64
    assert out["income"].to_list() == [0, 1005, 123, 0, 0]  # clamp, x10 fixed point, nulls -> lo
    assert out["district"].cast(pl.String).to_list() == [
        "north",
        OTHER_CATEGORY,
        OTHER_CATEGORY,
        "south",
        "north",
    ]
    assert out.schema["district"] == pl.Enum(["north", "south", OTHER_CATEGORY])
    assert natural_units(out, POLICY)["income"].to_list() == [0.0, 100.5, 12.3, 0.0, 0.0]


def test_null_units_are_dropped() -> None:
    df = pl.DataFrame({"pid": [1, None, None], "income": [1.0, 2.0, 3.0], "district": ["north"] * 3})
    assert bound_contributions(df, POLICY, np.random.default_rng(0)).height == 1


def test_schema_must_match_policy() -> None:
    with pytest.raises(PolicyError):
        bound_contributions(raw().with_columns(extra=pl.lit(1)), POLICY)
    assert schema_of(raw()) == {"pid": "int", "income": "float", "district": "string"}


def test_parquet_and_csv_roundtrip_with_stable_hash() -> None:
    df = raw(200)
    csv = df.write_csv().encode()
    data, digest = prepare_bounded(csv, "csv", POLICY, np.random.default_rng(3))
    assert digest == hashlib.sha256(data).hexdigest() == content_hash(data)
    back = read_bounded(data, POLICY)
    assert back.equals(bound_contributions(read_table(csv, "csv"), POLICY, np.random.default_rng(3)))
    assert read_table(to_parquet_bytes(df), "parquet").equals(df)


def test_unreadable_input_does_not_echo_content() -> None:
    with pytest.raises(DatasetFormatError) as err:
        read_table(b"SECRET-CELL-VALUE not parquet", "parquet")
    assert "SECRET" not in err.value.detail
    assert err.value.code == "invalid_dataset"


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 6), st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(["north", "x"])
        ),
        min_size=0,
        max_size=60,
    ),
    st.integers(0, 2**32),
)
def test_bounding_invariants_hold_for_any_input(rows: list[tuple[int, float, str]], seed: int) -> None:
    df = pl.DataFrame(
        rows, schema={"pid": pl.Int64, "income": pl.Float64, "district": pl.String}, orient="row"
    )
    out = bound_contributions(df, POLICY, np.random.default_rng(seed))
    if out.height:
        assert out.group_by("pid").len()["len"].max() <= POLICY.max_rows_per_unit  # type: ignore[operator]
        assert out["income"].min() >= 0 and out["income"].max() <= 1005  # type: ignore[operator]
    assert out["income"].null_count() == 0 and out["district"].null_count() == 0
    assert out.height == sum(min(c, 2) for c in Counter(r[0] for r in rows).values())
