"""Voucher keys (JWK, RFC 7638 ids, detached signatures), claims validation and issuance rules."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PrivateKey

from common.errors import DomainError, InvalidInput
from vouchers import (
    InvalidVoucherClaims,
    IssuanceRefused,
    KeyFormatError,
    VoucherClaims,
    check_issuance,
    generate_private_pem,
    jwks,
    key_id,
    public_jwk,
    public_key_from_jwk,
    sign_bytes,
    verify_bytes,
    year_of,
)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# --- keys -----------------------------------------------------------------------------------------


def test_public_jwk_from_private_and_public_pem_agree_and_hold_no_secret() -> None:
    pem = generate_private_pem()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    pub_pem = (
        serialization.load_pem_private_key(pem, None)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    jwk = public_jwk(pem)
    assert jwk == public_jwk(pub_pem)
    assert set(jwk) == {"kty", "crv", "x", "kid", "use", "alg"}
    assert (jwk["kty"], jwk["crv"], jwk["use"], jwk["alg"]) == ("OKP", "Ed25519", "sig", "EdDSA")
    assert public_jwk(pem, alg="Ed25519")["alg"] == "Ed25519"


def test_key_id_is_the_rfc_7638_thumbprint_computed_independently() -> None:
    pem = generate_private_pem()
    jwk = public_jwk(pem)
    members = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": jwk["x"]}, separators=(",", ":"))
    expected = b64(hashlib.sha256(members.encode()).digest())
    assert key_id(pem) == jwk["kid"] == expected
    assert key_id(generate_private_pem()) != expected


def test_sign_and_verify_bytes() -> None:
    pem = generate_private_pem()
    jwk = public_jwk(pem)
    sig = sign_bytes(pem, b"report v1")
    assert verify_bytes(jwk, b"report v1", sig)
    assert not verify_bytes(jwk, b"report v2", sig)
    assert not verify_bytes(public_jwk(generate_private_pem()), b"report v1", sig)
    for garbage in ("", "!!", sig[:-2], sig + "A", sig + "=", b64(b"\0" * 64)):
        assert not verify_bytes(jwk, b"report v1", garbage)


def test_jwks_and_jwk_import_refuse_what_is_not_an_ed25519_public_key() -> None:
    pem = generate_private_pem()
    jwk = public_jwk(pem)
    assert jwks([jwk]) == {"keys": [jwk]}
    raw_private = serialization.load_pem_private_key(pem, None).private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    bad: list[Any] = [
        {**jwk, "d": b64(raw_private)},
        {**jwk, "crv": "Ed448"},
        {**jwk, "kty": "EC"},
        {**jwk, "x": jwk["x"][:-2]},
        {**jwk, "x": "not base64!"},
        {"kty": "oct", "k": "c2VjcmV0"},
        ["not", "a", "dict"],
    ]
    for candidate in bad:
        with pytest.raises(KeyFormatError):
            public_key_from_jwk(candidate)
        with pytest.raises(KeyFormatError):
            jwks([candidate])
        with pytest.raises(KeyFormatError):
            verify_bytes(candidate, b"x", sign_bytes(pem, b"x"))


def test_pem_that_is_not_ed25519_is_refused() -> None:
    ed448 = Ed448PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    for pem in (ed448, b"garbage", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"):
        with pytest.raises(KeyFormatError):
            public_jwk(pem)
        with pytest.raises(KeyFormatError):
            sign_bytes(pem, b"x")
    assert isinstance(KeyFormatError("x"), DomainError)


# --- claims ---------------------------------------------------------------------------------------


def claims(**overrides: Any) -> VoucherClaims:
    values: dict[str, Any] = {
        "jti": "v1",
        "iss": "prog",
        "sub": "sme",
        "nbf": 100,
        "exp": 200,
        "credits": 10,
        "coverage_bps": 5000,
        "resources": ("memory", "cpu"),
        "credit_exp": 150,
    }
    values.update(overrides)
    return VoucherClaims(**values)


def test_claims_roundtrip_and_normalised_resources() -> None:
    c = claims()
    assert c.resources == ("cpu", "memory")
    data = c.to_json_dict()
    assert data["coverage"] == 5000 and "coverage_bps" not in data and "iat" not in data
    assert VoucherClaims.from_json_dict(json.loads(json.dumps(data))) == c
    assert claims(iat=90).to_json_dict()["iat"] == 90
    assert claims(coverage_bps=0).coverage_bps == 0
    assert claims(coverage_bps=10_000, credit_exp=101).credit_exp == 101  # may end before exp


@pytest.mark.parametrize(
    "change",
    [
        {"credits": True},
        {"credits": 1.0},
        {"credits": 0},
        {"credits": 2**53},
        {"coverage_bps": -1},
        {"coverage_bps": 10_001},
        {"nbf": False},
        {"exp": 100},
        {"credit_exp": 100},
        {"resources": ()},
        {"resources": ("gpu", "gpu")},
        {"resources": ("disk",)},
        {"resources": "cpu"},
        {"jti": ""},
        {"iss": "x" * 257},
        {"sub": "a\nb"},
        {"iat": -1},
    ],
)
def test_claims_refuse_bad_values(change: dict[str, Any]) -> None:
    with pytest.raises(InvalidVoucherClaims):
        claims(**change)


def test_claims_from_json_needs_every_required_claim() -> None:
    data = claims().to_json_dict()
    for name in ("jti", "iss", "sub", "nbf", "exp", "credits", "coverage", "resources", "credit_exp"):
        partial = {k: v for k, v in data.items() if k != name}
        with pytest.raises(InvalidVoucherClaims, match=name):
            VoucherClaims.from_json_dict(partial)
    with pytest.raises(InvalidVoucherClaims):
        VoucherClaims.from_json_dict([data])


# --- issuance rules -------------------------------------------------------------------------------


def test_issuance_within_limits_and_at_the_exact_boundary() -> None:
    check_issuance(
        amount=10, programme_year_budget=100, issued_this_year=50, sme_cap=20, issued_to_sme_total=5
    )
    check_issuance(
        amount=50, programme_year_budget=100, issued_this_year=50, sme_cap=50, issued_to_sme_total=0
    )


def test_programme_budget_exceeded_names_requested_remaining_and_difference() -> None:
    with pytest.raises(IssuanceRefused) as info:
        check_issuance(
            amount=5_000,
            programme_year_budget=10_000,
            issued_this_year=7_000,
            sme_cap=10**9,
            issued_to_sme_total=0,
        )
    assert info.value.code == "programme_budget_exceeded"
    assert "requested 5000" in info.value.detail
    assert "remaining 3000" in info.value.detail
    assert "short by 2000" in info.value.detail


def test_sme_cap_exceeded() -> None:
    with pytest.raises(IssuanceRefused) as info:
        check_issuance(
            amount=30, programme_year_budget=1_000, issued_this_year=0, sme_cap=100, issued_to_sme_total=80
        )
    assert info.value.code == "sme_cap_exceeded"
    assert "remaining 20" in info.value.detail and "short by 10" in info.value.detail


def test_programme_budget_is_checked_before_the_sme_cap() -> None:
    with pytest.raises(IssuanceRefused) as info:
        check_issuance(
            amount=10, programme_year_budget=5, issued_this_year=0, sme_cap=5, issued_to_sme_total=0
        )
    assert info.value.code == "programme_budget_exceeded"


def test_overspent_programme_reports_zero_remaining() -> None:
    with pytest.raises(IssuanceRefused, match="remaining 0"):
        check_issuance(
            amount=1, programme_year_budget=5, issued_this_year=9, sme_cap=5, issued_to_sme_total=0
        )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"amount": 0},
        {"amount": -1},
        {"amount": 1.0},
        {"amount": True},
        {"programme_year_budget": -1},
        {"issued_this_year": -1},
        {"sme_cap": 2.5},
        {"issued_to_sme_total": None},
    ],
)
def test_issuance_refuses_nonsense_input(kwargs: dict[str, Any]) -> None:
    base: dict[str, Any] = {
        "amount": 1,
        "programme_year_budget": 10,
        "issued_this_year": 0,
        "sme_cap": 10,
        "issued_to_sme_total": 0,
    }
    with pytest.raises(InvalidInput):
        check_issuance(**{**base, **kwargs})


def test_year_of_is_utc() -> None:
    new_year = int(datetime(2027, 1, 1, tzinfo=UTC).timestamp())
    assert year_of(new_year - 1) == 2026
    assert year_of(new_year) == 2027
