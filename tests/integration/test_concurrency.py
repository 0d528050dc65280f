"""Races through the services on SQLite and PostgreSQL: many threads start together on one voucher, one
balance, one hold or one idempotency key, and exactly one effect (or exactly as many as the credit allows)
must come out; the ledger invariants hold afterwards.

Threads are released together by a :class:`threading.Barrier`; no assertion depends on timing, only on
counts of outcomes and on the stored state.
"""

from __future__ import annotations

import random
import sqlite3
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import Connection, event, text

from broker.container import Container
from broker.db.orgs import Principal
from common.errors import Conflict, DomainError, InsufficientFunds
from quotas.ledger import HoldState
from tests.conftest import BACKENDS, World
from vouchers import VoucherRefused

pytestmark = pytest.mark.parametrize("database_url", BACKENDS, indirect=True)

Outcome = dict[str, Any] | DomainError


def together(n: int, call: Callable[[int], dict[str, Any]]) -> list[Outcome]:
    """Run ``call(0) … call(n-1)`` on ``n`` threads released at once; each result or domain error."""
    barrier = threading.Barrier(n)

    def one(i: int) -> Outcome:
        barrier.wait(timeout=120)
        try:
            return call(i)
        except DomainError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(one, range(n)))


def successes(outcomes: list[Outcome]) -> list[dict[str, Any]]:
    """The outcomes that are results."""
    return [o for o in outcomes if isinstance(o, dict)]


def refusal_codes(outcomes: list[Outcome]) -> Counter[str]:
    """How many outcomes were refused with each code."""
    return Counter(o.code for o in outcomes if isinstance(o, DomainError))


def entry_sum(world: World, sme: Principal, *, kind: str, account_kind: str) -> int:
    """The sum of an SME's ledger entries of one kind on one kind of account."""
    entries = world.services.ledger.entries(world.operator, org_id=sme.org_id, limit=1000)
    return sum(e["amount"] for e in entries if e["kind"] == kind and e["account_kind"] == account_kind)


def test_32_redemptions_of_one_voucher_make_exactly_one_grant(world: World) -> None:
    token = world.voucher(credits=500)["token"]
    outcomes = together(
        32, lambda _i: world.services.vouchers.redeem(world.sme, token=token, idempotency_key=None)
    )
    assert len(successes(outcomes)) == 1
    assert refusal_codes(outcomes) == Counter({"already_redeemed": 31})
    assert all(isinstance(o, VoucherRefused) for o in outcomes if not isinstance(o, dict))
    balance = world.services.ledger.balance(world.sme)
    assert [g["amount"] for g in balance["grants"]] == [500]
    assert balance["available"] == 500
    assert entry_sum(world, world.sme, kind="redeem", account_kind="grant") == 500
    assert world.services.ledger.invariants() == []


def test_64_holds_of_one_credit_against_ten_credits_exactly_ten_succeed(world: World) -> None:
    world.credit(10)
    outcomes = together(64, lambda _i: world.services.ledger.place_hold(world.sme, amount=1))
    won = successes(outcomes)
    assert len(won) == 10 and len({h["id"] for h in won}) == 10
    assert refusal_codes(outcomes) == Counter({"insufficient_credit": 54})
    assert all(isinstance(o, InsufficientFunds) for o in outcomes if not isinstance(o, dict))
    balance = world.services.ledger.balance(world.sme)
    assert (balance["available"], balance["held"], balance["copay_used"]) == (0, 10, 0)
    assert world.services.ledger.invariants() == []


def test_100_settlements_of_one_hold_charge_it_exactly_once(world: World) -> None:
    world.credit(100)
    led = world.services.ledger
    hold = led.place_hold(world.sme, amount=60)
    outcomes = together(
        100,
        lambda i: led.close_hold(world.operator, hold_id=hold["id"], target=HoldState.SETTLED, cost=i % 61),
    )
    won = successes(outcomes)
    assert len(won) == 1
    assert refusal_codes(outcomes) == Counter({"hold_closed": 99})
    assert all(isinstance(o, Conflict) for o in outcomes if not isinstance(o, dict))
    cost = won[0]["settled"]
    stored = led.get_hold(world.sme, hold_id=hold["id"])
    assert (stored["state"], stored["settled"], stored["released"]) == ("SETTLED", cost, 60 - cost)
    assert entry_sum(world, world.sme, kind="settle", account_kind="spent") == cost
    balance = led.balance(world.sme)
    assert (balance["available"], balance["held"]) == (100 - cost, 0)
    assert led.invariants() == []


def test_settle_racing_release_closes_the_hold_once(world: World) -> None:
    world.credit(100)
    led = world.services.ledger
    hold = led.place_hold(world.sme, amount=40)

    def close(i: int) -> dict[str, Any]:
        if i % 2:
            return led.close_hold(world.sme, hold_id=hold["id"], target=HoldState.RELEASED)
        return led.close_hold(world.operator, hold_id=hold["id"], target=HoldState.SETTLED, cost=30)

    outcomes = together(40, close)
    won = successes(outcomes)
    assert len(won) == 1
    assert refusal_codes(outcomes) == Counter({"hold_closed": 39})
    charged = 30 if won[0]["state"] == "SETTLED" else 0
    assert entry_sum(world, world.sme, kind="settle", account_kind="spent") == charged
    assert led.balance(world.sme)["available"] == 100 - charged
    assert led.invariants() == []


def test_concurrent_holds_across_several_smes_each_stop_at_their_own_credit(world: World) -> None:
    services = world.services
    smes = [world.sme, world.sme_b]
    for i in range(2):
        org = services.orgs.create(world.operator, name=f"sme-extra-{i}", role="sme")
        found = services.orgs.authenticate(services.orgs.create_token(None, org_id=org["id"])["token"])
        assert found is not None
        smes.append(found)
    for sme in smes:
        world.credit(10, sme=sme)
    outcomes = together(64, lambda i: services.ledger.place_hold(smes[i % 4], amount=1))
    won = successes(outcomes)
    assert Counter(h["org_id"] for h in won) == Counter({sme.org_id: 10 for sme in smes})
    assert refusal_codes(outcomes) == Counter({"insufficient_credit": 24})
    for sme in smes:
        balance = services.ledger.balance(sme)
        assert (balance["available"], balance["held"]) == (0, 10)
    assert services.ledger.invariants() == []


def test_one_idempotency_key_from_many_threads_has_one_effect(world: World) -> None:
    led = world.services.ledger
    world.credit(100)
    outcomes = together(32, lambda _i: led.place_hold(world.sme, amount=7, idempotency_key="same-hold"))
    won = successes(outcomes)
    assert len(won) == 32 and all(h == won[0] for h in won)
    assert led.balance(world.sme)["held"] == 7

    outcomes = together(
        32,
        lambda i: led.close_hold(
            world.operator,
            hold_id=won[0]["id"],
            target=HoldState.SETTLED,
            cost=5,
            idempotency_key="same-settle",
        ),
    )
    settled = successes(outcomes)
    assert len(settled) == 32 and all(s == settled[0] for s in settled)
    assert entry_sum(world, world.sme, kind="settle", account_kind="spent") == 5

    token = world.voucher(credits=50)["token"]
    outcomes = together(
        32, lambda _i: world.services.vouchers.redeem(world.sme, token=token, idempotency_key="same-redeem")
    )
    redeemed = successes(outcomes)
    assert len(redeemed) == 32 and all(r == redeemed[0] for r in redeemed)
    balance = led.balance(world.sme)
    assert sorted(g["amount"] for g in balance["grants"]) == [50, 100]
    assert (balance["available"], balance["held"]) == (150 - 5, 0)
    assert led.invariants() == []


def test_one_key_with_two_bodies_from_many_threads_one_body_wins(world: World) -> None:
    led = world.services.ledger
    world.credit(100)
    outcomes = together(
        32, lambda i: led.place_hold(world.sme, amount=7 + i % 2, idempotency_key="contested")
    )
    won = successes(outcomes)
    assert won and all(h == won[0] for h in won)
    winner = won[0]["amount"]
    assert len(won) == 16  # every caller with the winning body gets the first result
    assert refusal_codes(outcomes) == Counter({"idempotency_conflict": 16})
    balance = led.balance(world.sme)
    assert (balance["available"], balance["held"]) == (100 - winner, winner)
    assert led.invariants() == []


def test_a_sqlite_read_does_not_block_a_writer(container: Container) -> None:
    """A read is a deferred WAL snapshot: while it is open, another connection can still take the write lock."""
    if container.db.dialect != "sqlite":
        pytest.skip("WAL reader/writer locking is a SQLite property")
    path = container.db.engine.url.database
    assert path is not None

    def write_while_reading(conn: Connection) -> bool:
        conn.execute(text("SELECT count(*) FROM accounts")).all()
        other = sqlite3.connect(path, timeout=0, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # refused at once if this read holds the write lock
            other.execute("ROLLBACK")
            return True
        except sqlite3.OperationalError:
            return False
        finally:
            other.close()

    assert container.db.read(write_while_reading)


def wait_for_lock_waiter(container: Container) -> None:
    """Block until some PostgreSQL backend of this database waits on a row lock (a synchronisation point,
    not a timing assertion: it only decides when the test commits its own transaction)."""
    query = text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    for _ in range(600):
        with container.db.engine.connect() as conn:
            if conn.execute(query).scalar_one() > 0:
                return
        threading.Event().wait(0.05)
    raise AssertionError("the closing transaction never waited for the reaper's lock")


def test_a_close_racing_the_reaper_never_strands_credit_in_an_expired_grant(
    world: World, container: Container
) -> None:
    if container.db.dialect != "postgresql":
        pytest.skip("on SQLite one writer runs every transaction in turn; the race needs PostgreSQL")
    led = world.services.ledger
    token = world.voucher(credits=100, credit_s=3600)["token"]
    world.services.vouchers.redeem(world.sme, token=token, idempotency_key=None)
    hold = led.place_hold(world.sme, amount=40, ttl_s=10 * 24 * 3600)
    world.clock.advance(3601 * 1000)
    with container.db.engine.connect() as reaper:
        reaper_tx = reaper.begin()
        assert len(container.ledger.expire_grants(reaper, now_ms=world.clock.now_ms())) == 1
        with ThreadPoolExecutor(max_workers=1) as pool:
            closing = pool.submit(
                led.close_hold, world.operator, hold_id=hold["id"], target=HoldState.SETTLED, cost=10
            )
            wait_for_lock_waiter(container)
            reaper_tx.commit()
            assert closing.result(timeout=120)["state"] == "SETTLED"
    balance = led.balance(world.sme)
    assert [(g["status"], g["balance"]) for g in balance["grants"]] == [("expired", 0)]
    assert led.invariants() == []


def test_the_invariant_check_reads_one_snapshot_while_holds_commit(
    world: World, container: Container
) -> None:
    """A hold committed in the middle of ``invariants()`` must not make a sound ledger look broken.

    A cursor hook commits a new hold from another connection just before the check sums the held accounts,
    after it has summed the open holds: deterministic, no timing involved.
    """
    led = world.services.ledger
    world.credit(100)
    fired: list[dict[str, Any]] = []

    def commit_a_hold_midway(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if fired or "sum(accounts.balance)" not in statement or "accounts.kind" not in statement:
            return
        fired.append({})
        fired[0] = led.place_hold(world.sme, amount=5)

    event.listen(container.db.engine, "before_cursor_execute", commit_a_hold_midway)
    try:
        problems = led.invariants()
    finally:
        event.remove(container.db.engine, "before_cursor_execute", commit_a_hold_midway)
    assert fired and fired[0]["state"] == "HELD"  # the hold really committed during the check
    assert problems == []
    assert led.invariants() == []


def test_a_balance_reads_one_snapshot_while_a_hold_commits(world: World, container: Container) -> None:
    """A hold committed between the grant and held-account reads of ``balance()`` must not show its credit
    twice (available + held may never exceed what was redeemed)."""
    led = world.services.ledger
    world.credit(100)
    fired: list[dict[str, Any]] = []

    def commit_a_hold_midway(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        flat = " ".join(statement.split())
        if fired or not flat.startswith("SELECT accounts.balance FROM accounts WHERE accounts.id"):
            return
        fired.append({})
        fired[0] = led.place_hold(world.sme, amount=5)

    event.listen(container.db.engine, "before_cursor_execute", commit_a_hold_midway)
    try:
        balance = led.balance(world.sme)
    finally:
        event.remove(container.db.engine, "before_cursor_execute", commit_a_hold_midway)
    assert fired and fired[0]["state"] == "HELD"
    assert balance["available"] + balance["held"] == 100
    after = led.balance(world.sme)
    assert (after["available"], after["held"]) == (95, 5)


def test_redeem_racing_revoke_has_exactly_one_outcome(world: World) -> None:
    jti_token = world.voucher(credits=70)
    token, jti = jti_token["token"], jti_token["jti"]

    def redeem_or_revoke(i: int) -> dict[str, Any]:
        if i % 2:
            return world.services.vouchers.revoke(world.issuer, jti=jti)
        return world.services.vouchers.redeem(world.sme, token=token, idempotency_key=None)

    outcomes = together(32, redeem_or_revoke)
    redeemed = [o for o in successes(outcomes) if "grant" in o]
    revoked = [o for o in successes(outcomes) if o.get("status") == "revoked"]
    grants = world.services.ledger.balance(world.sme)["grants"]
    status = world.services.vouchers.show(world.issuer, jti=jti)["status"]
    if status == "redeemed":  # every revocation was refused, one redemption won
        assert len(redeemed) == 1 and revoked == []
        assert [g["amount"] for g in grants] == [70]
    else:  # the first revocation won (the others repeat it), no redemption went through
        assert status == "revoked" and redeemed == [] and len(revoked) >= 1
        assert grants == []
    assert len(redeemed) + len(revoked) + sum(refusal_codes(outcomes).values()) == 32
    assert set(refusal_codes(outcomes)) <= {"already_redeemed", "revoked"}
    assert world.services.ledger.invariants() == []


def test_a_redemption_that_loses_to_a_revocation_says_revoked(world: World, container: Container) -> None:
    """The revocation commits between the redemption's read of the voucher and its claim of it."""
    if container.db.dialect != "postgresql":
        pytest.skip("on SQLite one writer runs every transaction in turn; the interleaving needs PostgreSQL")
    issued = world.voucher(credits=70)
    fired: list[dict[str, Any]] = []

    def revoke_midway(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if fired or not " ".join(statement.split()).startswith("UPDATE vouchers SET status"):
            return
        fired.append({})  # before the call: the revocation's own UPDATE passes through this hook too
        fired[0] = world.services.vouchers.revoke(world.issuer, jti=issued["jti"])

    event.listen(container.db.engine, "before_cursor_execute", revoke_midway)
    try:
        with pytest.raises(DomainError) as refused:
            world.services.vouchers.redeem(world.sme, token=issued["token"], idempotency_key=None)
    finally:
        event.remove(container.db.engine, "before_cursor_execute", revoke_midway)
    assert fired == [{"jti": issued["jti"], "status": "revoked"}]
    assert world.services.ledger.balance(world.sme)["grants"] == []
    assert refused.value.code == "revoked"


def test_a_mixed_workload_on_many_threads_conserves_every_credit(world: World) -> None:
    """Holds, settlements, releases, redemptions and the reaper on 16 threads at once (seeded per thread).

    Whatever the interleaving, each SME's credit is conserved: grants + held + settled = redeemed.
    """
    led = world.services.ledger
    smes = [world.sme, world.sme_b]
    redeemed = dict.fromkeys((s.org_id for s in smes), 0)
    tally = threading.Lock()
    for sme in smes:
        world.credit(200, sme=sme)
        redeemed[sme.org_id] += 200

    def client(i: int) -> dict[str, Any]:
        rng = random.Random(1000 + i)
        sme = smes[i % 2]
        mine: list[tuple[str, int]] = []
        refused: Counter[str] = Counter()
        for _ in range(12):
            op = rng.choice(("hold", "hold", "settle", "release", "redeem", "reap"))
            try:
                if op == "hold":
                    amount = rng.randint(1, 40)
                    mine.append(
                        (led.place_hold(sme, amount=amount, ttl_s=rng.choice((1, 3600)))["id"], amount)
                    )
                elif op in ("settle", "release") and mine:
                    hold_id, amount = mine.pop(rng.randrange(len(mine)))
                    if op == "settle":
                        cost = rng.randint(0, amount)
                        led.close_hold(world.operator, hold_id=hold_id, target=HoldState.SETTLED, cost=cost)
                    else:
                        led.close_hold(sme, hold_id=hold_id, target=HoldState.RELEASED)
                elif op == "redeem":
                    credits = rng.randint(1, 50)
                    world.credit(credits, sme=sme)
                    with tally:
                        redeemed[sme.org_id] += credits
                elif op == "reap":
                    world.clock.advance(1500)
                    led.reap()
            except DomainError as exc:
                refused[exc.code] += 1
        return dict(refused)

    outcomes = together(16, client)
    for outcome in outcomes:
        assert isinstance(outcome, dict)
        # short of credit, or a hold the reaper expired first; nothing else
        assert set(outcome) <= {"insufficient_credit", "hold_closed"}, outcome
    assert led.invariants() == []
    for sme in smes:
        balance = led.balance(sme)
        settled = entry_sum(world, sme, kind="settle", account_kind="spent")
        assert (
            sum(g["balance"] for g in balance["grants"]) + balance["held"] + settled == redeemed[sme.org_id]
        )
