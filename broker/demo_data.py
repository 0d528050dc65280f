"""The data foundation's demo steps (a synthetic city dataset, access, DP answers)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def data_steps() -> list[tuple[str, Callable[[Any], str]]]:
    """Steps added to ``make demo`` by the data foundation."""
    return []
