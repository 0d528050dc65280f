"""Idempotency keys: the same key and body return the first result; the same key with another body is 409.

The key row is inserted *first* (``ON CONFLICT DO NOTHING``): on PostgreSQL a concurrent request with the
same key blocks on the unique index until the first commits, then reads its stored response.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy import Connection, bindparam, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite

from broker.db import tables as t
from common.canonical import canonical_json, floats_as_text
from common.errors import Conflict

_PENDING = ""


def request_hash(operation: str, body: Any) -> str:
    """A stable hash of what was asked (operation name plus canonical body)."""
    return hashlib.sha256(operation.encode() + b"\0" + canonical_json(floats_as_text(body))).hexdigest()


def _claim_statement(dialect: Any) -> Any:
    return dialect.insert(t.idempotency).on_conflict_do_nothing().returning(t.idempotency.c.key)


# Statements are built once: constructing them per call costs more CPU than running them.
_CLAIM = {"postgresql": _claim_statement(postgresql), "sqlite": _claim_statement(sqlite)}
_EARLIER = select(t.idempotency.c.request_hash, t.idempotency.c.response).where(
    t.idempotency.c.org_id == bindparam("p_org"), t.idempotency.c.key == bindparam("p_key")
)
_STORE = (
    update(t.idempotency)
    .where(t.idempotency.c.org_id == bindparam("p_org"), t.idempotency.c.key == bindparam("p_key"))
    .values(response=bindparam("p_response"))
)


def claim(
    conn: Connection, *, org_id: str, key: str, req_hash: str, now_ms: int, pending: Any = None
) -> Any | None:
    """Claim ``key`` for this request. Returns the stored response of an earlier identical request, or
    ``None`` when this request is the first (and must call :func:`store`).

    ``pending`` is what a retry reads until :func:`store` runs, for a request whose effect spans several
    transactions (a DP query reserves, runs, then settles): a marker naming the work in progress.
    """
    row_values = {
        "org_id": org_id,
        "key": key,
        "request_hash": req_hash,
        "response": _PENDING if pending is None else _dumps(pending),
        "created_ms": now_ms,
    }
    inserted = conn.execute(_CLAIM[conn.dialect.name], row_values).first()
    if inserted is not None:
        return None
    return _same_request(conn.execute(_EARLIER, {"p_org": org_id, "p_key": key}).one(), key, req_hash)


def lookup(conn: Connection, *, org_id: str, key: str, req_hash: str) -> Any | None:
    """The stored response for ``key`` if an identical request completed (no claim is made)."""
    row = conn.execute(_EARLIER, {"p_org": org_id, "p_key": key}).first()
    if row is None or not row.response:
        return None
    return _same_request(row, key, req_hash)


def _same_request(row: Any, key: str, req_hash: str) -> Any:
    """The stored response of ``row`` if it answered this very request; 409 when the key served another."""
    if row.request_hash != req_hash:
        raise Conflict(
            f"idempotency key {key!r} was already used for a different request; use a new key",
            code="idempotency_conflict",
        )
    return json.loads(row.response)


def store(conn: Connection, *, org_id: str, key: str, response: Any) -> None:
    """Record the response of the request that claimed ``key`` (same transaction as its effect)."""
    conn.execute(_STORE, {"p_org": org_id, "p_key": key, "p_response": _dumps(response)})


def purge(conn: Connection, *, before_ms: int) -> int:
    """Forget keys created before ``before_ms`` (their retention is over); returns how many went."""
    return int(conn.execute(delete(t.idempotency).where(t.idempotency.c.created_ms < before_ms)).rowcount)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))
