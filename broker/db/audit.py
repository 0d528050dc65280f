"""The audit log's repository: append inside the action's transaction; read; verify; checkpoint.

Appends lock the single ``audit_head`` row (``SELECT … FOR UPDATE`` on PostgreSQL; SQLite has one writer),
so sequence numbers are gapless and the chain is linear across replicas. Each row stores the exact canonical
body that was hashed, so verification rehashes bytes without re-serialising.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import Connection, bindparam, insert, select, update

from broker.audit.chain import AuditRecord, VerifyResult, next_record, verify_chain_bodies
from broker.audit.checkpoints import Checkpoint, CheckpointFile, CheckpointFileError, verify_checkpoint
from broker.audit.transparency import Problem, RecordState, anchor_checkpoints, check_record
from broker.db import audit_tree as tree
from broker.db import tables as t
from broker.db.database import Database
from broker.db.orgs import Principal
from common.errors import InvalidInput, NotFound
from vouchers.keys import public_jwk

CHECKPOINT_FILE = "checkpoints.jsonl"


@dataclass(frozen=True, slots=True)
class TransparencyConfig:
    """The log's name, how often it is checkpointed, how stale a checkpoint may be, and its witnesses."""

    origin: str
    interval_ms: int
    window_ms: int
    witnesses: Mapping[str, Ed25519PublicKey] = field(default_factory=dict)
    required: int = 0
    log_keys: Mapping[str, Any] = field(default_factory=dict)  # the broker's JWK Set (current and retired)


class AuditRepo:
    """Appends entries and exports signed checkpoints to a file outside the database."""

    def __init__(self, broker_key_pem: bytes, *, checkpoint_dir: Path) -> None:
        self._key = broker_key_pem
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        self._checkpoints = CheckpointFile(checkpoint_dir / CHECKPOINT_FILE)

    @property
    def checkpoint_file(self) -> CheckpointFile:
        """This replica's copy of the checkpoint sequence, outside the database."""
        return self._checkpoints

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

    # -- the transparency log ---------------------------------------------------------------------------
    def checkpoint(self, db: Database, cfg: TransparencyConfig, *, now_ms: int) -> Checkpoint | None:
        """Extend the tree and sign the next checkpoint if due (the signer replica), then copy every checkpoint
        this replica's file lacks into it (every replica). Returns the newest checkpoint of the sequence."""
        request = tree.SignRequest(cfg.origin, self._key, now_ms, cfg.interval_ms, cfg.window_ms)
        db.write(lambda conn: tree.sign_next(conn, request, _first_entry_ms(conn)))
        self.mirror(db, cfg, now_ms=now_ms)
        found = db.read(tree.latest)
        return None if found is None else found[1]

    def mirror(self, db: Database, cfg: TransparencyConfig, *, now_ms: int) -> int:
        """Append the checkpoints signed since this replica's file's last one (each verified first).

        A missing file is re-created only while the sequence is younger than the window: once checkpoints
        have existed for longer, a missing file is evidence (of a deletion), left for ``verify`` to report.
        """
        last = self._checkpoints.last()
        if last is None and not self._checkpoints.exists():
            first = db.read(tree.first_checkpoint_ms)
            if first is not None and now_ms - first > cfg.window_ms:
                return 0
        fresh = db.read(lambda conn: tree.since(conn, last.ts_ms if last else -1))
        keys = cfg.log_keys or {"keys": [self._public_jwk()]}
        for cp in fresh:
            if verify_checkpoint(cp, keys):
                self._checkpoints.append(cp)
        return len(fresh)

    def _public_jwk(self) -> dict[str, str]:
        return public_jwk(self._key)

    def served_checkpoint(
        self, conn: Connection, *, seq: int | None = None, size: int | None = None
    ) -> tuple[int, Checkpoint]:
        """A checkpoint with all its cosignatures (the newest, or by ``seq`` or tree ``size``)."""
        return tree.served(conn, seq=seq, size=size)

    def bare_checkpoint(self, conn: Connection) -> tuple[int, Checkpoint]:
        """The newest checkpoint as the broker signed it (no cosignatures) and its seq."""
        found = tree.latest(conn)
        if found is None:
            raise NotFound("no signed checkpoint yet")
        return found

    def add_cosignature(
        self, conn: Connection, cfg: TransparencyConfig, *, checkpoint_seq: int, line: str, now_ms: int
    ) -> int:
        """Store a configured witness's cosignature; returns its timestamp (s)."""
        return tree.add_cosignature(
            conn,
            checkpoint_seq=checkpoint_seq,
            line=line,
            witnesses=cfg.witnesses,
            log_keys=cfg.log_keys or {"keys": [self._public_jwk()]},
            now_ms=now_ms,
        )

    def entry(self, conn: Connection, seq: int) -> dict[str, Any]:
        """One entry as readers see it (``NotFound`` if there is none)."""
        row = conn.exec_driver_sql(
            f"SELECT body, entry_hash FROM audit_entries WHERE seq = {int(seq)}"  # noqa: S608 - an integer
        ).first()
        if row is None:
            raise NotFound(f"no audit entry {seq}")
        return _public_body(bytes(row[0]), row[1])

    def prove(self, conn: Connection, seq: int, *, size: int | None = None) -> dict[str, Any]:
        """The inclusion proof of entry ``seq`` in the tree of a signed checkpoint (the newest by default)."""
        cp_seq, cp = tree.served(conn, size=size)
        if not 1 <= seq <= cp.size:
            raise InvalidInput(
                f"entry {seq} is not in the signed tree of {cp.size} entries", code="not_in_tree"
            )
        proof = tree.inclusion_proof(conn, seq - 1, cp.size)
        return {
            "seq": seq,
            "leaf_index": seq - 1,
            "tree_size": cp.size,
            "entry": self.entry(conn, seq),
            "proof": [base64.b64encode(p).decode() for p in proof],
            "checkpoint_seq": cp_seq,
            "checkpoint": cp.render(),
        }

    def consistency(self, conn: Connection, old: int, new: int) -> dict[str, Any]:
        """The consistency proof between two signed tree sizes, with the checkpoint of the newer one."""
        if not 1 <= old <= new:
            raise InvalidInput("a consistency proof needs 1 <= old <= new", code="bad_tree_sizes")
        cp_seq, cp = tree.served(conn, size=new)
        proof = tree.consistency_proof(conn, old, new)
        try:
            old_cp: str | None = tree.served(conn, size=old)[1].render()
        except NotFound:
            old_cp = None  # a size no checkpoint was signed at (the caller brings its own copy)
        return {
            "old_size": old,
            "new_size": new,
            "proof": [base64.b64encode(p).decode() for p in proof],
            "checkpoint_seq": cp_seq,
            "checkpoint": cp.render(),
            "old_checkpoint": old_cp,
        }

    def checkpoints(self, conn: Connection, *, after_seq: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        """Signed checkpoints after ``after_seq``, oldest first, each with its cosignatures."""
        seqs = conn.execute(
            select(t.audit_checkpoints.c.seq)
            .where(t.audit_checkpoints.c.seq > after_seq)
            .order_by(t.audit_checkpoints.c.seq)
            .limit(limit)
        ).all()
        out = []
        for r in seqs:
            seq, cp = tree.served(conn, seq=int(r.seq))
            out.append({"seq": seq, "tree_size": cp.size, "time_ms": cp.ts_ms, "checkpoint": cp.render()})
        return out

    def verify(
        self, db: Database, keys: Mapping[str, Any], cfg: TransparencyConfig, *, now_ms: int
    ) -> VerifyResult:
        """Check the checkpoint record (present, as long as the database says, fresh, witnessed), tie every
        signed tree head to the stored tree, then walk the chain against those anchors and compare every
        queryable column with its signed body; the result names the first bad entry.

        The chain walk and the column check read on two connections at once: the database compares the
        columns (in C, without holding the GIL) while this thread rehashes the chain.
        """
        try:
            file_cps = self._checkpoints.read_all()
        except CheckpointFileError as exc:
            return _failed(Problem(1, exc.detail))
        problem, anchors = db.read(lambda conn: self._anchors(conn, file_cps, keys, cfg, now_ms))
        if problem is not None:
            return _failed(problem)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sbx-audit-columns") as pool:
            columns = pool.submit(db.read, first_edited_column_row)
            result = db.read(lambda conn: verify_chain_bodies(self.rows(conn), anchors))
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

    def _anchors(
        self,
        conn: Connection,
        file_cps: list[Checkpoint],
        keys: Mapping[str, Any],
        cfg: TransparencyConfig,
        now_ms: int,
    ) -> tuple[Problem | None, dict[int, bytes]]:
        """The record's problem, if any, else the anchors every known checkpoint proves."""
        head = int(conn.execute(_HEAD).one().seq)
        try:
            db_latest = tree.recorded_latest(conn)
            cosigned = tree.recent_served(conn, after_ms=now_ms - cfg.window_ms) if cfg.required else []
            db_cps = tree.since(conn, -1, limit=1_000_000)
        except InvalidInput as exc:
            return Problem(1, f"a stored checkpoint is malformed: {exc.detail}"), {}
        lag = 2 * cfg.interval_ms  # another replica may have signed since this one last copied the sequence
        state = RecordState(head, _first_entry_ms(conn), db_latest, now_ms, cfg.window_ms, lag)
        problem = check_record(
            file_cps,
            self._checkpoints.exists(),
            state,
            cosigned=cosigned,
            witnesses=cfg.witnesses,
            required=cfg.required,
        )
        if problem is not None:
            return problem, {}
        size = tree.tree_state(conn).size
        anchors, problem = anchor_checkpoints(
            [*file_cps, *db_cps], keys, size, lambda wanted: tree.read_nodes(conn, wanted)
        )
        return problem, anchors


def _failed(problem: Problem) -> VerifyResult:
    return VerifyResult(ok=False, checked=0, first_bad_seq=problem.seq, reason=problem.reason)


def _first_entry_ms(conn: Connection) -> int | None:
    """When the log began (the first entry's time), or ``None`` while it is empty."""
    row = conn.execute(select(t.audit_entries.c.ts_ms).where(t.audit_entries.c.seq == 1)).first()
    return None if row is None else int(row.ts_ms)


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
    return _public_body(bytes(r["body"]), r["entry_hash"])


def _public_body(body: bytes, entry_hash: str) -> dict[str, Any]:
    """An entry's public fields from its signed body and hash."""
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
        "entry_hash": entry_hash,
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
