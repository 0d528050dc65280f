"""Metering: allocated resources * elapsed time as immutable integer usage records, priced like a quote.

A job's usage is what it was *allocated* (not what it used) for the time between the backend's start and end.
Each record carries one resource class and an integer quantity in "unit·ms": milli-CPU·ms, GPU·ms, MiB·ms.
Records are idempotent per ``(job_id, resource)``: the store keeps one per pair.

:func:`cost_of` sums the records exactly and rounds up once, exactly like :func:`quotas.pricing.price`, so
``cost_of(meter(r, s, s + d), card) == price(r, d, card)``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from fractions import Fraction

from common.errors import InvalidInput
from common.resources import Resources
from quotas.pricing import RateCard, ceil_credits


class ResourceKind(StrEnum):
    """The metered resource classes (stable values, stored and exported as metric labels)."""

    CPU = "cpu"
    GPU = "gpu"
    MEMORY = "memory"


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """``quantity_unit_ms`` of one resource allocated to one job from ``start_ms`` to ``end_ms``.

    The unit is milli-CPU·ms for ``cpu``, GPU·ms for ``gpu`` and MiB·ms for ``memory``.
    """

    job_id: str
    resource: ResourceKind
    quantity_unit_ms: int
    start_ms: int
    end_ms: int

    def __post_init__(self) -> None:
        if not isinstance(self.resource, ResourceKind):
            object.__setattr__(self, "resource", ResourceKind(self.resource))
        if isinstance(self.quantity_unit_ms, bool) or not isinstance(self.quantity_unit_ms, int):
            raise InvalidInput(f"quantity_unit_ms must be an integer, got {self.quantity_unit_ms!r}")
        if self.quantity_unit_ms < 0:
            raise InvalidInput(f"quantity_unit_ms must be non-negative, got {self.quantity_unit_ms}")
        if self.end_ms < self.start_ms:
            raise InvalidInput(
                f"usage of {self.job_id} ends ({self.end_ms}) before it starts ({self.start_ms})"
            )


def meter(job_id: str, resources: Resources, start_ms: int, end_ms: int) -> list[UsageRecord]:
    """Meter a job that held ``resources`` from ``start_ms`` to ``end_ms``: a record per non-zero resource."""
    if end_ms < start_ms:
        raise InvalidInput(f"job {job_id} ends ({end_ms}) before it starts ({start_ms})")
    elapsed = end_ms - start_ms
    amounts = (
        (ResourceKind.CPU, resources.milli_cpu),
        (ResourceKind.GPU, resources.gpus),
        (ResourceKind.MEMORY, resources.memory_mib),
    )
    return [
        UsageRecord(job_id, kind, amount * elapsed, start_ms, end_ms)
        for kind, amount in amounts
        if amount * elapsed > 0
    ]


def totals_by_resource(records: Iterable[UsageRecord]) -> dict[ResourceKind, int]:
    """Sum the quantities of ``records`` per resource class (every class present, zero if unused)."""
    totals = dict.fromkeys(ResourceKind, 0)
    for record in records:
        totals[record.resource] += record.quantity_unit_ms
    return totals


def exact_cost_of_totals(totals: dict[ResourceKind, int], card: RateCard) -> Fraction:
    """The exact cost of per-resource quantity totals (unit·ms) under ``card``."""
    return (
        card.per_milli_cpu_ms * totals.get(ResourceKind.CPU, 0)
        + card.per_gpu_ms * totals.get(ResourceKind.GPU, 0)
        + card.per_mib_ms * totals.get(ResourceKind.MEMORY, 0)
    )


def cost_of(records: Iterable[UsageRecord], card: RateCard) -> int:
    """Price usage records: exact sum over all records, rounded up once (consistent with ``price``)."""
    return ceil_credits(exact_cost_of_totals(totals_by_resource(records), card))


@dataclass(frozen=True, slots=True)
class ConservationViolation:
    """More of ``resource`` was metered inside a window than the cluster could have allocated in it."""

    resource: ResourceKind
    metered_unit_ms: Fraction
    allowed_unit_ms: int

    @property
    def excess_unit_ms(self) -> Fraction:
        """How much more was metered than the capacity allows."""
        return self.metered_unit_ms - self.allowed_unit_ms

    def __str__(self) -> str:
        unit = _UNITS[self.resource]
        return (
            f"{self.resource.value}: {_exact(self.metered_unit_ms)} {unit} metered in the window, but the "
            f"capacity allows only {self.allowed_unit_ms} {unit} (excess {_exact(self.excess_unit_ms)})"
        )


_UNITS = {ResourceKind.CPU: "milli-CPU·ms", ResourceKind.GPU: "GPU·ms", ResourceKind.MEMORY: "MiB·ms"}


def _exact(value: Fraction) -> str:
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


def clipped_quantity(record: UsageRecord, window_start: int, window_end: int) -> Fraction:
    """The part of ``record`` that falls inside ``[window_start, window_end)``, pro rata and exact."""
    overlap = min(record.end_ms, window_end) - max(record.start_ms, window_start)
    if overlap <= 0 or record.quantity_unit_ms == 0:
        return Fraction(0)
    duration = record.end_ms - record.start_ms
    if overlap >= duration:
        return Fraction(record.quantity_unit_ms)
    return Fraction(record.quantity_unit_ms * overlap, duration)


def conservation_violations(
    records: Iterable[UsageRecord], capacity: Resources, window_start: int, window_end: int
) -> list[ConservationViolation]:
    """Check that metering never invents capacity: per resource, the metered unit·ms of all jobs inside the
    window (each record clipped to it) must not exceed ``capacity * window length``. Returns the violations
    (empty when metering is consistent with the cluster's size).
    """
    if window_end < window_start:
        raise InvalidInput(f"window ends ({window_end}) before it starts ({window_start})")
    length = window_end - window_start
    metered = dict.fromkeys(ResourceKind, Fraction(0))
    for record in records:
        metered[record.resource] += clipped_quantity(record, window_start, window_end)
    allowed = {
        ResourceKind.CPU: capacity.milli_cpu * length,
        ResourceKind.GPU: capacity.gpus * length,
        ResourceKind.MEMORY: capacity.memory_mib * length,
    }
    return [
        ConservationViolation(kind, metered[kind], allowed[kind])
        for kind in ResourceKind
        if metered[kind] > allowed[kind]
    ]
