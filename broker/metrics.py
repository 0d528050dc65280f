"""Prometheus metrics, built per container on its own registry (no import-time globals).

Names are ``sbx_*`` with units in the name; labels are bounded sets (never job or voucher ids).
Documented in ``docs/metrics.md``.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram

from quotas.metering import ResourceKind, UsageRecord

# Usage is stored as milli-CPU·ms, GPU·ms and MiB·ms; exported as CPU-seconds, GPU-seconds, GiB-seconds.
_USAGE_SCALE = {ResourceKind.CPU: 1_000_000, ResourceKind.GPU: 1_000, ResourceKind.MEMORY: 1_024_000}


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
        self.usage_cpu = Counter("sbx_usage_cpu_seconds", "Metered CPU-seconds of settled jobs.", registry=r)
        self.usage_gpu = Counter("sbx_usage_gpu_seconds", "Metered GPU-seconds of settled jobs.", registry=r)
        self.usage_memory = Counter(
            "sbx_usage_memory_gib_seconds", "Metered GiB-seconds of memory of settled jobs.", registry=r
        )
        self.admission_latency = Histogram(
            "sbx_admission_latency_seconds",
            "Time for one admission decision and its write.",
            registry=r,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
        )

    def record_usage(self, records: Iterable[UsageRecord]) -> None:
        """Add settled usage records to the usage counters (in seconds of each resource)."""
        counters = {
            ResourceKind.CPU: self.usage_cpu,
            ResourceKind.GPU: self.usage_gpu,
            ResourceKind.MEMORY: self.usage_memory,
        }
        for record in records:
            counters[record.resource].inc(record.quantity_unit_ms / _USAGE_SCALE[record.resource])
