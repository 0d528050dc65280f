"""The voucher package's exceptions (one small tree, every class a :class:`DomainError`).

::

    DomainError                       (common.errors)
    ├── InvalidInput
    │   ├── KeyFormatError            code "invalid_key": a PEM/JWK that is not an Ed25519 key
    │   └── InvalidVoucherClaims      code "invalid_input": claims that break a rule when built
    ├── VoucherRefused                code: one of the REFUSAL_CODES (see ``vouchers.tokens``)
    └── IssuanceRefused               code "programme_budget_exceeded" | "sme_cap_exceeded"
                                      (at issue, registration, and again at redemption)
"""

from __future__ import annotations

from common.errors import DomainError, InvalidInput

MALFORMED = "malformed"
INVALID_SIGNATURE = "invalid_signature"
UNKNOWN_KEY = "unknown_key"
REVOKED = "revoked"
EXPIRED = "expired"
NOT_YET_VALID = "not_yet_valid"
WRONG_BENEFICIARY = "wrong_beneficiary"
ALREADY_REDEEMED = "already_redeemed"
#: A signed token whose bytes or claims differ from what the broker recorded when the voucher was issued
#: or registered (a re-signed voucher with other claims, a token signed again with another key).
VOUCHER_MISMATCH = "voucher_mismatch"
#: A correctly signed token whose ``jti`` the broker never issued or registered.
UNKNOWN_VOUCHER = "unknown_voucher"

#: Every code a redemption can be refused with. ``already_redeemed``, a voucher-level ``revoked``,
#: ``voucher_mismatch`` and ``unknown_voucher`` are decided against the issued record (database layer and
#: :mod:`vouchers.records`); the others by :func:`vouchers.tokens.verify_voucher`.
REFUSAL_CODES: frozenset[str] = frozenset(
    {
        MALFORMED,
        INVALID_SIGNATURE,
        UNKNOWN_KEY,
        REVOKED,
        EXPIRED,
        NOT_YET_VALID,
        WRONG_BENEFICIARY,
        ALREADY_REDEEMED,
        VOUCHER_MISMATCH,
        UNKNOWN_VOUCHER,
    }
)

PROGRAMME_BUDGET_EXCEEDED = "programme_budget_exceeded"
SME_CAP_EXCEEDED = "sme_cap_exceeded"


class KeyFormatError(InvalidInput):
    """A key (PEM or JWK) that is not a usable Ed25519 key."""

    code = "invalid_key"


class InvalidVoucherClaims(InvalidInput):
    """Voucher claims that break a rule (wrong type, empty id, exp before nbf, ...)."""


class VoucherRefused(DomainError):
    """A voucher token that must not be honoured; ``code`` says why (one of :data:`REFUSAL_CODES`)."""

    code = MALFORMED

    def __init__(self, code: str, detail: str) -> None:
        if code not in REFUSAL_CODES:
            raise ValueError(f"unknown voucher refusal code {code!r}")
        super().__init__(detail, code=code)


class IssuanceRefused(DomainError):
    """Issuing the voucher would exceed the programme's yearly budget or the SME's cap."""

    code = PROGRAMME_BUDGET_EXCEEDED

    def __init__(self, code: str, detail: str) -> None:
        if code not in (PROGRAMME_BUDGET_EXCEEDED, SME_CAP_EXCEEDED):
            raise ValueError(f"unknown issuance refusal code {code!r}")
        super().__init__(detail, code=code)
