"""Innovation vouchers: Ed25519 keys, signed voucher tokens (compact JWS), and issuance rules.

Public surface (everything else is private):

- keys: :func:`generate_private_pem`, :func:`public_jwk`, :func:`key_id`, :func:`sign_bytes`,
  :func:`verify_bytes`, :func:`jwks`, :func:`public_key_from_jwk`
- claims: :class:`VoucherClaims`, :data:`RESOURCE_CLASSES`
- tokens: :func:`sign_voucher`, :func:`verify_voucher`, :func:`verify_signed`, :class:`IssuerKey`,
  :data:`ACCEPTED_ALGS`
- records: :func:`token_sha256`, :func:`claims_record`, :func:`claims_from_record`,
  :func:`check_matches_record`, :func:`unknown_voucher`
- rules: :func:`check_issuance`, :func:`check_redemption`, :func:`year_of`
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
    UNKNOWN_VOUCHER,
    VOUCHER_MISMATCH,
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
from vouchers.records import (
    check_matches_record,
    claims_from_record,
    claims_record,
    token_sha256,
    unknown_voucher,
)
from vouchers.rules import check_issuance, check_redemption, year_of
from vouchers.tokens import (
    ACCEPTED_ALGS,
    IssuerKey,
    KeyStatus,
    sign_voucher,
    verify_signed,
    verify_voucher,
)

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
    "UNKNOWN_VOUCHER",
    "VOUCHER_MISMATCH",
    "WRONG_BENEFICIARY",
    "InvalidVoucherClaims",
    "IssuanceRefused",
    "IssuerKey",
    "KeyFormatError",
    "KeyStatus",
    "VoucherClaims",
    "VoucherRefused",
    "check_issuance",
    "check_matches_record",
    "check_redemption",
    "claims_from_record",
    "claims_record",
    "generate_private_pem",
    "jwks",
    "key_id",
    "public_jwk",
    "public_key_from_jwk",
    "sign_bytes",
    "sign_voucher",
    "token_sha256",
    "unknown_voucher",
    "verify_bytes",
    "verify_signed",
    "verify_voucher",
    "year_of",
]
