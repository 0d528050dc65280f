"""The one bounded parser of user numbers and text (``common.numbers``): any input, an answer within a bound."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.errors import InvalidInput
from common.numbers import (
    INT64_MAX,
    MAX_EXPONENT,
    ControlCharacter,
    DuplicateValue,
    InvalidNumber,
    OutOfRange,
    check_int,
    check_json_text,
    check_text,
    check_unique,
    parse_exact,
)

CODES = {"invalid_number", "out_of_range"}
ANY_VALUE = st.one_of(
    st.text(max_size=200),
    st.from_regex(r"[+-]?[0-9]{0,30}(\.[0-9]{0,30})?([eE][+-]?[0-9]{1,12})?", fullmatch=True),
    st.from_regex(r"[+-]?[0-9]{1,40}/[0-9]{1,40}", fullmatch=True),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.decimals(allow_nan=True, allow_infinity=True),
    st.fractions(),
    st.booleans(),
    st.none(),
)


def _magnitude_ok(value: Fraction) -> bool:
    """A parsed value is small by construction: numerator and denominator below 10^(40 + 64 + 1)."""
    bound = 10 ** (MAX_EXPONENT + 65)
    return bool(abs(value.numerator) < bound and value.denominator < bound)


@settings(max_examples=500, deadline=None)
@given(ANY_VALUE)
def test_any_input_is_a_bounded_value_or_a_clear_error(value: object) -> None:
    try:
        parsed = parse_exact(value, "field", lo=-(10**9), hi=10**9)
    except InvalidInput as exc:
        assert exc.code in CODES
        assert exc.detail.startswith("field: ")
        return
    assert -(10**9) <= parsed <= 10**9 and _magnitude_ok(parsed)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(min_value=MAX_EXPONENT + 1, max_value=10**9 - 1),
    st.sampled_from(["1e-", "1e", "9.5E+", "-2e-"]),
)
def test_huge_exponents_are_refused_before_conversion(exponent: int, prefix: str) -> None:
    with pytest.raises(InvalidNumber, match="exponent"):
        parse_exact(f"{prefix}{exponent}", "q")


def test_the_stall_of_the_issue_is_refused() -> None:
    for text in ("1e-99999999", "1e-3000000", "1e99999999"):
        with pytest.raises(InvalidNumber):
            parse_exact(text, "quantiles[0]", lo=0, hi=1)
    with pytest.raises(InvalidNumber):
        parse_exact(Decimal("1e-99999999"), "x")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0.5", Fraction(1, 2)),
        ("1/2", Fraction(1, 2)),
        ("0.50", Fraction(1, 2)),
        (0.1, Fraction(1, 10)),
        ("-3e-2", Fraction(-3, 100)),
        (Decimal("2.5"), Fraction(5, 2)),
        (7, Fraction(7)),
        ("+.25", Fraction(1, 4)),
    ],
)
def test_exact_values(value: object, expected: Fraction) -> None:
    assert parse_exact(value, "x") == expected


@pytest.mark.parametrize(
    "value",
    ["", " 1", "1 ", "1_000", "inf", "nan", "٣", "1/0", "0x10", "1e", "--1", True, None, [1], float("inf")],
)
def test_malformed_numbers(value: object) -> None:
    with pytest.raises(InvalidNumber):
        parse_exact(value, "x")


def test_ranges_and_open_ends() -> None:
    assert parse_exact("0.999", "q", lo=0, hi=1, lo_open=True, hi_open=True) == Fraction(999, 1000)
    for bad in ("0", "1", "-1/2", "2"):
        with pytest.raises(OutOfRange, match=r"q: .* is outside \(0, 1\)"):
            parse_exact(bad, "q", lo=0, hi=1, lo_open=True, hi_open=True)
    with pytest.raises(InvalidNumber):
        parse_exact(0.5, "rate", floats=False)
    with pytest.raises(InvalidNumber):
        parse_exact("1/2", "lr", ratios=False)


@given(st.integers())
def test_integers_are_range_checked_to_64_bits(value: int) -> None:
    try:
        assert check_int(value, "after_seq") == value
        assert -(2**63) <= value <= INT64_MAX
    except OutOfRange:
        assert not -(2**63) <= value <= INT64_MAX


@pytest.mark.parametrize("value", [True, 1.0, "1", None])
def test_integers_must_be_integers(value: object) -> None:
    with pytest.raises(InvalidNumber):
        check_int(value, "n")


@given(st.text(max_size=50))
def test_text_with_control_characters_is_refused(text: str) -> None:
    bad = any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or 0xD800 <= ord(c) <= 0xDFFF for c in text)
    try:
        assert check_text(text, "name") == text and not bad
    except ControlCharacter as exc:
        assert bad and exc.code == "control_character" and exc.detail.startswith("name: ")


def test_json_text_names_the_field() -> None:
    with pytest.raises(ControlCharacter, match=r"policy\.columns\[1\]\.name"):
        check_json_text({"columns": [{"name": "ok"}, {"name": "a\x00b"}]}, "policy")
    with pytest.raises(ControlCharacter):
        check_json_text({"k\x01": 1}, "spec")
    with pytest.raises(InvalidInput, match="nested"):
        nested: object = 1
        for _ in range(40):
            nested = [nested]
        check_json_text(nested, "x")


def test_duplicates_are_refused_with_what_was_sent() -> None:
    levels = [parse_exact(v, "q") for v in ("0.5", "1/2")]
    with pytest.raises(DuplicateValue, match=r"'1/2' \(position 1\) repeats '0.5'") as err:
        check_unique(levels, "quantiles", show=["0.5", "1/2"])
    assert err.value.code == "duplicate_value"
