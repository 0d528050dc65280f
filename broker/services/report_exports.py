"""Exports of the signed subsidy report that open in spreadsheets: CSV with a UTF-8 BOM, and XLSX.

Both are renderings of the signed JSON document (only the JSON carries the proof).

* CSV (:func:`subsidy_csv_bytes`): ``\\ufeff`` + the machine columns of :func:`broker.services.reports.subsidy_csv`
  (amounts as exact integers of the currency's smallest unit), then, for a programme with a currency, the same
  amounts in major units (``cost_cny`` = ``1234.56``). The BOM is what makes Excel on Chinese Windows read
  UTF-8 instead of GBK, so Chinese company names are not garbled.
* XLSX (:func:`subsidy_xlsx`, openpyxl): a header block (programme, its code, period, time zone, currency),
  then one row per SME and the totals, headers in the reader's language; amounts are typed number cells in
  major units written from exact decimals (``1234.56``, never a binary float computed here) with the
  currency's number format, hours numbers with two decimals, counts integers.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from openpyxl import Workbook
from openpyxl.styles import Font

from broker.i18n import _, gettext
from broker.services.reports import subsidy_csv
from common.money import to_major

MONEY_COLUMNS = ("cost", "voucher_share", "copay", "credit_redeemed", "credit_expired", "credit_left")
BOM = "\ufeff"
_HEADERS: tuple[tuple[str, str], ...] = (
    ("name", _("SME")),
    ("name_zh", _("Registered name")),
    ("uscc", _("Unified social credit code")),
    ("jobs", _("Jobs")),
    ("cpu_hours_display", _("CPU-hours")),
    ("gpu_hours_display", _("GPU-hours")),
    ("gib_hours_display", _("GiB-hours")),
    ("cost", _("Cost")),
    ("voucher_share", _("Voucher share")),
    ("copay", _("Co-payment")),
    ("credit_redeemed", _("Credit redeemed")),
    ("credit_expired", _("Credit expired")),
    ("credit_left", _("Credit left")),
)
_NUMBER_FORMATS = {"CNY": '"¥"#,##0.00', None: "#,##0"}


def _currency(report: Mapping[str, Any]) -> str | None:
    currency = report.get("currency")
    return None if currency in (None, "credits") else str(currency)


def subsidy_csv_bytes(document: Mapping[str, Any]) -> bytes:
    """The CSV a spreadsheet opens: a UTF-8 BOM, the exact machine columns, and the amounts in major units."""
    report = document["report"]
    currency = _currency(report)
    lines = subsidy_csv(document).splitlines()
    if currency is not None:
        suffix = currency.lower()
        extra_header = ",".join(f"{c}_{suffix}" for c in MONEY_COLUMNS)
        rows = [*report["rows"], report["totals"]]
        lines = [f"{lines[0]},{extra_header}"] + [
            f"{line}," + ",".join(str(to_major(int(row[c]), currency)) for c in MONEY_COLUMNS)
            for line, row in zip(lines[1:], rows, strict=True)
        ]
    return (BOM + "\n".join(lines) + "\n").encode("utf-8")


def _local(ms: int, zone: str) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M")


def _header_block(report: Mapping[str, Any], locale: str) -> list[tuple[str, str]]:
    programme = report["programme"]
    zone = str(report.get("time_zone", "UTC"))
    period = report["period"]
    return [
        (gettext(locale, _("Subsidy report")), str(programme.get("name_zh") or programme["name"])),
        (gettext(locale, _("Unified social credit code")), str(programme.get("uscc") or "–")),
        (
            gettext(locale, _("Period")),
            f"{period['label']} ({_local(period['start_ms'], zone)} – {_local(period['end_ms'], zone)})",
        ),
        (gettext(locale, _("Time zone")), zone),
        (gettext(locale, _("Currency")), str(report.get("currency", "credits"))),
    ]


def _cell_values(row: Mapping[str, Any], currency: str | None) -> list[Any]:
    values: list[Any] = []
    for key, _label in _HEADERS:
        value = row.get(key)
        if key in MONEY_COLUMNS:
            values.append(to_major(int(value or 0), currency))
        elif key.endswith("_display"):
            values.append(Decimal(str(value)))  # "1.25" -> Decimal("1.25"): written as the same digits
        else:
            values.append(value if value is not None else "")
    return values


def subsidy_xlsx(document: Mapping[str, Any], locale: str) -> bytes:
    """The subsidy report as an XLSX workbook (one sheet), headers in ``locale``."""
    report = document["report"]
    currency = _currency(report)
    book = Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.title = gettext(locale, _("Subsidy report"))[:31]
    for label, value in _header_block(report, locale):
        sheet.append([label, value])
    sheet.append([])
    sheet.append([gettext(locale, label) for _key, label in _HEADERS])
    for cell in sheet[sheet.max_row]:
        cell.font = Font(bold=True)
    totals = dict(report["totals"]) | {"name": gettext(locale, _("Total"))}
    for row in [*report["rows"], totals]:
        sheet.append(_cell_values(row, currency))
        _format_row(sheet[sheet.max_row], currency)
    sheet.column_dimensions["A"].width = 28
    sheet.column_dimensions["C"].width = 22
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def _format_row(cells: Sequence[Any], currency: str | None) -> None:
    """Number formats per column; text stays text (an SME named ``=HYPERLINK(…)`` is no formula)."""
    money_format = _NUMBER_FORMATS.get(currency, "#,##0.00") if currency else _NUMBER_FORMATS[None]
    for (key, _label), cell in zip(_HEADERS, cells, strict=True):
        if isinstance(cell.value, str):
            cell.data_type = "s"
        if key in MONEY_COLUMNS:
            cell.number_format = money_format
        elif key.endswith("_display"):
            cell.number_format = "0.00"
