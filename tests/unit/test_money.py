"""Money as programmes count it: yuan typed by people become exact fen, fen are shown as money per locale."""

from __future__ import annotations

from decimal import Decimal

import pytest

from common.money import format_money, minor_digits, to_major, to_minor
from common.numbers import InvalidNumber, OutOfRange


def test_yuan_in_fen_out_exactly() -> None:
    assert to_minor("12.34", "amount", "CNY") == 1234
    assert to_minor("10000000", "amount", "CNY") == 1_000_000_000
    assert to_minor("0.1", "amount", "CNY") == 10  # 0.1 is exact as decimal text, never a float
    assert to_minor("5", "amount", None) == 5  # credits: no minor unit
    assert to_major(1234, "CNY") == Decimal("12.34") and minor_digits("JPY") == 0


@pytest.mark.parametrize("text", ["0.001", "1/3", "1e-3"])
def test_finer_than_a_fen_is_refused(text: str) -> None:
    with pytest.raises(InvalidNumber):
        to_minor(text, "amount", "CNY")


@pytest.mark.parametrize("text", ["-1", "1e30"])
def test_out_of_range(text: str) -> None:
    with pytest.raises((OutOfRange, InvalidNumber)):
        to_minor(text, "amount", "CNY")


def test_shown_in_the_readers_locale() -> None:
    assert format_money(123456, "CNY", "zh_CN") == "¥1,234.56"
    assert format_money(123456, "CNY", "en") == "CN¥1,234.56"
    assert format_money(123456, None, "en") == "123,456"  # a currency-less programme shows units
