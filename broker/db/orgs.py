"""Organisations and bearer tokens.

A token is ``sbx_<token id>_<secret>``; only the SHA-256 of the secret is stored, and it is compared in
constant time after looking the token up by its id.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import asdict, astuple, dataclass
from typing import Any

from sqlalchemy import Connection, bindparam, insert, select, update

from broker.db import tables as t
from common.errors import Conflict, NotFound
from common.ids import new_id

ROLES = ("operator", "issuer", "custodian", "sme")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: an organisation and its role (from a verified token)."""

    org_id: str
    role: str
    token_id: str


@dataclass(frozen=True, slots=True)
class Organisation:
    """An organisation row."""

    id: str
    name: str
    role: str
    created_ms: int
    uscc: str | None = None  # GB 32100-2015 code, validated by common.uscc before it gets here
    name_zh: str | None = None  # registered Chinese name
    name_en: str | None = None
    locale: str | None = None  # the organisation's language choice (zh-CN, en)


def _org(row: Any) -> Organisation:
    return Organisation(
        row.id, row.name, row.role, row.created_ms, row.uscc, row.name_zh, row.name_en, row.locale
    )


def _hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_org(
    conn: Connection, *, name: str, role: str, now_ms: int, identity: Identity | None = None
) -> Organisation:
    """Insert an organisation; its name and its unified social credit code (when given) must be unique."""
    if role not in ROLES:
        raise Conflict(f"unknown role {role!r}; choose one of {', '.join(ROLES)}", code="invalid_role")
    existing = conn.execute(select(t.organisations.c.id).where(t.organisations.c.name == name)).first()
    if existing is not None:
        raise Conflict(f"an organisation named {name!r} already exists", code="name_taken")
    ident = identity or Identity()
    if ident.uscc is not None:
        taken = conn.execute(select(t.organisations.c.id).where(t.organisations.c.uscc == ident.uscc)).first()
        if taken is not None:
            raise Conflict(f"an organisation with uscc {ident.uscc} already exists", code="uscc_taken")
    org = Organisation(new_id("org"), name, role, now_ms, *astuple(ident))
    conn.execute(
        insert(t.organisations).values(id=org.id, name=name, role=role, created_ms=now_ms, **asdict(ident))
    )
    return org


@dataclass(frozen=True, slots=True)
class Identity:
    """An organisation's legal identity and language (all optional): what ``create_org`` stores beside the name."""

    uscc: str | None = None
    name_zh: str | None = None
    name_en: str | None = None
    locale: str | None = None


def find_by_uscc(conn: Connection, uscc: str) -> Organisation:
    """The organisation with this (normalised) unified social credit code, or :class:`NotFound`."""
    row = conn.execute(select(t.organisations).where(t.organisations.c.uscc == uscc)).first()
    if row is None:
        raise NotFound(f"no organisation with uscc {uscc}")
    return _org(row)


def set_locale(conn: Connection, org_id: str, locale: str | None) -> None:
    """Record an organisation's language choice (``None``: follow the browser, then the programme)."""
    query = update(t.organisations).where(t.organisations.c.id == org_id).values(locale=locale)
    if conn.execute(query).rowcount == 0:
        raise NotFound(f"no organisation {org_id}")


def get_org(conn: Connection, org_id: str) -> Organisation:
    """Return an organisation or raise :class:`NotFound`."""
    row = conn.execute(select(t.organisations).where(t.organisations.c.id == org_id)).first()
    if row is None:
        raise NotFound(f"no organisation {org_id}")
    return _org(row)


def list_orgs(conn: Connection, *, role: str | None = None) -> list[Organisation]:
    """All organisations (optionally of one role), oldest first."""
    query = select(t.organisations).order_by(t.organisations.c.created_ms, t.organisations.c.id)
    if role is not None:
        query = query.where(t.organisations.c.role == role)
    return [_org(r) for r in conn.execute(query)]


def create_token(
    conn: Connection, *, org_id: str, label: str, now_ms: int, expires_ms: int | None = None
) -> str:
    """Create a bearer token for ``org_id`` and return it in clear (the only time it is seen)."""
    token_id = new_id("tok")
    secret = secrets.token_urlsafe(32)
    conn.execute(
        insert(t.tokens).values(
            id=token_id,
            org_id=org_id,
            secret_hash=_hash_secret(secret),
            label=label,
            created_ms=now_ms,
            expires_ms=expires_ms,
            revoked=False,
        )
    )
    return f"sbx_{token_id}_{secret}"


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """What may be shown of a token: never its secret or hash."""

    id: str
    org_id: str
    label: str
    created_ms: int
    expires_ms: int | None
    revoked: bool


def list_tokens(conn: Connection, *, org_id: str | None, limit: int = 1000) -> list[TokenInfo]:
    """Tokens of ``org_id`` (every organisation's when ``None``), newest first."""
    c = t.tokens.c
    query = select(c.id, c.org_id, c.label, c.created_ms, c.expires_ms, c.revoked).order_by(
        c.created_ms.desc(), c.id
    )
    if org_id is not None:
        query = query.where(c.org_id == org_id)
    rows = conn.execute(query.limit(limit))
    return [TokenInfo(r.id, r.org_id, r.label, r.created_ms, r.expires_ms, bool(r.revoked)) for r in rows]


def get_token(conn: Connection, token_id: str) -> TokenInfo:
    """One token's public record, or :class:`NotFound`."""
    c = t.tokens.c
    row = conn.execute(
        select(c.id, c.org_id, c.label, c.created_ms, c.expires_ms, c.revoked).where(c.id == token_id)
    ).first()
    if row is None:
        raise NotFound(f"no token {token_id}")
    return TokenInfo(row.id, row.org_id, row.label, row.created_ms, row.expires_ms, bool(row.revoked))


def revoke_token(conn: Connection, *, token_id: str, org_id: str | None) -> None:
    """Revoke a token (scoped to ``org_id`` unless ``None``, which an operator may do)."""
    query = update(t.tokens).where(t.tokens.c.id == token_id).values(revoked=True)
    if org_id is not None:
        query = query.where(t.tokens.c.org_id == org_id)
    if conn.execute(query).rowcount == 0:
        raise NotFound(f"no token {token_id}")


def authenticate(conn: Connection, bearer: str, *, now_ms: int) -> Principal | None:
    """Return the principal of a valid token, or ``None`` (unknown, wrong secret, expired, revoked)."""
    parts = bearer.split("_")
    if len(parts) < 4 or parts[0] != "sbx" or parts[1] != "tok":
        return None
    token_id = f"tok_{parts[2]}"
    secret = "_".join(parts[3:])
    row = conn.execute(_TOKEN_LOOKUP, {"token_id": token_id}).first()
    expected = row.secret_hash if row is not None else _hash_secret("no-such-token")
    matches = hmac.compare_digest(expected, _hash_secret(secret))
    if row is None or not matches or row.revoked:
        return None
    if row.expires_ms is not None and row.expires_ms <= now_ms:
        return None
    return Principal(row.org_id, row.role, token_id)


# Built once: every authenticated request runs it, and building a select costs more than running it.
_TOKEN_LOOKUP = (
    select(
        t.tokens.c.secret_hash,
        t.tokens.c.org_id,
        t.tokens.c.expires_ms,
        t.tokens.c.revoked,
        t.organisations.c.role,
    )
    .join(t.organisations, t.organisations.c.id == t.tokens.c.org_id)
    .where(t.tokens.c.id == bindparam("token_id"))
)
