"""Canonical JSON: one byte string per value, for everything we hash or sign.

Used for audit entries, idempotency request hashes and signed reports. The form follows RFC 8785 (JCS)
for the values we allow: object keys sorted, no insignificant whitespace, UTF-8, non-ASCII characters
written as themselves and only the characters JSON requires escaped. Floats are refused outright — we
never hash or sign a float (credits, budgets and times are integers) — so number formatting can never
differ between producers. Allowed: ``dict`` with ``str`` keys, ``list``/``tuple``, ``str``, ``int``,
``bool``, ``None``.

Note: keys are sorted by Python code point order; JCS sorts by UTF-16 code units. The two differ only for
keys holding characters outside the Basic Multilingual Plane next to U+E000..U+FFFF, which our keys
never do.
"""

from __future__ import annotations

import json
from typing import Any

_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, sort_keys=True, separators=(",", ":"))
_MAX_DEPTH = 64


def _check(value: Any, depth: int) -> None:
    """Refuse anything but the JSON types we allow (floats above all) before it is serialised."""
    if depth > _MAX_DEPTH:
        raise ValueError(f"value nested deeper than {_MAX_DEPTH} levels")
    if value is None or isinstance(value, (bool, int, str)):
        if isinstance(value, str):
            _check_text(value)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"object keys must be str, got {type(key).__name__}")
            _check_text(key)
            _check(item, depth + 1)
        return
    if isinstance(value, (list, tuple)):
        for item in value:
            _check(item, depth + 1)
        return
    if isinstance(value, float):
        raise TypeError("floats are never hashed or signed; use integers (smallest unit) or strings")
    raise TypeError(f"{type(value).__name__} is not a canonical JSON type")


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates have no UTF-8 form
        raise ValueError("string is not valid Unicode (lone surrogate)") from exc


def canonical_json(obj: Any) -> bytes:
    """Return the canonical UTF-8 JSON bytes of ``obj``; the same value always gives the same bytes.

    Raises ``TypeError`` for floats (and NaN/Infinity) or any type other than dict/list/tuple/str/int/
    bool/None, and ``ValueError`` for lone surrogates or nesting deeper than 64 levels.
    """
    _check(obj, 0)
    return _ENCODER.encode(obj).encode("utf-8")


def floats_as_text(value: Any) -> Any:
    """A copy of ``value`` with every float replaced by its exact ``repr`` text.

    For user input that may carry floats (a learning rate, a DP metric) before it is hashed or signed:
    ``repr`` round-trips a float exactly, so equal inputs still hash equally and nothing is rounded.
    """
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, dict):
        return {k: floats_as_text(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [floats_as_text(v) for v in value]
    return value


class DuplicateMember(ValueError):
    """A JSON object names the same member twice (readers disagree on which one counts)."""


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateMember(f"JSON object has the member {key!r} twice")
        out[key] = value
    return out


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"non-JSON constant {name}")


def loads_strict(data: str | bytes) -> Any:
    """Parse JSON that is about to be verified: duplicate object members and NaN/Infinity are refused.

    With duplicates, Python keeps the last member and other readers the first, so a signed document could
    show a verifier one value and a reader another; everything the broker verifies (reports, JWKS, voucher
    headers and claims, checkpoints) is parsed with this. Raises ``ValueError`` (``DuplicateMember`` for a
    repeated name).
    """
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    return json.loads(text, object_pairs_hook=_refuse_duplicates, parse_constant=_refuse_constant)
