"""Binding a presented voucher to the record the broker kept when it was issued or registered.

A signature proves only that some holder of an issuer key signed the bytes; a stolen or careless issuer
key can sign anything. So the broker keeps, per voucher, the SHA-256 of the exact token and the canonical
JSON of its claims, and a redemption is honoured only for a token equal to that record. The credit grant
is then built from the record, never from the token.
"""

from __future__ import annotations

import hashlib
import hmac

from common.canonical import canonical_json, loads_strict
from vouchers.claims import VoucherClaims
from vouchers.errors import UNKNOWN_VOUCHER, VOUCHER_MISMATCH, VoucherRefused


def token_sha256(token: str) -> str:
    """The hex SHA-256 of a compact token's ASCII bytes (what the record stores; never the token)."""
    return hashlib.sha256(token.encode("ascii", errors="replace")).hexdigest()


def claims_record(claims: VoucherClaims) -> str:
    """The canonical JSON text of a claim set, as stored in the voucher record."""
    return canonical_json(claims.to_json_dict()).decode("utf-8")


def claims_from_record(text: str) -> VoucherClaims:
    """The claims a stored record holds (parsed strictly: a duplicated member is an error)."""
    return VoucherClaims.from_json_dict(loads_strict(text))


def unknown_voucher(jti: str) -> VoucherRefused:
    """The refusal for a correctly signed token the broker has no record of."""
    return VoucherRefused(
        UNKNOWN_VOUCHER,
        f"voucher {jti} carries a valid signature but the broker never issued or registered it; ask the "
        "issuer to issue it through the broker or to register it (`sbx voucher register`)",
    )


def check_matches_record(
    token: str,
    claims: VoucherClaims,
    *,
    recorded_sha256: str | None,
    recorded_claims: str,
) -> VoucherClaims:
    """Return the recorded claims when ``token`` is the recorded voucher; else refuse ``voucher_mismatch``.

    ``recorded_sha256`` is ``None`` only for vouchers issued before tokens were hashed (their claims were
    rebuilt from the record's columns); those are matched on claims alone.
    """
    recorded = claims_from_record(recorded_claims)
    same_bytes = recorded_sha256 is None or hmac.compare_digest(token_sha256(token), recorded_sha256)
    if not same_bytes or claims_record(claims) != claims_record(recorded):
        raise VoucherRefused(
            VOUCHER_MISMATCH,
            f"this token for voucher {claims.jti} is not the voucher that was issued: its "
            f"{'claims' if same_bytes else 'bytes'} differ from the broker's record. Use the voucher exactly "
            "as the issuer sent it.",
        )
    return recorded
