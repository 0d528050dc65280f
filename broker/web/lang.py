"""The dashboard's language switch and the money/time context of a page.

Language: ``?lang=zh-CN`` (or ``en``) is the user's explicit choice; it is kept in the cookie ``sbx_lang``
(path ``/ui``, a year, HttpOnly and SameSite=Strict like the session; it holds only a language tag). Without
one, the organisation's own setting, then ``Accept-Language``, then the programme's default language, then
English (:func:`broker.i18n.negotiate`).

Money and time: a page shows amounts in the programmes' currency and times in their zone when every
programme agrees on one (the usual case: one city's scheme); otherwise in plain units and UTC.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Request, Response
from sqlalchemy import Connection, select

from broker.db import tables as t
from broker.db.orgs import Principal
from broker.i18n import _, negotiate, normalise
from broker.services.registry import Services
from broker.web.render import when
from common.money import format_money

LANG_COOKIE = "sbx_lang"
ROLE_LABELS = {
    "operator": _("Operator dashboard"),
    "issuer": _("Issuer dashboard"),
    "custodian": _("Custodian dashboard"),
    "sme": _("SME dashboard"),
}

STATE_LABELS = (  # the states and statuses the pages show, marked for the catalogue (shown with ``_(s)``)
    _("queued"),
    _("admitted"),
    _("running"),
    _("succeeded"),
    _("failed"),
    _("stopped"),
    _("timed_out"),
    _("rejected"),
    _("active"),
    _("expired"),
    _("revoked"),
    _("retired"),
    _("issued"),
    _("redeemed"),
    _("pending"),
    _("approved"),
    _("refused"),
)


@dataclass(frozen=True, slots=True)
class PageMoney:
    """What a page shows amounts and times in: a currency (``None``: units), a zone, a default language."""

    currency: str | None
    zone: str
    default_locale: str | None


def page_money(conn: Connection) -> PageMoney:
    """The programmes' shared currency, zone and language, or units/UTC/none when they differ or are absent."""
    c = t.programmes.c
    rows = {tuple(r) for r in conn.execute(select(c.currency, c.time_zone, c.default_locale).distinct())}
    if len(rows) != 1:
        return PageMoney(None, "UTC", None)
    currency, zone, locale = next(iter(rows))
    return PageMoney(currency, zone, locale)


def page_locale(
    request: Request, services: Services, principal: Principal | None, money: PageMoney | None = None
) -> str:
    """The language of this page: ``?lang=``, the cookie, the organisation's setting, ``Accept-Language``,
    the programmes' default, English."""
    org_locale = None
    if principal is not None:
        org_locale = services.container.db.read(
            lambda conn: conn.execute(
                select(t.organisations.c.locale).where(t.organisations.c.id == principal.org_id)
            ).scalar()
        )
    return negotiate(
        request.query_params.get("lang", "")[:16],
        request.cookies.get(LANG_COOKIE, "")[:16],
        org_locale,
        accept_language=request.headers.get("accept-language"),
        default=money.default_locale if money else None,
    )


MONEY_KEYS = ("held", "available", "redeemed")


def live_display(ctx: dict[str, Any], money: PageMoney, locale: str) -> dict[str, str]:
    """The live numbers as the page shows them: amounts as money in ``locale``, the time in the page's zone."""
    shown = {
        k: format_money(int(ctx["live"][k]), money.currency, locale) for k in MONEY_KEYS if k in ctx["live"]
    }
    return shown | {"now": when(int(ctx["now_ms"]), money.zone)}


def remember(request: Request, response: Response) -> Response:
    """Keep an explicit ``?lang=`` choice in the language cookie."""
    chosen = normalise(request.query_params.get("lang", "")[:16])
    if chosen is not None:
        response.set_cookie(
            LANG_COOKIE, chosen, samesite="strict", path="/ui", max_age=365 * 86_400, httponly=True
        )
    return response
