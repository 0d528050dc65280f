"""Per-tenant token buckets: a pure, exact (integer milli-token) rate limiter over an injected clock."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from common.clock import Clock


@dataclass(frozen=True, slots=True)
class Rate:
    """``per_second`` requests sustained, bursts of up to ``burst``."""

    per_second: int
    burst: int

    def __post_init__(self) -> None:
        if self.per_second <= 0 or self.burst <= 0:
            raise ValueError("a rate needs a positive per-second rate and burst")


class RateLimiter:
    """Token buckets per (tenant, category); ``take`` returns 0 when allowed, else the seconds to wait."""

    def __init__(self, clock: Clock, rates: dict[str, Rate]) -> None:
        self._clock = clock
        self._rates = dict(rates)
        self._buckets: dict[tuple[str, str], tuple[int, int]] = {}  # (milli-tokens, at ms)
        self._lock = threading.Lock()

    def take(self, tenant: str, category: str) -> int:
        """Spend one token of ``category`` for ``tenant``; 0 if allowed, else whole seconds until one frees."""
        rate = self._rates.get(category)
        if rate is None:
            return 0
        now = self._clock.now_ms()
        full = rate.burst * 1000
        with self._lock:
            tokens, at = self._buckets.get((tenant, category), (full, now))
            tokens = min(full, tokens + max(0, now - at) * rate.per_second)
            if tokens >= 1000:
                self._buckets[(tenant, category)] = (tokens - 1000, now)
                return 0
            self._buckets[(tenant, category)] = (tokens, now)
        missing_ms = -(-(1000 - tokens) // rate.per_second)
        return max(1, -(-missing_ms // 1000))
