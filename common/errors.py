"""The root of every domain error.

Each domain package (``quotas``, ``vouchers``, ``datasets``, ``privacy``) raises subclasses of
:class:`DomainError`. A subclass names a stable machine-readable ``code`` (what API clients switch on);
the message says what was asked, what is available and what to do. ``broker/errors.py`` maps each class to
one HTTP status; nothing below ``broker`` knows about HTTP.
"""

from __future__ import annotations


class DomainError(Exception):
    """A refusal a caller can act on: a stable ``code`` plus a human ``detail``."""

    code: str = "domain_error"

    def __init__(self, detail: str, *, code: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code


class NotFound(DomainError):
    """The object does not exist, or belongs to someone else (the two are indistinguishable)."""

    code = "not_found"


class Conflict(DomainError):
    """The request conflicts with the current state (illegal transition, idempotency key reuse, ...)."""

    code = "conflict"


class InvalidInput(DomainError):
    """The request is well-formed but its values break a rule (before any state is touched)."""

    code = "invalid_input"


class InsufficientFunds(DomainError):
    """Not enough credit (or co-payment headroom) for the amount asked."""

    code = "insufficient_credit"
