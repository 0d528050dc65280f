"""Voucher claims: the frozen, validated value a voucher token carries.

Times are integer seconds since the Unix epoch (JWT NumericDate, integers only). All integers must be
JSON-safe (at most 2**53 - 1) so every JOSE library, JavaScript included, reads them exactly, and so they
fit a database BIGINT. Booleans are not integers here and floats are never accepted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vouchers.errors import InvalidVoucherClaims

RESOURCE_CLASSES: frozenset[str] = frozenset({"cpu", "gpu", "memory"})
_CLASSES = sorted(RESOURCE_CLASSES)
MAX_SAFE_INT = 2**53 - 1
MAX_ID_LENGTH = 256
MAX_COVERAGE_BPS = 10_000

#: JSON claim names, in the order they are emitted.
CLAIM_NAMES = ("jti", "iss", "sub", "nbf", "exp", "iat", "credits", "coverage", "resources", "credit_exp")
_REQUIRED = frozenset(CLAIM_NAMES) - {"iat"}


def _check_int(name: str, value: object, *, minimum: int = 0) -> int:
    if type(value) is not int:  # bool and float are refused on purpose
        raise InvalidVoucherClaims(f"claim '{name}' must be an integer, got {type(value).__name__}")
    if not minimum <= value <= MAX_SAFE_INT:
        raise InvalidVoucherClaims(
            f"claim '{name}' must be between {minimum} and {MAX_SAFE_INT}, got {value}"
        )
    return value


def _check_id(name: str, value: object) -> str:
    if type(value) is not str or not value or len(value) > MAX_ID_LENGTH:
        raise InvalidVoucherClaims(
            f"claim '{name}' must be a non-empty string of at most {MAX_ID_LENGTH} characters"
        )
    if not value.isprintable():
        raise InvalidVoucherClaims(f"claim '{name}' must not contain control characters")
    return value


def _check_resources(value: object) -> tuple[str, ...]:
    if not isinstance(value, (tuple, list)) or not value:
        raise InvalidVoucherClaims(f"claim 'resources' must be a non-empty list of {_CLASSES}")
    if any(type(r) is not str or r not in RESOURCE_CLASSES for r in value):
        raise InvalidVoucherClaims(f"claim 'resources' may only name {_CLASSES}, got {value!r}")
    if len(set(value)) != len(value):
        raise InvalidVoucherClaims(f"claim 'resources' names a resource class twice: {value!r}")
    return tuple(sorted(value))


@dataclass(frozen=True, slots=True)
class VoucherClaims:
    """What a voucher grants: ``credits`` to ``sub`` from ``iss``, redeemable in ``[nbf, exp)``.

    ``coverage_bps`` is the share of cost the programme pays (0..10000 basis points); ``resources`` the
    resource classes the credit may pay for (stored sorted); ``credit_exp`` when the credit grant created at
    redemption expires (after ``nbf``; it may precede ``exp``). ``iat`` is optional.
    Raises :class:`InvalidVoucherClaims` when a value breaks a rule.
    """

    jti: str
    iss: str
    sub: str
    nbf: int
    exp: int
    credits: int
    coverage_bps: int
    resources: tuple[str, ...]
    credit_exp: int
    iat: int | None = None

    def __post_init__(self) -> None:
        for name in ("jti", "iss", "sub"):
            _check_id(name, getattr(self, name))
        for name in ("nbf", "exp", "credit_exp"):
            _check_int(name, getattr(self, name))
        if self.iat is not None:
            _check_int("iat", self.iat)
        _check_int("credits", self.credits, minimum=1)
        _check_int("coverage", self.coverage_bps)
        if self.coverage_bps > MAX_COVERAGE_BPS:
            raise InvalidVoucherClaims(
                f"claim 'coverage' is in basis points (0..{MAX_COVERAGE_BPS}), got {self.coverage_bps}"
            )
        if self.exp <= self.nbf:
            raise InvalidVoucherClaims(f"'exp' ({self.exp}) must be after 'nbf' ({self.nbf})")
        if self.credit_exp <= self.nbf:
            raise InvalidVoucherClaims(f"'credit_exp' ({self.credit_exp}) must be after 'nbf' ({self.nbf})")
        object.__setattr__(self, "resources", _check_resources(self.resources))

    def to_json_dict(self) -> dict[str, Any]:
        """Return the JWT claim set (JSON names: ``coverage`` for ``coverage_bps``; ``iat`` only if set)."""
        out: dict[str, Any] = {
            "jti": self.jti,
            "iss": self.iss,
            "sub": self.sub,
            "nbf": self.nbf,
            "exp": self.exp,
            "credits": self.credits,
            "coverage": self.coverage_bps,
            "resources": list(self.resources),
            "credit_exp": self.credit_exp,
        }
        if self.iat is not None:
            out["iat"] = self.iat
        return out

    @classmethod
    def from_json_dict(cls, data: object) -> VoucherClaims:
        """Build claims from a decoded JWT claim set; missing claims are refused, unknown ones ignored.

        Unknown claims are ignored as RFC 7519 §4 asks, so issuers may add their own (e.g. ``aud``).

        Raises :class:`InvalidVoucherClaims`.
        """
        if not isinstance(data, dict):
            raise InvalidVoucherClaims("the voucher payload must be a JSON object")
        missing = sorted(_REQUIRED - data.keys())
        if missing:
            raise InvalidVoucherClaims(f"the voucher lacks the claims {missing}")
        if not isinstance(data["resources"], list):
            raise InvalidVoucherClaims("claim 'resources' must be a JSON array")
        return cls(
            jti=data["jti"],
            iss=data["iss"],
            sub=data["sub"],
            nbf=data["nbf"],
            exp=data["exp"],
            credits=data["credits"],
            coverage_bps=data["coverage"],
            resources=tuple(data["resources"]),
            credit_exp=data["credit_exp"],
            iat=data.get("iat"),
        )
