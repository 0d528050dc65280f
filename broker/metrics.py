"""Prometheus metrics, built per container on its own registry (no import-time globals).

Names are ``sbx_*`` with units in the name; labels are bounded sets (never job or voucher ids).
Documented in ``docs/metrics.md``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram


class Metrics:
    """Every metric the broker exports, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.credits_redeemed = Counter(
            "sbx_credits_redeemed", "Credits created by voucher redemption.", registry=r
        )
        self.credits_held = Counter("sbx_credits_held", "Credits placed on hold.", registry=r)
        self.credits_settled = Counter(
            "sbx_credits_settled", "Credits settled (charged) from holds.", registry=r
        )
        self.voucher_refusals = Counter(
            "sbx_voucher_refusals", "Voucher redemptions refused, by refusal code.", ["code"], registry=r
        )
        self.http_requests = Counter(
            "sbx_http_requests",
            "HTTP requests by route template and status class.",
            ["route", "status"],
            registry=r,
        )
        self.admission_latency = Histogram(
            "sbx_admission_latency_seconds",
            "Time for one admission decision and its write.",
            registry=r,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
        )
