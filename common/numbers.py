"""Bounded parsing of what users send: exact numbers, integers, text.

Why one parser. ``Fraction("1e-99999999")`` and ``Decimal`` arithmetic on such values take time that grows with
the exponent (``Fraction("1e-3000000")`` alone takes seconds), so a number read straight from a request can
stall a worker. Every number a user sends (ε, δ, quantile levels, rates, bounds, learning rates, any
``Fraction``/``Decimal`` text) goes through :func:`parse_exact`, which checks the *form* first — type, length,
grammar, exponent — and only then converts; the range check follows on a value that is small by construction.

The rules, and the stable codes callers switch on (all 422, all :class:`~common.errors.InvalidInput`):

* ``invalid_number`` (:class:`InvalidNumber`): not a number this service reads — a boolean, a non-finite
  float, text longer than :data:`MAX_NUMBER_TEXT` or outside the grammar ``[+-]digits[.digits][e[+-]digits]``
  or ``[+-]digits/digits`` (ASCII digits only; no spaces, underscores, ``inf`` or ``nan``), or a decimal
  exponent beyond ±:data:`MAX_EXPONENT`;
* ``out_of_range`` (:class:`OutOfRange`): a well-formed number outside the field's range (integers that reach
  the database: signed 64-bit, :data:`INT64_MIN`..:data:`INT64_MAX`);
* ``control_character`` (:class:`ControlCharacter`): text holding NUL, another C0/C1 control character or a
  lone surrogate (PostgreSQL refuses NUL, SQLite stores it; neither belongs in a name or a label);
* ``duplicate_value`` (:class:`DuplicateValue`): the same value twice where values must be distinct (quantile
  levels ``0.5``, ``"1/2"`` and ``"0.50"`` are one level).

Every detail starts with the field's name, so a client can tell which part of its request was refused.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Iterable, Mapping
from decimal import Decimal
from fractions import Fraction
from typing import TypeVar

from common.errors import InvalidInput

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
MAX_NUMBER_TEXT = 64
"""Characters in a number sent as text (a float's shortest repr needs at most 24)."""
MAX_EXPONENT = 40
"""Largest decimal exponent (either sign) a number may carry: 1e40 and 1e-40 are read, 1e41 is not."""
MAX_TEXT_DEPTH = 32
"""How deeply :func:`check_json_text` descends into nested objects and lists."""

_INT_BITS = 140  # an int of more bits is above 10**42, beyond any range here; refused before comparing
_DECIMAL = re.compile(r"([+-]?)([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE]([+-]?[0-9]{1,9}))?", re.ASCII)
_RATIO = re.compile(r"([+-]?)([0-9]+)/([0-9]+)", re.ASCII)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")

T = TypeVar("T")
H = TypeVar("H", bound=Hashable)


BOUNDED_INPUT_CODES = ("invalid_number", "out_of_range", "control_character", "duplicate_value")
"""The stable codes of this module's refusals (``broker.errors`` maps each to 422)."""


class InvalidNumber(InvalidInput):
    """A value that is not a number this service reads (see the module rules)."""

    code = "invalid_number"


class OutOfRange(InvalidInput):
    """A well-formed number outside its field's range."""

    code = "out_of_range"


class ControlCharacter(InvalidInput):
    """Text holding a control character or a lone surrogate."""

    code = "control_character"


class DuplicateValue(InvalidInput):
    """The same value given twice where values must be distinct."""

    code = "duplicate_value"


def parse_exact(
    value: object,
    field: str,
    *,
    lo: Fraction | int | None = None,
    hi: Fraction | int | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
    ratios: bool = True,
    floats: bool = True,
) -> Fraction:
    """Read an exact number from a user (int, float by its shortest repr, Decimal, Fraction, or text) and check
    it lies in ``[lo, hi]`` (``lo_open``/``hi_open`` exclude an end).

    ``ratios=False`` refuses ``"n/d"`` text; ``floats=False`` refuses float values (not decimal text). The form
    is checked before anything is converted, so any input is answered in microseconds.
    """
    exact = _to_fraction(value, field, ratios=ratios, floats=floats)
    check_range(exact, field, lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open)
    return exact


def check_range(
    value: Fraction | int,
    field: str,
    *,
    lo: Fraction | int | None = None,
    hi: Fraction | int | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
) -> None:
    """Raise :class:`OutOfRange` unless ``value`` lies within the (optionally open) bounds."""
    below = lo is not None and (value <= lo if lo_open else value < lo)
    above = hi is not None and (value >= hi if hi_open else value > hi)
    if below or above:
        raise OutOfRange(f"{field}: {_show(value)} is outside {_interval(lo, hi, lo_open, hi_open)}")


def check_int(value: object, field: str, *, lo: int = INT64_MIN, hi: int = INT64_MAX) -> int:
    """An integer (never a boolean or a float) in ``lo..hi``; the default range is signed 64-bit."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidNumber(f"{field}: expected an integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        shown = str(value) if value.bit_length() <= _INT_BITS else f"an integer of {value.bit_length()} bits"
        raise OutOfRange(f"{field}: {shown} is outside {lo}..{hi}")
    return value


def check_text(value: str, field: str) -> str:
    """``value`` unchanged, or :class:`ControlCharacter` when it holds a control character or a surrogate."""
    found = _CONTROL.search(value)
    if found is not None:
        raise ControlCharacter(
            f"{field}: control character U+{ord(found.group()):04X} at position {found.start()}; "
            "names, labels and other stored text take printable characters only"
        )
    return value


def check_json_text(value: T, field: str, *, depth: int = 0) -> T:
    """Apply :func:`check_text` to every key and string inside a JSON-like value (lists and objects)."""
    if depth > MAX_TEXT_DEPTH:
        raise InvalidInput(f"{field}: nested more than {MAX_TEXT_DEPTH} levels deep")
    if isinstance(value, str):
        check_text(value, field)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            name = f"{field}.{check_text(key, field) if isinstance(key, str) else key}"
            check_json_text(item, name, depth=depth + 1)
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            check_json_text(item, f"{field}[{i}]", depth=depth + 1)
    return value


def check_unique(values: Iterable[H], field: str, *, show: Iterable[object] | None = None) -> None:
    """Raise :class:`DuplicateValue` when two of ``values`` are equal (``show``: how to name each in the
    message, e.g. the text the user sent)."""
    items = list(values)
    shown = list(show) if show is not None else items
    seen: dict[H, int] = {}
    for i, item in enumerate(items):
        if item in seen:
            first = seen[item]
            raise DuplicateValue(
                f"{field}: {shown[i]!r} (position {i}) repeats {shown[first]!r} (position {first})"
            )
        seen[item] = i


# --------------------------------------------------------------------------------------------- conversion


def _to_fraction(value: object, field: str, *, ratios: bool, floats: bool) -> Fraction:
    if isinstance(value, bool):
        raise InvalidNumber(f"{field}: expected a number, got a boolean")
    if isinstance(value, int):
        return Fraction(_bounded_int(value, field))
    if isinstance(value, Fraction):
        _bounded_int(value.numerator, field)
        _bounded_int(value.denominator, field)
        return value
    if isinstance(value, float):
        if not floats:
            raise InvalidNumber(
                f"{field}: expected an exact number (an integer or decimal text), got a float"
            )
        if value != value or value in (float("inf"), float("-inf")):
            raise InvalidNumber(f"{field}: {value!r} is not a finite number")
        return _from_text(repr(value), field, ratios=False)
    if isinstance(value, Decimal):
        return _from_decimal(value, field)
    if isinstance(value, str):
        return _from_text(value, field, ratios=ratios)
    raise InvalidNumber(f"{field}: expected a number, got {type(value).__name__}")


def _bounded_int(value: int, field: str) -> int:
    if value.bit_length() > _INT_BITS:
        raise OutOfRange(
            f"{field}: an integer of {value.bit_length()} bits is beyond any range accepted here"
        )
    return value


def _from_decimal(value: Decimal, field: str) -> Fraction:
    if not value.is_finite():
        raise InvalidNumber(f"{field}: {value} is not a finite number")
    _sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)  # finite Decimals have an integer exponent
    if len(digits) > MAX_NUMBER_TEXT or abs(exponent) > MAX_EXPONENT + MAX_NUMBER_TEXT:
        raise InvalidNumber(f"{field}: too many digits or too large an exponent")
    return Fraction(value)


def _from_text(text: str, field: str, *, ratios: bool) -> Fraction:
    if len(text) > MAX_NUMBER_TEXT:
        raise InvalidNumber(f"{field}: a number is at most {MAX_NUMBER_TEXT} characters, got {len(text)}")
    decimal = _DECIMAL.fullmatch(text)
    if decimal is not None:
        exponent = decimal.group(3)
        if exponent is not None and abs(int(exponent)) > MAX_EXPONENT:
            raise InvalidNumber(f"{field}: the exponent of {text!r} is beyond ±{MAX_EXPONENT}")
        return Fraction(text)
    ratio = _RATIO.fullmatch(text) if ratios else None
    if ratio is not None:
        if int(ratio.group(3)) == 0:
            raise InvalidNumber(f"{field}: {text!r} divides by zero")
        return Fraction(text)
    forms = "a decimal like 0.25 or 1e-6" + (", or a ratio like 1/4" if ratios else "")
    raise InvalidNumber(f"{field}: {_clip(text)!r} is not a number; write {forms}")


def _clip(text: str) -> str:
    return text if len(text) <= 24 else text[:21] + "..."


def _show(value: Fraction | int) -> str:
    if isinstance(value, int) or value.denominator == 1:
        return str(int(value))
    return f"{value} ({float(value):.6g})"


def _interval(lo: Fraction | int | None, hi: Fraction | int | None, lo_open: bool, hi_open: bool) -> str:
    left = "(" if lo_open or lo is None else "["
    right = ")" if hi_open or hi is None else "]"
    low = "-inf" if lo is None else _show(lo)
    high = "inf" if hi is None else _show(hi)
    return f"{left}{low}, {high}{right}"
