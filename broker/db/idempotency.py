"""Idempotency keys: the same key and body return the first result; the same key with another body is 409.

The key row is inserted *first* (``ON CONFLICT DO NOTHING``): on PostgreSQL a concurrent request with the
same key blocks on the unique index until the first commits, then reads its stored response.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy import Connection, select, update
from sqlalchemy.dialects import postgresql, sqlite

from broker.canonical import canonical_json
from broker.db import tables as t
from quotas.errors import Conflict

_PENDING = ""


def request_hash(operation: str, body: Any) -> str:
    """A stable hash of what was asked (operation name plus canonical body)."""
    return hashlib.sha256(operation.encode() + b"\0" + canonical_json(body)).hexdigest()


def claim(conn: Connection, *, org_id: str, key: str, req_hash: str, now_ms: int) -> Any | None:
    """Claim ``key`` for this request. Returns the stored response of an earlier identical request, or
    ``None`` when this request is the first (and must call :func:`store`)."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    inserted = conn.execute(
        dialect.insert(t.idempotency)
        .values(org_id=org_id, key=key, request_hash=req_hash, response=_PENDING, created_ms=now_ms)
        .on_conflict_do_nothing()
        .returning(t.idempotency.c.key)
    ).first()
    if inserted is not None:
        return None
    row = conn.execute(
        select(t.idempotency.c.request_hash, t.idempotency.c.response).where(
            t.idempotency.c.org_id == org_id, t.idempotency.c.key == key
        )
    ).one()
    if row.request_hash != req_hash:
        raise Conflict(
            f"idempotency key {key!r} was already used for a different request; use a new key",
            code="idempotency_conflict",
        )
    return json.loads(row.response)


def store(conn: Connection, *, org_id: str, key: str, response: Any) -> None:
    """Record the response of the request that claimed ``key`` (same transaction as its effect)."""
    conn.execute(
        update(t.idempotency)
        .where(t.idempotency.c.org_id == org_id, t.idempotency.c.key == key)
        .values(response=json.dumps(response, separators=(",", ":")))
    )
