"""Human output of the CLI's default views: ``rich`` tables for lists, readable values for every field.

The broker answers in exact integers (milliseconds since the epoch, micro-ε, δ in 10⁻¹² units, credits in
the smallest unit); a person reads dates, ε as a decimal, δ in scientific notation and grouped amounts. The
field's name says its unit (``*_ms``, ``*epsilon_micro``, ``*delta_e12``), so one function turns each
into text. ``--json`` keeps the exact integers. Off a terminal the table is not wrapped or cut (a log or a
pipe gets whole ids).
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from rich.console import Console
from rich.table import Table

_PLAIN_WIDTH = 400  # off a terminal: wide enough that no row is wrapped or cut


def value_text(key: str, value: Any) -> str:
    """A field's value as a person reads it, by the unit its name carries."""
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, int):
        return str(value)
    if key.endswith("_ms"):
        return datetime.fromtimestamp(value / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    if key.endswith("epsilon_micro"):
        return f"ε {Decimal(value).scaleb(-6).normalize():f}"
    if key.endswith("delta_e12"):
        return "δ 0" if value == 0 else f"δ {value / 10**12:.2e}"
    if key in ("amount", "balance", "cost", "credits", "held", "available", "copay_limit", "copay_used"):
        return credits(value)
    return str(value)


def credits(amount: object) -> str:
    """An amount of credits, grouped, with the right plural (``1 credit``, ``12,500 credits``)."""
    if not isinstance(amount, int) or isinstance(amount, bool):
        return f"{amount} credits"
    return f"{amount:,} credit" + ("" if amount == 1 else "s")


def print_list(items: list[Any]) -> None:
    """A list of objects as one table (columns: their scalar fields, in first-seen order)."""
    if not items:
        print("(none)")
        return
    if not all(isinstance(item, dict) for item in items):
        for item in items:
            print(item)
        return
    columns: list[str] = []
    for item in items:
        columns.extend(k for k, v in item.items() if k not in columns and not isinstance(v, dict | list))
    table = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
    for column in columns:
        table.add_column(column, no_wrap=True, overflow="ignore")
    for item in items:
        table.add_row(*(value_text(c, item.get(c)) for c in columns))
    _console().print(table)


def print_object(data: dict[str, Any]) -> None:
    """An object as ``key: value`` lines with readable values."""
    for key, value in data.items():
        print(f"{key}: {value_text(key, value)}")


def _console() -> Console:
    """A console on the current stdout (the test runner swaps it), unwrapped off a terminal."""
    out = sys.stdout
    tty = out.isatty()
    return Console(file=out, width=None if tty else _PLAIN_WIDTH, no_color=not tty, highlight=False)
