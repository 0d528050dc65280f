"""Issuer keys, programmes and issued vouchers."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, func, insert, select, update

from broker.db import tables as t
from common.errors import Conflict, NotFound
from vouchers import IssuerKey, KeyStatus, VoucherClaims, claims_record


@dataclass(frozen=True, slots=True)
class Programme:
    """An issuer's yearly voucher budget and its cap per SME (in the currency's smallest unit: fen for CNY),
    its currency (``None``: currency-less "credits"), the time zone its periods are kept in, and its language."""

    org_id: str
    year_budget: int
    sme_cap: int
    currency: str | None = None
    time_zone: str = "UTC"
    default_locale: str | None = None


@dataclass(frozen=True, slots=True)
class VoucherRecord:
    """A voucher as the broker recorded it at issuance."""

    jti: str
    issuer_org: str
    sme_org: str
    kid: str
    credits: int
    coverage_bps: int
    resources: tuple[str, ...]
    nbf: int
    exp: int
    credit_exp: int
    issued_ms: int
    status: str
    token_sha256: str | None
    claims: str
    origin: str


def set_programme(
    conn: Connection,
    *,
    org_id: str,
    year_budget: int,
    sme_cap: int,
    settings: ProgrammeSettings | None = None,
) -> Programme:
    """Create or replace an issuer's programme limits (and, when given, its currency, zone and language)."""
    values: dict[str, Any] = {"year_budget": year_budget, "sme_cap": sme_cap}
    if settings is not None:
        values |= {
            "currency": settings.currency,
            "time_zone": settings.time_zone,
            "default_locale": settings.default_locale,
        }
    updated = conn.execute(update(t.programmes).where(t.programmes.c.org_id == org_id).values(**values))
    if updated.rowcount == 0:
        conn.execute(insert(t.programmes).values(org_id=org_id, **values))
    return get_programme(conn, org_id)


@dataclass(frozen=True, slots=True)
class ProgrammeSettings:
    """How a programme counts and keeps time: ISO 4217 currency (``None``: credits), IANA zone, language."""

    currency: str | None = "CNY"
    time_zone: str = "Asia/Shanghai"
    default_locale: str | None = "zh_CN"


def get_programme(conn: Connection, org_id: str, *, lock: bool = False) -> Programme:
    """An issuer's programme, or :class:`NotFound` when none was set.

    ``lock`` takes the row for the transaction (PostgreSQL ``FOR UPDATE``; SQLite writers are serial
    anyway), so two redemptions against one programme check its limits one after the other.
    """
    query = select(t.programmes).where(t.programmes.c.org_id == org_id)
    row = conn.execute(query.with_for_update() if lock else query).first()
    if row is None:
        raise NotFound(f"issuer {org_id} has no programme yet; an operator sets its budget and SME cap first")
    return Programme(
        row.org_id, int(row.year_budget), int(row.sme_cap), row.currency, row.time_zone, row.default_locale
    )


def add_key(
    conn: Connection,
    *,
    org_id: str,
    kid: str,
    public_jwk: dict[str, Any],
    private_wrapped: bytes | None,
    now_ms: int,
) -> None:
    """Store a new active key for an issuer; its previous active keys become ``retired`` (rotation).

    ``private_wrapped`` is the KEK-wrapped private key of a key the broker generated, ``None`` for a key
    the issuer registered and holds itself. A ``kid`` already stored is :class:`Conflict`.
    """
    if conn.execute(select(t.issuer_keys.c.kid).where(t.issuer_keys.c.kid == kid)).first() is not None:
        raise Conflict(f"key {kid} is already registered", code="key_exists")
    conn.execute(
        update(t.issuer_keys)
        .where(t.issuer_keys.c.org_id == org_id, t.issuer_keys.c.status == "active")
        .values(status="retired", changed_ms=now_ms)
    )
    conn.execute(
        insert(t.issuer_keys).values(
            kid=kid,
            org_id=org_id,
            public_jwk=json.dumps(public_jwk),
            private_wrapped=private_wrapped,
            status="active",
            created_ms=now_ms,
            changed_ms=now_ms,
        )
    )


def set_key_status(conn: Connection, *, org_id: str | None, kid: str, status: KeyStatus, now_ms: int) -> None:
    """Retire or revoke a key (scoped to its issuer unless ``org_id`` is ``None``). Revoked is final."""
    query = update(t.issuer_keys).where(t.issuer_keys.c.kid == kid, t.issuer_keys.c.status != "revoked")
    if org_id is not None:
        query = query.where(t.issuer_keys.c.org_id == org_id)
    if conn.execute(query.values(status=status, changed_ms=now_ms)).rowcount == 0:
        raise NotFound(f"no key {kid} that can still change status")


def lookup_key(conn: Connection, kid: str) -> IssuerKey | None:
    """The verification view of a key, for :func:`vouchers.verify_voucher`."""
    row = conn.execute(select(t.issuer_keys).where(t.issuer_keys.c.kid == kid)).first()
    if row is None:
        return None
    return IssuerKey(kid=row.kid, issuer=row.org_id, public_jwk=json.loads(row.public_jwk), status=row.status)


def signing_key(conn: Connection, org_id: str) -> tuple[str, bytes]:
    """The issuer's active key id and its KEK-wrapped private key, or :class:`Conflict` when the broker
    holds none (no active key, or the issuer keeps its own and signs offline)."""
    row = conn.execute(
        select(t.issuer_keys.c.kid, t.issuer_keys.c.private_wrapped)
        .where(t.issuer_keys.c.org_id == org_id, t.issuer_keys.c.status == "active")
        .order_by(t.issuer_keys.c.created_ms.desc())
    ).first()
    if row is None:
        raise Conflict(
            "this issuer has no active signing key; create one with `sbx issuer key create`",
            code="no_active_key",
        )
    if row.private_wrapped is None:
        raise Conflict(
            f"the active key {row.kid} is the issuer's own: the broker cannot sign with it. Sign offline with "
            "`sbx voucher sign --key FILE` and register the voucher with `sbx voucher register`",
            code="no_active_key",
        )
    return str(row.kid), bytes(row.private_wrapped)


def wrapped_keys(conn: Connection) -> list[tuple[str, bytes]]:
    """Every (kid, wrapped private key) the broker holds, for re-wrapping under a new KEK."""
    rows = conn.execute(
        select(t.issuer_keys.c.kid, t.issuer_keys.c.private_wrapped).where(
            t.issuer_keys.c.private_wrapped.is_not(None)
        )
    )
    return [(str(r.kid), bytes(r.private_wrapped)) for r in rows]


def set_wrapped(conn: Connection, *, kid: str, private_wrapped: bytes) -> None:
    """Replace a key's wrapped private part (after re-wrapping it under a new KEK)."""
    conn.execute(
        update(t.issuer_keys).where(t.issuer_keys.c.kid == kid).values(private_wrapped=private_wrapped)
    )


def list_keys(conn: Connection, *, org_id: str | None = None) -> list[dict[str, Any]]:
    """Keys with their status (public parts only)."""
    query = select(t.issuer_keys).order_by(t.issuer_keys.c.created_ms)
    if org_id is not None:
        query = query.where(t.issuer_keys.c.org_id == org_id)
    return [
        {
            "kid": r.kid,
            "issuer": r.org_id,
            "status": r.status,
            "public_jwk": json.loads(r.public_jwk),
            "held_by": "broker" if r.private_wrapped is not None else "issuer",
            "created_ms": r.created_ms,
            "changed_ms": r.changed_ms,
        }
        for r in conn.execute(query)
    ]


def issued_totals(conn: Connection, *, issuer_org: str, sme_org: str, year: int) -> tuple[int, int]:
    """Credits this issuer has issued this year (not counting unredeemed revoked vouchers), and to this SME ever."""
    live = t.vouchers.c.status != "revoked"
    year_total = conn.execute(
        select(func.coalesce(func.sum(t.vouchers.c.credits), 0)).where(
            t.vouchers.c.issuer_org == issuer_org, t.vouchers.c.year == year, live
        )
    ).scalar_one()
    sme_total = conn.execute(
        select(func.coalesce(func.sum(t.vouchers.c.credits), 0)).where(
            t.vouchers.c.issuer_org == issuer_org, t.vouchers.c.sme_org == sme_org, live
        )
    ).scalar_one()
    return int(year_total), int(sme_total)


def redeemed_totals(conn: Connection, *, issuer_org: str, sme_org: str, year: int) -> tuple[int, int]:
    """Credits of this issuer's vouchers already redeemed in budget year ``year``, and by this SME ever."""
    redeemed = t.vouchers.c.status == "redeemed"
    year_total = conn.execute(
        select(func.coalesce(func.sum(t.vouchers.c.credits), 0)).where(
            t.vouchers.c.issuer_org == issuer_org, t.vouchers.c.year == year, redeemed
        )
    ).scalar_one()
    sme_total = conn.execute(
        select(func.coalesce(func.sum(t.vouchers.c.credits), 0)).where(
            t.vouchers.c.issuer_org == issuer_org, t.vouchers.c.sme_org == sme_org, redeemed
        )
    ).scalar_one()
    return int(year_total), int(sme_total)


def record_voucher(
    conn: Connection,
    *,
    claims: VoucherClaims,
    kid: str,
    year: int,
    now_ms: int,
    token_sha256: str,
    origin: str = "broker",
) -> None:
    """Record an issued (or registered) voucher, status ``issued``, with its token hash and claims."""
    conn.execute(
        insert(t.vouchers).values(
            jti=claims.jti,
            issuer_org=claims.iss,
            sme_org=claims.sub,
            kid=kid,
            credits=claims.credits,
            coverage_bps=claims.coverage_bps,
            resources=",".join(claims.resources),
            nbf=claims.nbf,
            exp=claims.exp,
            credit_exp=claims.credit_exp,
            year=year,
            issued_ms=now_ms,
            status="issued",
            changed_ms=now_ms,
            token_sha256=token_sha256,
            claims=claims_record(claims),
            origin=origin,
        )
    )


def get_voucher(conn: Connection, jti: str) -> VoucherRecord | None:
    """A voucher record by id, or ``None``."""
    row = conn.execute(select(t.vouchers).where(t.vouchers.c.jti == jti)).first()
    if row is None:
        return None
    return VoucherRecord(
        row.jti,
        row.issuer_org,
        row.sme_org,
        row.kid,
        int(row.credits),
        int(row.coverage_bps),
        tuple(row.resources.split(",")),
        int(row.nbf),
        int(row.exp),
        int(row.credit_exp),
        int(row.issued_ms),
        row.status,
        row.token_sha256,
        row.claims,
        row.origin,
    )


def list_vouchers(
    conn: Connection, *, issuer_org: str | None = None, sme_org: str | None = None
) -> list[VoucherRecord]:
    """Vouchers of an issuer and/or an SME, newest first."""
    query = select(t.vouchers.c.jti).order_by(t.vouchers.c.issued_ms.desc())
    if issuer_org is not None:
        query = query.where(t.vouchers.c.issuer_org == issuer_org)
    if sme_org is not None:
        query = query.where(t.vouchers.c.sme_org == sme_org)
    out = []
    for jti in conn.execute(query).scalars():
        record = get_voucher(conn, jti)
        assert record is not None
        out.append(record)
    return out


def mark(conn: Connection, *, jti: str, from_status: str, to_status: str, now_ms: int) -> bool:
    """Move a voucher from one status to another; False when it was not in ``from_status`` (a race lost)."""
    result = conn.execute(
        update(t.vouchers)
        .where(t.vouchers.c.jti == jti, t.vouchers.c.status == from_status)
        .values(status=to_status, changed_ms=now_ms)
    )
    return result.rowcount == 1
