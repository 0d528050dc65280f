"""The credit ledger's repository: accounts, grants, holds and balanced entries.

Every movement is one call to :meth:`LedgerRepo.post` inside the caller's transaction: conditional balance
updates in ascending account order (so hot accounts never deadlock) plus one entry per leg. A leg that
would take an account below its floor fails the whole transaction with :class:`InsufficientFunds`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import Connection, and_, bindparam, func, insert, or_, select, update

from broker.db import subsidy
from broker.db import tables as t
from broker.db.database import after_commit
from broker.db.ledger_chain import record_transfer
from common.errors import Conflict, InsufficientFunds, NotFound
from common.ids import new_id
from quotas.ledger import (
    AccountKind,
    GrantBalance,
    HoldLine,
    HoldState,
    close_hold,
    eligible_grants,
    plan_hold,
    split_settlement,
)

_ORG_ACCOUNTS = {
    "sme": (AccountKind.COPAY, AccountKind.HELD, AccountKind.COPAID),
    "issuer": (AccountKind.PROGRAMME, AccountKind.SPENT, AccountKind.EXPIRED),
}


class CreditCounters(Protocol):
    """The process counters the ledger moves (``broker.metrics.Metrics`` is one): each is ``inc``-able."""

    @property
    def credits_held(self) -> _Incrementable:
        """Credits placed on hold."""
        ...

    @property
    def credits_settled(self) -> _Incrementable:
        """Credits charged from holds."""
        ...


class _Incrementable(Protocol):
    def inc(self, amount: float = 1) -> None: ...


@dataclass(frozen=True, slots=True)
class Leg:
    """One side of a transfer: ``delta`` credits on ``account_id`` (negative = out of it)."""

    account_id: int
    delta: int
    issuer_org: str | None = None


@dataclass(frozen=True, slots=True)
class Hold:
    """A hold as stored."""

    id: str
    org_id: str
    job_id: str | None
    amount: int
    settled: int
    released: int
    state: HoldState
    lines: tuple[HoldLine, ...]
    issuers: tuple[str | None, ...]
    created_ms: int
    expires_ms: int

    @property
    def voucher_amount(self) -> int:
        """The part of the hold drawn from voucher grants."""
        return sum(line.amount for line in self.lines if line.voucher)


@dataclass(frozen=True, slots=True)
class GrantView:
    """A credit grant with its live balance."""

    id: str
    org_id: str
    issuer_org: str
    voucher_jti: str
    amount: int
    balance: int
    coverage_bps: int
    resources: tuple[str, ...]
    expires_ms: int
    created_ms: int
    status: str


@dataclass(frozen=True, slots=True)
class Balance:
    """What an SME can see of its money."""

    org_id: str
    available: int  # unspent voucher credit on active grants
    held: int
    copay_used: int  # co-payment drawn so far (held or settled)
    copay_limit: int
    grants: tuple[GrantView, ...]


class LedgerRepo:
    """Ledger persistence. Keeps an in-memory map of (kind, org) → account id (ids never change)."""

    def __init__(self, counters: CreditCounters | None = None) -> None:
        self._account_ids: dict[tuple[str, str], int] = {}
        self._counters = counters  # moved after the transaction that held or settled commits

    def _count(self, conn: Connection, *, held: int = 0, settled: int = 0) -> None:
        """Add to the credit counters once ``conn``'s transaction commits (never for a rolled-back one)."""
        counters = self._counters
        if counters is None:
            return
        if held:
            after_commit(conn, lambda: counters.credits_held.inc(held))
        if settled:
            after_commit(conn, lambda: counters.credits_settled.inc(settled))

    # -- accounts ---------------------------------------------------------------------------------
    def open_org_accounts(self, conn: Connection, *, org_id: str, role: str, copay_limit: int = 0) -> None:
        """Create the fixed accounts an SME or issuer needs (no-op for other roles)."""
        for kind in _ORG_ACCOUNTS.get(role, ()):
            floor: int | None = 0
            if kind is AccountKind.PROGRAMME:
                floor = None
            elif kind is AccountKind.COPAY:
                floor = -copay_limit
            conn.execute(insert(t.accounts).values(kind=kind.value, org_id=org_id, balance=0, floor=floor))

    def account_id(self, conn: Connection, kind: AccountKind, org_id: str) -> int:
        """The id of an organisation's fixed account of ``kind``."""
        key = (kind.value, org_id)
        cached = self._account_ids.get(key)
        if cached is not None:
            return cached
        row = conn.execute(
            select(t.accounts.c.id).where(
                t.accounts.c.kind == kind.value,
                t.accounts.c.org_id == org_id,
                t.accounts.c.grant_id.is_(None),
            )
        ).first()
        if row is None:
            raise NotFound(f"organisation {org_id} has no {kind.value} account (is it an SME or issuer?)")
        self._account_ids[key] = int(row.id)
        return int(row.id)

    def set_copay_limit(self, conn: Connection, *, org_id: str, limit: int) -> None:
        """Change an SME's co-payment limit; refused if it already owes more than the new limit."""
        copay = self.account_id(conn, AccountKind.COPAY, org_id)
        result = conn.execute(
            update(t.accounts)
            .where(t.accounts.c.id == copay, t.accounts.c.balance >= -limit)
            .values(floor=-limit)
        )
        if result.rowcount == 0:
            raise Conflict(
                f"the SME already uses more co-payment than {limit}; the limit cannot go below its use",
                code="copay_limit_below_use",
            )

    # -- posting ----------------------------------------------------------------------------------
    def post(
        self,
        conn: Connection,
        *,
        kind: str,
        legs: list[Leg],
        org_id: str | None,
        hold_id: str | None,
        now_ms: int,
    ) -> str:
        """Apply balanced ``legs`` atomically (conditional updates in account order) and record entries."""
        if sum(leg.delta for leg in legs) != 0:
            raise ValueError("a transfer must balance: its legs sum to zero")
        txn_id = new_id("txn")
        for leg in sorted(legs, key=lambda leg: leg.account_id):
            if leg.delta == 0:
                continue
            result = conn.execute(_CONDITIONAL_UPDATE, {"delta": leg.delta, "account_id": leg.account_id})
            if result.rowcount != 1:
                raise InsufficientFunds(
                    f"account {leg.account_id} cannot give {-leg.delta} credits; nothing was moved"
                )
        rows = [
            {
                "txn_id": txn_id,
                "kind": kind,
                "account_id": leg.account_id,
                "amount": leg.delta,
                "org_id": org_id,
                "issuer_org": leg.issuer_org,
                "hold_id": hold_id,
                "created_ms": now_ms,
            }
            for leg in legs
            if leg.delta != 0
        ]
        if rows:
            conn.execute(_INSERT_ENTRIES, rows)
            legs_out = [(leg.account_id, leg.delta, leg.issuer_org) for leg in legs if leg.delta != 0]
            record_transfer(  # its hash in this transaction; the audit loop folds it into the log
                conn, txn_id=txn_id, kind=kind, org_id=org_id, hold_id=hold_id, now_ms=now_ms, legs=legs_out
            )
        return txn_id

    def _lock_accounts(self, conn: Connection, account_ids: list[int]) -> None:
        """On PostgreSQL take row locks on ``account_ids`` in ascending order (SQLite: one writer)."""
        if conn.dialect.name == "sqlite" or not account_ids:
            return
        conn.execute(
            select(t.accounts.c.id)
            .where(t.accounts.c.id.in_(sorted(set(account_ids))))
            .order_by(t.accounts.c.id)
            .with_for_update()
        ).all()

    # -- grants -----------------------------------------------------------------------------------
    def create_grant(
        self,
        conn: Connection,
        *,
        org_id: str,
        issuer_org: str,
        voucher_jti: str,
        amount: int,
        coverage_bps: int,
        resources: tuple[str, ...],
        expires_ms: int,
        now_ms: int,
    ) -> GrantView:
        """Open a grant account for a redeemed voucher and move its credit from the programme into it."""
        grant_id = new_id("grant")
        account_id = conn.execute(
            insert(t.accounts)
            .values(kind=AccountKind.GRANT.value, org_id=org_id, grant_id=grant_id, balance=0, floor=0)
            .returning(t.accounts.c.id)
        ).scalar_one()
        conn.execute(
            insert(t.grants).values(
                id=grant_id,
                org_id=org_id,
                issuer_org=issuer_org,
                voucher_jti=voucher_jti,
                account_id=account_id,
                amount=amount,
                coverage_bps=coverage_bps,
                resources=",".join(resources),
                expires_ms=expires_ms,
                created_ms=now_ms,
                status="active",
            )
        )
        programme = self.account_id(conn, AccountKind.PROGRAMME, issuer_org)
        self.post(
            conn,
            kind="redeem",
            legs=[Leg(programme, -amount, issuer_org), Leg(int(account_id), amount, issuer_org)],
            org_id=org_id,
            hold_id=None,
            now_ms=now_ms,
        )
        return GrantView(
            grant_id,
            org_id,
            issuer_org,
            voucher_jti,
            amount,
            amount,
            coverage_bps,
            resources,
            expires_ms,
            now_ms,
            "active",
        )

    def grants(self, conn: Connection, *, org_id: str) -> list[GrantView]:
        """Every grant of an SME with its live balance, expiring first first."""
        rows = conn.execute(
            select(t.grants, t.accounts.c.balance)
            .join(t.accounts, t.accounts.c.id == t.grants.c.account_id)
            .where(t.grants.c.org_id == org_id)
            .order_by(t.grants.c.expires_ms, t.grants.c.id)
        )
        return [_grant_view(row) for row in rows]

    def expire_grants(self, conn: Connection, *, now_ms: int, limit: int = 500) -> list[str]:
        """Move the balance of every grant past its expiry to its issuer's ``expired`` account."""
        rows = conn.execute(
            select(t.grants.c.id, t.grants.c.org_id, t.grants.c.issuer_org, t.grants.c.account_id)
            .where(t.grants.c.status == "active", t.grants.c.expires_ms <= now_ms)
            .order_by(t.grants.c.expires_ms, t.grants.c.id)
            .limit(limit)
        ).all()
        expired: list[str] = []
        for row in rows:
            claimed = conn.execute(
                update(t.grants)
                .where(t.grants.c.id == row.id, t.grants.c.status == "active")
                .values(status="expired")
            )
            if claimed.rowcount != 1:
                continue  # another replica expired it first
            self._lock_accounts(conn, [row.account_id])
            balance = conn.execute(
                select(t.accounts.c.balance).where(t.accounts.c.id == row.account_id)
            ).scalar_one()
            if balance > 0:
                target = self.account_id(conn, AccountKind.EXPIRED, row.issuer_org)
                self.post(
                    conn,
                    kind="expire",
                    legs=[
                        Leg(row.account_id, -balance, row.issuer_org),
                        Leg(target, balance, row.issuer_org),
                    ],
                    org_id=row.org_id,
                    hold_id=None,
                    now_ms=now_ms,
                )
            expired.append(row.id)
        return expired

    # -- holds ------------------------------------------------------------------------------------
    def place_hold(
        self,
        conn: Connection,
        *,
        org_id: str,
        amount: int,
        resource_classes: frozenset[str],
        job_id: str | None,
        now_ms: int,
        expires_ms: int,
    ) -> Hold:
        """Hold ``amount`` credits for an SME: covered share on grants expiring first, the rest co-paid."""
        copay_id = self.account_id(conn, AccountKind.COPAY, org_id)
        held_id = self.account_id(conn, AccountKind.HELD, org_id)
        if conn.dialect.name != "sqlite":
            grant_ids = (
                conn.execute(
                    select(t.grants.c.account_id).where(
                        t.grants.c.org_id == org_id, t.grants.c.status == "active"
                    )
                )
                .scalars()
                .all()
            )
            self._lock_accounts(conn, [copay_id, held_id, *grant_ids])
        grants, issuers = self.grant_balances(conn, org_id=org_id)
        copay = conn.execute(_BALANCE_AND_FLOOR, {"account_id": copay_id}).one()
        plan = plan_hold(
            amount,
            eligible_grants(grants, resource_classes=resource_classes, now_ms=now_ms),
            copay_account_id=copay_id,
            copay_headroom=copay.balance - copay.floor,
        )
        hold_id = new_id("hold")
        line_issuers = tuple(issuers.get(line.account_id) if line.voucher else None for line in plan.lines)
        legs = [
            Leg(line.account_id, -line.amount, iss)
            for line, iss in zip(plan.lines, line_issuers, strict=True)
        ]
        legs.append(Leg(held_id, amount))
        conn.execute(
            _INSERT_HOLD,
            {
                "id": hold_id,
                "org_id": org_id,
                "job_id": job_id,
                "amount": amount,
                "settled": 0,
                "released": 0,
                "state": HoldState.HELD.value,
                "lines": _dump_lines(plan.lines, line_issuers),
                "created_ms": now_ms,
                "expires_ms": expires_ms,
                "closed_ms": None,
            },
        )
        self.post(conn, kind="hold", legs=legs, org_id=org_id, hold_id=hold_id, now_ms=now_ms)
        self._count(conn, held=amount)
        return Hold(
            hold_id,
            org_id,
            job_id,
            amount,
            0,
            0,
            HoldState.HELD,
            plan.lines,
            line_issuers,
            now_ms,
            expires_ms,
        )

    def get_hold(self, conn: Connection, *, hold_id: str, org_id: str | None, lock: bool = False) -> Hold:
        """A hold by id, scoped to ``org_id`` (``None``: any organisation); ``lock`` row-locks it for a write."""
        query = _HOLD_BY_ID[(org_id is not None, lock and conn.dialect.name != "sqlite")]
        row = conn.execute(query, {"hold_id": hold_id, "org_id": org_id}).first()
        if row is None:
            raise NotFound(f"no hold {hold_id}")
        return _hold_from_row(row)

    def close(self, conn: Connection, *, hold: Hold, target: HoldState, cost: int, now_ms: int) -> Hold:
        """Settle ``cost`` of a hold (releasing the rest), or release / expire all of it. Exactly once."""
        close_hold(hold.state, target)
        split = split_settlement(hold.lines, cost)
        held_id = self.account_id(conn, AccountKind.HELD, hold.org_id)
        if conn.dialect.name != "sqlite":
            # Lock every account this close may touch *before* reading which grants expired, so the reaper
            # (which locks a grant's account before moving its balance) cannot interleave and strand
            # released credit in a grant it has just expired.
            self._lock_accounts(conn, self._close_accounts(conn, hold, held_id))
        legs = [Leg(held_id, -hold.amount)]
        expired_grants = self._expired_grant_accounts(conn, hold)
        for (line, settled, released), issuer in zip(split, hold.issuers, strict=True):
            legs.extend(self._settle_legs(conn, hold.org_id, line, issuer, settled, released, expired_grants))
        claimed = conn.execute(
            _CLOSE_HOLD,
            {
                "hold_id": hold.id,
                "p_state": target.value,
                "p_settled": cost,
                "p_released": hold.amount - cost,
                "p_closed": now_ms,
            },
        )
        if claimed.rowcount != 1:
            raise Conflict(f"hold {hold.id} was already closed", code="hold_closed")
        kind = {"SETTLED": "settle", "RELEASED": "release", "EXPIRED": "expire_hold"}[target.value]
        self.post(conn, kind=kind, legs=legs, org_id=hold.org_id, hold_id=hold.id, now_ms=now_ms)
        if target is HoldState.SETTLED:
            paid_by: dict[str, int] = {}
            for (line, settled, _released), issuer in zip(split, hold.issuers, strict=True):
                if line.voucher and issuer is not None:
                    paid_by[issuer] = paid_by.get(issuer, 0) + settled
            subsidy.add_settlement(
                conn, org_id=hold.org_id, job_id=hold.job_id, cost=cost, paid_by=paid_by, now_ms=now_ms
            )
            self._count(conn, settled=cost)
        return Hold(
            hold.id,
            hold.org_id,
            hold.job_id,
            hold.amount,
            cost,
            hold.amount - cost,
            target,
            hold.lines,
            hold.issuers,
            hold.created_ms,
            hold.expires_ms,
        )

    def open_hold_count(self, conn: Connection, *, org_id: str) -> int:
        """How many holds of an SME are still HELD."""
        return int(conn.execute(_OPEN_HOLDS, {"p_org": org_id}).scalar_one())

    def stale_holds(self, conn: Connection, *, now_ms: int, limit: int = 500) -> list[Hold]:
        """Holds still ``HELD`` after their expiry (the reaper closes them as ``EXPIRED``)."""
        query = (
            select(t.holds)
            .where(t.holds.c.state == HoldState.HELD.value, t.holds.c.expires_ms <= now_ms)
            .order_by(t.holds.c.expires_ms, t.holds.c.id)
            .limit(limit)
        )
        if conn.dialect.name != "sqlite":
            query = query.with_for_update(skip_locked=True)
        return [_hold_from_row(row) for row in conn.execute(query)]

    def _close_accounts(self, conn: Connection, hold: Hold, held_id: int) -> list[int]:
        """Every account closing ``hold`` may credit or debit."""
        accounts = [held_id]
        for line, issuer in zip(hold.lines, hold.issuers, strict=True):
            accounts.append(line.account_id)
            if line.voucher and issuer is not None:
                accounts.append(self.account_id(conn, AccountKind.SPENT, issuer))
                accounts.append(self.account_id(conn, AccountKind.EXPIRED, issuer))
            else:
                accounts.append(self.account_id(conn, AccountKind.COPAID, hold.org_id))
        return accounts

    def _settle_legs(
        self,
        conn: Connection,
        org_id: str,
        line: HoldLine,
        issuer: str | None,
        settled: int,
        released: int,
        expired_grants: set[int],
    ) -> list[Leg]:
        if line.voucher:
            assert issuer is not None
            legs = [Leg(self.account_id(conn, AccountKind.SPENT, issuer), settled, issuer)]
            back = line.account_id
            if line.account_id in expired_grants:
                back = self.account_id(conn, AccountKind.EXPIRED, issuer)
            legs.append(Leg(back, released, issuer))
            return legs
        return [
            Leg(self.account_id(conn, AccountKind.COPAID, org_id), settled),
            Leg(line.account_id, released),
        ]

    def _expired_grant_accounts(self, conn: Connection, hold: Hold) -> set[int]:
        grant_accounts = [line.account_id for line in hold.lines if line.voucher]
        if not grant_accounts:
            return set()
        rows = conn.execute(_EXPIRED_GRANT_ACCOUNTS, {"accounts": grant_accounts})
        return {int(r.account_id) for r in rows}

    def grant_balances(self, conn: Connection, *, org_id: str) -> tuple[list[GrantBalance], dict[int, str]]:
        """Active grants with credit left, and each grant account's issuer."""
        rows = conn.execute(_GRANT_BALANCES, {"org_id": org_id}).all()
        balances = [
            GrantBalance(
                r.id,
                int(r.account_id),
                int(r.balance),
                int(r.coverage_bps),
                int(r.expires_ms),
                frozenset(r.resources.split(",")),
            )
            for r in rows
        ]
        return balances, {int(r.account_id): r.issuer_org for r in rows}

    # -- views ------------------------------------------------------------------------------------
    def balance(self, conn: Connection, *, org_id: str, now_ms: int) -> Balance:
        """The SME's balance: voucher credit available, held, co-payment used and limit, grants."""
        grants = tuple(self.grants(conn, org_id=org_id))
        available = sum(g.balance for g in grants if g.status == "active" and g.expires_ms > now_ms)
        held = conn.execute(
            select(t.accounts.c.balance).where(
                t.accounts.c.id == self.account_id(conn, AccountKind.HELD, org_id)
            )
        ).scalar_one()
        copay = conn.execute(
            select(t.accounts.c.balance, t.accounts.c.floor).where(
                t.accounts.c.id == self.account_id(conn, AccountKind.COPAY, org_id)
            )
        ).one()
        return Balance(org_id, available, int(held), -int(copay.balance), -int(copay.floor), grants)

    def entries(
        self, conn: Connection, *, org_id: str | None, limit: int = 200, after_id: int = 0
    ) -> list[dict[str, object]]:
        """Ledger entries (an organisation's, or all for ``None``), oldest first, paged by id."""
        query = (
            select(t.entries, t.accounts.c.kind.label("account_kind"))
            .join(t.accounts, t.accounts.c.id == t.entries.c.account_id)
            .where(t.entries.c.id > after_id)
            .order_by(t.entries.c.id)
            .limit(limit)
        )
        if org_id is not None:
            query = query.where(or_(t.entries.c.org_id == org_id, t.accounts.c.org_id == org_id))
        return [dict(row._mapping) for row in conn.execute(query)]

    def total(self, conn: Connection) -> int:
        """Sum of every account's balance: always zero."""
        return int(conn.execute(select(func.coalesce(func.sum(t.accounts.c.balance), 0))).scalar_one())

    def check_invariants(self, conn: Connection) -> list[str]:
        """Every ledger invariant, checked from the tables; returns the violations (empty when sound)."""
        problems: list[str] = []
        total = self.total(conn)
        if total != 0:
            problems.append(f"sum of balances is {total}, not 0")
        negative = conn.execute(
            select(t.accounts.c.id, t.accounts.c.balance).where(
                and_(t.accounts.c.floor.is_not(None), t.accounts.c.balance < t.accounts.c.floor)
            )
        ).all()
        problems.extend(f"account {r.id} below its floor: {r.balance}" for r in negative)
        mismatched = conn.execute(
            select(
                t.accounts.c.id,
                t.accounts.c.balance,
                func.coalesce(func.sum(t.entries.c.amount), 0).label("s"),
            )
            .select_from(t.accounts.outerjoin(t.entries, t.entries.c.account_id == t.accounts.c.id))
            .group_by(t.accounts.c.id, t.accounts.c.balance)
        ).all()
        problems.extend(
            f"account {r.id} balance {r.balance} != entries {r.s}" for r in mismatched if r.balance != r.s
        )
        unbalanced = conn.execute(
            select(t.entries.c.txn_id).group_by(t.entries.c.txn_id).having(func.sum(t.entries.c.amount) != 0)
        ).all()
        problems.extend(f"transaction {r.txn_id} does not balance" for r in unbalanced)
        bad_holds = conn.execute(
            select(t.holds.c.id).where(
                or_(
                    t.holds.c.settled > t.holds.c.amount,
                    and_(
                        t.holds.c.state != "HELD", t.holds.c.settled + t.holds.c.released != t.holds.c.amount
                    ),
                )
            )
        ).all()
        problems.extend(f"hold {r.id} breaks settled + released = held" for r in bad_holds)
        held_open = conn.execute(
            select(func.coalesce(func.sum(t.holds.c.amount), 0)).where(t.holds.c.state == "HELD")
        ).scalar_one()
        held_accounts = conn.execute(
            select(func.coalesce(func.sum(t.accounts.c.balance), 0)).where(
                t.accounts.c.kind == AccountKind.HELD.value
            )
        ).scalar_one()
        if held_open != held_accounts:
            problems.append(f"open holds total {held_open} but held accounts hold {held_accounts}")
        return problems


# Hot statements are built once (building them per call costs more CPU than running them).
_INSERT_ENTRIES = insert(t.entries)
_INSERT_HOLD = insert(t.holds)
_BALANCE_AND_FLOOR = select(t.accounts.c.balance, t.accounts.c.floor).where(
    t.accounts.c.id == bindparam("account_id")
)
_HOLD_SELECT = select(t.holds).where(t.holds.c.id == bindparam("hold_id"))
_HOLD_SCOPED = _HOLD_SELECT.where(t.holds.c.org_id == bindparam("org_id"))
_HOLD_BY_ID = {
    (False, False): _HOLD_SELECT,
    (True, False): _HOLD_SCOPED,
    (False, True): _HOLD_SELECT.with_for_update(),
    (True, True): _HOLD_SCOPED.with_for_update(),
}
_OPEN_HOLDS = (
    select(func.count())
    .select_from(t.holds)
    .where(t.holds.c.org_id == bindparam("p_org"), t.holds.c.state == HoldState.HELD.value)
)
_CLOSE_HOLD = (
    update(t.holds)
    .where(t.holds.c.id == bindparam("hold_id"), t.holds.c.state == HoldState.HELD.value)
    .values(
        state=bindparam("p_state"),
        settled=bindparam("p_settled"),
        released=bindparam("p_released"),
        closed_ms=bindparam("p_closed"),
    )
)
_EXPIRED_GRANT_ACCOUNTS = select(t.grants.c.account_id).where(
    t.grants.c.account_id.in_(bindparam("accounts", expanding=True)), t.grants.c.status == "expired"
)
_GRANT_BALANCES = (
    select(
        t.grants.c.id,
        t.grants.c.account_id,
        t.grants.c.issuer_org,
        t.accounts.c.balance,
        t.grants.c.coverage_bps,
        t.grants.c.expires_ms,
        t.grants.c.resources,
    )
    .join(t.accounts, t.accounts.c.id == t.grants.c.account_id)
    .where(t.grants.c.org_id == bindparam("org_id"), t.grants.c.status == "active", t.accounts.c.balance > 0)
)

_CONDITIONAL_UPDATE = (
    update(t.accounts)
    .where(
        t.accounts.c.id == bindparam("account_id"),
        or_(t.accounts.c.floor.is_(None), t.accounts.c.balance + bindparam("delta") >= t.accounts.c.floor),
    )
    .values(balance=t.accounts.c.balance + bindparam("delta"))
)


def _dump_lines(lines: tuple[HoldLine, ...], issuers: tuple[str | None, ...]) -> str:
    return json.dumps(
        [
            [line.account_id, line.amount, line.voucher, line.grant_id, iss]
            for line, iss in zip(lines, issuers, strict=True)
        ]
    )


def _hold_from_row(row: object) -> Hold:
    r = row._mapping  # type: ignore[attr-defined]
    raw = json.loads(r["lines"])
    lines = tuple(HoldLine(int(a), int(m), bool(v), g) for a, m, v, g, _ in raw)
    issuers = tuple(i for *_, i in raw)
    return Hold(
        r["id"],
        r["org_id"],
        r["job_id"],
        int(r["amount"]),
        int(r["settled"]),
        int(r["released"]),
        HoldState(r["state"]),
        lines,
        issuers,
        int(r["created_ms"]),
        int(r["expires_ms"]),
    )


def _grant_view(row: object) -> GrantView:
    r = row._mapping  # type: ignore[attr-defined]
    return GrantView(
        r["id"],
        r["org_id"],
        r["issuer_org"],
        r["voucher_jti"],
        int(r["amount"]),
        int(r["balance"]),
        int(r["coverage_bps"]),
        tuple(r["resources"].split(",")),
        int(r["expires_ms"]),
        int(r["created_ms"]),
        r["status"],
    )
