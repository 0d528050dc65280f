"""Limits: body size (declared or streamed), per-tenant rate limits with Retry-After, open-hold caps."""

from __future__ import annotations

from collections.abc import Iterator

import httpx

from broker.server import serve_in_thread
from tests.api.conftest import Live


def test_oversized_bodies_are_413_declared_or_streamed(live: Live) -> None:
    container = live.server.services.container
    original = container.settings
    container.settings = original.model_copy(update={"max_body_bytes": 1024})
    try:
        server = serve_in_thread(live.server.services, loops=False)  # an app built with the small limit
    finally:
        container.settings = original
    token = live.world.tokens["sme-a"]
    try:
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}) as c:
            r = c.post("/api/v1/vouchers/redeem", json={"token": "x" * 2000})
            assert r.status_code == 413 and r.json()["error"] == "payload_too_large"

            def chunks() -> Iterator[bytes]:
                yield b'{"token": "'
                for _ in range(10):
                    yield b"y" * 200
                yield b'"}'

            r = c.post(
                "/api/v1/vouchers/redeem", content=chunks(), headers={"content-type": "application/json"}
            )
            assert r.status_code == 413
            small = c.post("/api/v1/vouchers/redeem", json={"token": "x" * 10})
            assert small.status_code == 400  # under the limit it reaches the route (a malformed voucher)
    finally:
        server.stop()


def test_a_burst_of_ten_times_the_redeem_limit_gives_429_and_moves_only_what_was_allowed(live: Live) -> None:
    settings = live.server.services.container.settings
    allowed = settings.rate_burst
    world = live.world
    tokens = [world.voucher(credits=1)["token"] for _ in range(allowed * 10)]
    statuses = []
    with live.client("sme-a") as c:
        for token in tokens:
            r = c.post("/api/v1/vouchers/redeem", json={"token": token})
            statuses.append(r.status_code)
            if r.status_code == 429:
                assert int(r.headers["Retry-After"]) >= 1 and r.json()["error"] == "rate_limited"
    assert statuses.count(201) == allowed  # the fake clock does not move: no refill during the burst
    assert statuses.count(429) == len(tokens) - allowed and not any(s >= 500 for s in statuses)
    balance = world.services.ledger.balance(world.sme)
    assert balance["available"] == allowed
    assert world.services.ledger.invariants() == []


def test_open_holds_are_capped(live: Live) -> None:
    world = live.world
    world.credit(1_000)
    settings = live.server.services.container.settings
    cap = settings.max_open_holds
    live.server.services.container.settings = settings.model_copy(update={"max_open_holds": 3})
    try:
        with live.client("sme-a") as c:
            codes = [c.post("/api/v1/holds", json={"amount": 1}).status_code for _ in range(5)]
            r = c.post("/api/v1/holds", json={"amount": 1})
        assert codes == [201, 201, 201, 409, 409] and r.json()["error"] == "too_many_holds"
    finally:
        live.server.services.container.settings = settings.model_copy(update={"max_open_holds": cap})


def test_anonymous_burst_never_5xx(live: Live) -> None:
    with httpx.Client(base_url=live.url) as anon:
        assert all(anon.post("/api/v1/vouchers/redeem", json={}).status_code == 401 for _ in range(50))
