"""The audit log's Merkle tree and checkpoint sequence in the database.

- ``audit_tree`` holds every complete subtree hash (``broker.audit.merkle`` node ids); :func:`extend_tree`
  adds the entries appended since the last extension (checking that each one links to the chain), and
  :func:`read_nodes` serves any proof or tree head in one query per 500 nodes.
- ``audit_checkpoints`` is the one checkpoint sequence of all replicas. :func:`sign_next` signs the next one
  while holding a PostgreSQL advisory lock (SQLite has one writer), and refuses to sign a tree that is not
  consistent with the last checkpoint: a rolled-back or rewritten log gets no fresh signature.
- ``audit_cosignatures`` holds witnesses' cosignatures; :func:`served` returns a checkpoint with all of them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import Connection, func, insert, select, update

from broker.audit import merkle
from broker.audit.chain import leaf_of
from broker.audit.checkpoints import Checkpoint, sign_checkpoint, verify_checkpoint
from broker.audit.note import parse_signature_line, verify_cosignature
from broker.db import tables as t
from common.errors import Conflict, InvalidInput, NotFound

ADVISORY_LOCK_KEY = 0x5BA0D17  # pg_try_advisory_xact_lock: the one checkpoint signer among replicas
_NODE_CHUNK = 500
_EXTEND_BATCH = 50_000
_ROUND_BATCHES = 2  # at most 100,000 entries added to the tree per checkpoint round


class AuditIntegrityError(Conflict):
    """The stored log or tree contradicts a signed checkpoint: the broker refuses to sign over it."""

    code = "audit_integrity_failure"


@dataclass(frozen=True, slots=True)
class TreeState:
    """How far the stored tree reaches: its size and root hash."""

    size: int
    root: bytes


def read_nodes(conn: Connection, wanted: set[merkle.NodeId]) -> dict[merkle.NodeId, bytes]:
    """The stored node hashes of ``wanted`` (absent nodes are simply missing from the result)."""
    out: dict[merkle.NodeId, bytes] = {}
    ordered = sorted(wanted)
    for start in range(0, len(ordered), _NODE_CHUNK):
        by_level: dict[int, list[int]] = {}
        for level, idx in ordered[start : start + _NODE_CHUNK]:
            by_level.setdefault(level, []).append(idx)
        where = " OR ".join(
            f"(level = {int(level)} AND idx IN ({','.join(str(int(i)) for i in idxs)}))"
            for level, idxs in by_level.items()
        )
        sql = f"SELECT level, idx, hash FROM audit_tree WHERE {where}"  # noqa: S608 - integers only
        for level, idx, value in conn.exec_driver_sql(sql):
            out[(int(level), int(idx))] = bytes(value)
    return out


def tree_root_at(conn: Connection, size: int) -> bytes:
    """The root of the stored tree's first ``size`` leaves (any size up to the stored one)."""
    return merkle.root(size, read_nodes(conn, merkle.root_plan(size)))


def tree_state(conn: Connection) -> TreeState:
    """The stored tree's size and root (computed from O(log n) nodes)."""
    size = int(conn.execute(select(t.audit_tree_head.c.size).where(t.audit_tree_head.c.id == 1)).scalar_one())
    return TreeState(size, merkle.root(size, read_nodes(conn, merkle.root_plan(size))))


def _link_error(seq: int) -> AuditIntegrityError:
    return AuditIntegrityError(
        f"audit entry {seq} does not link to the chain the tree already covers: the log was edited before the "
        "tree reached it; refusing to extend the tree (run `sbx audit verify`)"
    )


def _insert_nodes(conn: Connection, nodes: list[tuple[int, int, bytes]]) -> None:
    """Store new nodes through the driver's cursor (a million rows per million entries: no ORM overhead)."""
    sql = _INSERT_NODE_SQLITE if conn.dialect.name == "sqlite" else _INSERT_NODE_PG
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.executemany(sql, nodes)
    finally:
        cursor.close()


_INSERT_NODE_SQLITE = "INSERT INTO audit_tree (level, idx, hash) VALUES (?, ?, ?)"
_INSERT_NODE_PG = "INSERT INTO audit_tree (level, idx, hash) VALUES (%s, %s, %s)"


def _extend_batch(conn: Connection, size: int, last_hash: str) -> tuple[int, str, bool]:
    """Add up to one batch of entries to the tree; returns the new size, last entry hash, and whether more wait."""
    rows = conn.exec_driver_sql(
        "SELECT seq, prev_hash, entry_hash, body FROM audit_entries "  # noqa: S608 - integers only
        f"WHERE seq > {int(size)} ORDER BY seq LIMIT {_EXTEND_BATCH}"
    ).all()
    if not rows:
        return size, last_hash, False
    frontier = merkle.Frontier.resume(size, read_nodes(conn, merkle.root_plan(size)))
    nodes: list[tuple[int, int, bytes]] = []
    sha256 = hashlib.sha256
    for seq, prev_hash, entry_hash, body in rows:
        if int(seq) != frontier.size + 1 or prev_hash != last_hash:
            raise _link_error(int(seq))
        if sha256(prev_hash.encode("ascii") + bytes(body)).hexdigest() != entry_hash:
            raise _link_error(int(seq))
        nodes.extend(frontier.append(leaf_of(entry_hash)))
        last_hash = entry_hash
    _insert_nodes(conn, nodes)
    return frontier.size, last_hash, len(rows) == _EXTEND_BATCH


def extend_tree(conn: Connection, *, max_batches: int | None = None) -> TreeState:
    """Extend the stored tree towards the audit head (the background loop, under the signer's lock).

    ``max_batches`` bounds one call (50,000 entries a batch) so a long backlog — an upgraded log — is
    caught up over several rounds instead of holding the writer for minutes; a checkpoint then signs the
    prefix reached, which is as valid a tree head as any.
    """
    head = conn.execute(select(t.audit_tree_head).where(t.audit_tree_head.c.id == 1)).one()
    size, last_hash, more = int(head.size), str(head.last_entry_hash), True
    log_head = conn.execute(
        select(t.audit_head.c.seq, t.audit_head.c.entry_hash).where(t.audit_head.c.id == 1)
    ).one()
    if int(log_head.seq) < size or (int(log_head.seq) == size and log_head.entry_hash != last_hash):
        raise AuditIntegrityError(
            f"the tree covers {size} entries but the log's head is at {log_head.seq}: entries were removed or the "
            "head rewound (a rollback); refusing to sign"
        )
    batches = 0
    while more and (max_batches is None or batches < max_batches):
        size, last_hash, more = _extend_batch(conn, size, last_hash)
        batches += 1
    if size != int(head.size):
        conn.execute(
            update(t.audit_tree_head)
            .where(t.audit_tree_head.c.id == 1)
            .values(size=size, last_entry_hash=last_hash)
        )
    return tree_state(conn)


def holds_signer_lock(conn: Connection) -> bool:
    """Take the signer's advisory lock for this transaction (PostgreSQL); SQLite's one writer always holds it."""
    if conn.dialect.name == "sqlite":
        return True
    return bool(conn.exec_driver_sql(f"SELECT pg_try_advisory_xact_lock({ADVISORY_LOCK_KEY})").scalar())


def latest(conn: Connection) -> tuple[int, Checkpoint] | None:
    """The newest checkpoint of the sequence (without cosignatures) and its seq."""
    row = conn.execute(
        select(t.audit_checkpoints).order_by(t.audit_checkpoints.c.seq.desc()).limit(1)
    ).first()
    return None if row is None else (int(row.seq), Checkpoint.parse(row.note))


def consistency_proof(conn: Connection, old: int, new: int) -> list[bytes]:
    """The consistency proof from ``old`` to ``new`` entries from stored nodes."""
    return merkle.consistency_proof(old, new, lambda wanted: read_nodes(conn, wanted))


def inclusion_proof(conn: Connection, index: int, size: int) -> list[bytes]:
    """The inclusion proof of leaf ``index`` in the tree of ``size`` from stored nodes."""
    return merkle.inclusion_proof(index, size, lambda wanted: read_nodes(conn, wanted))


def _guard(
    conn: Connection,
    tree: TreeState,
    prev: Checkpoint | None,
    first_entry_ms: int | None,
    now_ms: int,
    window_ms: int,
) -> None:
    """Refuse to sign a tree that a previous checkpoint (or its absence) says was tampered with."""
    if prev is None:
        if first_entry_ms is not None and now_ms - first_entry_ms > window_ms:
            raise AuditIntegrityError(
                "the log is older than the checkpoint window but no checkpoint is recorded: the record was removed; "
                "refusing to sign a first checkpoint over it"
            )
        return
    if prev.size > tree.size:
        raise AuditIntegrityError(
            f"the last checkpoint covers {prev.size} entries but the tree has {tree.size}: a rollback; refusing to sign"
        )
    if prev.size == tree.size:
        ok = prev.root == tree.root
    else:
        ok = merkle.verify_consistency(
            prev.size, tree.size, prev.root, tree.root, consistency_proof(conn, prev.size, tree.size)
        )
    if not ok:
        raise AuditIntegrityError(
            f"the tree of {tree.size} entries is not consistent with the checkpoint of {prev.size}: the log was "
            "rewritten; refusing to sign"
        )


@dataclass(frozen=True, slots=True)
class SignRequest:
    """What signing needs: the log's name, the broker's key, the clock and the intervals (all ms)."""

    origin: str
    private_pem: bytes
    now_ms: int
    interval_ms: int
    window_ms: int


def sign_next(conn: Connection, req: SignRequest, first_entry_ms: int | None) -> Checkpoint | None:
    """Extend the tree and sign the next checkpoint if due (grown, or unchanged but a third of the window old).

    Returns the newest checkpoint, or ``None`` when another replica holds the signer's lock or the log is empty.
    """
    if not holds_signer_lock(conn):
        return None
    tree = extend_tree(conn, max_batches=_ROUND_BATCHES)
    last = latest(conn)
    prev = last[1] if last else None
    if tree.size == 0 and prev is None:
        return None
    _guard(conn, tree, prev, first_entry_ms, req.now_ms, req.window_ms)
    idle_resign_ms = max(
        req.interval_ms, req.window_ms // 3
    )  # an unchanged tree: stay well inside the window
    if prev is not None and prev.size == tree.size and req.now_ms - prev.ts_ms < idle_resign_ms:
        return prev
    stamp = max(req.now_ms, prev.ts_ms + 1) if prev else req.now_ms
    cp = sign_checkpoint(req.origin, tree.size, tree.root, stamp, req.private_pem)
    seq = (last[0] if last else 0) + 1
    conn.execute(
        insert(t.audit_checkpoints).values(
            seq=seq, size=cp.size, root=cp.root, time_ms=cp.ts_ms, note=cp.render()
        )
    )
    conn.execute(
        update(t.audit_tree_head)
        .where(t.audit_tree_head.c.id == 1)
        .values(checkpoint_seq=seq, checkpoint_size=cp.size, checkpoint_root=cp.root, checkpoint_ms=cp.ts_ms)
    )
    return cp


def recorded_latest(conn: Connection) -> Checkpoint | None:
    """The database's record of the latest checkpoint (``audit_tree_head``), as its signed note."""
    head = conn.execute(select(t.audit_tree_head).where(t.audit_tree_head.c.id == 1)).one()
    if int(head.checkpoint_seq) == 0:
        return None
    row = conn.execute(
        select(t.audit_checkpoints.c.note).where(t.audit_checkpoints.c.seq == head.checkpoint_seq)
    ).first()
    if row is None:
        return None
    cp = Checkpoint.parse(row.note)
    if (cp.size, cp.root, cp.ts_ms) != (
        int(head.checkpoint_size),
        head.checkpoint_root,
        int(head.checkpoint_ms),
    ):
        return None
    return cp


def since(conn: Connection, after_ms: int, *, limit: int = 10_000) -> list[Checkpoint]:
    """Checkpoints signed after ``after_ms``, oldest first (what a replica's file is missing)."""
    rows = conn.execute(
        select(t.audit_checkpoints.c.note)
        .where(t.audit_checkpoints.c.time_ms > after_ms)
        .order_by(t.audit_checkpoints.c.seq)
        .limit(limit)
    )
    return [Checkpoint.parse(r.note) for r in rows]


def first_checkpoint_ms(conn: Connection) -> int | None:
    """When the first checkpoint of the sequence was signed (``None`` before any)."""
    value = conn.execute(select(func.min(t.audit_checkpoints.c.time_ms))).scalar()
    return None if value is None else int(value)


def served(conn: Connection, *, seq: int | None = None, size: int | None = None) -> tuple[int, Checkpoint]:
    """One checkpoint with every cosignature received for it: by ``seq``, the newest of ``size``, or the newest.

    One query (the checkpoint and its cosignatures joined): proofs are served on the hot path.
    """
    where = []
    if seq is not None:
        where.append(f"seq = {int(seq)}")
    if size is not None:
        where.append(f"size = {int(size)}")
    condition = " WHERE " + " AND ".join(where) if where else ""
    pick = f"SELECT MAX(seq) FROM audit_checkpoints{condition}"  # noqa: S608 - integers only
    rows = conn.exec_driver_sql(
        "SELECT c.seq, c.note, s.line FROM audit_checkpoints c "  # noqa: S608 - integers only
        "LEFT JOIN audit_cosignatures s ON s.checkpoint_seq = c.seq "
        f"WHERE c.seq = ({pick}) ORDER BY s.witness"
    ).all()
    if not rows:
        raise NotFound("no such signed checkpoint")
    cp = Checkpoint.parse(rows[0][1])
    lines = [parse_signature_line(r[2].rstrip("\n")) for r in rows if r[2] is not None]
    return int(rows[0][0]), cp.with_signatures(lines) if lines else cp


def recent_served(conn: Connection, *, after_ms: int) -> list[Checkpoint]:
    """Every checkpoint signed after ``after_ms`` with its cosignatures, oldest first."""
    seqs = conn.execute(
        select(t.audit_checkpoints.c.seq)
        .where(t.audit_checkpoints.c.time_ms > after_ms)
        .order_by(t.audit_checkpoints.c.seq)
    ).all()
    return [served(conn, seq=int(r.seq))[1] for r in seqs]


def add_cosignature(
    conn: Connection,
    *,
    checkpoint_seq: int,
    line: str,
    witnesses: Mapping[str, Ed25519PublicKey],
    log_keys: Mapping[str, Any],
    now_ms: int,
) -> int:
    """Store a configured witness's valid cosignature on checkpoint ``checkpoint_seq``; returns its timestamp."""
    _, cp = served(conn, seq=checkpoint_seq)
    if not verify_checkpoint(cp, log_keys):
        raise AuditIntegrityError("the stored checkpoint no longer carries a valid broker signature")
    sig = parse_signature_line(line.rstrip("\n"))
    public = witnesses.get(sig.name)
    if public is None:
        raise InvalidInput(f"{sig.name!r} is not a configured witness", code="unknown_witness")
    stamp = verify_cosignature(cp.note.text, sig, sig.name, public)
    if stamp is None:
        raise InvalidInput(
            "the cosignature does not verify for this checkpoint and witness", code="invalid_cosignature"
        )
    existing = conn.execute(
        select(t.audit_cosignatures.c.line).where(
            t.audit_cosignatures.c.checkpoint_seq == checkpoint_seq,
            t.audit_cosignatures.c.witness == sig.name,
        )
    ).first()
    if existing is None:
        conn.execute(
            insert(t.audit_cosignatures).values(
                checkpoint_seq=checkpoint_seq,
                witness=sig.name,
                timestamp_s=stamp,
                line=sig.render(),
                received_ms=now_ms,
            )
        )
    return stamp
