"""One table from domain errors to HTTP statuses, and the service's own errors.

Every error response is ``{"error": code, "detail": text}``. Domain packages know nothing of HTTP: this
module maps their exception classes (most specific first) to a status.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from common.errors import Conflict, DomainError, InsufficientFunds, InvalidInput, NotFound
from common.numbers import BOUNDED_INPUT_CODES


class Unauthorized(DomainError):
    """No valid bearer token."""

    code = "unauthorized"


class Forbidden(DomainError):
    """A valid token whose role may not call this route."""

    code = "forbidden"


class RateLimited(DomainError):
    """Too many requests from one organisation; retry after ``retry_after_s``."""

    code = "rate_limited"

    def __init__(self, detail: str, *, retry_after_s: int) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class PayloadTooLarge(DomainError):
    """The request body exceeds the configured limit."""

    code = "payload_too_large"


_STATUS_BY_CLASS: list[tuple[type[DomainError], int]] = [
    (Unauthorized, 401),
    (Forbidden, 403),
    (NotFound, 404),
    (RateLimited, 429),
    (PayloadTooLarge, 413),
    (InsufficientFunds, 402),
    (Conflict, 409),
    (InvalidInput, 422),
]

_STATUS_BY_CODE: dict[str, int] = {
    "already_redeemed": 409,
    "malformed": 400,
    "invalid_signature": 422,
    "unknown_key": 422,
    "unknown_voucher": 422,
    "voucher_mismatch": 422,
    "kek_unavailable": 503,
    "expired": 422,
    "not_yet_valid": 422,
    "wrong_beneficiary": 422,
    "revoked": 422,
    "programme_budget_exceeded": 409,
    "sme_cap_exceeded": 409,
    "budget_exceeded": 409,
    "quota_exceeded": 409,
    "backend_unavailable": 503,
    "sandbox_unavailable": 409,
    "disk_quota": 409,
    "invalid_archive": 422,
    "access_denied": 403,
    "invalid_policy": 422,
    "invalid_query": 422,
    "invalid_training_spec": 422,
    "query_failed": 500,
    "query_in_progress": 409,
    "query_interrupted": 409,
    "training_failed": 500,
    "secure_rng_unavailable": 503,
    "rate_limited": 429,
}


class ServiceUnavailable(DomainError):
    """An infrastructure failure, not the caller's: 503 with ``Retry-After`` (nothing was changed)."""

    code = "service_unavailable"
    retry_after_s = 5


class DatabaseUnavailable(ServiceUnavailable):
    """The database cannot be reached (authentication says so rather than 401)."""

    code = "database_unavailable"


class StorageFull(ServiceUnavailable):
    """The state dir's (or the database's) disk is full or below its free-space threshold."""

    code = "storage_full"
    retry_after_s = 60


# The stable codes of bounded input (common.numbers), and the pydantic error types that mean the same thing.
_STATUS_BY_CODE |= {code: 422 for code in BOUNDED_INPUT_CODES} | dict.fromkeys(
    ("database_unavailable", "storage_full", "service_unavailable"), 503
)
_CODE_BY_PYDANTIC_TYPE: dict[str, str] = {
    **{code: code for code in BOUNDED_INPUT_CODES},
    **dict.fromkeys(("greater_than", "greater_than_equal", "less_than", "less_than_equal"), "out_of_range"),
    **dict.fromkeys(("int_parsing", "int_from_float", "int_type", "finite_number"), "invalid_number"),
}


def validation_code(errors: Sequence[Mapping[str, Any]]) -> str:
    """The code of a 422 from request validation: the first error's bounded-input code (``out_of_range``,
    ``control_character``...) when it has one, else ``invalid_request``."""
    for err in errors:
        code = _CODE_BY_PYDANTIC_TYPE.get(str(err.get("type", "")))
        if code is not None:
            return code
    return "invalid_request"


def status_for(exc: DomainError) -> int:
    """The HTTP status for a domain error: by its stable code first, then by its class."""
    by_code = _STATUS_BY_CODE.get(exc.code)
    if by_code is not None:
        return by_code
    for cls, status in _STATUS_BY_CLASS:
        if isinstance(exc, cls):
            return status
    return 400


def error_body(code: str, detail: str) -> dict[str, str]:
    """The one error body shape."""
    return {"error": code, "detail": detail}
