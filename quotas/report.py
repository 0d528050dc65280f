"""Subsidy-report arithmetic: per-SME rows and totals, exact, data in and data out.

Two entry points, the same result:

* :func:`subsidy_report` over raw data (settled lines, usage records tagged with their SME, credit summaries);
* :func:`build_report` over per-SME sums (:class:`SmeTotals`) that a database already aggregated
  (``GROUP BY org_id``), for reports over millions of usage records.

Exactness. Credits are integers and add exactly. Hours are ``Fraction`` s built from the integer unit·ms sums
(CPU-hours = milli-CPU·ms / 3.6e9, GPU-hours = GPU·ms / 3.6e6, GiB-hours = MiB·ms / (1024 * 3.6e6)).
Totals are the exact sums of the rows, so ``totals == sum(rows)`` holds to the unit.

Display rounding. :func:`display_hours` rounds an exact hour value half-up to a fixed number of decimals (2 by
default) for CSV/HTML. It is applied to each row and to the total independently, so the displayed rows may
differ from the displayed total by at most half a unit in the last place per row; the exact values (and every
credit amount) always reconcile. Machine-readable exports should carry the exact ``"n/d"`` values.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from fractions import Fraction

from common.errors import InvalidInput
from quotas.metering import ResourceKind, UsageRecord

MS_PER_HOUR = 3_600_000
TOTAL_ROW_ID = "total"
"""The ``org_id`` of the totals row."""


def _check_non_negative(owner: object, names: Iterable[str]) -> None:
    for name in names:
        value = getattr(owner, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidInput(f"{type(owner).__name__}.{name} must be a non-negative integer, got {value!r}")


@dataclass(frozen=True, slots=True)
class SettledLine:
    """One settled job: its metered ``cost`` split into the voucher share and the SME's co-payment."""

    org_id: str
    job_id: str
    cost: int
    voucher_share: int
    copay: int

    def __post_init__(self) -> None:
        _check_non_negative(self, ("cost", "voucher_share", "copay"))
        if self.voucher_share + self.copay != self.cost:
            raise InvalidInput(
                f"settled job {self.job_id}: voucher share {self.voucher_share} + co-payment {self.copay} "
                f"!= cost {self.cost}"
            )


@dataclass(frozen=True, slots=True)
class CreditSummary:
    """An SME's voucher credit over the period: redeemed, expired, and what is left at its end."""

    org_id: str
    redeemed: int
    expired: int
    remaining: int

    def __post_init__(self) -> None:
        _check_non_negative(self, ("redeemed", "expired", "remaining"))


@dataclass(frozen=True, slots=True)
class SmeTotals:
    """Per-SME integer sums, the input of :func:`build_report` (what a SQL ``GROUP BY`` can produce)."""

    org_id: str
    jobs: int = 0
    cpu_milli_ms: int = 0
    gpu_ms: int = 0
    memory_mib_ms: int = 0
    cost: int = 0
    voucher_share: int = 0
    copay: int = 0
    credit_redeemed: int = 0
    credit_expired: int = 0
    credit_left: int = 0

    def __post_init__(self) -> None:
        _check_non_negative(self, [f.name for f in fields(self) if f.name != "org_id"])
        if self.voucher_share + self.copay != self.cost:
            raise InvalidInput(
                f"{self.org_id}: voucher share {self.voucher_share} + co-payment {self.copay} "
                f"!= cost {self.cost}"
            )


@dataclass(frozen=True, slots=True)
class ReportRow:
    """One line of the subsidy report (one SME, or the totals with ``org_id == TOTAL_ROW_ID``)."""

    org_id: str
    jobs: int
    cpu_hours: Fraction
    gpu_hours: Fraction
    gib_hours: Fraction
    cost: int
    voucher_share: int
    copay: int
    credit_redeemed: int
    credit_expired: int
    credit_left: int

    def display(self, places: int = 2) -> dict[str, str | int]:
        """The row for humans: hours rounded half-up to ``places`` decimals, credits as exact integers."""
        return {
            "org_id": self.org_id,
            "jobs": self.jobs,
            "cpu_hours": display_hours(self.cpu_hours, places),
            "gpu_hours": display_hours(self.gpu_hours, places),
            "gib_hours": display_hours(self.gib_hours, places),
            "cost": self.cost,
            "voucher_share": self.voucher_share,
            "copay": self.copay,
            "credit_redeemed": self.credit_redeemed,
            "credit_expired": self.credit_expired,
            "credit_left": self.credit_left,
        }


@dataclass(frozen=True, slots=True)
class SubsidyReport:
    """Rows sorted by ``org_id`` and their exact totals."""

    rows: tuple[ReportRow, ...]
    totals: ReportRow


def display_hours(value: Fraction, places: int = 2) -> str:
    """Format an exact non-negative hour value rounded half-up to ``places`` decimals (e.g. ``"1.25"``)."""
    if places < 0:
        raise InvalidInput(f"places must be non-negative, got {places}")
    if value < 0:
        raise InvalidInput(f"hours must be non-negative, got {value}")
    scale = 10**places
    scaled = (value.numerator * scale * 2 + value.denominator) // (2 * value.denominator)
    whole, frac = divmod(scaled, scale)
    return f"{whole}.{frac:0{places}d}" if places else str(whole)


def _row(totals: SmeTotals, org_id: str | None = None) -> ReportRow:
    return ReportRow(
        org_id=totals.org_id if org_id is None else org_id,
        jobs=totals.jobs,
        cpu_hours=Fraction(totals.cpu_milli_ms, 1_000 * MS_PER_HOUR),
        gpu_hours=Fraction(totals.gpu_ms, MS_PER_HOUR),
        gib_hours=Fraction(totals.memory_mib_ms, 1_024 * MS_PER_HOUR),
        cost=totals.cost,
        voucher_share=totals.voucher_share,
        copay=totals.copay,
        credit_redeemed=totals.credit_redeemed,
        credit_expired=totals.credit_expired,
        credit_left=totals.credit_left,
    )


_SUMMED = (
    "jobs",
    "cpu_milli_ms",
    "gpu_ms",
    "memory_mib_ms",
    "cost",
    "voucher_share",
    "copay",
    "credit_redeemed",
    "credit_expired",
    "credit_left",
)


def build_report(aggregates: Iterable[SmeTotals]) -> SubsidyReport:
    """Build the report from per-SME sums; one row per SME (org ids must be unique), totals summed exactly.

    The totals row sums the integer inputs and converts once, so its hours equal the sum of the rows' hours.
    """
    by_org: dict[str, SmeTotals] = {}
    for agg in aggregates:
        if agg.org_id in by_org:
            raise InvalidInput(f"two aggregates for {agg.org_id}; give one per SME")
        by_org[agg.org_id] = agg
    ordered = [by_org[org] for org in sorted(by_org)]
    grand = SmeTotals(TOTAL_ROW_ID, **{name: sum(getattr(a, name) for a in ordered) for name in _SUMMED})
    return SubsidyReport(tuple(_row(a) for a in ordered), _row(grand))


_USAGE_FIELD = {ResourceKind.CPU: 0, ResourceKind.GPU: 1, ResourceKind.MEMORY: 2}


def aggregate(
    lines: Iterable[SettledLine],
    usage: Iterable[tuple[str, UsageRecord]],
    credits: Iterable[CreditSummary],
) -> list[SmeTotals]:
    """Sum raw data per SME: settled lines (jobs, cost and its split), usage records tagged with the SME they
    belong to (unit·ms per resource), and credit summaries. Every SME seen in any input gets a row.
    """
    money: dict[str, list[int]] = {}
    for line in lines:
        acc = money.setdefault(line.org_id, [0, 0, 0, 0])
        acc[0] += 1
        acc[1] += line.cost
        acc[2] += line.voucher_share
        acc[3] += line.copay
    used: dict[str, list[int]] = {}
    index = _USAGE_FIELD
    for org_id, record in usage:
        sums = used.get(org_id)
        if sums is None:
            sums = used[org_id] = [0, 0, 0]
        sums[index[record.resource]] += record.quantity_unit_ms
    credit: dict[str, CreditSummary] = {}
    for summary in credits:
        if summary.org_id in credit:
            raise InvalidInput(f"two credit summaries for {summary.org_id}; give one per SME")
        credit[summary.org_id] = summary
    result = []
    for org_id in sorted(money.keys() | used.keys() | credit.keys()):
        jobs, cost, voucher, copay = money.get(org_id, (0, 0, 0, 0))
        cpu, gpu, mem = used.get(org_id, (0, 0, 0))
        cs = credit.get(org_id, CreditSummary(org_id, 0, 0, 0))
        result.append(
            SmeTotals(
                org_id, jobs, cpu, gpu, mem, cost, voucher, copay, cs.redeemed, cs.expired, cs.remaining
            )
        )
    return result


def subsidy_report(
    lines: Iterable[SettledLine],
    usage: Iterable[tuple[str, UsageRecord]],
    credits: Iterable[CreditSummary],
) -> SubsidyReport:
    """The subsidy report over raw data: :func:`aggregate` then :func:`build_report`."""
    return build_report(aggregate(lines, usage, credits))
