"""Prometheus metrics, built per container on its own registry (no import-time globals).

Two kinds of metric live here:

* process counters and the admission-latency histogram, updated by the code paths that do the work;
* gauges and counters **derived from the database at scrape time** by :class:`DatabaseCollector` — ledger
  totals, per-SME credit and quota use, jobs by state, queue length, privacy budgets, audit entries. They are
  the same on every replica (they read the shared database), so dashboards must not ``sum`` them across
  replicas (use ``max``).

Names are ``sbx_*`` with units in the name; labels are bounded sets (organisation and dataset ids, states,
account kinds — never job or voucher ids). Documented in ``docs/metrics.md``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Connection, text
from sqlalchemy.exc import SQLAlchemyError

from quotas.jobs import JobState
from quotas.metering import ResourceKind, UsageRecord
from quotas.quota import DEFAULT_QUOTA

log = logging.getLogger("sbx.metrics")
T = TypeVar("T")

# Usage is stored as milli-CPU·ms, GPU·ms and MiB·ms; exported as CPU-seconds, GPU-seconds, GiB-seconds.
_USAGE_SCALE = {ResourceKind.CPU: 1_000_000, ResourceKind.GPU: 1_000, ResourceKind.MEMORY: 1_024_000}
_MIB = 1024 * 1024


class ReadableDatabase(Protocol):
    """What the collector needs of :class:`broker.db.database.Database`: a read transaction."""

    def read(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` in a read transaction and return its result."""
        ...


class Metrics:
    """Every metric the broker exports, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.database_collector: DatabaseCollector | None = None
        r = self.registry
        self.credits_redeemed = Counter(
            "sbx_credits_redeemed", "Credits created by voucher redemption (this process).", registry=r
        )
        self.credits_held = Counter("sbx_credits_held", "Credits placed on hold (this process).", registry=r)
        self.credits_settled = Counter(
            "sbx_credits_settled", "Credits settled (charged) from holds (this process).", registry=r
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
        self.sandbox_kills = Counter(
            "sbx_sandbox_kills",
            "Jobs the sandbox ended for breaking a physical limit, by reason (this process).",
            ["reason"],
            registry=r,
        )
        self.backend_up = Gauge(
            "sbx_backend_up",
            "1 while the compute backend answers (a dead local Ray head is restarted), 0 while it does not.",
            registry=r,
        )
        self.db_integrity_ok = Gauge(
            "sbx_db_integrity_ok",
            "1 when the last periodic integrity check of the database passed (SQLite: PRAGMA quick_check), "
            "0 when it found damage (restore a backup: docs/deploy.md).",
            registry=r,
        )
        self.sandbox_available = Gauge(
            "sbx_sandbox_available",
            "1 when this replica's backend can run SME code isolated, 0 when it refuses SME code.",
            registry=r,
        )

        self.audit_health = AuditHealth()
        r.register(self.audit_health)

    def sandbox_kill(self, reason: str) -> None:
        """Count one job the sandbox ended (``out_of_memory``, ``disk_quota``, ``too_many_processes``)."""
        self.sandbox_kills.labels(reason=reason).inc()

    def record_usage(self, records: Iterable[UsageRecord]) -> None:
        """Add settled usage records to the usage counters (in seconds of each resource)."""
        counters = {
            ResourceKind.CPU: self.usage_cpu,
            ResourceKind.GPU: self.usage_gpu,
            ResourceKind.MEMORY: self.usage_memory,
        }
        for record in records:
            counters[record.resource].inc(record.quantity_unit_ms / _USAGE_SCALE[record.resource])

    def record_ledger_consistency(self, ok: bool) -> None:
        """Publish the outcome of the last ledger verification (``sbx_ledger_consistent``)."""
        self.audit_health.record_ledger(ok=ok)


class AuditHealth(Collector):
    """Audit-log health as this replica last saw it; each metric is absent until it is first known.

    Set by the background loops (full verification, checkpoints) and by operators' verify and checkpoint
    calls. The alerts take ``min``/``max`` over replicas.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._verified: tuple[bool, int, int] | None = None  # (ok, checked, at_ms)
        self._checkpoint_ms: int | None = None
        self._ledger_ok: bool | None = None

    def record_ledger(self, *, ok: bool) -> None:
        """Publish whether the ledger matched its recorded transfers and its invariants."""
        with self._lock:
            self._ledger_ok = ok

    def record_verification(self, *, ok: bool, checked: int, at_ms: int) -> None:
        """Publish the outcome of a full audit verification."""
        with self._lock:
            self._verified = (ok, checked, at_ms)

    def record_checkpoint(self, at_ms: int) -> None:
        """Publish when the newest signed checkpoint was made (or now, for a log with nothing to sign)."""
        with self._lock:
            self._checkpoint_ms = at_ms

    def describe(self) -> list[Metric]:
        """Nothing up front (the values may not be known yet)."""
        return []

    def collect(self) -> Iterator[Metric]:
        """The known values only: a gauge at 0 before the first verification would read as a failure."""
        with self._lock:
            verified, checkpoint_ms, ledger_ok = self._verified, self._checkpoint_ms, self._ledger_ok
        if ledger_ok is not None:
            yield GaugeMetricFamily(
                "sbx_ledger_consistent",
                "1 when the last ledger verification passed (balances = entries = recorded transfers), else 0.",
                value=1 if ledger_ok else 0,
            )
        if verified is not None:
            ok, checked, at_ms = verified
            yield GaugeMetricFamily(
                "sbx_audit_chain_valid",
                "1 when the last full audit verification passed, 0 when it found a bad entry.",
                value=1 if ok else 0,
            )
            yield GaugeMetricFamily(
                "sbx_audit_verified_entries",
                "Entries the last full audit verification checked.",
                value=checked,
            )
            yield GaugeMetricFamily(
                "sbx_audit_last_verify_timestamp_seconds",
                "When the audit log was last fully verified.",
                value=at_ms / 1000,
            )
        if checkpoint_ms is not None:
            yield GaugeMetricFamily(
                "sbx_audit_last_checkpoint_timestamp_seconds",
                "When this replica's newest signed audit checkpoint was made (now, while the log is empty).",
                value=checkpoint_ms / 1000,
            )


def attach_database(metrics: Metrics, db: ReadableDatabase) -> None:
    """Register the scrape-time database collector on ``metrics`` once (later calls change nothing)."""
    if metrics.database_collector is None:
        metrics.database_collector = DatabaseCollector(db)
        metrics.registry.register(metrics.database_collector)


_LEDGER = text("SELECT kind, SUM(balance) AS total FROM accounts GROUP BY kind")
_SME_AVAILABLE = text(
    "SELECT a.org_id AS org_id, SUM(a.balance) AS total FROM accounts a JOIN grants g ON g.account_id = a.id "
    "WHERE g.status = 'active' GROUP BY a.org_id"
)
_SME_HELD = text("SELECT org_id, balance FROM accounts WHERE kind = 'held'")
_ORGS = text("SELECT id, name, role FROM organisations")
_QUOTAS = text(
    "SELECT org_id, max_milli_cpu, max_gpus, max_memory_mib, max_running_jobs, max_queued_jobs FROM sme_quotas"
)
_IN_USE = text(
    "SELECT org_id, state, COUNT(*) AS n, SUM(milli_cpu) AS cpu, SUM(gpus) AS gpus, SUM(memory_mib) AS mem "
    "FROM jobs WHERE state IN ('queued', 'admitted', 'running') GROUP BY org_id, state"
)
_BY_STATE = text("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")
_AUDIT = text("SELECT seq FROM audit_head WHERE id = 1")
_BUDGETS = text(
    "SELECT id, total_epsilon_micro, spent_epsilon_micro, total_delta_e12, spent_delta_e12 FROM datasets"
)
_LEDGER_COUNTERS = {
    # account kind -> (metric name, help, sign): these accounts only ever grow (or, for programme, shrink)
    "programme": ("sbx_ledger_redeemed_credits", "Credits ever moved from programmes into grants.", -1),
    "spent": ("sbx_ledger_voucher_settled_credits", "Credits vouchers paid for settled work.", 1),
    "copaid": ("sbx_ledger_copay_settled_credits", "Credits SMEs co-paid for settled work.", 1),
    "expired": ("sbx_ledger_expired_credits", "Voucher credit that expired unused.", 1),
}


class DatabaseCollector(Collector):
    """Reads the shared database at scrape time and yields ledger, quota, queue, budget and audit metrics."""

    def __init__(self, db: ReadableDatabase) -> None:
        self._db = db

    def describe(self) -> list[Metric]:
        """Nothing up front: registering must not touch the database."""
        return []

    def collect(self) -> Iterator[Metric]:
        """One read transaction; a failing database gives ``sbx_metrics_database_up 0`` and nothing else."""
        try:
            families = self._db.read(self._families)
        except SQLAlchemyError as exc:
            log.warning("metrics: the database did not answer (%s)", type(exc).__name__)
            families = []
            up = 0
        else:
            up = 1
        yield GaugeMetricFamily(
            "sbx_metrics_database_up", "1 when the last scrape could read the database.", value=up
        )
        yield from families

    def _families(self, conn: Connection) -> list[Metric]:
        out: list[Metric] = []
        out.extend(_ledger_families(conn))
        out.extend(_org_families(conn))
        out.extend(_job_families(conn))
        out.extend(_budget_families(conn))
        audit = CounterMetricFamily("sbx_audit_entries", "Entries appended to the audit log.")
        seq = conn.execute(_AUDIT).scalar()
        audit.add_metric([], float(seq or 0))
        out.append(audit)
        return out


def _ledger_families(conn: Connection) -> list[Metric]:
    totals = {str(r.kind): int(r.total or 0) for r in conn.execute(_LEDGER)}
    balances = GaugeMetricFamily(
        "sbx_ledger_balance_credits", "Sum of ledger account balances by account kind.", labels=["kind"]
    )
    for kind in ("programme", "grant", "copay", "held", "spent", "copaid", "expired"):
        balances.add_metric([kind], float(totals.get(kind, 0)))
    out: list[Metric] = [balances]
    for kind, (name, doc, sign) in _LEDGER_COUNTERS.items():
        family = CounterMetricFamily(name, doc)
        family.add_metric([], float(sign * totals.get(kind, 0)))
        out.append(family)
    held = GaugeMetricFamily("sbx_ledger_held_credits", "Credits on hold for admitted or running work.")
    held.add_metric([], float(totals.get("held", 0)))
    out.append(held)
    return out


def _org_families(conn: Connection) -> list[Metric]:
    info = GaugeMetricFamily(
        "sbx_org_info", "Organisations (value 1): id, name and role.", labels=["org_id", "name", "role"]
    )
    smes: list[str] = []
    for r in conn.execute(_ORGS):
        info.add_metric([r.id, r.name, r.role], 1.0)
        if r.role == "sme":
            smes.append(str(r.id))
    available = GaugeMetricFamily(
        "sbx_sme_available_credits", "Voucher credit left on an SME's active grants.", labels=["org_id"]
    )
    found = {str(r.org_id): int(r.total or 0) for r in conn.execute(_SME_AVAILABLE)}
    held_by = {str(r.org_id): int(r.balance) for r in conn.execute(_SME_HELD)}
    held = GaugeMetricFamily("sbx_sme_held_credits", "Credits an SME has on hold.", labels=["org_id"])
    for org in smes:
        available.add_metric([org], float(found.get(org, 0)))
        held.add_metric([org], float(held_by.get(org, 0)))
    return [info, available, held, *_quota_families(conn, smes)]


def _quota_families(conn: Connection, smes: list[str]) -> list[Metric]:
    d = DEFAULT_QUOTA
    default = (
        d.max_resources.milli_cpu,
        d.max_resources.gpus,
        d.max_resources.memory_mib,
        d.max_running_jobs,
        d.max_queued_jobs,
    )
    limits = {str(r.org_id): tuple(int(v) for v in r[1:]) for r in conn.execute(_QUOTAS)}
    use: dict[str, list[int]] = {}
    for r in conn.execute(_IN_USE):
        acc = use.setdefault(str(r.org_id), [0, 0, 0, 0, 0])
        if r.state == JobState.QUEUED.value:
            acc[4] += int(r.n)
        else:
            acc[0] += int(r.cpu or 0)
            acc[1] += int(r.gpus or 0)
            acc[2] += int(r.mem or 0)
            acc[3] += int(r.n)
    specs: list[tuple[str, str, float]] = [
        ("cpu_cores", "CPU cores", 1000.0),
        ("gpus", "GPUs", 1.0),
        ("memory_bytes", "memory in bytes", 1.0 / _MIB),
        ("running_jobs", "admitted or running jobs", 1.0),
        ("queued_jobs", "queued jobs", 1.0),
    ]
    out: list[Metric] = []
    for index, (unit, words, divisor) in enumerate(specs):
        limit = GaugeMetricFamily(f"sbx_quota_limit_{unit}", f"An SME's quota: {words}.", labels=["org_id"])
        used = GaugeMetricFamily(
            f"sbx_quota_used_{unit}", f"An SME's use against its quota: {words}.", labels=["org_id"]
        )
        for org in smes:
            limit.add_metric([org], limits.get(org, default)[index] / divisor)
            used.add_metric([org], use.get(org, [0, 0, 0, 0, 0])[index] / divisor)
        out.extend([limit, used])
    return out


def _job_families(conn: Connection) -> list[Metric]:
    counts = {str(r.state): int(r.n) for r in conn.execute(_BY_STATE)}
    by_state = GaugeMetricFamily("sbx_jobs", "Jobs by state.", labels=["state"])
    for state in JobState:
        by_state.add_metric([state.value], float(counts.get(state.value, 0)))
    queue = GaugeMetricFamily("sbx_queue_length_jobs", "Jobs waiting for admission.")
    queue.add_metric([], float(counts.get(JobState.QUEUED.value, 0)))
    return [by_state, queue]


def _budget_families(conn: Connection) -> list[Metric]:
    total = GaugeMetricFamily(
        "sbx_privacy_budget_total_epsilon", "A dataset's total ε budget.", labels=["dataset_id"]
    )
    remaining = GaugeMetricFamily(
        "sbx_privacy_budget_remaining_epsilon",
        "ε a dataset has left (all SMEs together).",
        labels=["dataset_id"],
    )
    remaining_delta = GaugeMetricFamily(
        "sbx_privacy_budget_remaining_delta",
        "δ a dataset has left (all SMEs together).",
        labels=["dataset_id"],
    )
    for r in conn.execute(_BUDGETS):
        total.add_metric([r.id], int(r.total_epsilon_micro) / 1e6)
        remaining.add_metric([r.id], (int(r.total_epsilon_micro) - int(r.spent_epsilon_micro)) / 1e6)
        remaining_delta.add_metric([r.id], (int(r.total_delta_e12) - int(r.spent_delta_e12)) / 1e12)
    return [total, remaining, remaining_delta]
