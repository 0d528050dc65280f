"""Capabilities for KubeRay code archives: which token may fetch which job's archive, how often, until when.

A capability is the SHA-256 of an unguessable token (the token itself is only in the URL the broker puts into
the job's RayJob). A fetch is counted by :func:`claim_fetch` in one conditional ``UPDATE`` whose ``WHERE``
holds every rule (not revoked, not expired, fetches left, job still admitted or running): on PostgreSQL a
concurrent update of the same row re-evaluates the ``WHERE`` after the first commits, on SQLite writes are
serialised, so fetch ``max_fetches + 1`` can never be counted, whatever the interleaving.
"""

from __future__ import annotations

import hashlib

from sqlalchemy import Connection, exists, insert, select, update

from broker.db import tables as t
from broker.db.jobs import ACTIVE_STATES


def hash_token(token: str) -> str:
    """The stored form of a capability token (hex SHA-256)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def register(conn: Connection, *, job_id: str, token_hash: str, expires_ms: int, max_fetches: int) -> None:
    """Grant ``token_hash`` up to ``max_fetches`` fetches of ``job_id``'s archive until ``expires_ms``.

    A job has one live capability: earlier ones (a RayJob created again after a lost one) are revoked.
    """
    revoke_job(conn, job_id)
    conn.execute(
        insert(t.job_archives).values(
            token_hash=token_hash,
            job_id=job_id,
            expires_ms=expires_ms,
            max_fetches=max_fetches,
            fetches=0,
            revoked=False,
        )
    )


def claim_fetch(conn: Connection, *, token_hash: str, now_ms: int) -> str | None:
    """Count one fetch of the archive ``token_hash`` opens; its job id, or ``None`` when refused.

    Refused (and not counted) when the token is unknown, revoked, expired, out of fetches, or its job is no
    longer admitted or running — all in the one ``UPDATE``, so the check and the count cannot be separated.
    """
    a = t.job_archives
    job_active = exists().where(t.jobs.c.id == a.c.job_id, t.jobs.c.state.in_(ACTIVE_STATES))
    row = conn.execute(
        update(a)
        .where(
            a.c.token_hash == token_hash,
            a.c.revoked.is_(False),
            a.c.expires_ms > now_ms,
            a.c.fetches < a.c.max_fetches,
            job_active,
        )
        .values(fetches=a.c.fetches + 1)
        .returning(a.c.job_id)
    ).first()
    return None if row is None else str(row.job_id)


def revoke_job(conn: Connection, job_id: str) -> int:
    """Revoke every capability of ``job_id``; returns how many were live."""
    a = t.job_archives
    result = conn.execute(update(a).where(a.c.job_id == job_id, a.c.revoked.is_(False)).values(revoked=True))
    return int(result.rowcount or 0)


def fetches(conn: Connection, token_hash: str) -> int | None:
    """How often the archive ``token_hash`` opens was fetched (``None`` for an unknown token)."""
    a = t.job_archives
    return conn.execute(select(a.c.fetches).where(a.c.token_hash == token_hash)).scalar_one_or_none()
