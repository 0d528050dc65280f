"""The one way to run a mutating call idempotently."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection

from broker.db import idempotency
from broker.db.database import Database
from broker.db.ledger_chain import IDEMPOTENCY_KEY


def write_idempotent(
    db: Database,
    *,
    org_id: str,
    key: str | None,
    operation: str,
    body: Any,
    now_ms: int,
    fn: Callable[[Connection], dict[str, Any]],
) -> tuple[dict[str, Any], bool]:
    """Run ``fn`` in one transaction unless ``key`` already answered this request.

    Returns ``(result, fresh)``: ``fresh`` is False when the stored result of an earlier identical request
    was returned. The same key with a different ``operation``/``body`` raises ``idempotency_conflict``.
    """
    req_hash = idempotency.request_hash(operation, body)

    def tx(conn: Connection) -> tuple[dict[str, Any], bool]:
        if key is not None:
            earlier = idempotency.claim(conn, org_id=org_id, key=key, req_hash=req_hash, now_ms=now_ms)
            if earlier is not None:
                return dict(earlier), False
        marker = IDEMPOTENCY_KEY.set(key)  # each ledger transfer records the key it was made under
        try:
            result = fn(conn)
        finally:
            IDEMPOTENCY_KEY.reset(marker)
        if key is not None:
            idempotency.store(conn, org_id=org_id, key=key, response=result)
        return result, True

    return db.write(tx)


def replayed(
    db: Database, *, org_id: str, key: str | None, operation: str, body: Any
) -> dict[str, Any] | None:
    """The stored result of an earlier identical request with ``key`` (None if there is none).

    For calls whose validation depends on state the first call changed (a spent budget): answer the retry
    before validating it again. The same key with another body raises ``idempotency_conflict``.
    """
    if key is None:
        return None
    req_hash = idempotency.request_hash(operation, body)
    earlier = db.read(lambda conn: idempotency.lookup(conn, org_id=org_id, key=key, req_hash=req_hash))
    return None if earlier is None else dict(earlier)


def purge_expired(db: Database, *, now_ms: int, retention_s: int) -> int:
    """Forget idempotency keys older than ``retention_s`` (the background loop, hourly): a retry after that
    is a new request. Returns how many keys went."""
    return db.write(lambda conn: idempotency.purge(conn, before_ms=now_ms - retention_s * 1000))
