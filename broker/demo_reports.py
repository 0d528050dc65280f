"""The demo's closing steps: the subsidy report and where the dashboard is."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def report_steps() -> list[tuple[str, Callable[[Any], str]]]:
    """Steps added at the end of ``make demo``."""
    return []
