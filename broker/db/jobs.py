"""Jobs, rate cards, SME quotas and usage records."""

from __future__ import annotations

import json
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from sqlalchemy import Connection, bindparam, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from broker.db import tables as t
from common.errors import Conflict, NotFound
from common.resources import Resources
from quotas.jobs import JobState, transition
from quotas.ledger import GrantBalance
from quotas.metering import UsageRecord
from quotas.pricing import RateCard
from quotas.quota import DEFAULT_QUOTA, Quota

DEFAULT_RATE_CARD = RateCard(
    version=0,
    credits_per_cpu_second=Fraction(10),
    credits_per_gpu_second=Fraction(1000),
    credits_per_gib_second=Fraction(1),
)
"""The built-in card (version 0) until an operator sets one: 10 credits per CPU-second, 1,000 per
GPU-second, 1 per GiB-second."""

ACTIVE_STATES = (JobState.ADMITTED.value, JobState.RUNNING.value)


@dataclass(frozen=True, slots=True)
class Job:
    """A job row."""

    id: str
    org_id: str
    kind: str
    name: str
    state: JobState
    entrypoint: str
    working_dir: str | None
    requirements: tuple[str, ...]
    resources: Resources
    max_runtime_s: int
    priority: int
    rate_card_version: int
    max_cost: int
    hold_id: str | None
    cost: int | None
    voucher_paid: int | None
    copaid: int | None
    message: str
    spec: dict[str, Any] | None
    submitted_ms: int
    admitted_ms: int | None
    started_ms: int | None
    ended_ms: int | None
    settled_ms: int | None
    stop_requested: bool
    reason: str | None = None
    code_bytes: int = 0
    files_expired_ms: int | None = None
    last_seen_ms: int | None = None
    wait_reason: str | None = None
    wait_detail: str | None = None

    def public(self) -> dict[str, Any]:
        """The view an SME sees of its job."""
        return {
            "id": self.id,
            "org_id": self.org_id,
            "kind": self.kind,
            "state": self.state.value,
            "entrypoint": self.entrypoint,
            "requirements": list(self.requirements),
            "milli_cpu": self.resources.milli_cpu,
            "gpus": self.resources.gpus,
            "memory_mib": self.resources.memory_mib,
            "max_runtime_s": self.max_runtime_s,
            "priority": self.priority,
            "rate_card_version": self.rate_card_version,
            "max_cost": self.max_cost,
            "hold_id": self.hold_id,
            "cost": self.cost,
            "voucher_paid": self.voucher_paid,
            "copaid": self.copaid,
            "message": self.message,
            "submitted_ms": self.submitted_ms,
            "admitted_ms": self.admitted_ms,
            "started_ms": self.started_ms,
            "ended_ms": self.ended_ms,
            "settled_ms": self.settled_ms,
            "stop_requested": self.stop_requested,
            "reason": self.reason,
            "pending_reason": self.wait_reason,
            "pending_detail": self.wait_detail,
        }


def _job(row: Any) -> Job:
    r = row._mapping
    return Job(
        id=r["id"],
        org_id=r["org_id"],
        kind=r["kind"],
        name=r["name"],
        state=JobState(r["state"]),
        entrypoint=r["entrypoint"],
        working_dir=r["working_dir"],
        requirements=tuple(json.loads(r["requirements"])),
        resources=Resources(int(r["milli_cpu"]), int(r["gpus"]), int(r["memory_mib"])),
        max_runtime_s=int(r["max_runtime_s"]),
        priority=int(r["priority"]),
        rate_card_version=int(r["rate_card_version"]),
        max_cost=int(r["max_cost"]),
        hold_id=r["hold_id"],
        cost=r["cost"],
        voucher_paid=r["voucher_paid"],
        copaid=r["copaid"],
        message=r["message"] or "",
        spec=json.loads(r["spec"]) if r["spec"] else None,
        submitted_ms=int(r["submitted_ms"]),
        admitted_ms=r["admitted_ms"],
        started_ms=r["started_ms"],
        ended_ms=r["ended_ms"],
        settled_ms=r["settled_ms"],
        stop_requested=bool(r["stop_requested"]),
        reason=r["reason"],
        code_bytes=int(r["code_bytes"] or 0),
        files_expired_ms=r["files_expired_ms"],
        last_seen_ms=r["last_seen_ms"],
        wait_reason=r["wait_reason"],
        wait_detail=r["wait_detail"],
    )


# -- rate cards and quotas ---------------------------------------------------------------------------
def current_rate_card(conn: Connection) -> RateCard:
    """The newest rate card, or the built-in default (version 0)."""
    row = conn.execute(select(t.rate_cards.c.card).order_by(t.rate_cards.c.version.desc()).limit(1)).first()
    return DEFAULT_RATE_CARD if row is None else RateCard.from_json(row.card)


def rate_card(conn: Connection, version: int) -> RateCard:
    """A rate card by version (0 is the built-in default)."""
    if version == 0:
        return DEFAULT_RATE_CARD
    row = conn.execute(select(t.rate_cards.c.card).where(t.rate_cards.c.version == version)).first()
    if row is None:
        raise NotFound(f"no rate card version {version}")
    return RateCard.from_json(row.card)


def add_rate_card(conn: Connection, *, card: RateCard, now_ms: int, by: str | None) -> RateCard:
    """Store the next version of the rate card (versions only grow; old jobs keep their version)."""
    latest = conn.execute(select(func.coalesce(func.max(t.rate_cards.c.version), 0))).scalar_one()
    versioned = RateCard(
        version=int(latest) + 1,
        credits_per_cpu_second=card.credits_per_cpu_second,
        credits_per_gpu_second=card.credits_per_gpu_second,
        credits_per_gib_second=card.credits_per_gib_second,
    )
    conn.execute(
        insert(t.rate_cards).values(
            version=versioned.version, card=versioned.to_json(), created_ms=now_ms, created_by=by
        )
    )
    return versioned


def quota(conn: Connection, org_id: str) -> Quota:
    """An SME's quota (the default until an operator sets one); ``copay_limit`` is the ledger's."""
    row = conn.execute(select(t.sme_quotas).where(t.sme_quotas.c.org_id == org_id)).first()
    if row is None:
        return DEFAULT_QUOTA
    return Quota(
        Resources(int(row.max_milli_cpu), int(row.max_gpus), int(row.max_memory_mib)),
        int(row.max_running_jobs),
        int(row.max_queued_jobs),
        DEFAULT_QUOTA.copay_limit,
    )


def set_quota(conn: Connection, *, org_id: str, q: Quota, now_ms: int) -> None:
    """Create or replace an SME's quota."""
    values = {
        "max_milli_cpu": q.max_resources.milli_cpu,
        "max_gpus": q.max_resources.gpus,
        "max_memory_mib": q.max_resources.memory_mib,
        "max_running_jobs": q.max_running_jobs,
        "max_queued_jobs": q.max_queued_jobs,
        "changed_ms": now_ms,
    }
    updated = conn.execute(update(t.sme_quotas).where(t.sme_quotas.c.org_id == org_id).values(**values))
    if updated.rowcount == 0:
        conn.execute(insert(t.sme_quotas).values(org_id=org_id, **values))


# -- jobs --------------------------------------------------------------------------------------------
def insert_job(conn: Connection, **values: Any) -> None:
    """Insert a job row (``values`` are column values)."""
    conn.execute(insert(t.jobs).values(**values))


def get_job(conn: Connection, job_id: str, *, org_id: str | None = None, lock: bool = False) -> Job:
    """A job by id, scoped to ``org_id`` unless None; :class:`NotFound` for missing or foreign."""
    query = select(t.jobs).where(t.jobs.c.id == job_id)
    if org_id is not None:
        query = query.where(t.jobs.c.org_id == org_id)
    if lock and conn.dialect.name != "sqlite":
        query = query.with_for_update()
    row = conn.execute(query).first()
    if row is None:
        raise NotFound(f"no job {job_id}")
    return _job(row)


def list_jobs(
    conn: Connection, *, org_id: str | None = None, states: tuple[str, ...] | None = None, limit: int = 200
) -> list[Job]:
    """Jobs, newest first (an SME's, or all), optionally only in some states."""
    query = select(t.jobs).order_by(t.jobs.c.submitted_ms.desc(), t.jobs.c.id).limit(limit)
    if org_id is not None:
        query = query.where(t.jobs.c.org_id == org_id)
    if states is not None:
        query = query.where(t.jobs.c.state.in_(states))
    return [_job(r) for r in conn.execute(query)]


def jobs_in(
    conn: Connection, states: tuple[str, ...], *, skip_locked: bool = False, limit: int = 10_000
) -> list[Job]:
    """Jobs in ``states`` oldest first; on PostgreSQL optionally ``FOR UPDATE SKIP LOCKED`` (replicas)."""
    query = (
        select(t.jobs)
        .where(t.jobs.c.state.in_(states))
        .order_by(t.jobs.c.submitted_ms, t.jobs.c.id)
        .limit(limit)
    )
    if skip_locked and conn.dialect.name != "sqlite":
        query = query.with_for_update(skip_locked=True)
    return [_job(r) for r in conn.execute(query)]


def code_bytes_kept(conn: Connection, org_id: str) -> int:
    """Bytes of unpacked code the SME's jobs still keep on disk (those not yet past their retention)."""
    total = conn.execute(
        select(func.coalesce(func.sum(t.jobs.c.code_bytes), 0)).where(
            t.jobs.c.org_id == org_id, t.jobs.c.files_expired_ms.is_(None), t.jobs.c.code_bytes > 0
        )
    ).scalar_one()
    return int(total)


def files_to_expire(conn: Connection, *, ended_before_ms: int, limit: int = 500) -> list[str]:
    """Ids of finished jobs whose code dirs outlived their retention (oldest first)."""
    rows = conn.execute(
        select(t.jobs.c.id)
        .where(
            t.jobs.c.files_expired_ms.is_(None),
            t.jobs.c.settled_ms.is_not(None),
            t.jobs.c.settled_ms < ended_before_ms,
        )
        .order_by(t.jobs.c.settled_ms)
        .limit(limit)
    )
    return [r.id for r in rows]


def mark_seen(conn: Connection, job_ids: list[str], now_ms: int) -> None:
    """Record that the backend reported these jobs running now (one statement for the whole pass)."""
    if job_ids:
        conn.execute(update(t.jobs).where(t.jobs.c.id.in_(job_ids)).values(last_seen_ms=now_ms))


def count_queued(conn: Connection, org_id: str) -> int:
    """How many jobs an SME has waiting."""
    return int(
        conn.execute(
            select(func.count())
            .select_from(t.jobs)
            .where(t.jobs.c.org_id == org_id, t.jobs.c.state == JobState.QUEUED.value)
        ).scalar_one()
    )


def move(conn: Connection, job: Job, target: JobState, **values: Any) -> Job:
    """Move a job to ``target`` if it is still in the state we read (a conditional update); returns it.

    Raises :class:`Conflict` for an illegal transition or when another writer moved it first.
    """
    transition(job.state, target)
    result = conn.execute(
        update(t.jobs)
        .where(t.jobs.c.id == job.id, t.jobs.c.state == job.state.value)
        .values(state=target.value, **values)
    )
    if result.rowcount != 1:
        raise Conflict(f"job {job.id} changed state meanwhile; try again", code="job_changed")
    return get_job(conn, job.id)


def set_fields(conn: Connection, job_id: str, **values: Any) -> None:
    """Update non-state fields of a job."""
    conn.execute(update(t.jobs).where(t.jobs.c.id == job_id).values(**values))


def in_use(conn: Connection) -> dict[str, tuple[Resources, int]]:
    """Per SME: resources of its admitted and running jobs, and how many there are."""
    rows = conn.execute(
        select(
            t.jobs.c.org_id,
            func.sum(t.jobs.c.milli_cpu),
            func.sum(t.jobs.c.gpus),
            func.sum(t.jobs.c.memory_mib),
            func.count(),
        )
        .where(t.jobs.c.state.in_(ACTIVE_STATES))
        .group_by(t.jobs.c.org_id)
    )
    return {r[0]: (Resources(int(r[1]), int(r[2]), int(r[3])), int(r[4])) for r in rows}


# -- usage -------------------------------------------------------------------------------------------
def record_usage(conn: Connection, *, org_id: str, records: list[UsageRecord]) -> None:
    """Store usage records; a record already stored for the same job and resource is kept (idempotent)."""
    if not records:
        return
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    conn.execute(
        dialect.insert(t.usage_records)
        .values(
            [
                {
                    "job_id": r.job_id,
                    "resource": r.resource.value,
                    "org_id": org_id,
                    "quantity": r.quantity_unit_ms,
                    "start_ms": r.start_ms,
                    "end_ms": r.end_ms,
                }
                for r in records
            ]
        )
        .on_conflict_do_nothing()
    )


def usage_between(conn: Connection, start_ms: int, end_ms: int) -> list[UsageRecord]:
    """Usage records overlapping ``[start_ms, end_ms)``."""
    rows = conn.execute(
        select(t.usage_records).where(
            t.usage_records.c.end_ms > start_ms, t.usage_records.c.start_ms < end_ms
        )
    )
    return [UsageRecord(r.job_id, r.resource, int(r.quantity), int(r.start_ms), int(r.end_ms)) for r in rows]


def last_admissions(conn: Connection, org_ids: list[str]) -> dict[str, int]:
    """Per SME, when a job of it was last admitted (SMEs never served are absent)."""
    rows = conn.execute(
        select(t.jobs.c.org_id, func.max(t.jobs.c.admitted_ms))
        .where(t.jobs.c.org_id.in_(org_ids), t.jobs.c.admitted_ms.is_not(None))
        .group_by(t.jobs.c.org_id)
    )
    return {r[0]: int(r[1]) for r in rows}


# -- admission: one set of queries per pass ---------------------------------------------------------
@dataclass(frozen=True, slots=True)
class QueuedRow:
    """What admission needs of one queued job (no JSON columns decoded)."""

    id: str
    org_id: str
    resources: Resources
    priority: int
    submitted_ms: int
    max_cost: int
    max_runtime_s: int
    wait_reason: str | None
    wait_detail: str | None


@dataclass(frozen=True, slots=True)
class AdmissionAccounts:
    """Every SME's money as admission sees it, read in two set-based queries: ``grants`` holds each SME's
    active grants with credit left, ``copay`` each SME's co-payment account as ``(balance, floor)``."""

    grants: dict[str, list[GrantBalance]]
    copay: dict[str, tuple[int, int]]


_QUEUED_FOR_ADMISSION = (  # constant text: the one query whose rows grow with the queue's depth
    "SELECT id, org_id, milli_cpu, gpus, memory_mib, priority, submitted_ms, max_cost, max_runtime_s,"
    " wait_reason, wait_detail FROM jobs WHERE state = 'queued' ORDER BY submitted_ms, id LIMIT {limit}"
)
_ALL_QUOTAS = select(
    t.sme_quotas.c.org_id,
    t.sme_quotas.c.max_milli_cpu,
    t.sme_quotas.c.max_gpus,
    t.sme_quotas.c.max_memory_mib,
    t.sme_quotas.c.max_running_jobs,
    t.sme_quotas.c.max_queued_jobs,
)
_ACTIVE_GRANTS = (
    select(
        t.grants.c.org_id,
        t.grants.c.id,
        t.grants.c.account_id,
        t.accounts.c.balance,
        t.grants.c.coverage_bps,
        t.grants.c.expires_ms,
        t.grants.c.resources,
    )
    .join(t.accounts, t.accounts.c.id == t.grants.c.account_id)
    .where(t.grants.c.status == "active", t.accounts.c.balance > 0)
)
_COPAY_ACCOUNTS = select(t.accounts.c.org_id, t.accounts.c.balance, t.accounts.c.floor).where(
    t.accounts.c.kind == "copay", t.accounts.c.grant_id.is_(None)
)
_ADMIT = (
    update(t.jobs)
    .where(t.jobs.c.id == bindparam("p_id"), t.jobs.c.state == JobState.QUEUED.value)
    .values(
        state=JobState.ADMITTED.value,
        hold_id=bindparam("p_hold"),
        admitted_ms=bindparam("p_now"),
        wait_reason=None,
        wait_detail=None,
    )
)
_SET_WAIT = (
    update(t.jobs)
    .where(t.jobs.c.id == bindparam("p_id"), t.jobs.c.state == JobState.QUEUED.value)
    .values(wait_reason=bindparam("p_reason"), wait_detail=bindparam("p_detail"))
)


def queued_for_admission(conn: Connection, limit: int = 1_000_000) -> list[QueuedRow]:
    """Every queued job, oldest first, with only the columns admission reads (one query)."""
    shapes: dict[tuple[int, int, int], Resources] = {}  # queued jobs mostly share a few shapes
    out = []
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:  # straight from the driver: building a Row per job would cost more than the rest of the pass
        cursor.execute(_QUEUED_FOR_ADMISSION.format(limit=int(limit)))
        rows = cursor.fetchall()
    finally:
        cursor.close()
    for r in rows:
        shape = (int(r[2]), int(r[3]), int(r[4]))
        res = shapes.get(shape)
        if res is None:
            res = shapes[shape] = Resources(*shape)
        out.append(QueuedRow(r[0], r[1], res, int(r[5]), int(r[6]), int(r[7]), int(r[8]), r[9], r[10]))
    return out


def all_quotas(conn: Connection) -> dict[str, Quota]:
    """Every stored SME quota (an SME without one has :data:`DEFAULT_QUOTA`); one query."""
    parsed: dict[tuple[int, ...], Quota] = {}  # SMEs mostly share their quota: build each distinct one once
    out: dict[str, Quota] = {}
    for org_id, cpu, gpus, mem, running, queued in conn.execute(_ALL_QUOTAS):
        key = (int(cpu), int(gpus), int(mem), int(running), int(queued))
        quota = parsed.get(key)
        if quota is None:
            quota = parsed[key] = Quota(Resources(*key[:3]), key[3], key[4], DEFAULT_QUOTA.copay_limit)
        out[org_id] = quota
    return out


def admission_accounts(conn: Connection) -> AdmissionAccounts:
    """Every SME's active grants with credit left and its co-payment account, in two queries."""
    grants: dict[str, list[GrantBalance]] = {}
    classes: dict[str, frozenset[str]] = {}
    for r in conn.execute(_ACTIVE_GRANTS):
        kinds = classes.get(r[6])
        if kinds is None:
            kinds = classes[r[6]] = frozenset(r[6].split(","))
        grants.setdefault(r[0], []).append(
            GrantBalance(r[1], int(r[2]), int(r[3]), int(r[4]), int(r[5]), kinds)
        )
    copay = {r[0]: (int(r[1]), int(r[2] or 0)) for r in conn.execute(_COPAY_ACCOUNTS) if r[0] is not None}
    return AdmissionAccounts(grants, copay)


def admit(conn: Connection, job_id: str, *, hold_id: str, now_ms: int) -> None:
    """QUEUED → ADMITTED with its hold, if the job is still queued (the conditional update is the guard).

    Raises :class:`Conflict` when another writer moved it first (the caller rolls back its savepoint).
    """
    result = conn.execute(_ADMIT, {"p_id": job_id, "p_hold": hold_id, "p_now": now_ms})
    if result.rowcount != 1:
        raise Conflict(f"job {job_id} changed state meanwhile; try again", code="job_changed")


def jobs_by_id(conn: Connection, job_ids: list[str]) -> list[Job]:
    """Full rows of ``job_ids`` (in chunks: one query per 500 ids), in the order given."""
    found: dict[str, Job] = {}
    for start in range(0, len(job_ids), 500):
        chunk = job_ids[start : start + 500]
        found.update((j.id, j) for j in map(_job, conn.execute(select(t.jobs).where(t.jobs.c.id.in_(chunk)))))
    return [found[i] for i in job_ids if i in found]


def set_waits(conn: Connection, waits: list[tuple[str, str, str]]) -> None:
    """Record ``(job id, reason, detail)`` on jobs still queued (one executemany for the whole pass)."""
    if waits:
        conn.execute(_SET_WAIT, [{"p_id": i, "p_reason": r, "p_detail": d} for i, r, d in waits])
