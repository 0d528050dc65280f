"""The audit log's repository: append inside the action's transaction; read; verify; checkpoint.

Appends lock the single ``audit_head`` row (``SELECT … FOR UPDATE`` on PostgreSQL; SQLite has one writer),
so sequence numbers are gapless and the chain is linear across replicas. Each row stores the exact canonical
body that was hashed, so verification rehashes bytes without re-serialising.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, bindparam, insert, select, update

from broker.audit.chain import AuditRecord, VerifyResult, next_record, verify_chain_bodies
from broker.audit.checkpoints import Checkpoint, CheckpointFile, sign_checkpoint
from broker.db import tables as t
from broker.db.database import Database
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
        head = conn.execute(_HEAD if conn.dialect.name == "sqlite" else _HEAD_LOCKED).one()
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
            _INSERT_ENTRY,
            {
                "seq": record.seq,
                "ts_ms": record.ts_ms,
                "actor_org": record.actor_org,
                "action": record.action,
                "object_type": record.object_type,
                "object_id": record.object_id,
                "org_id": record.org_id,
                "dataset_id": record.dataset_id,
                "body": record.body(),
                "prev_hash": record.prev_hash,
                "entry_hash": record.entry_hash,
            },
        )
        conn.execute(_MOVE_HEAD, {"p_seq": record.seq, "p_hash": record.entry_hash})
        return record.seq

    def entries(
        self,
        conn: Connection,
        *,
        org_id: str | None = None,
        dataset_ids: list[str] | None = None,
        after_seq: int = 0,
        limit: int = 200,
        newest_first: bool = False,
    ) -> list[dict[str, Any]]:
        """Entries after ``after_seq``: all, one organisation's, or those of some datasets; oldest first, or
        with ``newest_first`` the latest ``limit`` of them, newest first (one indexed read from the head)."""
        seq = t.audit_entries.c.seq
        query = select(t.audit_entries).where(seq > after_seq).order_by(seq.desc() if newest_first else seq)
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
        """Every entry as ``(seq, prev_hash, entry_hash, body)`` in sequence order, streamed in batches straight
        from the driver's cursor (verification is bound by row fetching, not hashing)."""
        sqlite = conn.dialect.name == "sqlite"
        mark = "?" if sqlite else "%s"
        sql = (
            "SELECT seq, prev_hash, entry_hash, body FROM audit_entries "  # noqa: S608 - constant text
            f"WHERE seq > {mark} ORDER BY seq LIMIT {mark}"
        )
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            after = 0
            while True:
                cursor.execute(sql, (after, batch))
                rows = cursor.fetchall()
                if not rows:
                    return
                if sqlite:  # the driver already gives int and bytes: no per-row conversion
                    yield from rows
                else:
                    for seq, prev_hash, entry_hash, body in rows:
                        yield int(seq), prev_hash, entry_hash, bytes(body)
                after = int(rows[-1][0])
        finally:
            cursor.close()

    def verify(self, db: Database, public_jwk: dict[str, Any]) -> VerifyResult:
        """Check the chain against the signed checkpoints, and every queryable column against its signed
        body; the result names the first bad entry.

        The two checks read on two connections at once: the database compares the columns (in C, without
        holding the GIL) while this thread rehashes the chain, so a full verification costs about the chain
        walk alone. Entries appended between the two snapshots are simply seen by one check and not the other.
        """
        checkpoints = self._checkpoints.read_all()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sbx-audit-columns") as pool:
            columns = pool.submit(db.read, first_edited_column_row)
            result = db.read(lambda conn: verify_chain_bodies(self.rows(conn), checkpoints, public_jwk))
            edited = columns.result()
        if edited is None or (result.first_bad_seq is not None and result.first_bad_seq <= edited):
            return result
        return VerifyResult(
            ok=False,
            checked=result.checked,
            first_bad_seq=edited,
            reason=f"entry {edited}: a queryable column differs from the signed body (edited in the database)",
            proven_seq=result.proven_seq,
        )


# The columns reads are filtered by (who may see an entry). Everything shown is read from the signed body,
# so these are the only columns whose edit could matter; seq and hashes are checked by the chain itself.
_CHECKED_COLUMNS = ("actor_org", "org_id", "dataset_id")


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
    """An entry as readers see it: every field from the signed body (the columns only index it)."""
    r = row._mapping
    body = bytes(r["body"])
    fields = json.loads(body)
    return {
        "seq": fields["seq"],
        "ts_ms": fields["ts_ms"],
        "actor_org": fields["actor_org"],
        "actor_role": fields["actor_role"],
        "action": fields["action"],
        "object_type": fields["object_type"],
        "object_id": fields["object_id"],
        "org_id": fields["org_id"],
        "dataset_id": fields["dataset_id"],
        "details": fields["details"],
        "entry_hash": r["entry_hash"],
        "body": body.decode(),
    }


_HEAD = select(t.audit_head.c.seq, t.audit_head.c.entry_hash).where(t.audit_head.c.id == 1)
_HEAD_LOCKED = _HEAD.with_for_update()
_INSERT_ENTRY = insert(t.audit_entries)
_MOVE_HEAD = (
    update(t.audit_head)
    .where(t.audit_head.c.id == 1)
    .values(seq=bindparam("p_seq"), entry_hash=bindparam("p_hash"))
)


__all__ = ["AuditRecord", "AuditRepo"]
