"""Tokens (issue 13, item 6): list and revoke over the API, lifetimes bounded by the creating token, an optional
default lifetime, revocation effective on the next request."""

from __future__ import annotations

import httpx

from broker.server import serve_in_thread
from tests.api.conftest import Live


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _mint(c: httpx.Client, org_id: str, **body: object) -> dict[str, object]:
    r = c.post(f"/api/v1/orgs/{org_id}/tokens", json=body)
    assert r.status_code == 201, r.text
    out: dict[str, object] = r.json()
    return out


def test_a_short_token_cannot_mint_a_longer_one(live: Live) -> None:
    sme = live.world.sme
    now = live.world.clock.now_ms()
    with live.client("sme-a") as c:
        short = _mint(c, sme.org_id, label="short", ttl_s=60)
    assert short["expires_ms"] == now + 60_000
    with httpx.Client(base_url=live.url, headers=_bearer(str(short["token"])), timeout=30) as c:
        forever = _mint(c, sme.org_id, label="asks for no expiry")
        longer = _mint(c, sme.org_id, label="asks for a year", ttl_s=365 * 24 * 3600)
        shorter = _mint(c, sme.org_id, label="asks for less", ttl_s=10)
    assert forever["expires_ms"] == longer["expires_ms"] == now + 60_000  # capped at the creator's expiry
    assert shorter["expires_ms"] == now + 10_000
    live.world.clock.advance(61_000)
    with httpx.Client(base_url=live.url, headers=_bearer(str(forever["token"])), timeout=30) as c:
        assert c.get("/api/v1/me").status_code == 401


def test_the_default_lifetime_applies_when_none_is_asked(live: Live) -> None:
    container = live.server.services.container
    original = container.settings
    container.settings = original.model_copy(update={"token_default_ttl_s": 3600})
    try:
        now = live.world.clock.now_ms()
        with live.client("sme-a") as c:
            assert _mint(c, live.world.sme.org_id)["expires_ms"] == now + 3_600_000
            assert _mint(c, live.world.sme.org_id, ttl_s=60)["expires_ms"] == now + 60_000
    finally:
        container.settings = original


def test_list_shows_no_secrets_and_is_scoped(live: Live) -> None:
    world = live.world
    with live.client("sme-a") as c:
        _mint(c, world.sme.org_id, label="ci")
        mine = c.get("/api/v1/tokens").json()
        assert {t["org_id"] for t in mine} == {world.sme.org_id} and len(mine) == 2
        assert any(t["current"] for t in mine) and {t["state"] for t in mine} == {"active"}
        assert not any("secret" in k or "hash" in k or k == "token" for t in mine for k in t)
        assert c.get(f"/api/v1/orgs/{world.sme_b.org_id}/tokens").status_code == 404
    with live.client("op2") as c:
        every = c.get("/api/v1/tokens").json()
        assert {world.sme.org_id, world.sme_b.org_id, world.issuer.org_id} <= {t["org_id"] for t in every}
        only_b = c.get(f"/api/v1/orgs/{world.sme_b.org_id}/tokens").json()
        assert {t["org_id"] for t in only_b} == {world.sme_b.org_id}


def test_revocation_takes_effect_on_the_next_request_on_every_replica(live: Live) -> None:
    world = live.world
    replica = serve_in_thread(live.server.services, loops=False)  # a second app over the same database
    try:
        with live.client("sme-a") as c:
            minted = _mint(c, world.sme.org_id, label="to revoke")
        token_id = "tok_" + str(minted["token"]).split("_")[2]
        for url in (live.url, replica.url):
            with httpx.Client(base_url=url, headers=_bearer(str(minted["token"])), timeout=30) as c:
                assert c.get("/api/v1/me").json()["token_id"] == token_id
        with live.client("sme-b") as c:  # another organisation's token is a 404, and stays valid
            assert c.post(f"/api/v1/tokens/{token_id}/revoke").status_code == 404
        with live.client("sme-a") as c:
            r = c.post(f"/api/v1/tokens/{token_id}/revoke")
            assert r.status_code == 200 and r.json()["state"] == "revoked"
        for url in (live.url, replica.url):
            with httpx.Client(base_url=url, headers=_bearer(str(minted["token"])), timeout=30) as c:
                assert c.get("/api/v1/me").status_code == 401
                assert c.post("/api/v1/vouchers/redeem", json={"token": "x"}).status_code == 401
        actions = [e["action"] for e in world.services.audit.newest(world.operator, limit=5)]
        assert "token.revoke" in actions
        with live.client("op2") as c:  # operators revoke anyone's
            other = _mint(c, world.sme_b.org_id)
            other_id = "tok_" + str(other["token"]).split("_")[2]
            assert c.post(f"/api/v1/tokens/{other_id}/revoke").status_code == 200
    finally:
        replica.stop()
