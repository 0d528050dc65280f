"""Canonical JSON: deterministic bytes, and refusal of what must never be hashed or signed."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.canonical import canonical_json

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


def test_sorted_compact_utf8() -> None:
    assert canonical_json({"b": 1, "a": [True, None, "é"], "c": {"z": 0, "y": -1}}) == (
        '{"a":[true,null,"é"],"b":1,"c":{"y":-1,"z":0}}'.encode()
    )
    assert canonical_json('line\nquote"back\\slash\x01') == b'"line\\nquote\\"back\\\\slash\\u0001"'
    assert canonical_json((1, 2)) == canonical_json([1, 2]) == b"[1,2]"
    assert canonical_json(10**30) == b"1000000000000000000000000000000"


@pytest.mark.parametrize("value", [1.0, math.nan, math.inf, -math.inf, {"a": 0.5}, [1, [2, [3.0]]]])
def test_floats_and_nan_are_refused(value: Any) -> None:
    with pytest.raises(TypeError, match="float"):
        canonical_json(value)


@pytest.mark.parametrize("value", [{1: "a"}, {None: 1}, b"bytes", {1, 2}, object(), {"a": {"b": b"x"}}])
def test_other_types_are_refused(value: Any) -> None:
    with pytest.raises(TypeError):
        canonical_json(value)


def test_lone_surrogates_and_deep_nesting_are_refused() -> None:
    with pytest.raises(ValueError, match="surrogate"):
        canonical_json({"k": "\ud800"})
    with pytest.raises(ValueError, match="surrogate"):
        canonical_json({"\udfff": 1})
    deep: Any = 0
    for _ in range(100):
        deep = [deep]
    with pytest.raises(ValueError, match="deeper"):
        canonical_json(deep)


@given(JSON_VALUES)
def test_roundtrip_is_a_fixed_point(value: Any) -> None:
    encoded = canonical_json(value)
    decoded = json.loads(encoded)
    assert canonical_json(decoded) == encoded


@given(st.dictionaries(st.text(), st.integers(), max_size=8))
def test_key_insertion_order_does_not_matter(value: dict[str, int]) -> None:
    reordered = dict(reversed(list(value.items())))
    assert canonical_json(value) == canonical_json(reordered)
