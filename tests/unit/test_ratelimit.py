"""Token buckets: bursts allowed, then one per interval; exact waits."""

from __future__ import annotations

from common.clock import FakeClock
from quotas.ratelimit import Rate, RateLimiter


def test_burst_then_refill() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock, {"redeem": Rate(per_second=2, burst=3)})
    assert [limiter.take("a", "redeem") for _ in range(3)] == [0, 0, 0]
    assert limiter.take("a", "redeem") == 1
    assert limiter.take("b", "redeem") == 0  # tenants are independent
    clock.advance(500)
    assert limiter.take("a", "redeem") == 0
    assert limiter.take("a", "redeem") == 1
    assert limiter.take("a", "unlimited") == 0


def test_a_burst_of_ten_times_the_limit_admits_only_the_limit() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock, {"submit": Rate(per_second=5, burst=10)})
    allowed = sum(limiter.take("a", "submit") == 0 for _ in range(100))
    assert allowed == 10
