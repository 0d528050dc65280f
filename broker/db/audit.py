"""The audit log's repository: append inside the action's transaction; read; verify; checkpoint.

Appends lock the single ``audit_head`` row (``SELECT … FOR UPDATE`` on PostgreSQL; SQLite has one writer),
so sequence numbers are gapless and the chain is linear across replicas. Each row stores the exact canonical
body that was hashed, so verification rehashes bytes without re-serialising.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, insert, select, update

from broker.audit.chain import AuditRecord, VerifyResult, next_record, verify_chain_bodies
from broker.audit.checkpoints import Checkpoint, CheckpointFile, sign_checkpoint
from broker.db import tables as t
from broker.db.orgs import Principal

CHECKPOINT_FILE = "checkpoints.jsonl"


class AuditRepo:
    """Appends entries and exports signed checkpoints to a file outside the database."""

    def __init__(self, broker_key_pem: bytes, *, checkpoint_dir: Path) -> None:
        self._key = broker_key_pem
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        self._checkpoints = CheckpointFile(checkpoint_dir / CHECKPOINT_FILE)

    def append(
        self,
        conn: Connection,
        *,
        ts_ms: int,
        actor: Principal | None,
        action: str,
        object_type: str,
        object_id: str,
        org_id: str | None = None,
        dataset_id: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> int:
        """Append one entry in the caller's transaction; returns its sequence number."""
        query = select(t.audit_head.c.seq, t.audit_head.c.entry_hash).where(t.audit_head.c.id == 1)
        if conn.dialect.name != "sqlite":
            query = query.with_for_update()
        head = conn.execute(query).one()
        record = next_record(
            int(head.seq),
            head.entry_hash,
            ts_ms=ts_ms,
            actor_org=actor.org_id if actor else None,
            actor_role=actor.role if actor else None,
            action=action,
            object_type=object_type,
            object_id=object_id,
            org_id=org_id,
            dataset_id=dataset_id,
            details=details or {},
        )
        conn.execute(
            insert(t.audit_entries).values(
                seq=record.seq,
                ts_ms=record.ts_ms,
                actor_org=record.actor_org,
                action=record.action,
                object_type=record.object_type,
                object_id=record.object_id,
                org_id=record.org_id,
                dataset_id=record.dataset_id,
                body=record.body(),
                prev_hash=record.prev_hash,
                entry_hash=record.entry_hash,
            )
        )
        conn.execute(
            update(t.audit_head)
            .where(t.audit_head.c.id == 1)
            .values(seq=record.seq, entry_hash=record.entry_hash)
        )
        return record.seq

    def entries(
        self,
        conn: Connection,
        *,
        org_id: str | None = None,
        dataset_ids: list[str] | None = None,
        after_seq: int = 0,
        limit: int = 200,
    ) -> list[dict[str, Any]]:
        """Entries after ``after_seq``: all, one organisation's, or those of some datasets."""
        query = (
            select(t.audit_entries).where(t.audit_entries.c.seq > after_seq).order_by(t.audit_entries.c.seq)
        )
        if org_id is not None:
            query = query.where(
                (t.audit_entries.c.org_id == org_id) | (t.audit_entries.c.actor_org == org_id)
            )
        if dataset_ids is not None:
            query = query.where(t.audit_entries.c.dataset_id.in_(dataset_ids))
        return [_public(row) for row in conn.execute(query.limit(limit))]

    def checkpoint(self, conn: Connection, *, now_ms: int) -> Checkpoint | None:
        """Sign the current head and append it to the checkpoint file (None when the log is empty)."""
        head = conn.execute(select(t.audit_head.c.seq, t.audit_head.c.entry_hash)).one()
        if int(head.seq) == 0:
            return None
        last = self._checkpoints.last()
        if last is not None and last.seq == int(head.seq):
            return last
        cp = sign_checkpoint(int(head.seq), head.entry_hash, now_ms, self._key)
        self._checkpoints.append(cp)
        return cp

    def rows(self, conn: Connection, *, batch: int = 20_000) -> Iterator[tuple[int, str, str, bytes]]:
        """Every entry as ``(seq, prev_hash, entry_hash, body)`` in sequence order, streamed in batches."""
        after = 0
        while True:
            rows = conn.execute(
                select(
                    t.audit_entries.c.seq,
                    t.audit_entries.c.prev_hash,
                    t.audit_entries.c.entry_hash,
                    t.audit_entries.c.body,
                )
                .where(t.audit_entries.c.seq > after)
                .order_by(t.audit_entries.c.seq)
                .limit(batch)
            ).all()
            if not rows:
                return
            for r in rows:
                yield int(r[0]), r[1], r[2], bytes(r[3])
            after = int(rows[-1][0])

    def verify(self, conn: Connection, public_jwk: dict[str, Any]) -> VerifyResult:
        """Check the chain against the signed checkpoints, and every queryable column against its signed
        body; the result names the first bad entry."""
        result = verify_chain_bodies(self.rows(conn), self._checkpoints.read_all(), public_jwk)
        edited = first_edited_column_row(conn)
        if edited is None or (result.first_bad_seq is not None and result.first_bad_seq <= edited):
            return result
        return VerifyResult(
            ok=False,
            checked=result.checked,
            first_bad_seq=edited,
            reason=f"entry {edited}: a queryable column differs from the signed body (edited in the database)",
            proven_seq=result.proven_seq,
        )


_CHECKED_COLUMNS = ("seq", "ts_ms", "actor_org", "action", "object_type", "object_id", "org_id", "dataset_id")


def first_edited_column_row(conn: Connection) -> int | None:
    """The lowest ``seq`` whose columns differ from its body's fields (the database compares, in C)."""
    if conn.dialect.name == "sqlite":
        field = "json_extract(CAST(body AS TEXT), '$.{name}')"
    else:
        field = "(convert_from(body, 'UTF8')::jsonb ->> '{name}')"
    checks = []
    for name in _CHECKED_COLUMNS:
        expr = field.format(name=name)
        if conn.dialect.name == "sqlite":
            checks.append(f"NOT ({name} IS {expr})")
        else:
            checks.append(f"CAST({name} AS TEXT) IS DISTINCT FROM {expr}")
    sql = f"SELECT MIN(seq) FROM audit_entries WHERE {' OR '.join(checks)}"  # noqa: S608 - fixed column names
    value = conn.exec_driver_sql(sql).scalar()
    return None if value is None else int(value)


def _public(row: Any) -> dict[str, Any]:
    r = row._mapping
    return {
        "seq": r["seq"],
        "ts_ms": r["ts_ms"],
        "actor_org": r["actor_org"],
        "action": r["action"],
        "object_type": r["object_type"],
        "object_id": r["object_id"],
        "org_id": r["org_id"],
        "dataset_id": r["dataset_id"],
        "entry_hash": r["entry_hash"],
        "body": bytes(r["body"]).decode(),
    }


__all__ = ["AuditRecord", "AuditRepo"]
