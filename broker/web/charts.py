"""Hand-rolled inline SVG charts (no JavaScript, no CDN): stacked bars per SME and bars over time.

Pure functions from numbers to SVG markup; every label is escaped. Heights are computed with integer credit
inputs and rounded only for drawing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

VOUCHER_COLOUR = "#2f6fb0"
COPAY_COLOUR = "#e0a030"


@dataclass(frozen=True, slots=True)
class Bar:
    """One bar: a label and its stacked parts (voucher share, co-payment)."""

    label: str
    voucher: int
    copay: int


Legend = tuple[str, str]
LEGEND: Legend = ("voucher share", "co-payment")
"""The two parts' names under a chart (callers pass them in the reader's language)."""


def _nice_max(value: int) -> int:
    """The smallest 1/2/5×10ⁿ at or above ``value`` (at least 1), for a readable axis."""
    step = 1
    while True:
        for m in (1, 2, 5):
            if m * step >= value:
                return max(1, m * step)
        step *= 10


def stacked_bars(
    bars: Sequence[Bar], *, title: str, width: int = 640, bar_height: int = 22, legend: Legend = LEGEND
) -> Markup:
    """Horizontal stacked bars (voucher share + co-payment) with a legend; one row per bar."""
    label_w, pad = 180, 8
    top = 28
    height = top + len(bars) * (bar_height + pad) + 30
    peak = _nice_max(max((b.voucher + b.copay for b in bars), default=0))
    scale = (width - label_w - 90) / peak
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" class="chart" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" aria-label="{escape(title)}">',
        f'<text x="0" y="16" class="chart-title">{escape(title)}</text>',
    ]
    for i, bar in enumerate(bars):
        y = top + i * (bar_height + pad)
        v_w = round(bar.voucher * scale, 1)
        c_w = round(bar.copay * scale, 1)
        parts.append(
            f'<text x="{label_w - 6}" y="{y + bar_height * 0.7:.1f}" text-anchor="end">{escape(bar.label[:28])}</text>'
            f'<rect x="{label_w}" y="{y}" width="{v_w}" height="{bar_height}" fill="{VOUCHER_COLOUR}">'
            f"<title>voucher share {bar.voucher}</title></rect>"
            f'<rect x="{label_w + v_w}" y="{y}" width="{c_w}" height="{bar_height}" fill="{COPAY_COLOUR}">'
            f"<title>co-payment {bar.copay}</title></rect>"
            f'<text x="{label_w + v_w + c_w + 6}" y="{y + bar_height * 0.7:.1f}">{bar.voucher + bar.copay:,}</text>'
        )
    parts.append(_legend(height - 14, legend))
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every interpolated text above is escaped


def column_bars(
    bars: Sequence[Bar], *, title: str, width: int = 640, height: int = 220, legend: Legend = LEGEND
) -> Markup:
    """Vertical stacked columns over time (one per day or month), labels under every few columns."""
    left, bottom, top = 60, 40, 28
    inner_w = width - left - 10
    inner_h = height - top - bottom
    peak = _nice_max(max((b.voucher + b.copay for b in bars), default=0))
    col_w = inner_w / max(1, len(bars))
    every = max(1, len(bars) // 10)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" class="chart" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" aria-label="{escape(title)}">',
        f'<text x="0" y="16" class="chart-title">{escape(title)}</text>',
        f'<line x1="{left}" y1="{top + inner_h}" x2="{width - 10}" y2="{top + inner_h}" stroke="#888"/>',
        f'<text x="{left - 6}" y="{top + 10}" text-anchor="end">{peak:,}</text>',
        f'<text x="{left - 6}" y="{top + inner_h}" text-anchor="end">0</text>',
    ]
    for i, bar in enumerate(bars):
        x = left + i * col_w
        v_h = bar.voucher / peak * inner_h
        c_h = bar.copay / peak * inner_h
        base = top + inner_h
        w = max(1.0, col_w * 0.8)
        parts.append(
            f'<rect x="{x:.1f}" y="{base - v_h:.1f}" width="{w:.1f}" height="{v_h:.1f}" fill="{VOUCHER_COLOUR}">'
            f"<title>{escape(bar.label)}: voucher share {bar.voucher}</title></rect>"
            f'<rect x="{x:.1f}" y="{base - v_h - c_h:.1f}" width="{w:.1f}" height="{c_h:.1f}" fill="{COPAY_COLOUR}">'
            f"<title>{escape(bar.label)}: co-payment {bar.copay}</title></rect>"
        )
        if i % every == 0:
            parts.append(f'<text x="{x:.1f}" y="{base + 14}" class="tick">{escape(bar.label)}</text>')
    parts.append(_legend(height - 8, legend))
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every interpolated text above is escaped


def _legend(y: int, legend: Legend) -> str:
    return (
        f'<rect x="0" y="{y - 9}" width="10" height="10" fill="{VOUCHER_COLOUR}"/>'
        f'<text x="14" y="{y}">{escape(legend[0])}</text>'
        f'<rect x="120" y="{y - 9}" width="10" height="10" fill="{COPAY_COLOUR}"/>'
        f'<text x="134" y="{y}">{escape(legend[1])}</text>'
    )


def meter(used: int, limit: int, *, unit: str = "") -> Markup:
    """A quota bar: ``used`` of ``limit`` as an HTML ``<meter>`` with text (over the limit shows full)."""
    shown_limit = max(limit, 1)
    return Markup(  # noqa: S704 - numbers and an escaped unit only
        f'<meter min="0" max="{shown_limit}" high="{shown_limit * 0.8:.0f}" value="{min(used, shown_limit)}">'
        f'</meter> <span class="meter-text">{used:,} / {limit:,}{escape(unit)}</span>'
    )
