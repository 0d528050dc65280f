import json
from fractions import Fraction

import pytest

from common.numbers import InvalidNumber
from datasets.policy import (
    OTHER_CATEGORY,
    ColumnKind,
    ColumnSpec,
    DatasetPolicy,
    PolicyError,
    validate_against_schema,
)


def make_policy(**over: object) -> DatasetPolicy:
    base: dict[str, object] = {
        "privacy_unit": "pid",
        "max_rows_per_unit": 3,
        "columns": (
            ColumnSpec.unit("pid"),
            ColumnSpec.numeric("income", "-2.5", 1000, decimals=1),
            ColumnSpec.categorical("district", ["north", "south"]),
        ),
        "total_epsilon_micro": 10_000_000,
        "sme_cap_epsilon_micro": 2_000_000,
        "total_delta_e12": 1000,
        "sme_cap_delta_e12": 100,
    }
    base.update(over)
    return DatasetPolicy(**base)  # type: ignore[arg-type]


def test_numeric_bounds_are_exact_fixed_point() -> None:
    col = ColumnSpec.numeric("x", "-2.5", Fraction(7, 2), decimals=1)
    assert (col.lo_units, col.hi_units, col.max_abs_units, col.scale) == (-25, 35, 35, 10)
    with pytest.raises(PolicyError, match="not exact at 0 decimals"):
        ColumnSpec.numeric("x", "0.5", 1)
    with pytest.raises(PolicyError, match="below hi"):
        ColumnSpec.numeric("x", 5, 5)
    with pytest.raises(InvalidNumber):
        ColumnSpec.numeric("x", "abc", 5)
    with pytest.raises(PolicyError):
        ColumnSpec.numeric("x", 0, 1, decimals=12)


def test_categories_are_public_and_checked() -> None:
    col = ColumnSpec.categorical("c", ["a", "b"])
    assert col.key_set == ("a", "b", OTHER_CATEGORY)
    for bad in ([], ["a", "a"], ["", "b"], [OTHER_CATEGORY]):
        with pytest.raises(PolicyError):
            ColumnSpec.categorical("c", bad)
    with pytest.raises(PolicyError):
        ColumnSpec.numeric("n", 0, 1).key_set  # noqa: B018


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"max_rows_per_unit": 0}, "max_rows_per_unit"),
        ({"privacy_unit": "other"}, "privacy unit"),
        ({"sme_cap_epsilon_micro": 20_000_000}, "per-SME cap"),
        ({"total_epsilon_micro": 0, "sme_cap_epsilon_micro": 0}, "positive"),
        ({"total_delta_e12": 10**12}, "below 1"),
        ({"columns": (ColumnSpec.unit("pid"), ColumnSpec.unit("pid"))}, "unique"),
    ],
)
def test_policy_validation(over: dict[str, object], message: str) -> None:
    with pytest.raises(PolicyError, match=message) as err:
        make_policy(**over)
    assert err.value.code == "invalid_policy"


def test_json_roundtrip_holds_schema_and_policy_only() -> None:
    policy = make_policy()
    data = json.loads(json.dumps(policy.to_dict()))
    assert DatasetPolicy.from_dict(data) == policy
    assert data["columns"][1] == {
        "name": "income",
        "kind": "numeric",
        "lo": "-2.5",
        "hi": "1000.0",
        "decimals": 1,
    }
    with pytest.raises(PolicyError):
        DatasetPolicy.from_dict({"columns": "x"})
    with pytest.raises(PolicyError):
        DatasetPolicy.from_dict({**data, "columns": [{"name": "pid", "kind": "weird"}]})


@pytest.mark.parametrize(
    ("misspelt", "where"),
    [
        (lambda d: {**d, "max_row_per_unit": 1}, "the policy"),
        (lambda d: {**d, "total_budget": {**d["total_budget"], "epsilon": 5}}, "total_budget"),
        (lambda d: {**d, "sme_cap": {**d["sme_cap"], "delta": 1}}, "sme_cap"),
        (
            lambda d: {**d, "columns": [d["columns"][0], {**d["columns"][1], "upper": "9"}, d["columns"][2]]},
            "income",
        ),
        (lambda d: {**d, "columns": [{**d["columns"][0], "lo": "0"}, *d["columns"][1:]]}, "pid"),
        (lambda d: {**d, "columns": [*d["columns"][:2], {**d["columns"][2], "decimals": 1}]}, "district"),
    ],
)
def test_a_misspelt_or_misplaced_field_is_refused_by_name(misspelt, where) -> None:  # type: ignore[no-untyped-def]
    data = json.loads(json.dumps(make_policy().to_dict()))
    with pytest.raises(PolicyError, match="unknown fields") as err:
        DatasetPolicy.from_dict(misspelt(data))
    assert where in str(err.value)


def test_schema_validation() -> None:
    policy = make_policy()
    validate_against_schema(policy, {"pid": "int", "income": "float", "district": "string"})
    with pytest.raises(PolicyError, match=r"not declared.*\['secret'\]"):
        validate_against_schema(
            policy, {"pid": "int", "income": "float", "district": "string", "secret": "string"}
        )
    with pytest.raises(PolicyError, match="missing from the data"):
        validate_against_schema(policy, {"pid": "int", "income": "float"})
    with pytest.raises(PolicyError, match="declared numeric but the data holds string"):
        validate_against_schema(policy, {"pid": "int", "income": "string", "district": "string"})
    assert [c.name for c in policy.columns_of(ColumnKind.NUMERIC)] == ["income"]
