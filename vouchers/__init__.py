"""Innovation vouchers: Ed25519 keys, signed voucher tokens (compact JWS), and issuance rules.

Public surface (everything else is private):

- keys: :func:`generate_private_pem`, :func:`public_jwk`, :func:`key_id`, :func:`sign_bytes`,
  :func:`verify_bytes`, :func:`jwks`, :func:`public_key_from_jwk`
- claims: :class:`VoucherClaims`, :data:`RESOURCE_CLASSES`
- tokens: :func:`sign_voucher`, :func:`verify_voucher`, :class:`IssuerKey`, :data:`ACCEPTED_ALGS`
- rules: :func:`check_issuance`, :func:`year_of`
- errors: :class:`VoucherRefused` (codes below), :class:`IssuanceRefused`, :class:`InvalidVoucherClaims`,
  :class:`KeyFormatError`
"""

from vouchers.claims import RESOURCE_CLASSES, VoucherClaims
from vouchers.errors import (
    ALREADY_REDEEMED,
    EXPIRED,
    INVALID_SIGNATURE,
    MALFORMED,
    NOT_YET_VALID,
    PROGRAMME_BUDGET_EXCEEDED,
    REFUSAL_CODES,
    REVOKED,
    SME_CAP_EXCEEDED,
    UNKNOWN_KEY,
    WRONG_BENEFICIARY,
    InvalidVoucherClaims,
    IssuanceRefused,
    KeyFormatError,
    VoucherRefused,
)
from vouchers.keys import (
    generate_private_pem,
    jwks,
    key_id,
    public_jwk,
    public_key_from_jwk,
    sign_bytes,
    verify_bytes,
)
from vouchers.rules import check_issuance, year_of
from vouchers.tokens import ACCEPTED_ALGS, IssuerKey, KeyStatus, sign_voucher, verify_voucher

__all__ = [
    "ACCEPTED_ALGS",
    "ALREADY_REDEEMED",
    "EXPIRED",
    "INVALID_SIGNATURE",
    "MALFORMED",
    "NOT_YET_VALID",
    "PROGRAMME_BUDGET_EXCEEDED",
    "REFUSAL_CODES",
    "RESOURCE_CLASSES",
    "REVOKED",
    "SME_CAP_EXCEEDED",
    "UNKNOWN_KEY",
    "WRONG_BENEFICIARY",
    "InvalidVoucherClaims",
    "IssuanceRefused",
    "IssuerKey",
    "KeyFormatError",
    "KeyStatus",
    "VoucherClaims",
    "VoucherRefused",
    "check_issuance",
    "generate_private_pem",
    "jwks",
    "key_id",
    "public_jwk",
    "public_key_from_jwk",
    "sign_bytes",
    "sign_voucher",
    "verify_bytes",
    "verify_voucher",
    "year_of",
]
