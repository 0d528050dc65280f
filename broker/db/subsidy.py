"""The subsidy roll-up: per programme, SME and UTC quarter-hour, what the subsidy report sums.

Buckets are quarter-hours (migration 0010; they were UTC days) because every time zone's offset is a whole
number of quarter-hours: a programme in ``Asia/Shanghai`` closes its months at 16:00 UTC, which is a bucket
edge, so a report in any zone sums whole buckets (a UTC day would put 00:00-08:00 Beijing time in the day
before).

A settlement adds its numbers to the roll-up in its own transaction (:func:`add_settlement`), so the roll-up
always equals what the ledger and the usage records say — the same sums the report used to compute from
every ``settle`` entry and usage record of the period, now paid once per settlement instead of once per
report. :data:`REBUILD` recomputes the whole roll-up from the ledger (the migration that introduced it runs
it; tests compare it with the live roll-up). The definitions, for one settled hold and one programme whose
``spent`` account received a positive ``settle`` leg for it:

* ``jobs`` += 1, ``voucher`` += that leg (this programme's share);
* ``copay`` += the hold's settled cost minus every programme's legs (the SME's own part);
* ``cpu``/``gpu``/``memory`` += the usage records of the hold's job.

A settled hold with a positive cost that no programme paid any part of (no voucher line, or voucher lines
that settled nothing) goes to ``subsidy_copay`` instead, per SME and bucket (``jobs``, ``copay`` = its
cost, usage): the report adds it for the programme's grantees, so a report's co-payment equals the ledger's
``copaid`` for the period to the unit (:data:`REBUILD_COPAY` recomputes it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, bindparam, select, text
from sqlalchemy.dialects import postgresql, sqlite

from broker.db import tables as t

BUCKET_MS = 900_000
"""The roll-up's bucket: a quarter-hour, the finest grain of any time zone's offset."""
_JOB_USAGE = select(t.usage_records.c.resource, t.usage_records.c.quantity).where(
    t.usage_records.c.job_id == bindparam("job_id")
)


def add_settlement(
    conn: Connection,
    *,
    org_id: str,
    job_id: str | None,
    cost: int,
    paid_by: Mapping[str, int],
    now_ms: int,
) -> None:
    """Add one settled hold to the roll-up: ``paid_by`` maps each programme to its voucher share of ``cost``.

    Call it in the settlement's transaction, after the job's usage records are stored.
    """
    paying = {issuer: amount for issuer, amount in paid_by.items() if amount > 0}
    if not paying:
        if cost > 0:
            _add_copay_only(conn, org_id=org_id, cost=cost, usage=_job_usage(conn, job_id), now_ms=now_ms)
        return
    usage = _job_usage(conn, job_id)
    copay = cost - sum(paid_by.values())
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    table = t.subsidy_daily
    for issuer, amount in sorted(paying.items()):  # a fixed order: concurrent settlements lock rows alike
        row = {
            "issuer_org": issuer,
            "org_id": org_id,
            "day_ms": now_ms - now_ms % BUCKET_MS,
            "jobs": 1,
            "voucher": amount,
            "copay": copay,
            **usage,
        }
        stmt = dialect.insert(table).values(row)
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=[table.c.issuer_org, table.c.org_id, table.c.day_ms],
                set_={
                    name: table.c[name] + stmt.excluded[name]
                    for name in ("jobs", "voucher", "copay", "cpu", "gpu", "memory")
                },
            )
        )


def _job_usage(conn: Connection, job_id: str | None) -> dict[str, int]:
    """The usage records of a hold's job, per resource (zeros for a hold without a job)."""
    usage = {"cpu": 0, "gpu": 0, "memory": 0}
    if job_id is not None:
        for record in conn.execute(_JOB_USAGE, {"job_id": job_id}):
            usage[record.resource] += int(record.quantity)  # keys are the resource names
    return usage


def _add_copay_only(
    conn: Connection, *, org_id: str, cost: int, usage: Mapping[str, int], now_ms: int
) -> None:
    """Add one settled hold no programme paid for to the SME's co-payment roll-up."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    table = t.subsidy_copay
    stmt = dialect.insert(table).values(
        org_id=org_id, day_ms=now_ms - now_ms % BUCKET_MS, jobs=1, copay=cost, **usage
    )
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=[table.c.org_id, table.c.day_ms],
            set_={
                name: table.c[name] + stmt.excluded[name]
                for name in ("jobs", "copay", "cpu", "gpu", "memory")
            },
        )
    )


# The roll-up recomputed from the ledger: settle legs on programmes' ``spent`` accounts, per hold.
REBUILD = text(
    """
    INSERT INTO subsidy_daily (issuer_org, org_id, day_ms, jobs, voucher, copay, cpu, gpu, memory)
    WITH legs AS (
        SELECT e.hold_id AS hold_id, e.org_id AS org_id, a.org_id AS issuer_org, e.amount AS amount,
               e.created_ms AS created_ms
        FROM entries e JOIN accounts a ON a.id = e.account_id
        WHERE a.kind = 'spent' AND a.grant_id IS NULL AND e.kind = 'settle'
    ),
    per_hold AS (SELECT hold_id, SUM(amount) AS paid FROM legs GROUP BY hold_id),
    mine AS (
        SELECT hold_id, org_id, issuer_org, SUM(amount) AS amount, MIN(created_ms) AS ts
        FROM legs GROUP BY hold_id, org_id, issuer_org
    ),
    job_usage AS (
        SELECT job_id,
               SUM(CASE WHEN resource = 'cpu' THEN quantity ELSE 0 END) AS cpu,
               SUM(CASE WHEN resource = 'gpu' THEN quantity ELSE 0 END) AS gpu,
               SUM(CASE WHEN resource = 'memory' THEN quantity ELSE 0 END) AS memory
        FROM usage_records GROUP BY job_id
    )
    SELECT m.issuer_org, m.org_id, m.ts - m.ts % 900000, COUNT(*), SUM(m.amount), SUM(h.settled - p.paid),
           COALESCE(SUM(u.cpu), 0), COALESCE(SUM(u.gpu), 0), COALESCE(SUM(u.memory), 0)
    FROM mine m
    JOIN per_hold p ON p.hold_id = m.hold_id
    JOIN holds h ON h.id = m.hold_id
    LEFT JOIN job_usage u ON u.job_id = h.job_id
    WHERE m.amount > 0
    GROUP BY m.issuer_org, m.org_id, m.ts - m.ts % 900000
    """
)


# Settled holds with a positive cost and no positive programme leg, per SME and bucket of their settlement.
REBUILD_COPAY = text(
    """
    INSERT INTO subsidy_copay (org_id, day_ms, jobs, copay, cpu, gpu, memory)
    WITH paid AS (
        SELECT DISTINCT e.hold_id AS hold_id
        FROM entries e JOIN accounts a ON a.id = e.account_id
        WHERE a.kind = 'spent' AND a.grant_id IS NULL AND e.kind = 'settle' AND e.amount > 0
    ),
    settled_at AS (
        SELECT hold_id, MIN(created_ms) AS ts FROM entries WHERE kind = 'settle' GROUP BY hold_id
    ),
    job_usage AS (
        SELECT job_id,
               SUM(CASE WHEN resource = 'cpu' THEN quantity ELSE 0 END) AS cpu,
               SUM(CASE WHEN resource = 'gpu' THEN quantity ELSE 0 END) AS gpu,
               SUM(CASE WHEN resource = 'memory' THEN quantity ELSE 0 END) AS memory
        FROM usage_records GROUP BY job_id
    )
    SELECT h.org_id, s.ts - s.ts % 900000, COUNT(*), SUM(h.settled),
           COALESCE(SUM(u.cpu), 0), COALESCE(SUM(u.gpu), 0), COALESCE(SUM(u.memory), 0)
    FROM holds h
    JOIN settled_at s ON s.hold_id = h.id
    LEFT JOIN paid p ON p.hold_id = h.id
    LEFT JOIN job_usage u ON u.job_id = h.job_id
    WHERE h.state = 'SETTLED' AND h.settled > 0 AND p.hold_id IS NULL
    GROUP BY h.org_id, s.ts - s.ts % 900000
    """
)


def rebuild(conn: Connection) -> None:
    """Replace both roll-ups with ones recomputed from the ledger (in the caller's transaction)."""
    conn.execute(t.subsidy_daily.delete())
    conn.execute(REBUILD)
    conn.execute(t.subsidy_copay.delete())
    conn.execute(REBUILD_COPAY)


def drift(conn: Connection) -> list[tuple[Any, ...]]:
    """The rows in which the kept roll-up and one rebuilt from the ledger differ (empty: they agree).

    The rebuild runs in a savepoint that is rolled back, so the kept roll-up is left as it was; run it in a
    write transaction (SQLite takes the write lock for the savepoint's changes).
    """
    kept = _rows(conn)
    savepoint = conn.begin_nested()
    try:
        rebuild(conn)
        rebuilt = _rows(conn)
    finally:
        savepoint.rollback()
    return sorted(kept ^ rebuilt)


def _rows(conn: Connection) -> set[tuple[Any, ...]]:
    """Every row of both roll-ups, tagged with its table."""
    rows: set[tuple[Any, ...]] = set()
    for table in (t.subsidy_daily, t.subsidy_copay):
        query = select(table).order_by(*table.primary_key)
        rows |= {(table.name, *r) for r in conn.execute(query)}
    return rows
