"""The ledger through the service layer on SQLite and PostgreSQL: holds, settlement, expiry, idempotency."""

from __future__ import annotations

import pytest

from common.errors import Conflict, InsufficientFunds, InvalidInput
from quotas.ledger import HoldState
from tests.conftest import BACKENDS, DAY_S, World

pytestmark = pytest.mark.parametrize("database_url", BACKENDS, indirect=True)


def test_redeem_hold_settle_moves_exact_credit(world: World) -> None:
    world.credit(1000)
    led = world.services.ledger
    hold = led.place_hold(world.sme, amount=300)
    assert hold["state"] == "HELD" and hold["voucher_amount"] == 300
    assert led.balance(world.sme)["available"] == 700
    settled = led.close_hold(world.operator, hold_id=hold["id"], target=HoldState.SETTLED, cost=120)
    assert (settled["settled"], settled["released"]) == (120, 180)
    balance = led.balance(world.sme)
    assert (balance["available"], balance["held"]) == (880, 0)
    assert led.invariants() == []


def test_partial_coverage_splits_into_copayment(services, clock) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import make_world

    w = make_world(services, clock, copay_limit=1000)
    w.credit(1000, coverage_bps=7500)
    hold = services.ledger.place_hold(w.sme, amount=400)
    assert (hold["voucher_amount"], hold["copay_amount"]) == (300, 100)
    services.ledger.close_hold(w.operator, hold_id=hold["id"], target=HoldState.SETTLED, cost=200)
    balance = services.ledger.balance(w.sme)
    assert balance["available"] == 850  # 150 voucher share of 200
    assert balance["copay_used"] == 50
    assert services.ledger.invariants() == []


def test_no_copayment_headroom_refuses_partial_coverage(world: World) -> None:
    world.credit(1000, coverage_bps=5000)
    with pytest.raises(InsufficientFunds, match="co-payment"):
        world.services.ledger.place_hold(world.sme, amount=10)
    assert world.services.ledger.balance(world.sme)["available"] == 1000


def test_hold_beyond_credit_is_refused_and_nothing_moves(world: World) -> None:
    world.credit(100)
    with pytest.raises(InsufficientFunds):
        world.services.ledger.place_hold(world.sme, amount=101)
    assert world.services.ledger.balance(world.sme)["held"] == 0
    assert world.services.ledger.invariants() == []


def test_over_settle_is_refused(world: World) -> None:
    world.credit(100)
    hold = world.services.ledger.place_hold(world.sme, amount=50)
    with pytest.raises(InvalidInput):
        world.services.ledger.close_hold(
            world.operator, hold_id=hold["id"], target=HoldState.SETTLED, cost=51
        )
    assert world.services.ledger.get_hold(world.sme, hold_id=hold["id"])["state"] == "HELD"


def test_a_hold_closes_exactly_once(world: World) -> None:
    world.credit(100)
    led = world.services.ledger
    hold = led.place_hold(world.sme, amount=50)
    led.close_hold(world.sme, hold_id=hold["id"], target=HoldState.RELEASED)
    with pytest.raises(Conflict):
        led.close_hold(world.operator, hold_id=hold["id"], target=HoldState.SETTLED, cost=10)
    assert led.balance(world.sme)["available"] == 100


def test_idempotency_same_key_same_body_returns_first_result(world: World) -> None:
    world.credit(100)
    led = world.services.ledger
    first = led.place_hold(world.sme, amount=10, idempotency_key="k1")
    again = led.place_hold(world.sme, amount=10, idempotency_key="k1")
    assert first == again
    assert led.balance(world.sme)["held"] == 10
    with pytest.raises(Conflict) as exc:
        led.place_hold(world.sme, amount=11, idempotency_key="k1")
    assert exc.value.code == "idempotency_conflict"


def test_an_sme_cannot_settle_and_cannot_touch_another_smes_hold(world: World) -> None:
    from broker.errors import Forbidden
    from common.errors import NotFound

    world.credit(100)
    hold = world.services.ledger.place_hold(world.sme, amount=10)
    with pytest.raises(Forbidden):
        world.services.ledger.close_hold(world.sme, hold_id=hold["id"], target=HoldState.SETTLED, cost=1)
    with pytest.raises(NotFound):
        world.services.ledger.close_hold(world.sme_b, hold_id=hold["id"], target=HoldState.RELEASED)
    with pytest.raises(NotFound):
        world.services.ledger.get_hold(world.sme_b, hold_id=hold["id"])


def test_expiry_moves_credit_to_expired_and_reaper_expires_stale_holds(world: World) -> None:
    now_s = world.clock.now_ms() // 1000
    token = world.services.vouchers.issue(
        world.issuer,
        sme_org=world.sme.org_id,
        credits=500,
        coverage_bps=10_000,
        resources=("cpu",),
        valid_from_s=None,
        valid_until_s=now_s + DAY_S,
        credit_expires_s=now_s + 2 * DAY_S,
    )["token"]
    world.services.vouchers.redeem(world.sme, token=token, idempotency_key=None)
    led = world.services.ledger
    hold = led.place_hold(world.sme, amount=100, ttl_s=3600)
    world.clock.advance(3601 * 1000)
    assert led.reap() == {"grants_expired": 0, "holds_expired": 1}
    assert led.get_hold(world.sme, hold_id=hold["id"])["state"] == "EXPIRED"
    assert led.balance(world.sme)["available"] == 500
    world.clock.advance(2 * DAY_S * 1000)
    assert led.reap()["grants_expired"] == 1
    balance = led.balance(world.sme)
    assert balance["available"] == 0
    assert balance["grants"][0]["status"] == "expired" and balance["grants"][0]["balance"] == 0
    entries = led.entries(world.operator)
    assert any(
        e["kind"] == "expire" and e["account_kind"] == "expired" and e["amount"] == 500 for e in entries
    )
    assert led.invariants() == []


def test_release_after_grant_expired_goes_to_expired_account(world: World) -> None:
    now_s = world.clock.now_ms() // 1000
    token = world.services.vouchers.issue(
        world.issuer,
        sme_org=world.sme.org_id,
        credits=500,
        coverage_bps=10_000,
        resources=("cpu",),
        valid_from_s=None,
        valid_until_s=now_s + DAY_S,
        credit_expires_s=now_s + DAY_S,
    )["token"]
    world.services.vouchers.redeem(world.sme, token=token, idempotency_key=None)
    led = world.services.ledger
    hold = led.place_hold(world.sme, amount=200, ttl_s=10 * DAY_S)
    world.clock.advance(DAY_S * 1000 + 1)
    led.reap()
    led.close_hold(world.operator, hold_id=hold["id"], target=HoldState.SETTLED, cost=50)
    assert led.balance(world.sme)["available"] == 0
    assert led.invariants() == []
