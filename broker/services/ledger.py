"""Balances, ledger entries, holds (hold → settle | release) and the reaper for expired credit."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from sqlalchemy import Connection

from broker.container import Container
from broker.db import orgs
from broker.db.ledger import Balance, Hold
from broker.db.orgs import Principal
from broker.services.access import own_or_operator, read_scope, require_role
from broker.services.idem import write_idempotent
from common.errors import Conflict, InvalidInput
from quotas.ledger import HoldState

RESOURCE_CLASSES = frozenset({"cpu", "gpu", "memory"})


def hold_dict(hold: Hold) -> dict[str, Any]:
    """The public view of a hold."""
    return {
        "id": hold.id,
        "org_id": hold.org_id,
        "job_id": hold.job_id,
        "amount": hold.amount,
        "voucher_amount": hold.voucher_amount,
        "copay_amount": hold.amount - hold.voucher_amount,
        "settled": hold.settled,
        "released": hold.released,
        "state": hold.state.value,
        "created_ms": hold.created_ms,
        "expires_ms": hold.expires_ms,
    }


def balance_dict(view: Balance) -> dict[str, Any]:
    """An SME's balance as the API shows it (grants with their resources as lists)."""
    out = asdict(view)
    out["grants"] = [{**asdict(g), "resources": list(g.resources)} for g in view.grants]
    return out


class LedgerService:
    """Credit movements other than redemption; each one transaction, each idempotent by key."""

    def __init__(self, c: Container) -> None:
        self.c = c

    def balance(self, principal: Principal, *, org_id: str | None = None) -> dict[str, Any]:
        """An SME's balance (its own; operators may name any SME)."""
        target = own_or_operator(principal, org_id)
        now = self.c.clock.now_ms()

        def tx(conn: Connection) -> dict[str, Any]:
            org = orgs.get_org(conn, target)
            if org.role != "sme":
                raise InvalidInput(f"{target} is a {org.role}; balances belong to SMEs")
            return balance_dict(self.c.ledger.balance(conn, org_id=target, now_ms=now))

        return self.c.db.read(tx)

    def set_copay_limit(self, principal: Principal, *, org_id: str, limit: int) -> dict[str, Any]:
        """Change an SME's co-payment limit (operators); refused below what it already uses."""
        require_role(principal, "operator")
        if limit < 0:
            raise InvalidInput("the co-payment limit cannot be negative")
        now = self.c.clock.now_ms()

        def tx(conn: Connection) -> dict[str, Any]:
            org = orgs.get_org(conn, org_id)
            if org.role != "sme":
                raise InvalidInput(f"{org_id} is a {org.role}; co-payment limits belong to SMEs")
            self.c.ledger.set_copay_limit(conn, org_id=org_id, limit=limit)
            self.c.audit.append(
                conn,
                ts_ms=now,
                actor=principal,
                action="quota.copay_limit",
                object_type="org",
                object_id=org_id,
                org_id=org_id,
                details={"copay_limit": limit},
            )
            return {"org_id": org_id, "copay_limit": limit}

        return self.c.db.write(tx)

    def entries(
        self, principal: Principal, *, org_id: str | None = None, after_id: int = 0, limit: int = 200
    ) -> list[dict[str, Any]]:
        """Ledger entries touching an organisation (operators: all when ``org_id`` is None)."""
        scope: str | None
        if principal.role == "operator" and org_id is None:
            scope = None
        else:
            scope = own_or_operator(principal, org_id)
        limit = max(1, min(limit, 1000))
        return self.c.db.read(
            lambda conn: self.c.ledger.entries(conn, org_id=scope, after_id=after_id, limit=limit)
        )

    def place_hold(
        self,
        principal: Principal,
        *,
        amount: int,
        resources: tuple[str, ...] = ("cpu",),
        org_id: str | None = None,
        idempotency_key: str | None = None,
        job_id: str | None = None,
        ttl_s: int | None = None,
    ) -> dict[str, Any]:
        """Hold ``amount`` credits of an SME (the SME itself, or an operator on its behalf)."""
        require_role(principal, "sme", "operator")
        target = own_or_operator(principal, org_id)
        classes = frozenset(resources)
        if not classes or not classes <= RESOURCE_CLASSES:
            raise InvalidInput(f"resources must be a non-empty subset of {sorted(RESOURCE_CLASSES)}")
        if amount <= 0:
            raise InvalidInput(f"a hold must be a positive number of credits, got {amount}")
        now = self.c.clock.now_ms()
        ttl_ms = (ttl_s if ttl_s is not None else self.c.settings.hold_ttl_s) * 1000
        if ttl_ms <= 0:
            raise InvalidInput("a hold's lifetime must be positive")
        body = {
            "org": target,
            "amount": amount,
            "resources": sorted(classes),
            "job": job_id,
            "ttl_ms": ttl_ms,
        }

        def tx(conn: Connection) -> dict[str, Any]:
            open_holds = self.c.ledger.open_hold_count(conn, org_id=target)
            if open_holds >= self.c.settings.max_open_holds:
                raise Conflict(
                    f"{target} already has {open_holds} open holds (the limit); settle or release some first",
                    code="too_many_holds",
                )
            hold = self.c.ledger.place_hold(
                conn,
                org_id=target,
                amount=amount,
                resource_classes=classes,
                job_id=job_id,
                now_ms=now,
                expires_ms=now + ttl_ms,
            )
            return hold_dict(hold)

        result, _fresh = write_idempotent(
            self.c.db,
            org_id=principal.org_id,
            key=idempotency_key,
            operation="hold.place",
            body=body,
            now_ms=now,
            fn=tx,
        )
        return result  # the ledger counted the hold when its transaction committed

    def close_hold(
        self,
        principal: Principal,
        *,
        hold_id: str,
        target: HoldState,
        cost: int = 0,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Settle ``cost`` (operators) or release (the owner or operators) a hold, exactly once."""
        if target is HoldState.SETTLED:
            require_role(principal, "operator")
        else:
            require_role(principal, "sme", "operator")
        if cost < 0:
            raise InvalidInput("a cost cannot be negative")
        scope = read_scope(principal)
        now = self.c.clock.now_ms()

        def tx(conn: Connection) -> dict[str, Any]:
            hold = self.c.ledger.get_hold(conn, hold_id=hold_id, org_id=scope, lock=True)
            closed = self.c.ledger.close(conn, hold=hold, target=target, cost=cost, now_ms=now)
            return hold_dict(closed)

        result, _fresh = write_idempotent(
            self.c.db,
            org_id=principal.org_id,
            key=idempotency_key,
            operation=f"hold.{target.value}",
            body={"hold": hold_id, "cost": cost},
            now_ms=now,
            fn=tx,
        )
        return result  # a settlement is counted by the ledger when its transaction commits

    def get_hold(self, principal: Principal, *, hold_id: str) -> dict[str, Any]:
        """A hold, visible to its SME and operators."""
        scope = read_scope(principal)
        return self.c.db.read(
            lambda conn: hold_dict(self.c.ledger.get_hold(conn, hold_id=hold_id, org_id=scope))
        )

    def reap(self, *, limit: int = 500) -> dict[str, int]:
        """Expire grants past their expiry and holds past theirs (the reaper loop; injected clock)."""
        now = self.c.clock.now_ms()
        expired_grants = self.c.db.write(
            lambda conn: self.c.ledger.expire_grants(conn, now_ms=now, limit=limit)
        )

        def expire_holds(conn: Connection) -> int:
            stale = self.c.ledger.stale_holds(conn, now_ms=now, limit=limit)
            for hold in stale:
                self.c.ledger.close(conn, hold=hold, target=HoldState.EXPIRED, cost=0, now_ms=now)
                self.c.audit.append(
                    conn,
                    ts_ms=now,
                    actor=None,
                    action="hold.expire",
                    object_type="hold",
                    object_id=hold.id,
                    org_id=hold.org_id,
                    details={"amount": hold.amount},
                )
            return len(stale)

        expired_holds = self.c.db.write(expire_holds)
        return {"grants_expired": len(expired_grants), "holds_expired": expired_holds}

    def invariants(self) -> list[str]:
        """Every ledger invariant checked from the tables (empty when sound)."""
        return self.c.db.read(self.c.ledger.check_invariants)
