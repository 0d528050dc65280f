"""Helpers for tests that talk to a broker only over HTTP (subprocess brokers, CLI tests)."""

from __future__ import annotations

import time

import httpx

DAY_S = 24 * 3600


def bootstrap_world(url: str, operator_token: str, *, credits: int = 10_000_000) -> dict[str, str]:
    """Create an issuer (with key and programme) and an SME with redeemed credit; return tokens and ids."""
    op = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {operator_token}"}, timeout=60)
    try:
        issuer = op.post(
            "/api/v1/orgs",
            json={"name": "issuer", "role": "issuer", "year_budget": 10**12, "sme_cap": 10**11},
        ).json()
        sme = op.post("/api/v1/orgs", json={"name": "sme", "role": "sme", "copay_limit": 10**6}).json()
        issuer_token = op.post(f"/api/v1/orgs/{issuer['id']}/tokens", json={}).json()["token"]
        sme_token = op.post(f"/api/v1/orgs/{sme['id']}/tokens", json={}).json()["token"]
    finally:
        op.close()
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {issuer_token}"}, timeout=60) as iss:
        assert iss.post("/api/v1/issuer/keys").status_code == 201
        now = int(time.time())
        voucher = iss.post(
            "/api/v1/vouchers",
            json={
                "sme_org": sme["id"],
                "credits": credits,
                "coverage_bps": 10_000,
                "resources": ["cpu", "memory"],
                "valid_until_s": now + DAY_S,
                "credit_expires_s": now + 30 * DAY_S,
            },
        ).json()
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {sme_token}"}, timeout=60) as client:
        assert client.post("/api/v1/vouchers/redeem", json={"token": voucher["token"]}).status_code == 201
    return {
        "operator": operator_token,
        "issuer": issuer_token,
        "sme": sme_token,
        "sme_id": sme["id"],
        "issuer_id": issuer["id"],
    }
