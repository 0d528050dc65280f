"""Redemption is bound to the issued record: attacks with a stolen issuer key or a written database row.

Each test is a negative control: before vouchers were bound to their record, the broker redeemed the forged
token (it built the grant from the token's claims), so each assertion below failed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from broker.db import vouchers as vouchers_db
from broker.errors import status_for
from common.errors import DomainError
from tests.conftest import World, make_world
from vouchers import VoucherClaims, sign_voucher, token_sha256, year_of


def _refused(fn: Callable[[], Any]) -> DomainError:
    with pytest.raises(DomainError) as info:
        fn()
    return info.value


def _stolen_issuer_key(world: World) -> tuple[str, bytes]:
    """What an attacker with the issuer's private key holds (read here through the broker's own layer)."""
    c = world.services.vouchers.c
    return c.db.read(lambda conn: world.services.vouchers.signing_key_of(conn, world.issuer.org_id))


def _claims_of(issued: dict[str, Any]) -> VoucherClaims:
    raw = dict(issued["claims"])
    raw["resources"] = tuple(raw["resources"])
    return VoucherClaims(**raw)


def test_resigned_voucher_with_other_claims_is_voucher_mismatch(world: World) -> None:
    issued = world.voucher(credits=1000, coverage_bps=5000)
    kid, pem = _stolen_issuer_key(world)
    original = _claims_of(issued)
    forged = replace(original, sub=world.sme_b.org_id, credits=5_000_000, coverage_bps=10_000)
    error = _refused(
        lambda: world.services.vouchers.redeem(
            world.sme_b, token=sign_voucher(forged, pem, kid), idempotency_key=None
        )
    )
    assert error.code == "voucher_mismatch" and status_for(error) == 422
    more = replace(original, credits=5_000_000)
    error = _refused(
        lambda: world.services.vouchers.redeem(
            world.sme, token=sign_voucher(more, pem, kid), idempotency_key=None
        )
    )
    assert error.code == "voucher_mismatch"
    # The real voucher still redeems, for what the record says.
    grant = world.services.vouchers.redeem(world.sme, token=issued["token"], idempotency_key=None)["grant"]
    assert (grant["amount"], grant["coverage_bps"], grant["org_id"]) == (1000, 5000, world.sme.org_id)


def test_same_claims_signed_again_are_other_bytes(world: World) -> None:
    issued = world.voucher(credits=1000)
    kid, pem = _stolen_issuer_key(world)
    again = sign_voucher(_claims_of(issued), pem, kid, alg="Ed25519")
    assert again != issued["token"]
    error = _refused(lambda: world.services.vouchers.redeem(world.sme, token=again, idempotency_key=None))
    assert error.code == "voucher_mismatch"


def test_signed_voucher_never_issued_is_unknown_voucher(world: World) -> None:
    kid, pem = _stolen_issuer_key(world)
    made_up = replace(_claims_of(world.voucher(credits=10)), jti="vch_never_issued", credits=900)
    error = _refused(
        lambda: world.services.vouchers.redeem(
            world.sme, token=sign_voucher(made_up, pem, kid), idempotency_key=None
        )
    )
    assert error.code == "unknown_voucher" and status_for(error) == 422


def test_sme_cap_is_checked_again_at_redemption(services, clock) -> None:  # type: ignore[no-untyped-def]
    """A record written straight into the database (with a matching token) cannot pass the SME's cap."""
    w = make_world(services, clock, year_budget=10**9, sme_cap=1000)
    first = w.voucher(credits=600)
    kid, pem = _stolen_issuer_key(w)
    planted = replace(_claims_of(first), jti="vch_planted", credits=5_000_000)
    token = sign_voucher(planted, pem, kid)
    c = services.vouchers.c
    c.db.write(
        lambda conn: vouchers_db.record_voucher(
            conn,
            claims=planted,
            kid=kid,
            year=year_of(planted.nbf),
            now_ms=clock.now_ms(),
            token_sha256=token_sha256(token),
        )
    )
    services.vouchers.redeem(w.sme, token=first["token"], idempotency_key=None)
    error = _refused(lambda: services.vouchers.redeem(w.sme, token=token, idempotency_key=None))
    assert error.code == "sme_cap_exceeded" and status_for(error) == 409
    assert "Redeeming 5000000 credits" in error.detail


def test_lowered_budget_is_checked_again_at_redemption(services, clock) -> None:  # type: ignore[no-untyped-def]
    w = make_world(services, clock, year_budget=2000, sme_cap=2000)
    a = w.voucher(credits=1000)
    b = w.voucher(credits=1000, sme=w.sme_b)
    services.orgs.set_programme(w.operator, org_id=w.issuer.org_id, year_budget=1500, sme_cap=2000)
    services.vouchers.redeem(w.sme, token=a["token"], idempotency_key=None)
    error = _refused(lambda: services.vouchers.redeem(w.sme_b, token=b["token"], idempotency_key=None))
    assert error.code == "programme_budget_exceeded"
