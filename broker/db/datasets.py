"""The data foundation's repository: datasets, versions, access requests and the privacy-budget ledger.

The one rule enforced here is *no overspend*: :func:`reserve` moves the three budget rows a query is charged
against (dataset total → the SME's per-dataset cap → the grant) with one conditional ``UPDATE … WHERE spent
+ cost <= cap`` each, always in that order, inside the caller's transaction. A row that does not take the
cost fails the whole transaction with :class:`privacy.budget.BudgetExceeded`. PostgreSQL re-evaluates the
``WHERE`` after waiting for a concurrent writer's row lock, and SQLite has one writer, so concurrent
reservations can never spend more than a cap on either dialect.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, NoReturn

from sqlalchemy import Connection, Table, insert, select, update

from broker.db import data_tables as dt
from common.errors import Conflict, NotFound
from datasets import AccessDenied, AccessRequest, AccessStatus, DatasetPolicy, Grant, ReleaseKind
from privacy.budget import BudgetExceeded, PrivacyCost, check_fits, format_insufficient_budget


@dataclass(frozen=True, slots=True)
class DatasetRow:
    """A dataset as stored: its custodian, latest version and global budget counters."""

    id: str
    custodian_org: str
    name: str
    description: str
    latest_version: int
    total: PrivacyCost
    spent: PrivacyCost
    created_ms: int


@dataclass(frozen=True, slots=True)
class VersionRow:
    """One immutable, bounded version of a dataset (identified by its content hash)."""

    dataset_id: str
    version: int
    content_hash: str
    object_key: str
    size_bytes: int
    source_format: str
    schema: dict[str, str]
    policy: DatasetPolicy
    rows_in: int
    rows_kept: int
    created_ms: int
    created_by: str


@dataclass(frozen=True, slots=True)
class RequestRow:
    """An access request with what the state machine needs plus where it lives and what it spent."""

    request: AccessRequest
    dataset_id: str
    dataset_version: int
    custodian_org: str
    spent: PrivacyCost


def _kinds_text(kinds: frozenset[ReleaseKind]) -> str:
    return ",".join(sorted(k.value for k in kinds))


def _kinds(text: str | None) -> frozenset[ReleaseKind]:
    return frozenset(ReleaseKind(k) for k in (text or "").split(",") if k)


# -- datasets and versions ------------------------------------------------------------------------
def _dataset(row: Any) -> DatasetRow:
    return DatasetRow(
        id=row.id,
        custodian_org=row.custodian_org,
        name=row.name,
        description=row.description,
        latest_version=int(row.latest_version),
        total=PrivacyCost(int(row.total_epsilon_micro), int(row.total_delta_e12)),
        spent=PrivacyCost(int(row.spent_epsilon_micro), int(row.spent_delta_e12)),
        created_ms=int(row.created_ms),
    )


def insert_dataset(
    conn: Connection,
    *,
    dataset_id: str,
    custodian_org: str,
    name: str,
    description: str,
    total: PrivacyCost,
    now_ms: int,
) -> None:
    """Create a dataset row (its first version is inserted next, in the same transaction)."""
    existing = conn.execute(
        select(dt.datasets.c.id).where(
            dt.datasets.c.custodian_org == custodian_org, dt.datasets.c.name == name
        )
    ).first()
    if existing is not None:
        raise Conflict(f"you already have a dataset named {name!r} ({existing.id}); add a version to it")
    conn.execute(
        insert(dt.datasets).values(
            id=dataset_id,
            custodian_org=custodian_org,
            name=name,
            description=description,
            latest_version=0,
            total_epsilon_micro=total.epsilon_micro,
            total_delta_e12=total.delta_e12,
            spent_epsilon_micro=0,
            spent_delta_e12=0,
            created_ms=now_ms,
        )
    )


def get_dataset(conn: Connection, dataset_id: str, *, lock: bool = False) -> DatasetRow:
    """A dataset by id; NotFound when missing (callers hide foreign ones behind the same error)."""
    query = select(dt.datasets).where(dt.datasets.c.id == dataset_id)
    if lock and conn.dialect.name != "sqlite":
        query = query.with_for_update()
    row = conn.execute(query).first()
    if row is None:
        raise NotFound(f"no dataset {dataset_id}")
    return _dataset(row)


def list_datasets(conn: Connection, *, custodian_org: str | None = None) -> list[DatasetRow]:
    """All datasets, or one custodian's, oldest first."""
    query = select(dt.datasets).order_by(dt.datasets.c.created_ms, dt.datasets.c.id)
    if custodian_org is not None:
        query = query.where(dt.datasets.c.custodian_org == custodian_org)
    return [_dataset(r) for r in conn.execute(query)]


def _version(row: Any) -> VersionRow:
    return VersionRow(
        dataset_id=row.dataset_id,
        version=int(row.version),
        content_hash=row.content_hash,
        object_key=row.object_key,
        size_bytes=int(row.size_bytes),
        source_format=row.source_format,
        schema=json.loads(row.schema_json),
        policy=DatasetPolicy.from_dict(json.loads(row.policy_json)),
        rows_in=int(row.rows_in),
        rows_kept=int(row.rows_kept),
        created_ms=int(row.created_ms),
        created_by=row.created_by,
    )


def add_version(conn: Connection, *, version: VersionRow) -> VersionRow:
    """Record the next version of a dataset and make it the latest; its policy's total becomes the cap.

    What was already spent carries over (a new version of the same data must not reset the budget); the
    new total may not fall below it.
    """
    ds = get_dataset(conn, version.dataset_id, lock=True)
    number = ds.latest_version + 1
    dup = conn.execute(
        select(dt.dataset_versions.c.version).where(
            dt.dataset_versions.c.dataset_id == ds.id,
            dt.dataset_versions.c.content_hash == version.content_hash,
        )
    ).first()
    if dup is not None:
        raise Conflict(f"this content is already version {dup.version} of dataset {ds.id}")
    policy = version.policy
    total = PrivacyCost(policy.total_epsilon_micro, policy.total_delta_e12)
    check_fits(ds.spent, total, what="new total budget (it must cover what was already spent)")
    conn.execute(
        insert(dt.dataset_versions).values(
            dataset_id=ds.id,
            version=number,
            content_hash=version.content_hash,
            object_key=version.object_key,
            size_bytes=version.size_bytes,
            source_format=version.source_format,
            schema_json=json.dumps(version.schema, sort_keys=True),
            policy_json=json.dumps(policy.to_dict(), sort_keys=True),
            rows_in=version.rows_in,
            rows_kept=version.rows_kept,
            created_ms=version.created_ms,
            created_by=version.created_by,
        )
    )
    conn.execute(
        update(dt.datasets)
        .where(dt.datasets.c.id == ds.id)
        .values(
            latest_version=number,
            total_epsilon_micro=total.epsilon_micro,
            total_delta_e12=total.delta_e12,
        )
    )
    return get_version(conn, ds.id, number)


def get_version(conn: Connection, dataset_id: str, version: int) -> VersionRow:
    """One version of a dataset; NotFound when missing."""
    row = conn.execute(
        select(dt.dataset_versions).where(
            dt.dataset_versions.c.dataset_id == dataset_id, dt.dataset_versions.c.version == version
        )
    ).first()
    if row is None:
        raise NotFound(f"dataset {dataset_id} has no version {version}")
    return _version(row)


def list_versions(conn: Connection, dataset_id: str) -> list[VersionRow]:
    """Every version of a dataset, oldest first."""
    rows = conn.execute(
        select(dt.dataset_versions)
        .where(dt.dataset_versions.c.dataset_id == dataset_id)
        .order_by(dt.dataset_versions.c.version)
    )
    return [_version(r) for r in rows]


# -- access requests ------------------------------------------------------------------------------
def _request(row: Any) -> RequestRow:
    grant = None
    if row.grant_epsilon_micro is not None:
        grant = Grant(
            dataset_hash=row.dataset_hash,
            sme_org=row.sme_org,
            epsilon_cap_micro=int(row.grant_epsilon_micro),
            delta_cap_e12=int(row.grant_delta_e12 or 0),
            kinds=_kinds(row.grant_kinds),
            expires_ms=int(row.expires_ms),
        )
    req = AccessRequest(
        request_id=row.id,
        dataset_hash=row.dataset_hash,
        sme_org=row.sme_org,
        purpose=row.purpose,
        asked_epsilon_micro=int(row.asked_epsilon_micro),
        asked_delta_e12=int(row.asked_delta_e12),
        asked_kinds=_kinds(row.asked_kinds),
        created_ms=int(row.created_ms),
        status=AccessStatus(row.status),
        grant=grant,
        decided_ms=None if row.decided_ms is None else int(row.decided_ms),
        reason=row.reason,
    )
    spent = PrivacyCost(int(row.spent_epsilon_micro), int(row.spent_delta_e12))
    return RequestRow(req, row.dataset_id, int(row.dataset_version), row.custodian_org, spent)


def insert_request(
    conn: Connection, *, req: AccessRequest, dataset_id: str, dataset_version: int, custodian_org: str
) -> None:
    """Store a new PENDING request."""
    conn.execute(
        insert(dt.access_requests).values(
            id=req.request_id,
            dataset_id=dataset_id,
            dataset_version=dataset_version,
            dataset_hash=req.dataset_hash,
            sme_org=req.sme_org,
            custodian_org=custodian_org,
            purpose=req.purpose,
            asked_epsilon_micro=req.asked_epsilon_micro,
            asked_delta_e12=req.asked_delta_e12,
            asked_kinds=_kinds_text(req.asked_kinds),
            status=req.status.value,
            created_ms=req.created_ms,
            reason="",
            spent_epsilon_micro=0,
            spent_delta_e12=0,
        )
    )


def get_request(conn: Connection, request_id: str) -> RequestRow:
    """A request by id; NotFound when missing."""
    row = conn.execute(select(dt.access_requests).where(dt.access_requests.c.id == request_id)).first()
    if row is None:
        raise NotFound(f"no access request {request_id}")
    return _request(row)


def list_requests(
    conn: Connection,
    *,
    sme_org: str | None = None,
    custodian_org: str | None = None,
    dataset_id: str | None = None,
    statuses: tuple[str, ...] | None = None,
) -> list[RequestRow]:
    """Requests filtered by SME, custodian, dataset and status, oldest first."""
    c = dt.access_requests.c
    query = select(dt.access_requests).order_by(c.created_ms, c.id)
    if sme_org is not None:
        query = query.where(c.sme_org == sme_org)
    if custodian_org is not None:
        query = query.where(c.custodian_org == custodian_org)
    if dataset_id is not None:
        query = query.where(c.dataset_id == dataset_id)
    if statuses is not None:
        query = query.where(c.status.in_(statuses))
    return [_request(r) for r in conn.execute(query)]


def save_decision(conn: Connection, *, before: AccessStatus, after: AccessRequest) -> None:
    """Persist a state-machine move, conditional on the stored status still being ``before``."""
    grant = after.grant
    values: dict[str, Any] = {
        "status": after.status.value,
        "decided_ms": after.decided_ms,
        "reason": after.reason,
    }
    if grant is not None:
        values |= {
            "grant_epsilon_micro": grant.epsilon_cap_micro,
            "grant_delta_e12": grant.delta_cap_e12,
            "grant_kinds": _kinds_text(grant.kinds),
            "expires_ms": grant.expires_ms,
        }
    moved = conn.execute(
        update(dt.access_requests)
        .where(dt.access_requests.c.id == after.request_id, dt.access_requests.c.status == before.value)
        .values(**values)
    )
    if moved.rowcount != 1:
        raise Conflict(f"access request {after.request_id} was decided concurrently; reload it")


# -- privacy budgets ------------------------------------------------------------------------------
def ensure_sme_budget(conn: Connection, *, dataset_id: str, sme_org: str, cap: PrivacyCost) -> None:
    """Create the SME's per-dataset budget row, or raise its cap to ``cap`` (never below what was spent)."""
    c = dt.dataset_sme_budgets.c
    row = conn.execute(
        select(dt.dataset_sme_budgets).where(c.dataset_id == dataset_id, c.sme_org == sme_org)
    ).first()
    if row is None:
        conn.execute(
            insert(dt.dataset_sme_budgets).values(
                dataset_id=dataset_id,
                sme_org=sme_org,
                cap_epsilon_micro=cap.epsilon_micro,
                cap_delta_e12=cap.delta_e12,
                spent_epsilon_micro=0,
                spent_delta_e12=0,
            )
        )
        return
    conn.execute(
        update(dt.dataset_sme_budgets)
        .where(c.dataset_id == dataset_id, c.sme_org == sme_org)
        .values(
            cap_epsilon_micro=max(cap.epsilon_micro, int(row.spent_epsilon_micro)),
            cap_delta_e12=max(cap.delta_e12, int(row.spent_delta_e12)),
        )
    )


def sme_budget(conn: Connection, *, dataset_id: str, sme_org: str) -> tuple[PrivacyCost, PrivacyCost]:
    """``(cap, spent)`` of one SME on one dataset (zero cap when it never had a grant)."""
    c = dt.dataset_sme_budgets.c
    row = conn.execute(
        select(dt.dataset_sme_budgets).where(c.dataset_id == dataset_id, c.sme_org == sme_org)
    ).first()
    if row is None:
        return PrivacyCost.zero(), PrivacyCost.zero()
    return (
        PrivacyCost(int(row.cap_epsilon_micro), int(row.cap_delta_e12)),
        PrivacyCost(int(row.spent_epsilon_micro), int(row.spent_delta_e12)),
    )


def _take(
    conn: Connection, table: Table, where: list[Any], cap_eps: Any, cap_delta: Any, cost: PrivacyCost
) -> bool:
    """One conditional update: add ``cost`` to the row's spent counters only if they stay within the caps."""
    c = table.c
    result = conn.execute(
        update(table)
        .where(
            *where,
            c.spent_epsilon_micro + cost.epsilon_micro <= cap_eps,
            c.spent_delta_e12 + cost.delta_e12 <= cap_delta,
        )
        .values(
            spent_epsilon_micro=c.spent_epsilon_micro + cost.epsilon_micro,
            spent_delta_e12=c.spent_delta_e12 + cost.delta_e12,
        )
    )
    return result.rowcount == 1


def reserve(conn: Connection, *, dataset_id: str, sme_org: str, request_id: str, cost: PrivacyCost) -> None:
    """Charge ``cost`` to the dataset total, the SME's cap and the grant, atomically, or raise BudgetExceeded.

    Always in this order (dataset, SME cap, grant) so concurrent reservations lock rows in one order.
    """
    d, s, g = dt.datasets.c, dt.dataset_sme_budgets.c, dt.access_requests.c
    if not _take(conn, dt.datasets, [d.id == dataset_id], d.total_epsilon_micro, d.total_delta_e12, cost):
        ds = get_dataset(conn, dataset_id)
        _refuse(cost, ds.total, ds.spent, "dataset budget (all SMEs together)")
    sme_where = [s.dataset_id == dataset_id, s.sme_org == sme_org]
    if not _take(conn, dt.dataset_sme_budgets, sme_where, s.cap_epsilon_micro, s.cap_delta_e12, cost):
        cap, spent = sme_budget(conn, dataset_id=dataset_id, sme_org=sme_org)
        _refuse(cost, cap, spent, "per-SME cap of this dataset")
    grant_where = [g.id == request_id, g.status == AccessStatus.APPROVED.value]
    if not _take(conn, dt.access_requests, grant_where, g.grant_epsilon_micro, g.grant_delta_e12, cost):
        row = get_request(conn, request_id)
        grant = row.request.grant
        if row.request.status is not AccessStatus.APPROVED or grant is None:
            raise AccessDenied(f"no approved access: the request is {row.request.status.value}")
        _refuse(cost, PrivacyCost(grant.epsilon_cap_micro, grant.delta_cap_e12), row.spent, "grant")


def _refuse(cost: PrivacyCost, cap: PrivacyCost, spent: PrivacyCost, what: str) -> NoReturn:
    """Raise BudgetExceeded for a conditional update that did not take ``cost``."""
    remaining = PrivacyCost(
        max(0, cap.epsilon_micro - spent.epsilon_micro), max(0, cap.delta_e12 - spent.delta_e12)
    )
    raise BudgetExceeded(
        format_insufficient_budget(cost, remaining, what=what), requested=cost, remaining=remaining
    )


def insert_charge(
    conn: Connection,
    *,
    charge_id: str,
    dataset_id: str,
    dataset_version: int,
    request_id: str,
    sme_org: str,
    kind: str,
    cost: PrivacyCost,
    spec: list[dict[str, Any]],
    hold_id: str | None,
    rate_card_version: int,
    now_ms: int,
) -> None:
    """Record one reservation in the budget ledger (status ``reserved``)."""
    conn.execute(
        insert(dt.privacy_charges).values(
            id=charge_id,
            dataset_id=dataset_id,
            dataset_version=dataset_version,
            request_id=request_id,
            sme_org=sme_org,
            kind=kind,
            epsilon_micro=cost.epsilon_micro,
            delta_e12=cost.delta_e12,
            spec=json.dumps(spec, sort_keys=True),
            hold_id=hold_id,
            rate_card_version=rate_card_version,
            status="reserved",
            created_ms=now_ms,
        )
    )


def finish_charge(
    conn: Connection, *, charge_id: str, status: str, credits: int, elapsed_ms: int | None, now_ms: int
) -> None:
    """Record how a reserved run ended (the privacy cost itself is never refunded)."""
    moved = conn.execute(
        update(dt.privacy_charges)
        .where(dt.privacy_charges.c.id == charge_id, dt.privacy_charges.c.status == "reserved")
        .values(status=status, credits=credits, elapsed_ms=elapsed_ms, finished_ms=now_ms)
    )
    if moved.rowcount != 1:
        raise Conflict(f"charge {charge_id} was already finished")


@dataclass(frozen=True, slots=True)
class StaleCharge:
    """A reservation still open after its run's deadline (what reconciliation needs to close it)."""

    id: str
    dataset_id: str
    sme_org: str
    hold_id: str | None
    cost: PrivacyCost
    created_ms: int


def stale_charges(
    conn: Connection, *, kind: str, created_before_ms: int, limit: int = 100
) -> list[StaleCharge]:
    """Charges of ``kind`` still ``reserved`` that were reserved before ``created_before_ms``, oldest first."""
    c = dt.privacy_charges.c
    rows = conn.execute(
        select(c.id, c.dataset_id, c.sme_org, c.hold_id, c.epsilon_micro, c.delta_e12, c.created_ms)
        .where(c.status == "reserved", c.kind == kind, c.created_ms < created_before_ms)
        .order_by(c.created_ms, c.id)
        .limit(limit)
    )
    return [
        StaleCharge(
            r.id,
            r.dataset_id,
            r.sme_org,
            r.hold_id,
            PrivacyCost(int(r.epsilon_micro), int(r.delta_e12)),
            int(r.created_ms),
        )
        for r in rows
    ]


def get_charge(conn: Connection, charge_id: str) -> dict[str, Any]:
    """One budget-ledger row (its dataset, SME, kind and status); NotFound when missing."""
    row = conn.execute(select(dt.privacy_charges).where(dt.privacy_charges.c.id == charge_id)).first()
    if row is None:
        raise NotFound(f"no privacy charge {charge_id}")
    return {
        "id": row.id,
        "dataset_id": row.dataset_id,
        "sme_org": row.sme_org,
        "kind": row.kind,
        "status": row.status,
    }


def list_charges(
    conn: Connection, *, dataset_id: str, sme_org: str | None = None, limit: int = 200
) -> list[dict[str, Any]]:
    """Budget-ledger rows of a dataset (optionally one SME's), newest first; never any result value."""
    c = dt.privacy_charges.c
    query = select(dt.privacy_charges).where(c.dataset_id == dataset_id)
    if sme_org is not None:
        query = query.where(c.sme_org == sme_org)
    rows = conn.execute(query.order_by(c.created_ms.desc(), c.id.desc()).limit(limit))
    return [
        {
            "id": r.id,
            "dataset_version": int(r.dataset_version),
            "request_id": r.request_id,
            "sme_org": r.sme_org,
            "kind": r.kind,
            "charged": {"epsilon_micro": int(r.epsilon_micro), "delta_e12": int(r.delta_e12)},
            "queries": json.loads(r.spec),
            "credits": None if r.credits is None else int(r.credits),
            "status": r.status,
            "created_ms": int(r.created_ms),
        }
        for r in rows
    ]


def sme_budgets(conn: Connection, *, dataset_id: str) -> list[dict[str, Any]]:
    """Every SME's cap and spend on one dataset (the custodian's view)."""
    c = dt.dataset_sme_budgets.c
    rows = conn.execute(select(dt.dataset_sme_budgets).where(c.dataset_id == dataset_id).order_by(c.sme_org))
    return [
        {
            "sme_org": r.sme_org,
            "cap": {"epsilon_micro": int(r.cap_epsilon_micro), "delta_e12": int(r.cap_delta_e12)},
            "spent": {"epsilon_micro": int(r.spent_epsilon_micro), "delta_e12": int(r.spent_delta_e12)},
        }
        for r in rows
    ]
