"""Bearer tokens: their lifetime rule, listing and revocation.

Lifetime. A token's expiry is ``now + ttl`` where ``ttl`` is what was asked or, when nothing was asked, the
optional default (``SBX_TOKEN_DEFAULT_TTL_S``; unset: no expiry). It is then capped at the expiry of the token
that creates it, so a 60-second token cannot mint one that outlives it (a leaked short-lived token stays
short-lived). ``sbx init``'s first operator token has no creator and follows only the asked ttl.

Revocation takes effect at once on every replica: there is no token cache — every request (API header or
dashboard cookie) looks its token up in the shared database, so the next request after the revoking
transaction commits is refused (well within the 1 s the design allows).

Authentication answers ``503 database_unavailable`` when the database cannot be reached, never 401.

Scope: operators list and revoke any organisation's tokens; everyone else only their own organisation's
(another organisation's token is the same 404 as a missing one). Secrets and hashes are never shown.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import InterfaceError, OperationalError

from broker.container import Container
from broker.db import orgs
from broker.db.orgs import Principal
from broker.errors import DatabaseUnavailable
from broker.services.access import own_or_operator, read_scope, visible
from common.errors import NotFound


def authenticate(c: Container, bearer: str) -> Principal | None:
    """The principal of a bearer token, or ``None``; :class:`DatabaseUnavailable` (503) when the database
    cannot be reached — a caller must never read "your token is invalid" from an outage."""
    if len(bearer) > c.settings.max_token_bytes:
        return None
    now = c.clock.now_ms()
    try:
        return c.db.read(lambda conn: orgs.authenticate(conn, bearer, now_ms=now))
    except (OperationalError, InterfaceError) as exc:
        raise DatabaseUnavailable("the broker's database cannot be reached; retry shortly") from exc


def token_expiry(c: Container, principal: Principal | None, *, now_ms: int, ttl_s: int | None) -> int | None:
    """The expiry (ms) of a token ``principal`` creates now: the asked or default ttl, capped at the creator's
    own expiry (see the module docstring); ``None`` means it never expires."""
    ttl = ttl_s if ttl_s is not None else (c.settings.token_default_ttl_s if principal is not None else None)
    expires = now_ms + ttl * 1000 if ttl else None
    if principal is None:
        return expires
    creator = c.db.read(lambda conn: orgs.get_token(conn, principal.token_id)).expires_ms
    if creator is None:
        return expires
    return creator if expires is None else min(expires, creator)


class TokenService:
    """List and revoke bearer tokens within the caller's scope."""

    def __init__(self, c: Container) -> None:
        self.c = c

    def list(self, principal: Principal, *, org_id: str | None = None) -> list[dict[str, Any]]:
        """Tokens of the caller's organisation (operators: of ``org_id``, or of all when it is ``None``)."""
        scope = read_scope(principal) if org_id is None else own_or_operator(principal, org_id)
        now = self.c.clock.now_ms()

        def tx(conn: Connection) -> list[orgs.TokenInfo]:
            if scope is not None:
                orgs.get_org(conn, scope)  # a missing organisation is a 404, not an empty list
            return orgs.list_tokens(conn, org_id=scope)

        rows = self.c.db.read(tx)
        return [self._view(row, principal, now) for row in rows]

    def revoke(self, principal: Principal, *, token_id: str) -> dict[str, Any]:
        """Revoke a token of the caller's organisation (operators: any); revoking twice is harmless."""
        now = self.c.clock.now_ms()

        def tx(conn: Connection) -> dict[str, Any]:
            token = orgs.get_token(conn, token_id)
            if not visible(principal, token.org_id):
                raise NotFound(f"no token {token_id}")
            orgs.revoke_token(conn, token_id=token_id, org_id=token.org_id)
            self.c.audit.append(
                conn,
                ts_ms=now,
                actor=principal,
                action="token.revoke",
                object_type="token",
                object_id=token_id,
                org_id=token.org_id,
                details={"label": token.label, "was_revoked": token.revoked},
            )
            return self._view(orgs.get_token(conn, token_id), principal, now)

        return self.c.db.write(tx)

    @staticmethod
    def _view(token: orgs.TokenInfo, principal: Principal, now_ms: int) -> dict[str, Any]:
        expired = token.expires_ms is not None and token.expires_ms <= now_ms
        state = "revoked" if token.revoked else "expired" if expired else "active"
        return {**asdict(token), "state": state, "current": token.id == principal.token_id}
