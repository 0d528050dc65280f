"""Jinja2 rendering of the printable reports and the dashboard pages (autoescaped templates)."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape

from broker.services.report_signing import signature_header
from broker.web.charts import Bar, column_bars, meter, stacked_bars

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"


@functools.cache
def environment() -> Environment:
    """The template environment (immutable configuration; built once on first use)."""
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = when
    env.filters["credits"] = lambda v: f"{int(v):,}" if v is not None else "–"
    env.filters["epsilon"] = lambda micro: f"{int(micro) / 1e6:.3f}"
    env.globals["meter"] = meter
    return env


def when(ms: int | None) -> str:
    """A UTC time for humans (``2026-11-25 07:12 UTC``)."""
    if ms is None:
        return "–"
    return datetime.fromtimestamp(int(ms) / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")


def render(template: str, **context: Any) -> str:
    """Render one template with ``context``."""
    return environment().get_template(template).render(**context)


def _style() -> str:
    return (STATIC / "style.css").read_text()


def subsidy_html(document: Mapping[str, Any], *, linked_style: bool = False) -> str:
    """The printable subsidy report: table, totals, cost by SME and use over time as inline SVG.

    A standalone file carries its stylesheet inline; the dashboard (``linked_style``) links ``/ui/static``
    instead, so its strict Content-Security-Policy needs no inline style."""
    report = document["report"]
    single_month = report["period"]["end_ms"] - report["period"]["start_ms"] <= 31 * 86_400_000
    fmt = "%d" if single_month else "%Y-%m"
    by_sme = stacked_bars(
        [Bar(r["name"], r["voucher_share"], r["copay"]) for r in report["rows"] if r["cost"]],
        title="Cost by SME (credits)",
    )
    over_time = column_bars(
        [
            Bar(
                datetime.fromtimestamp(p["start_ms"] / 1000, tz=UTC).strftime(fmt),
                p["voucher_share"],
                p["copay"],
            )
            for p in report["over_time"]
        ],
        title="Settled cost over time (credits, per day)"
        if single_month
        else "Settled cost per month (credits)",
    )
    return render(
        "report_subsidy.html",
        report=report,
        signature=signature_header(document),
        by_sme=by_sme,
        over_time=over_time,
        style="" if linked_style else _style(),
    )


def access_html(document: Mapping[str, Any]) -> str:
    """The printable data-access report (per dataset and SME: releases and ε spent)."""
    return render(
        "report_access.html", report=document["report"], signature=signature_header(document), style=_style()
    )
