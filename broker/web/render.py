"""Jinja2 rendering of the printable reports and the dashboard pages (autoescaped templates)."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from jinja2 import Environment, FileSystemLoader, pass_context, select_autoescape

from broker.i18n import DEFAULT_LOCALE, _, gettext, translator
from broker.services.report_signing import signature_header
from broker.web.charts import Bar, column_bars, meter, stacked_bars
from common.money import format_money, minor_digits

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"


@functools.cache
def environment(locale: str = DEFAULT_LOCALE) -> Environment:
    """The template environment of one language (immutable configuration; built once per locale).

    Templates mark text with ``{% trans %}``/``_()`` (Jinja2's i18n extension over the Babel catalogue of
    ``locale``). ``credits`` shows an amount as money in the context's ``currency`` (``¥1,234.56``; plain
    grouped units when the context has none) and ``when`` a time in the context's ``zone`` (UTC by default)."""
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=["jinja2.ext.i18n"],
    )
    env.install_gettext_translations(translator(locale), newstyle=True)  # type: ignore[attr-defined]
    env.filters["when"] = pass_context(lambda ctx, ms: when(ms, ctx.get("zone") or "UTC"))
    env.filters["credits"] = pass_context(lambda ctx, v: _money(v, ctx.get("currency"), locale))
    env.filters["epsilon"] = lambda micro: f"{int(micro) / 1e6:.3f}"
    env.globals["meter"] = meter
    env.globals["lang"] = locale.replace("_", "-")
    return env


def _money(amount: int | None, currency: str | None, locale: str) -> str:
    return "–" if amount is None else format_money(int(amount), currency, locale)


def when(ms: int | None, zone: str = "UTC") -> str:
    """A time for humans in ``zone`` (``2026-11-25 07:12 UTC``, ``2026-12-01 07:30 CST``)."""
    if ms is None:
        return "–"
    return datetime.fromtimestamp(int(ms) / 1000, tz=ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M %Z")


def render(template: str, locale: str = DEFAULT_LOCALE, **context: Any) -> str:
    """Render one template in ``locale`` with ``context``."""
    return environment(locale).get_template(template).render(**context)


def _chart_unit(currency: str | None, locale: str) -> str:
    """What a chart's integers count: fen for CNY, the smallest unit of another currency, else credits."""
    if currency is None:
        return gettext(locale, _("credits"))
    if currency == "CNY":
        return gettext(locale, _("fen"))
    digits = minor_digits(currency)
    return currency if digits == 0 else f"{currency} × 10⁻{digits}"


def _report_money(report: Mapping[str, Any]) -> str | None:
    currency = report.get("currency")
    return None if currency in (None, "credits") else str(currency)


def _style() -> str:
    return (STATIC / "style.css").read_text()


def subsidy_html(
    document: Mapping[str, Any], locale: str = DEFAULT_LOCALE, *, linked_style: bool = False
) -> str:
    """The printable subsidy report in ``locale``: table, totals, cost by SME and use over time as inline SVG,
    amounts in the programme's currency, times in its zone, and a signature/seal block for the programme office.

    A standalone file carries its stylesheet inline; the dashboard (``linked_style``) links ``/ui/static``
    instead, so its strict Content-Security-Policy needs no inline style."""
    report = document["report"]
    currency = _report_money(report)
    unit = _chart_unit(currency, locale)  # charts draw the exact integers: the smallest unit
    zone = str(report.get("time_zone") or "UTC")
    legend = (gettext(locale, _("voucher share")), gettext(locale, _("co-payment")))
    single_month = report["period"]["end_ms"] - report["period"]["start_ms"] <= 31 * 86_400_000
    fmt = "%d" if single_month else "%Y-%m"
    by_sme = stacked_bars(
        [
            Bar(r.get("name_zh") or r["name"], r["voucher_share"], r["copay"])
            for r in report["rows"]
            if r["cost"]
        ],
        title=gettext(locale, _("Cost by SME ({unit})")).format(unit=unit),
        legend=legend,
    )
    over_time = column_bars(
        [
            Bar(
                datetime.fromtimestamp(p["start_ms"] / 1000, tz=ZoneInfo(zone)).strftime(fmt),
                p["voucher_share"],
                p["copay"],
            )
            for p in report["over_time"]
        ],
        title=gettext(
            locale,
            _("Settled cost per day ({unit})") if single_month else _("Settled cost per month ({unit})"),
        ).format(unit=unit),
        legend=legend,
    )
    return render(
        "report_subsidy.html",
        locale,
        currency=currency,
        zone=zone,
        report=report,
        signature=signature_header(document),
        by_sme=by_sme,
        over_time=over_time,
        style="" if linked_style else _style(),
    )


def access_html(document: Mapping[str, Any], locale: str = DEFAULT_LOCALE) -> str:
    """The printable data-access report in ``locale`` (per dataset and SME: releases and ε spent)."""
    report = document["report"]
    return render(
        "report_access.html",
        locale,
        zone=str(report.get("time_zone") or "UTC"),
        report=report,
        signature=signature_header(document),
        style=_style(),
    )
