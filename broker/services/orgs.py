"""Organisations, tokens and programmes."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from babel.core import get_global
from sqlalchemy import Connection

from broker.container import Container
from broker.db import orgs, vouchers
from broker.db.orgs import Principal
from broker.services.access import own_or_operator, require_role
from broker.services.tokens import authenticate, token_expiry
from common.errors import InvalidInput, NotFound
from common.uscc import validate as validate_uscc


def check_identity(identity: orgs.Identity | None) -> orgs.Identity | None:
    """``identity`` with its unified social credit code validated and normalised (``InvalidUscc`` names the
    wrong position) and blank names dropped."""
    if identity is None:
        return None
    return orgs.Identity(
        uscc=validate_uscc(identity.uscc) if identity.uscc else None,
        name_zh=(identity.name_zh or "").strip() or None,
        name_en=(identity.name_en or "").strip() or None,
        locale=identity.locale,
    )


def settings_for(
    currency: str | None, time_zone: str | None, locale: str | None
) -> vouchers.ProgrammeSettings:
    """A programme's settings from what was asked: a CNY programme defaults to Asia/Shanghai and zh_CN, any
    other (or a currency-less one) to UTC and no default language."""
    chinese = currency == "CNY"
    zone = time_zone or ("Asia/Shanghai" if chinese else "UTC")
    return vouchers.ProgrammeSettings(currency, zone, locale or ("zh_CN" if chinese else None))


def check_settings(settings: vouchers.ProgrammeSettings | None) -> vouchers.ProgrammeSettings | None:
    """A programme's settings, refusing an unknown currency or time zone. ``None`` (internal callers that name
    none) stays ``None``: a currency-less programme in UTC, as before programmes had currencies; the API and
    the CLI ask for CNY in Asia/Shanghai by default (:func:`settings_for`)."""
    if settings is None:
        return None
    if settings.currency is not None and settings.currency not in get_global("all_currencies"):
        raise InvalidInput(
            f"unknown currency {settings.currency!r} (ISO 4217, e.g. CNY)", code="unknown_currency"
        )
    try:
        ZoneInfo(settings.time_zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInput(
            f"unknown time zone {settings.time_zone!r} (IANA, e.g. Asia/Shanghai)", code="unknown_time_zone"
        ) from None
    return settings


class OrgService:
    """Create organisations (operators), issue tokens, set programme limits."""

    def __init__(self, c: Container) -> None:
        self.c = c

    def create(
        self,
        principal: Principal | None,
        *,
        name: str,
        role: str,
        year_budget: int | None = None,
        sme_cap: int | None = None,
        copay_limit: int = 0,
        identity: orgs.Identity | None = None,
        settings: vouchers.ProgrammeSettings | None = None,
    ) -> dict[str, Any]:
        """Create an organisation with its ledger accounts (and programme for an issuer); operators only.

        ``principal`` is ``None`` only for ``sbx init`` (bootstrapping the first operator). ``identity`` (its
        unified social credit code, validated here, and registered names) and an issuer's ``settings``
        (currency, time zone, language; default CNY in Asia/Shanghai) are optional.
        """
        identity = check_identity(identity)
        settings = check_settings(settings)
        if principal is not None:
            require_role(principal, "operator")
        if not name.strip():
            raise InvalidInput("an organisation needs a non-empty name")
        if copay_limit < 0:
            raise InvalidInput("the co-payment limit cannot be negative")
        if role == "issuer" and (year_budget is None or sme_cap is None):
            raise InvalidInput("an issuer needs --year-budget and --sme-cap (credits)")
        now = self.c.clock.now_ms()

        def tx(conn: Connection) -> dict[str, Any]:
            org = orgs.create_org(conn, name=name.strip(), role=role, now_ms=now, identity=identity)
            self.c.ledger.open_org_accounts(conn, org_id=org.id, role=role, copay_limit=copay_limit)
            out = asdict(org)
            if role == "issuer":
                assert year_budget is not None and sme_cap is not None
                if year_budget < 0 or sme_cap < 0:
                    raise InvalidInput("budgets cannot be negative")
                out["programme"] = asdict(
                    vouchers.set_programme(
                        conn, org_id=org.id, year_budget=year_budget, sme_cap=sme_cap, settings=settings
                    )
                )
            self.c.audit.append(
                conn,
                ts_ms=now,
                actor=principal,
                action="org.create",
                object_type="org",
                object_id=org.id,
                org_id=org.id,
                details={"name": org.name, "role": role, "uscc": org.uscc},
            )
            return out

        return self.c.db.write(tx)

    def list(self, principal: Principal) -> list[dict[str, Any]]:
        """Operators see every organisation; others see their own."""

        def tx(conn: Connection) -> list[dict[str, Any]]:
            if principal.role == "operator":
                return [asdict(o) for o in orgs.list_orgs(conn)]
            return [asdict(orgs.get_org(conn, principal.org_id))]

        return self.c.db.read(tx)

    def by_uscc(self, principal: Principal, uscc: str) -> dict[str, Any]:
        """The organisation with this unified social credit code: operators any, others only their own (a
        foreign one is the same 404 as a missing one)."""
        code = validate_uscc(uscc)
        org = self.c.db.read(lambda conn: orgs.find_by_uscc(conn, code))
        if principal.role != "operator" and org.id != principal.org_id:
            raise NotFound(f"no organisation with uscc {code}")
        return asdict(org)

    def set_locale(self, principal: Principal, *, org_id: str, locale: str | None) -> dict[str, Any]:
        """Set an organisation's language (``zh_CN``, ``en`` or ``None``: follow the browser): its own members
        or an operator. The dashboard uses it before ``Accept-Language``."""
        target = own_or_operator(principal, org_id)
        now = self.c.clock.now_ms()

        def tx(conn: Connection) -> dict[str, Any]:
            orgs.set_locale(conn, target, locale)
            self.c.audit.append(
                conn,
                ts_ms=now,
                actor=principal,
                action="org.locale",
                object_type="org",
                object_id=target,
                org_id=target,
                details={"locale": locale},
            )
            return asdict(orgs.get_org(conn, target))

        return self.c.db.write(tx)

    def create_token(
        self, principal: Principal | None, *, org_id: str, label: str = "", ttl_s: int | None = None
    ) -> dict[str, Any]:
        """Issue a bearer token for ``org_id`` (operators for anyone; others only for themselves)."""
        now = self.c.clock.now_ms()
        target = org_id if principal is None else own_or_operator(principal, org_id)
        if ttl_s is not None and ttl_s <= 0:
            raise InvalidInput("a token's lifetime must be positive")
        expires = token_expiry(self.c, principal, now_ms=now, ttl_s=ttl_s)  # never beyond the creator's

        def tx(conn: Connection) -> dict[str, Any]:
            org = orgs.get_org(conn, target)
            token = orgs.create_token(conn, org_id=org.id, label=label, now_ms=now, expires_ms=expires)
            token_id = "tok_" + token.split("_")[2]  # sbx_tok_<id>_<secret>: the id only, never the secret
            self.c.audit.append(  # one entry per token, matched by `token.revoke` on the same object_id
                conn,
                ts_ms=now,
                actor=principal,
                action="token.create",
                object_type="token",
                object_id=token_id,
                org_id=org.id,
                details={"label": label, "expires_ms": expires, "role": org.role},
            )
            return {"org_id": org.id, "role": org.role, "token": token, "expires_ms": expires}

        return self.c.db.write(tx)

    def set_programme(
        self, principal: Principal, *, org_id: str, year_budget: int, sme_cap: int
    ) -> dict[str, Any]:
        """Set an issuer's yearly budget and per-SME cap (operators)."""
        require_role(principal, "operator")
        if year_budget < 0 or sme_cap < 0:
            raise InvalidInput("budgets cannot be negative")
        now = self.c.clock.now_ms()

        def tx(conn: Connection) -> dict[str, Any]:
            org = orgs.get_org(conn, org_id)
            if org.role != "issuer":
                raise InvalidInput(f"{org_id} is a {org.role}, not an issuer")
            programme = vouchers.set_programme(conn, org_id=org_id, year_budget=year_budget, sme_cap=sme_cap)
            self.c.audit.append(
                conn,
                ts_ms=now,
                actor=principal,
                action="programme.set",
                object_type="org",
                object_id=org_id,
                org_id=org_id,
                details={"year_budget": year_budget, "sme_cap": sme_cap},
            )
            return asdict(programme)

        return self.c.db.write(tx)

    def authenticate(self, bearer: str) -> Principal | None:
        """The principal of a bearer token, or ``None``."""
        return authenticate(self.c, bearer)  # 503 database_unavailable when the database cannot answer
