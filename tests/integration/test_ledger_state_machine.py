"""A Hypothesis state machine of the credit ledger, driven through the services, on SQLite and PostgreSQL.

Each rule is one thing a client or the reaper can do: redeem a new voucher, hold any amount (more than is
available too), settle part of a hold, try to settle more than was held, release, move time and reap,
replay a call with the same idempotency key (same body: the first result and no effect; another body:
``idempotency_conflict`` and no effect), try to close a closed hold, redeem a voucher a second time. An
independent model in plain integers (each grant's balance and status, each hold's lines and state, what
each SME settled) says what must happen; after EVERY step the ledger's own invariants must be empty and
every balance, grant, hold and settled total must equal the model.

Every Hypothesis example gets a world of its own (new operator, issuer and SMEs in the shared test
database); the ledger invariants are global, so the worlds of earlier examples are checked as well. At the
end of each example time jumps past every expiry and the reaper closes what is left, so no earlier world
has anything stale when the next example reaps and the reaper's counts can be predicted exactly.
"""

from __future__ import annotations

import itertools
import secrets
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from broker.db.orgs import Principal
from broker.services.registry import Services
from common.clock import FakeClock
from common.errors import Conflict, DomainError, InsufficientFunds, InvalidInput
from quotas.ledger import HoldState
from tests.conftest import BACKENDS, DAY_S

pytestmark = pytest.mark.parametrize("database_url", BACKENDS, indirect=True)

HOUR_MS = 3600 * 1000
COPAY = "copay"  # the co-payment line of a hold, in place of a grant id
COPAY_LIMITS = (0, 150)  # the first SME may not co-pay, the second up to 150 credits
COVERAGES_BPS = (10_000, 10_000, 7_500, 5_000, 3_333)
CREDIT_DAYS = (1, 2, 5)  # grants expire 1, 2 or 5 days after redemption
HOLD_TTLS_S = (3600, DAY_S, 3 * DAY_S)
CLOCK_STEPS_MS = (HOUR_MS + 1000, DAY_S * 1000, 2 * DAY_S * 1000 + 1)
FAR_FUTURE_MS = 30 * DAY_S * 1000  # beyond every grant and hold an example can create
_WORLDS = itertools.count()


# -- the model ------------------------------------------------------------------------------------


@dataclass
class GrantModel:
    """One redeemed voucher's credit as the model expects it."""

    id: str
    sme: str
    balance: int
    expires_ms: int
    coverage_bps: int
    expired: bool = False  # the reaper has moved it to the issuer's expired account


@dataclass
class HoldModel:
    """One hold as the model expects it; ``lines`` are ``(grant id or COPAY, credits)`` in draw order."""

    id: str
    sme: str
    amount: int
    lines: list[tuple[str, int]]
    expires_ms: int
    state: str = "HELD"
    settled: int = 0
    released: int = 0


@dataclass
class Replayable:
    """A keyed call that succeeded: how to make it again, and what it first answered."""

    kind: str  # "redeem" | "hold" | "settle" | "release"
    principal: Principal
    kwargs: dict[str, Any]
    result: dict[str, Any]


@dataclass
class Actors:
    """The organisations of one example's world."""

    operator: Principal
    issuer: Principal
    smes: list[Principal] = field(default_factory=list)


def pro_rata(lines: list[tuple[str, int]], cost: int) -> list[int]:
    """The documented settlement split: floor of ``cost * line / total`` per line, the remainder one credit
    at a time to the largest fractional parts (ties: the earlier line)."""
    total = sum(amount for _, amount in lines)
    shares = [cost * amount // total for _, amount in lines]
    remainders = [cost * amount % total for _, amount in lines]
    order = sorted(range(len(lines)), key=lambda i: (-remainders[i], i))
    for i in order[: cost - sum(shares)]:
        shares[i] += 1
    return shares


def new_actors(services: Services) -> Actors:
    """A fresh operator, issuer (with a signing key and a large programme) and two SMEs."""
    tag = f"{next(_WORLDS)}-{secrets.token_hex(3)}"

    def principal(name: str, role: str, creator: Principal | None, **extra: Any) -> Principal:
        org = services.orgs.create(creator, name=f"{name}-{tag}", role=role, **extra)
        token = services.orgs.create_token(None, org_id=org["id"])["token"]
        found = services.orgs.authenticate(token)
        assert found is not None
        return found

    operator = principal("sm-op", "operator", None)
    issuer = principal("sm-issuer", "issuer", operator, year_budget=10**9, sme_cap=10**8)
    services.vouchers.create_key(issuer)
    smes = [
        principal(f"sm-sme{i}", "sme", operator, copay_limit=limit) for i, limit in enumerate(COPAY_LIMITS)
    ]
    return Actors(operator, issuer, smes)


# -- the machine ----------------------------------------------------------------------------------


class LedgerMachine(RuleBasedStateMachine):
    """The ledger against its model; bound to one test's services and clock by :func:`machine_for`."""

    services: Services
    clock: FakeClock

    def __init__(self) -> None:
        super().__init__()
        self.actors: Actors | None = None
        self.grants: dict[str, GrantModel] = {}
        self.holds: dict[str, HoldModel] = {}
        self.settled: dict[str, int] = {}  # voucher share of settled costs, per SME
        self.copaid: dict[str, int] = {}  # co-paid share of settled costs, per SME
        self.copay_used: dict[str, int] = {}  # co-payment held or settled, per SME
        self.redeemed_tokens: list[tuple[Principal, str, int]] = []
        self.replayable: list[Replayable] = []
        self.keys = itertools.count()

    # -- helpers ----------------------------------------------------------------------------------
    @property
    def world(self) -> Actors:
        assert self.actors is not None
        return self.actors

    def key(self, keyed: bool) -> str | None:
        return f"k{next(self.keys)}" if keyed else None

    def now(self) -> int:
        return self.clock.now_ms()

    def available(self, sme: str) -> int:
        now = self.now()
        return sum(
            g.balance for g in self.grants.values() if g.sme == sme and not g.expired and g.expires_ms > now
        )

    def open_holds(self) -> list[str]:
        return sorted(h.id for h in self.holds.values() if h.state == "HELD")

    def closed_holds(self) -> list[str]:
        return sorted(h.id for h in self.holds.values() if h.state != "HELD")

    def give_back(self, sme: str, grant_id: str, credits: int) -> None:
        """Released credit returns to its grant (unless the reaper already expired that grant) or to the
        SME's co-payment line."""
        if grant_id == COPAY:
            self.copay_used[sme] -= credits
            return
        grant = self.grants[grant_id]
        if not grant.expired:
            grant.balance += credits

    def plan(self, sme: str, amount: int) -> list[tuple[str, int]] | None:
        """The documented draw: grants expiring first pay their coverage share of the part they cover
        (rounded down), the SME co-pays the rest of it and all of any uncovered part; ``None`` when the
        co-payment exceeds the SME's headroom."""
        now = self.now()
        eligible = sorted(
            (
                g
                for g in self.grants.values()
                if g.sme == sme and not g.expired and g.expires_ms > now and g.balance > 0
            ),
            key=lambda g: (g.expires_ms, g.id),
        )
        lines: list[tuple[str, int]] = []
        remaining, copay = amount, 0
        for grant in eligible:
            if remaining == 0:
                break
            covered = min(remaining, grant.balance * 10_000 // grant.coverage_bps)
            share = covered * grant.coverage_bps // 10_000
            if share > 0:
                lines.append((grant.id, share))
            copay += covered - share
            remaining -= covered
        copay += remaining
        if copay > self.copay_limit(sme) - self.copay_used[sme]:
            return None
        if copay > 0:
            lines.append((COPAY, copay))
        return lines

    def copay_limit(self, sme: str) -> int:
        return COPAY_LIMITS[[s.org_id for s in self.world.smes].index(sme)]

    def issue(
        self, sme: Principal, credits: int, credit_days: int, coverage_bps: int = 10_000
    ) -> dict[str, Any]:
        now_s = self.now() // 1000
        return dict(
            self.services.vouchers.issue(
                self.world.issuer,
                sme_org=sme.org_id,
                credits=credits,
                coverage_bps=coverage_bps,
                resources=("cpu", "memory"),
                valid_from_s=None,
                valid_until_s=now_s + DAY_S,
                credit_expires_s=now_s + credit_days * DAY_S,
            )
        )

    # -- rules ------------------------------------------------------------------------------------
    @initialize()
    def make_world(self) -> None:
        self.actors = new_actors(self.services)
        for sme in self.world.smes:
            self.settled[sme.org_id] = self.copaid[sme.org_id] = self.copay_used[sme.org_id] = 0

    @rule(
        sme_i=st.integers(0, 1),
        credits=st.integers(1, 60),
        credit_days=st.sampled_from(CREDIT_DAYS),
        coverage_bps=st.sampled_from(COVERAGES_BPS),
        keyed=st.booleans(),
    )
    def redeem(self, sme_i: int, credits: int, credit_days: int, coverage_bps: int, keyed: bool) -> None:
        sme = self.world.smes[sme_i]
        token = self.issue(sme, credits, credit_days, coverage_bps)["token"]
        expires_ms = (self.now() // 1000 + credit_days * DAY_S) * 1000
        kwargs: dict[str, Any] = {"token": token, "idempotency_key": self.key(keyed)}
        result = self.services.vouchers.redeem(sme, **kwargs)
        grant = result["grant"]
        assert (grant["amount"], grant["org_id"], grant["expires_ms"]) == (credits, sme.org_id, expires_ms)
        assert grant["coverage_bps"] == coverage_bps
        self.grants[grant["id"]] = GrantModel(grant["id"], sme.org_id, credits, expires_ms, coverage_bps)
        self.redeemed_tokens.append((sme, token, self.now() // 1000 + DAY_S))
        if keyed:
            self.replayable.append(Replayable("redeem", sme, kwargs, result))

    @precondition(lambda self: bool(self.redeemed_tokens))
    @rule(data=st.data())
    def redeem_twice(self, data: st.DataObject) -> None:
        sme, token, valid_until_s = data.draw(st.sampled_from(self.redeemed_tokens))
        with pytest.raises(DomainError) as refused:
            self.services.vouchers.redeem(sme, token=token, idempotency_key=None)
        # the signature and validity window are checked before the voucher's state
        still_valid = self.now() // 1000 < valid_until_s
        assert refused.value.code == ("already_redeemed" if still_valid else "expired")

    @rule(
        sme_i=st.integers(0, 1),
        amount=st.integers(1, 120),
        ttl_s=st.sampled_from(HOLD_TTLS_S),
        keyed=st.booleans(),
    )
    def hold(self, sme_i: int, amount: int, ttl_s: int, keyed: bool) -> None:
        sme = self.world.smes[sme_i]
        now = self.now()
        kwargs: dict[str, Any] = {"amount": amount, "ttl_s": ttl_s, "idempotency_key": self.key(keyed)}
        lines = self.plan(sme.org_id, amount)
        if lines is None:
            with pytest.raises(InsufficientFunds) as refused:
                self.services.ledger.place_hold(sme, **kwargs)
            assert refused.value.code == "insufficient_credit"
            return
        result = self.services.ledger.place_hold(sme, **kwargs)
        copay = sum(credits for source, credits in lines if source == COPAY)
        assert (result["amount"], result["voucher_amount"], result["copay_amount"]) == (
            amount,
            amount - copay,
            copay,
        )
        assert (result["state"], result["expires_ms"]) == ("HELD", now + ttl_s * 1000)
        for source, credits in lines:
            if source == COPAY:
                self.copay_used[sme.org_id] += credits
            else:
                self.grants[source].balance -= credits
        self.holds[result["id"]] = HoldModel(result["id"], sme.org_id, amount, lines, now + ttl_s * 1000)
        if keyed:
            self.replayable.append(Replayable("hold", sme, kwargs, result))

    def apply_close(self, hold: HoldModel, state: str, cost: int) -> None:
        for (source, line_amount), share in zip(hold.lines, pro_rata(hold.lines, cost), strict=True):
            self.give_back(hold.sme, source, line_amount - share)
            if source == COPAY:
                self.copaid[hold.sme] += share
            else:
                self.settled[hold.sme] += share
        hold.state, hold.settled, hold.released = state, cost, hold.amount - cost

    @precondition(lambda self: bool(self.open_holds()))
    @rule(data=st.data(), keyed=st.booleans())
    def settle(self, data: st.DataObject, keyed: bool) -> None:
        hold = self.holds[data.draw(st.sampled_from(self.open_holds()))]
        cost = data.draw(st.integers(0, hold.amount))
        kwargs: dict[str, Any] = {
            "hold_id": hold.id,
            "target": HoldState.SETTLED,
            "cost": cost,
            "idempotency_key": self.key(keyed),
        }
        result = self.services.ledger.close_hold(self.world.operator, **kwargs)
        assert (result["state"], result["settled"], result["released"]) == (
            "SETTLED",
            cost,
            hold.amount - cost,
        )
        self.apply_close(hold, "SETTLED", cost)
        if keyed:
            self.replayable.append(Replayable("settle", self.world.operator, kwargs, result))

    @precondition(lambda self: bool(self.open_holds()))
    @rule(data=st.data(), extra=st.integers(1, 1000))
    def over_settle(self, data: st.DataObject, extra: int) -> None:
        hold = self.holds[data.draw(st.sampled_from(self.open_holds()))]
        with pytest.raises(InvalidInput):
            self.services.ledger.close_hold(
                self.world.operator, hold_id=hold.id, target=HoldState.SETTLED, cost=hold.amount + extra
            )

    @precondition(lambda self: bool(self.open_holds()))
    @rule(data=st.data(), keyed=st.booleans())
    def release(self, data: st.DataObject, keyed: bool) -> None:
        hold = self.holds[data.draw(st.sampled_from(self.open_holds()))]
        sme = next(s for s in self.world.smes if s.org_id == hold.sme)
        kwargs: dict[str, Any] = {
            "hold_id": hold.id,
            "target": HoldState.RELEASED,
            "idempotency_key": self.key(keyed),
        }
        result = self.services.ledger.close_hold(sme, **kwargs)
        assert (result["state"], result["settled"], result["released"]) == ("RELEASED", 0, hold.amount)
        self.apply_close(hold, "RELEASED", 0)
        if keyed:
            self.replayable.append(Replayable("release", sme, kwargs, result))

    @precondition(lambda self: bool(self.closed_holds()))
    @rule(data=st.data(), settle=st.booleans())
    def close_a_closed_hold(self, data: st.DataObject, settle: bool) -> None:
        hold = self.holds[data.draw(st.sampled_from(self.closed_holds()))]
        with pytest.raises(Conflict) as refused:
            if settle:
                self.services.ledger.close_hold(
                    self.world.operator, hold_id=hold.id, target=HoldState.SETTLED, cost=0
                )
            else:
                sme = next(s for s in self.world.smes if s.org_id == hold.sme)
                self.services.ledger.close_hold(sme, hold_id=hold.id, target=HoldState.RELEASED)
        assert refused.value.code == "hold_closed"

    def expect_reap(self) -> dict[str, int]:
        """Apply what the reaper must do now to the model and return the counts it must report."""
        now = self.now()
        grants = [g for g in self.grants.values() if not g.expired and g.expires_ms <= now]
        for grant in grants:
            grant.expired, grant.balance = True, 0
        holds = [h for h in self.holds.values() if h.state == "HELD" and h.expires_ms <= now]
        for hold in holds:
            self.apply_close(hold, "EXPIRED", 0)
        return {"grants_expired": len(grants), "holds_expired": len(holds)}

    @rule(step_ms=st.sampled_from(CLOCK_STEPS_MS))
    def advance_and_reap(self, step_ms: int) -> None:
        self.clock.advance(step_ms)
        expected = self.expect_reap()
        assert self.services.ledger.reap() == expected

    @precondition(lambda self: bool(self.replayable))
    @rule(data=st.data())
    def replay_same_body(self, data: st.DataObject) -> None:
        call = data.draw(st.sampled_from(self.replayable))
        assert self.call(call.kind, call.principal, call.kwargs) == call.result

    @precondition(lambda self: bool(self.replayable))
    @rule(data=st.data())
    def replay_other_body(self, data: st.DataObject) -> None:
        call = data.draw(st.sampled_from(self.replayable))
        kwargs = dict(call.kwargs)
        kind = call.kind
        other_jti = ""
        if kind == "redeem":
            # a valid voucher of the same SME: it must stay unredeemed
            other = self.issue(call.principal, 7, 1)
            kwargs["token"], other_jti = other["token"], other["jti"]
        elif kind == "hold":
            kwargs["amount"] += 1
        elif kind == "settle":
            kwargs["cost"] = kwargs["cost"] + 1 if kwargs["cost"] == 0 else kwargs["cost"] - 1
        else:  # the same key for a release of another (maybe open) hold of the SME
            others = [h for h in self.open_holds() if self.holds[h].sme == call.principal.org_id]
            kwargs["hold_id"] = others[0] if others else "hold_missing"
        with pytest.raises(Conflict) as refused:
            self.call(kind, call.principal, kwargs)
        assert refused.value.code == "idempotency_conflict"
        if other_jti:
            assert self.services.vouchers.show(call.principal, jti=other_jti)["status"] == "issued"

    def call(self, kind: str, principal: Principal, kwargs: dict[str, Any]) -> dict[str, Any]:
        if kind == "redeem":
            return self.services.vouchers.redeem(principal, **kwargs)
        if kind == "hold":
            return self.services.ledger.place_hold(principal, **kwargs)
        return self.services.ledger.close_hold(principal, **kwargs)

    # -- after every step -------------------------------------------------------------------------
    @invariant()
    def ledger_matches_model(self) -> None:
        if self.actors is None:
            return
        led = self.services.ledger
        assert led.invariants() == []
        for sme in self.world.smes:
            balance = led.balance(sme)
            open_held = sum(
                h.amount for h in self.holds.values() if h.sme == sme.org_id and h.state == "HELD"
            )
            assert (balance["available"], balance["held"], balance["copay_used"], balance["copay_limit"]) == (
                self.available(sme.org_id),
                open_held,
                self.copay_used[sme.org_id],
                self.copay_limit(sme.org_id),
            )
            grants = {g["id"]: (g["balance"], g["status"]) for g in balance["grants"]}
            assert grants == {
                g.id: (g.balance, "expired" if g.expired else "active")
                for g in self.grants.values()
                if g.sme == sme.org_id
            }
            entries = led.entries(self.world.operator, org_id=sme.org_id, limit=1000)
            settled = {kind: 0 for kind in ("spent", "copaid")}
            for entry in entries:
                if entry["kind"] == "settle" and entry["account_kind"] in settled:
                    settled[entry["account_kind"]] += entry["amount"]
            assert settled == {"spent": self.settled[sme.org_id], "copaid": self.copaid[sme.org_id]}
        for hold in self.holds.values():
            seen = led.get_hold(self.world.operator, hold_id=hold.id)
            assert (seen["state"], seen["settled"], seen["released"]) == (
                hold.state,
                hold.settled,
                hold.released,
            )

    def teardown(self) -> None:
        """Jump past every expiry and reap, so no later example finds this world's leftovers."""
        if self.actors is None:
            return
        self.clock.advance(FAR_FUTURE_MS)
        expected = self.expect_reap()
        assert self.services.ledger.reap() == expected
        self.ledger_matches_model()


def machine_for(services: Services, clock: FakeClock) -> type[LedgerMachine]:
    """The machine class bound to one test's services and clock."""
    return type("BoundLedgerMachine", (LedgerMachine,), {"services": services, "clock": clock})


def test_ledger_state_machine(services: Services, clock: FakeClock, database_url: str) -> None:
    postgres = database_url.startswith("postgresql")
    run_state_machine_as_test(
        machine_for(services, clock),
        settings=settings(
            max_examples=10 if postgres else 25,
            stateful_step_count=15 if postgres else 20,
            deadline=None,
            # a failure prints its whole (at most 20-step) trace; shrinking a database-backed machine can take
            # longer than the test timeout
            phases=[Phase.explicit, Phase.reuse, Phase.generate],
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        ),
    )
