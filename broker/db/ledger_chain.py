"""The ledger proves itself: each transfer's hash is written in its transaction, then folded into the audit log.

Hot path (:func:`record_transfer`, inside ``LedgerRepo.post``): the canonical body of the transfer (legs,
amounts, idempotency key) and its SHA-256 go into ``ledger_transfers`` — one prepared INSERT, no lock, so
concurrent transfers on different accounts never queue on a shared head row. Background loop
(:func:`fold_transfers`): every transfer not yet folded is marked with the ``seq`` of one ``ledger.transfers``
audit entry whose details carry their count and the SHA-256 of their digests in id order. From then on the
audit log's Merkle tree and its signed, witnessed checkpoints cover them.

:func:`verify_ledger` then checks, from the tables alone: every folded batch matches its audit entry; each
transfer's body hashes to its digest and equals its entries rows; every entry belongs to a recorded
transfer; and the ledger invariants (balances = sum of entries, sum over all accounts = 0, holds
consistent). A balance edited in the database fails the last check; hiding the edit behind forged entries
fails the others.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, bindparam, select, update

from broker.db import tables as t
from common.canonical import canonical_json

FOLD_ACTION = "ledger.transfers"
FOLD_BATCH = 5000
# The idempotency key of the request being served, set by ``services.idem.write_idempotent`` around its
# transaction (the ledger's own signatures stay unchanged).
IDEMPOTENCY_KEY: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "sbx_idempotency_key", default=None
)

Leg = tuple[int, int, str | None]  # (account id, amount, issuer org)


def transfer_body(
    *,
    txn_id: str,
    kind: str,
    org_id: str | None,
    hold_id: str | None,
    now_ms: int,
    idem: str | None,
    legs: Sequence[Leg],
) -> bytes:
    """The canonical bytes of one transfer (the migration 0007 backfill holds a frozen copy)."""
    return canonical_json(
        {
            "v": 1,
            "txn": txn_id,
            "kind": kind,
            "org": org_id,
            "hold": hold_id,
            "ms": now_ms,
            "idem": idem,
            "legs": [list(leg) for leg in legs],
        }
    )


def record_transfer(
    conn: Connection,
    *,
    txn_id: str,
    kind: str,
    org_id: str | None,
    hold_id: str | None,
    now_ms: int,
    legs: Sequence[Leg],
) -> None:
    """Write the transfer's body and hash in the caller's transaction (the ledger's hot path: one INSERT).

    The INSERT goes straight to the driver's cursor on the transaction's own connection: building and
    compiling a SQLAlchemy statement would cost more than the body, the hash and the write together.
    """
    body = transfer_body(
        txn_id=txn_id,
        kind=kind,
        org_id=org_id,
        hold_id=hold_id,
        now_ms=now_ms,
        idem=IDEMPOTENCY_KEY.get(),
        legs=legs,
    )
    sql = _INSERT_SQLITE if conn.dialect.name == "sqlite" else _INSERT_PG
    driver = conn.connection.driver_connection  # sqlite3 and psycopg connections both execute directly
    driver.execute(sql, (txn_id, body, hashlib.sha256(body).hexdigest()))  # type: ignore[union-attr]


def batch_digest(digests: Sequence[str]) -> str:
    """The SHA-256 over a batch's transfer digests in id order (what its audit entry records)."""
    return hashlib.sha256("".join(digests).encode("ascii")).hexdigest()


Append = Callable[[Connection, dict[str, Any]], int]


def fold_transfers(conn: Connection, append: Append, *, limit: int = FOLD_BATCH) -> int:
    """Fold up to ``limit`` unfolded transfers into one audit entry (``append`` writes it, returns its seq)."""
    rows = conn.execute(_UNFOLDED, {"lim": limit}).all()
    if not rows:
        return 0
    ids = [int(r.id) for r in rows]
    details = {
        "count": len(rows),
        "first_id": ids[0],
        "last_id": ids[-1],
        "digest": batch_digest([r.digest for r in rows]),
    }
    seq = append(conn, details)
    conn.execute(_MARK, {"p_seq": seq, "ids": ids})
    return len(rows)


@dataclass(frozen=True, slots=True)
class LedgerVerdict:
    """The outcome of :func:`verify_ledger`: ``ok``, what was checked, the problems found."""

    ok: bool
    transfers: int
    unfolded: int
    problems: list[str]


def _folded_batches(conn: Connection) -> list[str]:
    """Problems with folded batches: each must be exactly what its audit entry recorded."""
    problems: list[str] = []
    entries = conn.execute(
        select(t.audit_entries.c.seq, t.audit_entries.c.body).where(t.audit_entries.c.action == FOLD_ACTION)
    ).all()
    recorded: dict[int, dict[str, Any]] = {int(r.seq): json.loads(bytes(r.body))["details"] for r in entries}
    batches: dict[int, list[tuple[int, str]]] = {}
    for r in conn.execute(
        select(t.ledger_transfers.c.id, t.ledger_transfers.c.digest, t.ledger_transfers.c.audit_seq).where(
            t.ledger_transfers.c.audit_seq.is_not(None)
        )
    ):
        batches.setdefault(int(r.audit_seq), []).append((int(r.id), r.digest))
    for seq in sorted(set(recorded) | set(batches)):
        want, got = recorded.get(seq), sorted(batches.get(seq, []))
        if want is None:
            problems.append(f"transfers claim audit entry {seq}, which is no ledger.transfers entry")
        elif len(got) != want["count"] or batch_digest([d for _, d in got]) != want["digest"]:
            problems.append(f"the transfers folded into audit entry {seq} differ from what it recorded")
    return problems


def _transfer_bodies(conn: Connection) -> tuple[list[str], int, int]:
    """Problems with transfer bodies vs digests and vs entries; also (transfers, unfolded) counts."""
    problems: list[str] = []
    legs: dict[str, list[Leg]] = {}
    meta: dict[str, tuple[str, str | None, str | None, int]] = {}
    for r in conn.execute(select(t.entries).order_by(t.entries.c.id)):
        legs.setdefault(r.txn_id, []).append((int(r.account_id), int(r.amount), r.issuer_org))
        meta.setdefault(r.txn_id, (r.kind, r.org_id, r.hold_id, int(r.created_ms)))
    seen: set[str] = set()
    transfers = unfolded = 0
    for r in conn.execute(select(t.ledger_transfers)):
        transfers += 1
        unfolded += r.audit_seq is None
        body = bytes(r.body)
        if hashlib.sha256(body).hexdigest() != r.digest:
            problems.append(f"transfer {r.txn_id}: its body no longer matches its hash")
            continue
        data = json.loads(body)
        seen.add(data["txn"])
        kind, org, hold, ms = meta.get(data["txn"], ("", None, None, -1))
        stored = [list(leg) for leg in legs.get(data["txn"], [])]
        if (
            data["txn"] != r.txn_id
            or stored != data["legs"]
            or (kind, org, hold, ms) != (data["kind"], data["org"], data["hold"], data["ms"])
        ):
            problems.append(
                f"transfer {r.txn_id}: its entries differ from the recorded transfer (edited legs)"
            )
    problems.extend(
        f"entries of {txn} belong to no recorded transfer (inserted)" for txn in sorted(set(legs) - seen)
    )
    return problems, transfers, unfolded


def verify_ledger(conn: Connection, invariants: Callable[[Connection], list[str]]) -> LedgerVerdict:
    """Check the ledger against its recorded transfers and the audit log, then its invariants."""
    problems = _folded_batches(conn)
    body_problems, transfers, unfolded = _transfer_bodies(conn)
    problems.extend(body_problems)
    problems.extend(invariants(conn))
    return LedgerVerdict(ok=not problems, transfers=transfers, unfolded=unfolded, problems=problems)


_INSERT_SQLITE = "INSERT INTO ledger_transfers (txn_id, body, digest) VALUES (?, ?, ?)"
_INSERT_PG = "INSERT INTO ledger_transfers (txn_id, body, digest) VALUES (%s, %s, %s)"
_UNFOLDED = (
    select(t.ledger_transfers.c.id, t.ledger_transfers.c.digest)
    .where(t.ledger_transfers.c.audit_seq.is_(None))
    .order_by(t.ledger_transfers.c.id)
    .limit(bindparam("lim"))
)
_MARK = (
    update(t.ledger_transfers)
    .where(t.ledger_transfers.c.id.in_(bindparam("ids", expanding=True)))
    .values(audit_seq=bindparam("p_seq"))
)
