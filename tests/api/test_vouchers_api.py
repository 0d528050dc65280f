"""Vouchers over real HTTP: issuance limits, every refusal code, JWKS verified independently."""

from __future__ import annotations

import base64
import json

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tests.api.conftest import Live

DAY_S = 24 * 3600


def _issue(live: Live, **overrides: object) -> dict:  # type: ignore[type-arg]
    now = live.world.clock.now_ms() // 1000
    body = {
        "sme_org": live.world.sme.org_id,
        "credits": 1000,
        "coverage_bps": 10_000,
        "resources": ["cpu"],
        "valid_until_s": now + DAY_S,
        "credit_expires_s": now + 30 * DAY_S,
    }
    body.update(overrides)
    with live.client("issuer") as c:
        r = c.post("/api/v1/vouchers", json=body)
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def _redeem(live: Live, token: str, who: str = "sme-a") -> httpx.Response:
    with live.client(who) as c:
        return c.post("/api/v1/vouchers/redeem", json={"token": token})


def _assert_refused(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == code
    assert isinstance(body["detail"], str) and len(body["detail"]) > 10


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def test_issue_and_redeem_then_balance(live: Live) -> None:
    token = _issue(live)["token"]
    r = _redeem(live, token)
    assert r.status_code == 201, r.text
    assert r.json()["grant"]["amount"] == 1000
    with live.client("sme-a") as c:
        assert c.get("/api/v1/balance").json()["available"] == 1000


def test_token_verifies_independently_against_published_jwks(live: Live) -> None:
    token = _issue(live)["token"]
    header_b64, payload_b64, sig_b64 = token.split(".")
    header = json.loads(_unb64(header_b64))
    assert header["alg"] in ("EdDSA", "Ed25519") and "kid" in header
    jwks = httpx.get(f"{live.url}/.well-known/jwks.json").json()
    jwk = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
    assert jwk["kty"] == "OKP" and jwk["crv"] == "Ed25519"
    key = Ed25519PublicKey.from_public_bytes(_unb64(jwk["x"]))
    key.verify(_unb64(sig_b64), f"{header_b64}.{payload_b64}".encode())  # raises if invalid
    claims = json.loads(_unb64(payload_b64))
    assert claims["sub"] == live.world.sme.org_id and claims["credits"] == 1000


def test_already_redeemed(live: Live) -> None:
    token = _issue(live)["token"]
    assert _redeem(live, token).status_code == 201
    _assert_refused(_redeem(live, token), 409, "already_redeemed")


def test_idempotent_retry_returns_first_grant(live: Live) -> None:
    token = _issue(live)["token"]
    with live.client("sme-a") as c:
        first = c.post("/api/v1/vouchers/redeem", json={"token": token}, headers={"Idempotency-Key": "r1"})
        again = c.post("/api/v1/vouchers/redeem", json={"token": token}, headers={"Idempotency-Key": "r1"})
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()


def test_wrong_beneficiary(live: Live) -> None:
    token = _issue(live)["token"]
    _assert_refused(_redeem(live, token, who="sme-b"), 422, "wrong_beneficiary")


def test_expired_and_not_yet_valid(live: Live) -> None:
    now = live.world.clock.now_ms() // 1000
    future = _issue(live, valid_from_s=now + DAY_S, valid_until_s=now + 2 * DAY_S)["token"]
    _assert_refused(_redeem(live, future), 422, "not_yet_valid")
    soon = _issue(live, valid_until_s=now + 60)["token"]
    live.world.clock.advance(61_000)
    _assert_refused(_redeem(live, soon), 422, "expired")


def test_revoked_voucher_and_revoked_key(live: Live) -> None:
    issued = _issue(live)
    with live.client("issuer") as c:
        assert c.post(f"/api/v1/vouchers/{issued['jti']}/revoke").status_code == 200
    _assert_refused(_redeem(live, issued["token"]), 422, "revoked")
    other = _issue(live)
    with live.client("issuer") as c:
        assert c.patch(f"/api/v1/issuer/keys/{other['kid']}", json={"status": "revoked"}).status_code == 200
    _assert_refused(_redeem(live, other["token"]), 422, "revoked")


def test_rotated_key_still_verifies_its_vouchers(live: Live) -> None:
    old = _issue(live)
    with live.client("issuer") as c:
        new_key = c.post("/api/v1/issuer/keys").json()
    new = _issue(live)
    assert new["kid"] == new_key["kid"] != old["kid"]
    assert _redeem(live, old["token"]).status_code == 201
    assert _redeem(live, new["token"]).status_code == 201


def test_invalid_signature_tampered_claims(live: Live) -> None:
    token = _issue(live)["token"]
    header, payload, sig = token.split(".")
    claims = json.loads(_unb64(payload))
    claims["credits"] = 10**9
    forged = f"{header}.{_b64(json.dumps(claims).encode())}.{sig}"
    _assert_refused(_redeem(live, forged), 422, "invalid_signature")


def test_alg_none_and_hs256_confusion(live: Live) -> None:
    import hashlib
    import hmac

    token = _issue(live)["token"]
    header, payload, _sig = token.split(".")
    kid = json.loads(_unb64(header))["kid"]
    none_header = _b64(json.dumps({"alg": "none", "kid": kid}).encode())
    _assert_refused(_redeem(live, f"{none_header}.{payload}."), 422, "invalid_signature")
    jwks = httpx.get(f"{live.url}/.well-known/jwks.json").json()
    public = _unb64(next(k for k in jwks["keys"] if k["kid"] == kid)["x"])
    hs_header = _b64(json.dumps({"alg": "HS256", "kid": kid}).encode())
    mac = hmac.new(public, f"{hs_header}.{payload}".encode(), hashlib.sha256).digest()
    _assert_refused(_redeem(live, f"{hs_header}.{payload}.{_b64(mac)}"), 422, "invalid_signature")


def test_unknown_key(live: Live) -> None:
    token = _issue(live)["token"]
    header, payload, sig = token.split(".")
    fields = json.loads(_unb64(header))
    fields["kid"] = "no-such-key"
    _assert_refused(_redeem(live, f"{_b64(json.dumps(fields).encode())}.{payload}.{sig}"), 422, "unknown_key")


@pytest.mark.parametrize("garbage", ["x", "a.b.c", "....", "eyJhbGciOiJFZERTQSJ9.e30.", "é" * 10])
def test_malformed(live: Live, garbage: str) -> None:
    _assert_refused(_redeem(live, garbage), 400, "malformed")


def test_oversized_token(live: Live) -> None:
    _assert_refused(_redeem(live, "a" * 9000), 400, "malformed")


def test_programme_budget_and_sme_cap(services, clock) -> None:  # type: ignore[no-untyped-def]
    from broker.server import serve_in_thread
    from tests.api.conftest import Live as LiveT
    from tests.conftest import make_world

    w = make_world(services, clock, year_budget=1500, sme_cap=1000)
    server = serve_in_thread(services, loops=False)
    try:
        live = LiveT(server, w)
        _issue(live, credits=1000)
        with live.client("issuer") as c:
            now = clock.now_ms() // 1000
            base = {"coverage_bps": 5000, "valid_until_s": now + DAY_S, "credit_expires_s": now + DAY_S}
            r = c.post("/api/v1/vouchers", json={**base, "sme_org": w.sme.org_id, "credits": 1})
            _assert_refused(r, 409, "sme_cap_exceeded")
            r = c.post("/api/v1/vouchers", json={**base, "sme_org": w.sme_b.org_id, "credits": 501})
            _assert_refused(r, 409, "programme_budget_exceeded")
            r = c.post("/api/v1/vouchers", json={**base, "sme_org": w.sme_b.org_id, "credits": 500})
            assert r.status_code == 201
    finally:
        server.stop()


def test_errors_have_one_shape_and_roles_are_enforced(live: Live) -> None:
    with httpx.Client(base_url=live.url) as anon:
        r = anon.get("/api/v1/balance")
        assert r.status_code == 401 and r.json()["error"] == "unauthorized"
        r = anon.get("/api/v1/balance", headers={"Authorization": "Bearer sbx_tok_0000_wrong"})
        assert r.status_code == 401
    with live.client("sme-a") as c:
        r = c.post("/api/v1/vouchers", json={})
        assert r.status_code in (403, 422) and set(r.json()) == {"error", "detail"}
        r = c.post("/api/v1/orgs", json={"name": "x", "role": "sme"})
        assert r.status_code == 403 and r.json()["error"] == "forbidden"
        r = c.post("/api/v1/holds", json={"amount": 5, "balance": 10**9})
        assert r.status_code == 422 and r.json()["error"] == "invalid_request"


def test_foreign_objects_are_404_like_missing(live: Live) -> None:
    issued = _issue(live)
    with live.client("sme-b") as c:
        foreign = c.get(f"/api/v1/vouchers/{issued['jti']}")
        missing = c.get("/api/v1/vouchers/vch_doesnotexist")
    assert foreign.status_code == missing.status_code == 404
    assert foreign.json()["error"] == missing.json()["error"] == "not_found"


def test_issuer_held_key_registered_and_offline_voucher_registered_over_http(live: Live) -> None:
    from vouchers import VoucherClaims, generate_private_pem, public_jwk, sign_voucher

    pem = generate_private_pem()
    jwk = public_jwk(pem)
    with live.client("issuer") as c:
        r = c.post("/api/v1/issuer/keys/register", json={"public_jwk": jwk | {"d": "AAAA"}})
        _assert_refused(r, 422, "invalid_key")
        r = c.post("/api/v1/issuer/keys/register", json={"public_jwk": jwk})
        assert r.status_code == 201 and r.json()["kid"] == jwk["kid"], r.text
    now = live.world.clock.now_ms() // 1000
    claims = VoucherClaims(
        jti="vch_http_offline",
        iss=live.world.issuer.org_id,
        sub=live.world.sme.org_id,
        nbf=now,
        exp=now + DAY_S,
        credits=321,
        coverage_bps=10_000,
        resources=("cpu",),
        credit_exp=now + 30 * DAY_S,
    )
    token = sign_voucher(claims, pem, jwk["kid"])
    _assert_refused(_redeem(live, token), 422, "unknown_voucher")
    with live.client("issuer") as c:
        r = c.post("/api/v1/vouchers/register", json={"token": token})
        assert r.status_code == 201, r.text
    r = _redeem(live, token)
    assert r.status_code == 201 and r.json()["grant"]["amount"] == 321, r.text
    with live.client("issuer") as c:
        jwks = c.get("/.well-known/jwks.json").json()["keys"]
    roles = {k["kid"]: k.get("sbx_role") for k in jwks}
    assert roles[jwk["kid"]] is None and "broker" in roles.values()
