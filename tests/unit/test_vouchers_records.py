"""The pure half of binding a voucher to its record, redemption limits, and strict JSON (negative controls)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from common.canonical import DuplicateMember, loads_strict
from vouchers import (
    IssuanceRefused,
    IssuerKey,
    VoucherClaims,
    VoucherRefused,
    check_matches_record,
    check_redemption,
    claims_from_record,
    claims_record,
    generate_private_pem,
    key_id,
    public_jwk,
    sign_voucher,
    token_sha256,
    verify_voucher,
)
from vouchers.keys import b64url_encode

CLAIMS = VoucherClaims(
    jti="vch_1",
    iss="org_i",
    sub="org_s",
    nbf=100,
    exp=200,
    credits=1000,
    coverage_bps=5000,
    resources=("memory", "cpu"),
    credit_exp=300,
    iat=100,
)
PEM = generate_private_pem()
TOKEN = sign_voucher(CLAIMS, PEM, key_id(PEM))


def _check(
    token: str, claims: VoucherClaims, *, sha: str | None = None, recorded: VoucherClaims = CLAIMS
) -> str:
    try:
        check_matches_record(token, claims, recorded_sha256=sha, recorded_claims=claims_record(recorded))
    except VoucherRefused as exc:
        return exc.code
    return "ok"


def test_the_recorded_token_matches_and_the_record_round_trips() -> None:
    assert _check(TOKEN, CLAIMS, sha=token_sha256(TOKEN)) == "ok"
    assert claims_from_record(claims_record(CLAIMS)) == CLAIMS


def test_other_bytes_or_other_claims_are_a_mismatch() -> None:
    other = sign_voucher(CLAIMS, PEM, key_id(PEM), alg="Ed25519")
    assert _check(other, CLAIMS, sha=token_sha256(TOKEN)) == "voucher_mismatch"
    more = replace(CLAIMS, credits=5_000_000)
    assert _check(sign_voucher(more, PEM, key_id(PEM)), more, sha=token_sha256(TOKEN)) == "voucher_mismatch"
    assert _check(sign_voucher(more, PEM, key_id(PEM)), more) == "voucher_mismatch"  # a pre-0008 record


def test_redemption_limits_count_what_was_already_redeemed() -> None:
    check_redemption(
        amount=600, programme_year_budget=1000, redeemed_this_year=400, sme_cap=600, redeemed_by_sme_total=0
    )
    with pytest.raises(IssuanceRefused) as info:
        check_redemption(
            amount=600,
            programme_year_budget=10**9,
            redeemed_this_year=0,
            sme_cap=1000,
            redeemed_by_sme_total=600,
        )
    assert info.value.code == "sme_cap_exceeded" and "Redeeming 600 credits" in info.value.detail
    with pytest.raises(IssuanceRefused) as info:
        check_redemption(
            amount=2, programme_year_budget=10, redeemed_this_year=9, sme_cap=100, redeemed_by_sme_total=0
        )
    assert info.value.code == "programme_budget_exceeded"


@pytest.mark.parametrize(
    "text",
    ['{"a": 1, "a": 2}', '{"x": {"totals": 1, "totals": 2}}', '[{"k": 0, "k": 0}]'],
)
def test_duplicate_members_are_refused_at_any_depth(text: str) -> None:
    with pytest.raises(DuplicateMember):
        loads_strict(text)


@pytest.mark.parametrize("text", ["NaN", '{"a": Infinity}', "[-Infinity]"])
def test_non_json_constants_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="non-JSON"):
        loads_strict(text)


def test_a_voucher_header_naming_alg_twice_is_malformed() -> None:
    _, payload, signature = TOKEN.split(".")
    twice = b64url_encode(b'{"alg":"EdDSA","alg":"none","kid":"' + key_id(PEM).encode() + b'","typ":"JWT"}')
    key = IssuerKey(key_id(PEM), "org_i", public_jwk(PEM), "active")
    with pytest.raises(VoucherRefused) as info:
        verify_voucher(
            f"{twice}.{payload}.{signature}", key_lookup=lambda _: key, beneficiary="org_s", now_s=150
        )
    assert info.value.code == "malformed"
    assert verify_voucher(TOKEN, key_lookup=lambda _: key, beneficiary="org_s", now_s=150) == CLAIMS
