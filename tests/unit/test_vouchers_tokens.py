"""Voucher tokens: every refusal code, key rotation, algorithm confusion, tampering, fuzzing."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PrivateKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vouchers import (
    ALREADY_REDEEMED,
    REFUSAL_CODES,
    REVOKED,
    IssuerKey,
    VoucherClaims,
    VoucherRefused,
    generate_private_pem,
    jwks,
    public_jwk,
    sign_voucher,
    verify_voucher,
)

NOW = 1_764_000_000
ISSUER = "prog-kyoto"
SME = "sme-42"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def make_claims(**overrides: Any) -> VoucherClaims:
    values: dict[str, Any] = {
        "jti": "v-0001",
        "iss": ISSUER,
        "sub": SME,
        "nbf": NOW - 100,
        "exp": NOW + 3600,
        "credits": 1_000_000,
        "coverage_bps": 7_500,
        "resources": ("cpu", "gpu"),
        "credit_exp": NOW + 86_400 * 365,
        "iat": NOW - 100,
    }
    values.update(overrides)
    return VoucherClaims(**values)


class Keyring:
    """A tiny in-memory key store standing in for the database's issuer key table."""

    def __init__(self) -> None:
        self.keys: dict[str, IssuerKey] = {}
        self.pems: dict[str, bytes] = {}

    def add(self, issuer: str = ISSUER, status: str = "active") -> str:
        pem = generate_private_pem()
        jwk = public_jwk(pem)
        self.keys[jwk["kid"]] = IssuerKey(jwk["kid"], issuer, jwk, status)  # type: ignore[arg-type]
        self.pems[jwk["kid"]] = pem
        return jwk["kid"]

    def set_status(self, kid: str, status: str) -> None:
        self.keys[kid] = replace(self.keys[kid], status=status)  # type: ignore[arg-type]

    def lookup(self, kid: str) -> IssuerKey | None:
        return self.keys.get(kid)

    def sign(self, kid: str, claims: VoucherClaims | None = None, alg: str = "EdDSA") -> str:
        return sign_voucher(claims or make_claims(), self.pems[kid], kid, alg=alg)


@pytest.fixture(scope="module")
def ring() -> Keyring:
    r = Keyring()
    r.add()
    return r


def kid_of(ring: Keyring) -> str:
    return next(iter(ring.keys))


def verify(ring: Keyring, token: str, *, beneficiary: str = SME, now_s: int = NOW) -> VoucherClaims:
    return verify_voucher(token, key_lookup=ring.lookup, beneficiary=beneficiary, now_s=now_s)


def refusal(fn: Callable[[], object]) -> str:
    with pytest.raises(VoucherRefused) as info:
        fn()
    assert info.value.detail  # always a human sentence
    return info.value.code


def code(ring: Keyring, token: str, **kwargs: Any) -> str:
    """The refusal code verifying ``token`` raises (fails the test if it verifies)."""
    return refusal(lambda: verify(ring, token, **kwargs))


def forge(header: dict[str, Any], payload: dict[str, Any] | bytes, signature: bytes = b"x" * 64) -> str:
    """Assemble a compact JWS from parts, without any signing library."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return f"{b64(json.dumps(header).encode())}.{b64(body)}.{b64(signature)}"


# --- the happy path -------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["EdDSA", "Ed25519"])
def test_a_signed_voucher_verifies_with_either_alg_name(ring: Keyring, alg: str) -> None:
    token = ring.sign(kid_of(ring), alg=alg)
    header = json.loads(unb64(token.split(".")[0]))
    assert header == {"alg": alg, "kid": kid_of(ring), "typ": "JWT"}
    assert verify(ring, token) == make_claims()


def test_the_token_is_a_standard_jws_checked_with_cryptography_from_the_jwks_json(ring: Keyring) -> None:
    token = ring.sign(kid_of(ring))
    published = json.dumps(jwks(k.public_jwk for k in ring.keys.values()))
    # From here on: only the JSON text, base64 and `cryptography` — none of our code.
    header_b64, payload_b64, sig_b64 = token.split(".")
    header = json.loads(unb64(header_b64))
    jwk = next(k for k in json.loads(published)["keys"] if k["kid"] == header["kid"])
    assert (jwk["kty"], jwk["crv"], jwk["use"], jwk["alg"]) == ("OKP", "Ed25519", "sig", "EdDSA")
    assert "d" not in jwk
    key = Ed25519PublicKey.from_public_bytes(unb64(jwk["x"]))
    key.verify(unb64(sig_b64), f"{header_b64}.{payload_b64}".encode())  # raises if not standard
    claims = json.loads(unb64(payload_b64))
    assert claims["credits"] == 1_000_000 and claims["coverage"] == 7_500
    assert claims["sub"] == SME and claims["resources"] == ["cpu", "gpu"]


def test_validity_window_is_nbf_inclusive_exp_exclusive(ring: Keyring) -> None:
    token = ring.sign(kid_of(ring))
    claims = make_claims()
    assert verify(ring, token, now_s=claims.nbf) == claims
    assert verify(ring, token, now_s=claims.exp - 1) == claims
    assert refusal(lambda: verify(ring, token, now_s=claims.exp)) == "expired"
    assert refusal(lambda: verify(ring, token, now_s=claims.nbf - 1)) == "not_yet_valid"


def test_wrong_beneficiary(ring: Keyring) -> None:
    token = ring.sign(kid_of(ring))
    assert refusal(lambda: verify(ring, token, beneficiary="sme-other")) == "wrong_beneficiary"


def test_shared_codes_for_the_database_layer() -> None:
    assert ALREADY_REDEEMED == "already_redeemed" and REVOKED == "revoked"
    assert {
        "malformed",
        "invalid_signature",
        "unknown_key",
        "revoked",
        "expired",
        "not_yet_valid",
        "wrong_beneficiary",
        "already_redeemed",
        "voucher_mismatch",
        "unknown_voucher",
    } == REFUSAL_CODES


# --- keys: rotation, retirement, revocation, ownership --------------------------------------------


def test_rotation_two_active_keys_and_a_retired_one_still_verify() -> None:
    ring = Keyring()
    old, new = ring.add(), ring.add()
    old_token, new_token = ring.sign(old), ring.sign(new)
    assert verify(ring, old_token) == verify(ring, new_token)
    ring.set_status(old, "retired")
    assert verify(ring, old_token) == make_claims()
    ring.set_status(old, "revoked")
    assert refusal(lambda: verify(ring, old_token)) == "revoked"
    assert verify(ring, new_token) == make_claims()


def test_unknown_kid() -> None:
    ring, other = Keyring(), Keyring()
    other_kid = other.add()
    ring.add()
    assert refusal(lambda: verify(ring, other.sign(other_kid))) == "unknown_key"


def test_a_key_of_another_issuer_cannot_sign_for_this_issuer() -> None:
    ring = Keyring()
    foreign = ring.add(issuer="prog-other")
    assert refusal(lambda: verify(ring, ring.sign(foreign))) == "unknown_key"


def test_a_lookup_returning_a_key_with_another_kid_is_unknown(ring: Keyring) -> None:
    token = ring.sign(kid_of(ring))
    wrong = replace(ring.keys[kid_of(ring)], kid="another")
    got = refusal(lambda: verify_voucher(token, key_lookup=lambda _k: wrong, beneficiary=SME, now_s=NOW))
    assert got == "unknown_key"


def test_a_registered_key_that_is_not_ed25519_verifies_nothing(ring: Keyring) -> None:
    token = ring.sign(kid_of(ring))
    bad = replace(ring.keys[kid_of(ring)], public_jwk={"kty": "oct", "k": b64(b"secret")})
    got = refusal(lambda: verify_voucher(token, key_lookup=lambda _k: bad, beneficiary=SME, now_s=NOW))
    assert got == "unknown_key"


def test_signature_by_another_key_under_a_registered_kid() -> None:
    ring, attacker = Keyring(), Keyring()
    kid = ring.add()
    attacker_kid = attacker.add()
    token = sign_voucher(make_claims(), attacker.pems[attacker_kid], kid)
    assert refusal(lambda: verify(ring, token)) == "invalid_signature"


# --- algorithm confusion and forged headers -------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "", None, 5])
def test_alg_none_and_nonsense(ring: Keyring, alg: object) -> None:
    header = {"alg": alg, "kid": kid_of(ring), "typ": "JWT"}
    claims = make_claims().to_json_dict()
    for signature in (b"", b"x" * 64):
        assert code(ring, forge(header, claims, signature)) == "invalid_signature"


def test_hs256_signed_with_the_public_key_as_hmac_secret(ring: Keyring) -> None:
    kid = kid_of(ring)
    jwk = ring.keys[kid].public_jwk
    pem = (
        serialization.load_pem_private_key(ring.pems[kid], None)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    secrets = [unb64(jwk["x"]), pem, json.dumps(jwk).encode(), jwk["x"].encode()]
    for alg, digest in (("HS256", hashlib.sha256), ("HS384", hashlib.sha384), ("HS512", hashlib.sha512)):
        for secret in secrets:
            h = b64(json.dumps({"alg": alg, "kid": kid, "typ": "JWT"}).encode())
            p = b64(json.dumps(make_claims().to_json_dict()).encode())
            sig = hmac.new(secret, f"{h}.{p}".encode(), digest).digest()
            assert code(ring, f"{h}.{p}.{b64(sig)}") == "invalid_signature"


def _asym_token(alg: str, sign: Callable[[bytes], bytes], kid: str) -> str:
    h = b64(json.dumps({"alg": alg, "kid": kid, "typ": "JWT"}).encode())
    p = b64(json.dumps(make_claims().to_json_dict()).encode())
    return f"{h}.{p}.{b64(sign(f'{h}.{p}'.encode()))}"


def test_rsa_ecdsa_and_ed448_signatures_are_refused(ring: Keyring) -> None:
    kid = kid_of(ring)
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ed448 = Ed448PrivateKey.generate()
    tokens = [
        _asym_token("RS256", lambda m: rsa_key.sign(m, padding.PKCS1v15(), hashes.SHA256()), kid),
        _asym_token("ES256", lambda m: ec_key.sign(m, ec.ECDSA(hashes.SHA256())), kid),
        _asym_token("Ed448", ed448.sign, kid),
        _asym_token("EdDSA", ed448.sign, kid),  # right name, wrong curve
    ]
    for token in tokens:
        assert code(ring, token) == "invalid_signature"


def test_tampered_payload(ring: Keyring) -> None:
    h, _p, s = ring.sign(kid_of(ring)).split(".")
    richer = make_claims(credits=999_999_999).to_json_dict()
    assert refusal(lambda: verify(ring, f"{h}.{b64(json.dumps(richer).encode())}.{s}")) == "invalid_signature"
    other = make_claims(sub="sme-thief").to_json_dict()
    assert refusal(lambda: verify(ring, f"{h}.{b64(json.dumps(other).encode())}.{s}")) == "invalid_signature"


def test_tampered_header(ring: Keyring) -> None:
    kid = kid_of(ring)
    _h, p, s = ring.sign(kid).split(".")
    for header in ({"alg": "Ed25519", "kid": kid, "typ": "JWT"}, {"alg": "EdDSA", "kid": kid}):
        h = b64(json.dumps(header).encode())
        assert code(ring, f"{h}.{p}.{s}") == "invalid_signature"


def test_tampered_signature(ring: Keyring) -> None:
    h, p, s = ring.sign(kid_of(ring)).split(".")
    raw = bytearray(unb64(s))
    raw[0] ^= 1
    assert refusal(lambda: verify(ring, f"{h}.{p}.{b64(bytes(raw))}")) == "invalid_signature"
    assert refusal(lambda: verify(ring, f"{h}.{p}.")) == "invalid_signature"
    assert refusal(lambda: verify(ring, f"{h}.{p}.{b64(bytes(raw[:32]))}")) == "invalid_signature"


@pytest.mark.parametrize(
    "header",
    [
        {"alg": "EdDSA"},  # no kid
        {"alg": "EdDSA", "kid": ""},
        {"alg": "EdDSA", "kid": 7},
        {"alg": "EdDSA", "kid": "k", "b64": False, "crit": ["b64"]},  # RFC 7797 unencoded payload
        {"alg": "EdDSA", "kid": "k", "jwk": {"kty": "OKP"}},  # embedded keys are never trusted
        {"alg": "EdDSA", "kid": "k", "typ": "JOSE+JSON"},
    ],
)
def test_malformed_headers(ring: Keyring, header: dict[str, Any]) -> None:
    assert refusal(lambda: verify(ring, forge(header, make_claims().to_json_dict()))) == "malformed"


@pytest.mark.parametrize(
    "token",
    [
        "",
        "garbage",
        "a.b",
        "a.b.c.d",
        "...",
        "!!!.@@@.###",
        "eyJhbGciOiJFZERTQSJ9",
        "ünïcødé.ünïcødé.ünïcødé",
        b64(b"[1,2]") + ".e30.AA",
        b64(b"null") + ".e30.AA",
        b64(b'{"alg":"EdDSA"') + ".e30.AA",
    ],
)
def test_garbage_is_malformed(ring: Keyring, token: str) -> None:
    assert refusal(lambda: verify(ring, token)) == "malformed"


def test_oversized_token_is_refused_unread(ring: Keyring) -> None:
    token = ring.sign(kid_of(ring))
    h, p, s = token.split(".")
    huge = f"{h}.{p}{'A' * 8192}.{s}"
    assert refusal(lambda: verify(ring, huge)) == "malformed"
    assert refusal(lambda: verify(ring, token + "A" * (8193 - len(token)))) == "malformed"


def _signed_payload(ring: Keyring, payload: bytes) -> str:
    """A correctly signed token over arbitrary payload bytes (an issuer's bug, not an attack)."""
    from joserfc import jws
    from joserfc.jwk import OKPKey

    kid = kid_of(ring)
    key = OKPKey.import_key(ring.pems[kid])
    return jws.serialize_compact({"alg": "Ed25519", "kid": kid}, payload, key, algorithms=["Ed25519"])


@pytest.mark.parametrize(
    "change",
    [
        {"credits": 1.5},
        {"credits": True},
        {"credits": 0},
        {"credits": -5},
        {"credits": "100"},
        {"credits": 2**53},
        {"coverage": 10_001},
        {"coverage": 50.0},
        {"resources": []},
        {"resources": ["cpu", "cpu"]},
        {"resources": ["tpu"]},
        {"resources": "cpu"},
        {"nbf": None},
        {"exp": NOW - 200},
        {"credit_exp": NOW - 100},
        {"jti": ""},
        {"sub": 42},
        {"iat": 1.0},
    ],
)
def test_signed_but_invalid_claims_are_malformed(ring: Keyring, change: dict[str, Any]) -> None:
    payload = {**make_claims().to_json_dict(), **change}
    token = _signed_payload(ring, json.dumps(payload).encode())
    assert refusal(lambda: verify(ring, token)) == "malformed"


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[]",
        b"\xff\xfe",
        b'{"credits": NaN}',
        b'{"jti":"a","jti":"b"}',
        json.dumps({k: v for k, v in make_claims().to_json_dict().items() if k != "exp"}).encode(),
    ],
)
def test_signed_but_undecodable_payload_is_malformed(ring: Keyring, payload: bytes) -> None:
    assert refusal(lambda: verify(ring, _signed_payload(ring, payload))) == "malformed"


def test_unknown_claims_are_ignored_as_rfc_7519_asks(ring: Keyring) -> None:
    payload = {**make_claims().to_json_dict(), "aud": "sandbox-broker", "note": "hello"}
    assert verify(ring, _signed_payload(ring, json.dumps(payload).encode())) == make_claims()


def test_signing_refuses_other_algs_and_keys(ring: Keyring) -> None:
    with pytest.raises(ValueError, match="alg"):
        sign_voucher(make_claims(), ring.pems[kid_of(ring)], kid_of(ring), alg="HS256")
    with pytest.raises(ValueError, match="kid"):
        sign_voucher(make_claims(), ring.pems[kid_of(ring)], "")


# --- fuzzing: the parser raises nothing but VoucherRefused ----------------------------------------


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
B64_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."


def _never_anything_but_refused(ring: Keyring, token: str) -> None:
    try:
        claims = verify(ring, token)
    except VoucherRefused as exc:
        assert exc.code in REFUSAL_CODES
    else:  # only a token carrying the very same signed content can pass
        assert claims == make_claims()


@FUZZ
@given(st.text(max_size=400))
def test_fuzz_random_text(ring: Keyring, token: str) -> None:
    _never_anything_but_refused(ring, token)


@FUZZ
@given(st.text(alphabet=B64_CHARS, max_size=600))
def test_fuzz_random_base64ish_text(ring: Keyring, token: str) -> None:
    _never_anything_but_refused(ring, token)


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_base64_of_random_json_like_parts(ring: Keyring, raw: bytes) -> None:
    _never_anything_but_refused(ring, f"{b64(raw)}.{b64(raw[::-1])}.{b64(raw[:64])}")


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["flip", "insert", "delete"]), st.integers(0, 10_000), st.sampled_from(B64_CHARS)
        ),
        min_size=1,
        max_size=4,
    )
)
def test_fuzz_mutated_valid_tokens(ring: Keyring, edits: list[tuple[str, int, str]]) -> None:
    token = list(ring.sign(kid_of(ring)))
    for op, pos, char in edits:
        i = pos % (len(token) + 1)
        if op == "insert":
            token.insert(i, char)
        elif token and i < len(token):
            if op == "flip":
                token[i] = char
            else:
                del token[i]
    _never_anything_but_refused(ring, "".join(token))


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from(["alg", "kid", "typ", "b64", "crit", "jwk", "x"]),
        st.one_of(
            st.none(), st.booleans(), st.integers(), st.text(max_size=8), st.lists(st.text(max_size=3))
        ),
    ),
    st.dictionaries(
        st.text(max_size=10),
        st.recursive(
            st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10)),
            lambda inner: (
                st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
            ),
            max_leaves=10,
        ),
    ),
)
def test_fuzz_structured_headers_and_payloads(
    ring: Keyring, header: dict[str, Any], payload: dict[str, Any]
) -> None:
    _never_anything_but_refused(ring, forge(header, payload))
