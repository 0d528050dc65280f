"""Money as programmes count it: integer amounts in a currency's smallest unit, shown with Babel.

A programme declares an ISO 4217 currency (default CNY); every amount the broker stores is an integer of its
smallest unit (fen for CNY: 100 fen = 1 yuan), so sums stay exact. People type yuan (``12.34``): the text goes
through the project's one bounded number parser (:func:`common.numbers.parse_exact`) and must name a whole
number of fen. People read amounts in their own locale (``¥1,234.56`` in zh_CN, ``CN¥1,234.56`` in en).
A programme without a currency (``None``) counts plain credits, shown as grouped integers.
"""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

from babel.numbers import format_currency, format_decimal, get_currency_precision

from common.numbers import INT64_MAX, InvalidNumber, parse_exact

DEFAULT_CURRENCY = "CNY"


def minor_digits(currency: str | None) -> int:
    """Decimal places of the currency's smallest unit (CNY: 2, JPY: 0); 0 for currency-less credits."""
    return 0 if currency is None else int(get_currency_precision(currency))


def to_minor(value: object, field: str, currency: str | None) -> int:
    """A user's amount in major units (``"12.34"`` yuan) as integer minor units (1234 fen), exactly.

    Bounded like every number a user gives (``common.numbers``): 0 .. 2^62 minor units; an amount finer than the
    smallest unit (``0.001`` yuan) is ``invalid_number``, never rounded.
    """
    scale = 10 ** minor_digits(currency)
    exact = parse_exact(value, field, lo=0, hi=Fraction(INT64_MAX // 2, scale), ratios=False, floats=False)
    minor = exact * scale
    if minor.denominator != 1:
        unit = "fen" if currency == "CNY" else "the currency's smallest unit"
        raise InvalidNumber(f"{field}: {value!r} is not a whole number of {unit}")
    return int(minor)


def to_major(amount: int, currency: str | None) -> Decimal:
    """Integer minor units as an exact decimal of major units (1234 fen -> Decimal('12.34'))."""
    return Decimal(amount).scaleb(-minor_digits(currency))


def format_money(amount: int, currency: str | None, locale: str) -> str:
    """``amount`` (minor units) as money in ``locale`` (``¥1,234.56``); currency-less: ``1,234`` (units)."""
    if currency is None:
        return str(format_decimal(amount, locale=locale))
    return str(format_currency(to_major(amount, currency), currency, locale=locale))
