"""Injected time: every rule that depends on "now" takes a :class:`Clock` so tests can move time."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """A source of wall-clock time in integer milliseconds since the Unix epoch."""

    def now_ms(self) -> int:
        """Return the current time in milliseconds since the epoch."""
        ...


class SystemClock:
    """The real clock."""

    def now_ms(self) -> int:
        """Return the system time in milliseconds since the epoch."""
        return time.time_ns() // 1_000_000


class FakeClock:
    """A clock that only moves when told to (tests, simulations, benchmarks)."""

    def __init__(self, start_ms: int = 1_764_000_000_000) -> None:
        self._now = start_ms

    def now_ms(self) -> int:
        """Return the fake current time."""
        return self._now

    def advance(self, ms: int) -> None:
        """Move time forward by ``ms`` milliseconds (never backwards)."""
        if ms < 0:
            raise ValueError("a clock never goes backwards")
        self._now += ms

    def set(self, now_ms: int) -> None:
        """Jump to ``now_ms`` (which must not be in the past)."""
        self.advance(now_ms - self._now)
