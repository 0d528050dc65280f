"""Jobs paid with voucher credits: quote, submit, fair admission, enforcement, metering and settlement.

Admission follows Kueue's shape: build a snapshot (capacity, quotas, use, credit), let the pure
:func:`quotas.admission.decide` choose, then for each admitted job one transaction places the hold for its
maximum cost and moves it to ``ADMITTED``; the backend submit follows, and a failed submit releases the hold.
The reconcile pass asks the backend for the truth of every admitted or running job, stops jobs at their max
runtime, and settles finished ones exactly once (usage records, ledger settlement and state change in one
transaction).
"""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import Connection

from broker.compute import BackendError, BackendState, BackendStatus, JobLaunch, launch_name
from broker.compute.base import tail_bytes
from broker.compute.isolation import (
    IsolationStatus,
    check_backend,
    code_job_refusal,
    isolation_status,
    stages_locally,
)
from broker.compute.jobfiles import CheckedArchive, check_archive, code_key
from broker.container import Container
from broker.db import jobs as jobs_db
from broker.db import orgs
from broker.db.database import after_commit
from broker.db.jobs import Job
from broker.db.orgs import Principal
from broker.services.access import own_or_operator, read_scope, require_role
from broker.services.idem import replayed, write_idempotent
from broker.services.jobkinds import JobKind
from broker.services.ledger import balance_dict
from common.errors import Conflict, DomainError, InsufficientFunds, InvalidInput
from common.ids import new_id
from common.resources import Resources
from quotas.admission import (
    Decision,
    QueuedJob,
    Snapshot,
    TenantState,
    WaitReason,
    check_submittable,
    decide,
    explain,
)
from quotas.jobs import JobState
from quotas.ledger import GrantBalance, HoldState, eligible_grants, plan_hold, split_settlement
from quotas.metering import UsageRecord, conservation_violations, meter
from quotas.pricing import RateCard, max_cost, price
from quotas.quota import DEFAULT_QUOTA, Quota, QuotaExceeded

MAX_RUNTIME_S = 7 * 24 * 3600
HOLD_GRACE_S = 3600
NEVER_STARTED_GRACE_MS = 30_000
#: A queued job's pending reason whose amounts alone changed is rewritten at most this often (its reason
#: code is rewritten as soon as it changes).
WAIT_DETAIL_REFRESH_MS = 10_000
TIMEOUT_MESSAGE = "stopped at its maximum runtime"
#: The one job kind that runs SME code; every other kind runs the broker's own trusted harness.
CODE_KIND = "job"


@dataclass(frozen=True, slots=True)
class StopOutcome:
    """A stop request's answer: the job, and whether the stop still waits for the backend (then the API
    answers 202: the stop is recorded and applied when the backend answers again)."""

    job: dict[str, Any]
    pending: bool


@dataclass(frozen=True)
class JobRequest:
    """What an SME asks to run."""

    entrypoint: str
    resources: Resources
    max_runtime_s: int
    priority: int = 0
    requirements: tuple[str, ...] = ()
    working_dir_zip_b64: str | None = None
    kind: str = "job"
    spec: dict[str, Any] | None = None


def _classes(res: Resources) -> frozenset[str]:
    classes = {"cpu"} if res.milli_cpu else set()
    if res.gpus:
        classes.add("gpu")
    if res.memory_mib:
        classes.add("memory")
    return frozenset(classes or {"cpu"})


class JobService:
    """Everything about jobs; the admission and reconcile passes are the background loops' bodies."""

    def __init__(self, c: Container) -> None:
        self.c = c
        self._pass_lock = threading.Lock()
        self._capacity: tuple[float, Resources] | None = None
        self.wakeup: Callable[[], None] | None = None  # set by the background loops: admit without waiting
        self._kinds: dict[str, JobKind] = {}
        self._backend_up = True
        self._positions: dict[str, int] = {}  # queued job -> place in the last admission pass's fair order
        self._described: dict[tuple[WaitReason, tuple[int, ...], str | None], str] = {}
        self._detail_written: dict[str, int] = {}  # queued job -> when this replica last wrote its reason

    def register_kind(self, name: str, kind: JobKind) -> None:
        """Run jobs of kind ``name`` (the broker's own harness) through ``kind``'s launch and settle hooks."""
        if name == CODE_KIND or name in self._kinds:
            raise ValueError(f"job kind {name!r} is already defined")
        self._kinds[name] = kind

    # -- operators: rate card and quotas -----------------------------------------------------------
    def rate_card(self) -> dict[str, Any]:
        """The current rate card (any authenticated caller may read prices)."""
        return self.c.db.read(jobs_db.current_rate_card).to_dict()

    def set_rate_card(self, principal: Principal, *, cpu: str, gpu: str, gib: str) -> dict[str, Any]:
        """Publish a new rate-card version (credits per CPU-, GPU- and GiB-second; exact fractions)."""
        require_role(principal, "operator")
        try:
            card = RateCard(0, Fraction(cpu), Fraction(gpu), Fraction(gib))
        except (ValueError, ZeroDivisionError) as exc:
            raise InvalidInput(f"rates must be non-negative numbers or fractions like '3/2': {exc}") from exc
        now = self.c.clock.now_ms()

        def tx(conn: Connection) -> dict[str, Any]:
            stored = jobs_db.add_rate_card(conn, card=card, now_ms=now, by=principal.org_id)
            self.c.audit.append(
                conn,
                ts_ms=now,
                actor=principal,
                action="ratecard.set",
                object_type="ratecard",
                object_id=str(stored.version),
                details=stored.to_dict(),
            )
            return stored.to_dict()

        return self.c.db.write(tx)

    def quota(self, principal: Principal, *, org_id: str | None = None) -> dict[str, Any]:
        """An SME's quota (its own; operators any)."""
        target = own_or_operator(principal, org_id)
        return self.c.db.read(lambda conn: self._quota(conn, target).to_dict())

    def set_quota(self, principal: Principal, *, org_id: str, values: dict[str, int]) -> dict[str, Any]:
        """Set an SME's quota (operators); audited as a quota change."""
        require_role(principal, "operator")
        now = self.c.clock.now_ms()
        q = Quota(
            Resources(values["max_milli_cpu"], values["max_gpus"], values["max_memory_mib"]),
            values["max_running_jobs"],
            values["max_queued_jobs"],
            0,
        )

        def tx(conn: Connection) -> dict[str, Any]:
            org = orgs.get_org(conn, org_id)
            if org.role != "sme":
                raise InvalidInput(f"{org_id} is a {org.role}; quotas belong to SMEs")
            jobs_db.set_quota(conn, org_id=org_id, q=q, now_ms=now)
            self.c.audit.append(
                conn,
                ts_ms=now,
                actor=principal,
                action="quota.set",
                object_type="org",
                object_id=org_id,
                org_id=org_id,
                details=dict(values),
            )
            return self._quota(conn, org_id).to_dict()

        return self.c.db.write(tx)

    def tenants(self, principal: Principal) -> list[dict[str, Any]]:
        """Every SME with its quota and balance, read in one transaction (operators: the dashboard's tenant
        table, which would otherwise cost two read transactions per SME)."""
        require_role(principal, "operator")
        now = self.c.clock.now_ms()

        def tx(conn: Connection) -> list[dict[str, Any]]:
            out = []
            for org in orgs.list_orgs(conn, role="sme"):
                view = self.c.ledger.balance(conn, org_id=org.id, now_ms=now)
                quota = _with_copay_limit(jobs_db.quota(conn, org.id), view.copay_limit)
                out.append({"org_id": org.id, "quota": quota.to_dict(), "balance": balance_dict(view)})
            return out

        return self.c.db.read(tx)

    def _quota(self, conn: Connection, org_id: str) -> Quota:
        balance = self.c.ledger.balance(conn, org_id=org_id, now_ms=self.c.clock.now_ms())
        return _with_copay_limit(jobs_db.quota(conn, org_id), balance.copay_limit)

    # -- SMEs: quote, submit, inspect, stop ----------------------------------------------------------
    def quote(self, principal: Principal, *, resources: Resources, max_runtime_s: int) -> dict[str, Any]:
        """Price a job before submitting: its maximum cost and how the SME's credit would pay it."""
        require_role(principal, "sme", "operator")
        _check_runtime(max_runtime_s)
        now = self.c.clock.now_ms()

        def tx(conn: Connection) -> dict[str, Any]:
            card = jobs_db.current_rate_card(conn)
            cost = _bounded(max_cost(resources, max_runtime_s, card))
            grants, _ = self.c.ledger.grant_balances(conn, org_id=principal.org_id)
            balance = self.c.ledger.balance(conn, org_id=principal.org_id, now_ms=now)
            out = {"rate_card_version": card.version, "max_cost": cost, "affordable": True, "reason": ""}
            try:
                plan = plan_hold(
                    cost,
                    eligible_grants(grants, resource_classes=_classes(resources), now_ms=now),
                    copay_account_id=0,
                    copay_headroom=balance.copay_limit - balance.copay_used,
                )
                out.update(voucher_share=plan.voucher_total, copay_share=plan.copay_total)
            except InsufficientFunds as exc:
                out.update(affordable=False, reason=exc.detail, voucher_share=None, copay_share=None)
            return out

        return self.c.db.read(tx)

    def submit(
        self, principal: Principal, request: JobRequest, *, idempotency_key: str | None
    ) -> dict[str, Any]:
        """Queue a job; it runs when its quota, the cluster and its credit allow (see the admission pass).

        Every check that can refuse the submission runs before anything is written to disk: the request's
        values, the archive's directory, whether the backend can isolate SME code, an idempotent replay,
        quota and disk quota. Only then is the archive unpacked (streaming, capped), and a refusal after
        that removes the job's files again: a refused submission leaves nothing behind.
        """
        require_role(principal, "sme")
        _check_request(request)
        archive = self._checked_archive(request)
        if request.kind == CODE_KIND:
            self._check_isolation(request)
        body = {
            "entrypoint": request.entrypoint,
            "resources": [request.resources.milli_cpu, request.resources.gpus, request.resources.memory_mib],
            "max_runtime_s": request.max_runtime_s,
            "priority": request.priority,
            "requirements": list(request.requirements),
            "code": request.working_dir_zip_b64 or "",
            "kind": request.kind,
            "spec": request.spec,
        }
        org, key, op = principal.org_id, idempotency_key, "job.submit"
        earlier = replayed(self.c.db, org_id=org, key=key, operation=op, body=body)
        if earlier is not None:
            return earlier
        cluster_total = self._cluster_total()
        declared = archive.declared_bytes if archive else 0
        try:
            self.c.db.read(
                lambda conn: self._check_admissible(conn, principal, request, cluster_total, declared)
            )
        except (
            QuotaExceeded
        ) as exc:  # kept as a REJECTED record with its reason (no files), so its id answers
            raise self.record_rejection(principal, request, exc) from exc
        job_id = new_id("job")
        code_bytes = self._keep_code(job_id, archive) if archive else 0
        workdir = self.c.job_files.work_dir(job_id) if archive else None

        def tx(conn: Connection) -> dict[str, Any]:
            return self.queue_in(
                conn,
                principal,
                request,
                job_id=job_id,
                workdir=workdir,
                cluster_total=cluster_total,
                code_bytes=code_bytes,
            )

        try:
            result, fresh = write_idempotent(
                self.c.db, org_id=org, key=key, operation=op, body=body, now_ms=self.c.clock.now_ms(), fn=tx
            )
        except BaseException:
            self._drop_code(job_id, archive)
            raise
        if not fresh:
            self._drop_code(job_id, archive)
        self.wake()
        return result

    def _keep_code(self, job_id: str, archive: CheckedArchive) -> int:
        """Unpack the job's code here; a backend that runs it elsewhere (KubeRay) also gets a copy in the
        shared object store, so whichever replica admits the job can unpack it again."""
        written = self.c.job_files.unpack(job_id, archive)
        if not stages_locally(self.c.compute):
            try:
                self.c.storage.put_bytes(code_key(job_id), archive.raw)
            except BaseException:
                self.c.job_files.remove(job_id)
                raise
        return written

    def _drop_code(self, job_id: str, archive: CheckedArchive | None) -> None:
        """Remove what :meth:`_keep_code` kept (a refused or replayed submission leaves nothing behind)."""
        self.c.job_files.remove(job_id)
        if archive is not None and not stages_locally(self.c.compute):
            with contextlib.suppress(DomainError):
                self.c.storage.delete(code_key(job_id))

    def _code_here(self, job: Job) -> None:
        """The job's unpacked code on this replica: restored from the shared copy when another replica took
        the submission (the same caps apply again)."""
        if job.working_dir is None or self.c.job_files.work_dir(job.id).is_dir():
            return
        raw = self.c.storage.get_bytes(code_key(job.id))
        archive = check_archive(base64.b64encode(raw).decode(), self.c.job_files.limits)
        self.c.job_files.unpack(job.id, archive)

    def _checked_archive(self, request: JobRequest) -> CheckedArchive | None:
        if request.working_dir_zip_b64 is None:
            return None
        return check_archive(request.working_dir_zip_b64, self.c.job_files.limits)

    def watch_backend(self) -> bool:
        """One round of the backend watch (every loop round): ``sbx_backend_up``, and a dead local head is
        restarted, after which the reconcile pass settles its lost jobs."""
        try:
            up = check_backend(self.c.compute)
        except BackendError:
            up = False  # the restart itself failed: the next round tries again
        self._backend_up = up
        self.c.metrics.backend_up.set(1 if up else 0)
        return up

    @property
    def backend_up(self) -> bool:
        """What the last watch round saw (True before the first round)."""
        return self._backend_up

    def isolation(self) -> IsolationStatus:
        """Whether this replica's backend runs SME code isolated (and how); sets ``sbx_sandbox_available``."""
        status = isolation_status(self.c.compute)
        self.c.metrics.sandbox_available.set(1 if status.sme_code else 0)
        return status

    def _check_isolation(self, request: JobRequest) -> None:
        """SME code runs only where the backend isolates it; say so before anything is stored."""
        refusal = code_job_refusal(self.c.compute, has_requirements=bool(request.requirements))
        if refusal is not None:
            raise refusal

    def _check_admissible(
        self,
        conn: Connection,
        principal: Principal,
        request: JobRequest,
        cluster_total: Resources,
        code_bytes: int,
    ) -> QueuedJob:
        """Quota, cluster fit, price bounds and the SME's disk quota for its code (raises on a refusal)."""
        card = jobs_db.current_rate_card(conn)
        cost = _bounded(max_cost(request.resources, request.max_runtime_s, card))
        now = self.c.clock.now_ms()
        queued = QueuedJob("new", principal.org_id, request.resources, request.priority, now, cost, 0)
        check_submittable(
            queued,
            self._quota(conn, principal.org_id),
            jobs_db.count_queued(conn, principal.org_id),
            cluster_total,
        )
        if code_bytes:
            quota = self.c.settings.job_disk_quota_mib * 1024 * 1024
            kept = jobs_db.code_bytes_kept(conn, principal.org_id)
            if kept + code_bytes > quota:
                raise Conflict(
                    f"this job's code takes {code_bytes} bytes and your jobs already keep {kept} of your "
                    f"{quota}-byte disk quota; wait for finished jobs' files to expire or submit less code",
                    code="disk_quota",
                )
        return queued

    def wake(self) -> None:
        """Ask the background loops for an admission pass now."""
        if self.wakeup is not None:
            self.wakeup()

    def queue_in(
        self,
        conn: Connection,
        principal: Principal,
        request: JobRequest,
        *,
        job_id: str,
        workdir: Path | None,
        cluster_total: Resources,
        code_bytes: int = 0,
    ) -> dict[str, Any]:
        """Insert a queued job inside the caller's transaction (quota checked, maximum cost priced, audited)."""
        now = self.c.clock.now_ms()
        card = jobs_db.current_rate_card(conn)
        queued = self._check_admissible(conn, principal, request, cluster_total, code_bytes)
        jobs_db.insert_job(
            conn,
            id=job_id,
            org_id=principal.org_id,
            kind=request.kind,
            name=launch_name(job_id),
            state=JobState.QUEUED.value,
            entrypoint=request.entrypoint,
            working_dir=str(workdir) if workdir else None,
            requirements=json.dumps(list(request.requirements)),
            milli_cpu=request.resources.milli_cpu,
            gpus=request.resources.gpus,
            memory_mib=request.resources.memory_mib,
            max_runtime_s=request.max_runtime_s,
            priority=request.priority,
            rate_card_version=card.version,
            max_cost=queued.max_cost,
            message="",
            spec=json.dumps(request.spec) if request.spec is not None else None,
            submitted_ms=now,
            stop_requested=False,
            code_bytes=code_bytes,
        )
        self.c.audit.append(
            conn,
            ts_ms=now,
            actor=principal,
            action="job.submit",
            object_type="job",
            object_id=job_id,
            org_id=principal.org_id,
            details={"kind": request.kind, "max_cost": queued.max_cost},
        )
        return jobs_db.get_job(conn, job_id).public()

    def cluster_total(self) -> Resources:
        """The cluster's total resources (cached for a few seconds)."""
        return self._cluster_total()

    def get(self, principal: Principal, *, job_id: str) -> dict[str, Any]:
        """A job (its SME, operators); an admitted job is refreshed from the backend first (RUNNING at once)."""
        scope = read_scope(principal)
        job = self.c.db.read(lambda conn: jobs_db.get_job(conn, job_id, org_id=scope))
        if job.state is JobState.ADMITTED:
            with contextlib.suppress(BackendError):  # the loops will catch up; answer what we know
                self._observe_start(job)
            job = self.c.db.read(lambda conn: jobs_db.get_job(conn, job_id, org_id=scope))
        return self.pending_view(job.public())

    def _observe_start(self, job: Job) -> None:
        """Record that an admitted job is running (the reconcile loop does the same, and the rest)."""
        status = self.c.compute.status(job.name)
        if status.state is BackendState.RUNNING:
            self._mark_running(job, status)

    def _mark_running(self, job: Job, status: BackendStatus) -> None:
        """ADMITTED → RUNNING with the backend's start time, unless someone already moved it."""
        now = self.c.clock.now_ms()

        def tx(conn: Connection) -> None:
            current = jobs_db.get_job(conn, job.id, lock=True)
            if current.state is JobState.ADMITTED:
                jobs_db.move(conn, current, JobState.RUNNING, started_ms=status.start_ms or now)

        self.c.db.write(tx)

    def list_jobs(
        self, principal: Principal, *, org_id: str | None = None, limit: int = 200
    ) -> list[dict[str, Any]]:
        """Jobs of the caller's SME (operators: all or one SME)."""
        scope: str | None = None
        if principal.role != "operator" or org_id is not None:
            scope = own_or_operator(principal, org_id)
        return [
            self.pending_view(j.public())
            for j in self.c.db.read(lambda conn: jobs_db.list_jobs(conn, org_id=scope, limit=limit))
        ]

    def logs(self, principal: Principal, *, job_id: str, max_bytes: int = 64 * 1024) -> str:
        """The tail of a job's output (empty until it has started)."""
        job = self._visible(principal, job_id)
        if job.state in (JobState.QUEUED, JobState.REJECTED) or job.admitted_ms is None:
            return ""
        kept = self.c.job_files.kept_log(job.id) if job.state.is_terminal() else None
        if kept is not None:
            return tail_bytes(kept, max_bytes)
        return self.c.compute.logs(job.name, max_bytes=max_bytes)

    def output(self, principal: Principal, *, job_id: str) -> BinaryIO:
        """A finished job's ``$SBX_OUTPUT`` as a zip in a temporary file the caller streams and closes (its
        SME, operators); size-capped by the sandbox."""
        job = self._visible(principal, job_id)
        if not job.state.is_terminal():
            raise Conflict(
                f"job {job_id} is {job.state.value}; its output is ready once it ends", code="not_finished"
            )
        return self.c.job_files.output_zip(job.id)

    def expire_files_pass(self) -> int:
        """Remove the code dirs of jobs finished longer ago than the retention (logs and output stay)."""
        cutoff = self.c.clock.now_ms() - self.c.settings.job_retention_s * 1000
        due = self.c.db.read(lambda conn: jobs_db.files_to_expire(conn, ended_before_ms=cutoff))
        now = self.c.clock.now_ms()
        for job_id in due:
            self.c.job_files.expire_work(job_id)
            self.c.db.write(_mark_files_expired(job_id, now))
        return len(due)

    def stop(self, principal: Principal, *, job_id: str) -> dict[str, Any]:
        """Stop a job: a queued one at once; an admitted or running one is stopped and then settled."""
        return self.request_stop(principal, job_id=job_id).job

    def request_stop(self, principal: Principal, *, job_id: str) -> StopOutcome:
        """Record the stop durably, then ask the backend; when the backend cannot be reached the stop stays
        recorded (``pending``) and the reconcile pass applies it as soon as the backend answers again."""
        job = self._visible(principal, job_id)
        if job.state.is_terminal():
            return StopOutcome(job.public(), pending=False)
        now = self.c.clock.now_ms()

        def tx(conn: Connection) -> JobState:
            current = jobs_db.get_job(conn, job_id, lock=True)
            if current.state.is_terminal():
                return current.state
            if current.state is JobState.QUEUED:
                jobs_db.move(
                    conn,
                    current,
                    JobState.STOPPED,
                    message="stopped before it was admitted",
                    settled_ms=now,
                    cost=0,
                )
            else:
                jobs_db.set_fields(conn, job_id, stop_requested=True)
            self.c.audit.append(
                conn,
                ts_ms=now,
                actor=principal,
                action="job.stop",
                object_type="job",
                object_id=job_id,
                org_id=job.org_id,
                details={},
            )
            return current.state

        seen = self.c.db.write(tx)
        pending = False
        if seen in (JobState.ADMITTED, JobState.RUNNING):
            try:
                self.c.compute.stop(job.name)
            except BackendError:
                pending = True  # recorded: the reconcile pass stops it when the backend is back
        view = self._visible(principal, job_id).public() if pending else self.get(principal, job_id=job_id)
        return StopOutcome(view, pending=pending)

    def meter_check(self, principal: Principal, *, start_ms: int, end_ms: int) -> dict[str, Any]:
        """The conservation check: metered resource-time in a window never exceeds capacity × window."""
        require_role(principal, "operator")
        if end_ms <= start_ms:
            raise InvalidInput("the window must end after it starts")
        records = self.c.db.read(lambda conn: jobs_db.usage_between(conn, start_ms, end_ms))
        capacity = self._cluster_total()
        violations = conservation_violations(records, capacity, start_ms, end_ms)
        return {
            "window": [start_ms, end_ms],
            "records": len(records),
            "capacity": {
                "milli_cpu": capacity.milli_cpu,
                "gpus": capacity.gpus,
                "memory_mib": capacity.memory_mib,
            },
            "ok": not violations,
            "violations": [str(v) for v in violations],
        }

    # -- the admission pass ------------------------------------------------------------------------
    def admission_pass(self) -> int:
        """Admit every queued job that fits now; returns how many were admitted and started.

        Three steps, as Kueue's scheduler: one read transaction takes the snapshot (a fixed set of
        set-based queries, whatever the queue's depth or the number of SMEs), the pure ``decide`` chooses,
        and one write transaction places the holds and state changes of the whole pass (one fsync), each
        admission in its own savepoint so a job whose credit moved meanwhile stays queued without undoing
        the others. The backend starts follow; a failed start releases that job's hold.
        """
        with self._pass_lock:
            started_at = time.perf_counter()
            queued, snapshot, rows = self.c.db.read(self._snapshot)
            if not queued:
                self._positions = {}
                return 0
            decisions = decide(snapshot, queued)
            chosen = [rows[d.job.job_id] for d in decisions if d.admitted]
            waits = self._pending(snapshot, decisions, rows)
            if not chosen and not waits:
                return 0
            now = self.c.clock.now_ms()
            admitted = self.c.db.write(lambda conn: self._write_pass(conn, chosen, waits, now))
            elapsed = time.perf_counter() - started_at
            for _ in admitted:
                self.c.metrics.admission_latency.observe(elapsed)
            return sum(self._start(job) for job in admitted)

    def _snapshot(self, conn: Connection) -> tuple[list[QueuedJob], Snapshot, dict[str, jobs_db.QueuedRow]]:
        """The queued jobs priced against their SME's grants, and the snapshot ``decide`` needs.

        Six queries whatever the depth: queued jobs, resources in use, last admissions, quotas, grants and
        co-payment accounts. A job's split between voucher credit and co-payment is planned once per
        (SME, resource classes, maximum cost): most queued jobs of one SME share their shape.
        """
        now = self.c.clock.now_ms()
        rows = jobs_db.queued_for_admission(conn)
        if not rows:
            return [], Snapshot(Resources(), {}, Resources()), {}
        use = jobs_db.in_use(conn)
        served = jobs_db.last_admissions(conn, sorted({row.org_id for row in rows}))
        quotas, accounts = jobs_db.all_quotas(conn), jobs_db.admission_accounts(conn)
        total = self._cluster_total()
        used = Resources()
        for res, _count in use.values():
            used = used + res
        tenants: dict[str, TenantState] = {}
        plans: dict[tuple[str, frozenset[str], int], tuple[int, int]] = {}
        class_of: dict[Resources, frozenset[str]] = {}
        queued: list[QueuedJob] = []
        for row in rows:
            org = row.org_id
            tenant = tenants.get(org)
            if tenant is None:
                tenant = tenants[org] = _tenant_state(org, now, use, served, quotas, accounts)
            classes = class_of.get(row.resources)
            if classes is None:  # a few shapes among many jobs: their resource classes computed once
                classes = class_of[row.resources] = _classes(row.resources)
            key = (org, classes, row.max_cost)
            split = plans.get(key)
            if split is None:
                split = plans[key] = _split(row.max_cost, accounts.grants.get(org, []), classes, now, tenant)
            queued.append(QueuedJob(row.id, org, row.resources, row.priority, row.submitted_ms, *split))
        return queued, Snapshot(total - used, tenants, total), {row.id: row for row in rows}

    def _pending(
        self, snapshot: Snapshot, decisions: list[Decision], rows: dict[str, jobs_db.QueuedRow]
    ) -> list[tuple[str, str, str]]:
        """Each waiting job's pending reason; returns those that differ from what its row records.

        Positions change with every admission ahead of a job, so they are kept in memory for this
        replica's views (:meth:`pending_view`) rather than rewritten on thousands of rows per pass. A
        changed reason is written at once; a reason whose amounts alone moved (the free capacity left, the
        SME a job waits behind: they move with every pass on a busy cluster), or that swapped between the
        cluster's two reasons (``capacity`` when the pass began full, ``fair_share`` when others took the
        room it began with), at most every ``WAIT_DETAIL_REFRESH_MS``. A sentence is formatted once per distinct (reason, amounts, behind).
        """
        texts, described = self._described, {}
        positions: dict[str, int] = {}
        changed: list[tuple[str, str, str]] = []
        now, written = self.c.clock.now_ms(), self._detail_written
        for p in explain(snapshot, decisions):
            positions[p.job_id] = p.position
            key = (p.reason, p.facts, p.behind)
            text = texts.get(key)
            if text is None:
                text = p.detail()
            described[key] = text
            row = rows[p.job_id]
            reason = p.reason.value
            if reason == row.wait_reason and text == row.wait_detail:
                continue  # unchanged
            recent = now - written.get(p.job_id, -WAIT_DETAIL_REFRESH_MS) < WAIT_DETAIL_REFRESH_MS
            if recent and _same_limit(row.wait_reason, reason):
                continue  # only its amounts moved (or the cluster's two reasons swapped), written moments ago
            changed.append((p.job_id, p.reason.value, text))
            written[p.job_id] = now
        self._described, self._positions = described, positions
        self._detail_written = {job_id: written[job_id] for job_id in positions if job_id in written}
        return changed

    def pending_view(self, view: dict[str, Any]) -> dict[str, Any]:
        """A job's public view with its place in the last pass's fair order (queued jobs, else None)."""
        position = self._positions.get(view["id"]) if view["state"] == JobState.QUEUED.value else None
        return {**view, "queue_position": position}

    def record_rejection(
        self, principal: Principal, request: JobRequest, refusal: DomainError
    ) -> DomainError:
        """Keep a submission refused by its quota or an admission pre-check as a ``REJECTED`` job.

        The row has the refusal's code and sentence and no files (nothing was unpacked), so its id answers
        ``GET /jobs/{id}`` and ``sbx job status`` like any other job. ``submit`` calls this where
        ``_check_admissible`` refuses (invalid input stores nothing). Returns the refusal to raise, its
        detail naming the kept id.
        """
        job_id, now = new_id("job"), self.c.clock.now_ms()
        res = request.resources

        def tx(conn: Connection) -> None:
            card = jobs_db.current_rate_card(conn)
            jobs_db.insert_job(
                conn,
                id=job_id,
                org_id=principal.org_id,
                kind=request.kind,
                name=launch_name(job_id),
                state=JobState.REJECTED.value,
                entrypoint=request.entrypoint,
                working_dir=None,
                requirements=json.dumps(list(request.requirements)),
                milli_cpu=res.milli_cpu,
                gpus=res.gpus,
                memory_mib=res.memory_mib,
                max_runtime_s=request.max_runtime_s,
                priority=request.priority,
                rate_card_version=card.version,
                max_cost=min(max_cost(res, request.max_runtime_s, card), MAX_CREDITS),
                message=refusal.detail[:500],
                spec=json.dumps(request.spec) if request.spec is not None else None,
                submitted_ms=now,
                settled_ms=now,
                cost=0,
                stop_requested=False,
                code_bytes=0,
                wait_reason=refusal.code[:16],
                wait_detail=refusal.detail,
            )
            self.c.audit.append(
                conn,
                ts_ms=now,
                actor=principal,
                action="job.reject",
                object_type="job",
                object_id=job_id,
                org_id=principal.org_id,
                details={"kind": request.kind, "code": refusal.code},
            )

        self.c.db.write(tx)
        kept = f"{refusal.detail} (kept as rejected job {job_id}: sbx job status {job_id})"
        return type(refusal)(kept, code=refusal.code)

    def _write_pass(
        self, conn: Connection, chosen: list[jobs_db.QueuedRow], waits: list[tuple[str, str, str]], now: int
    ) -> list[Job]:
        """The pass's one write transaction: changed pending reasons, then the holds and admissions."""
        jobs_db.set_waits(conn, waits)
        return self._admit_all(conn, chosen, now) if chosen else []

    def _admit_all(self, conn: Connection, chosen: list[jobs_db.QueuedRow], now: int) -> list[Job]:
        """Hold and admit the chosen jobs; returns the admitted jobs' full rows.

        Optimistic: all of them in one savepoint (a savepoint per job costs two statements each). When one
        fails — its credit moved, or another replica took it — that savepoint is rolled back and the pass
        is redone one savepoint per job, so the failed job stays queued without undoing the others.
        """
        savepoint = conn.begin_nested()
        try:
            for row in chosen:
                self._hold_and_admit(conn, row, now)
        except (InsufficientFunds, Conflict):
            savepoint.rollback()
            return jobs_db.jobs_by_id(conn, self._admit_each(conn, chosen, now))
        savepoint.commit()
        return jobs_db.jobs_by_id(conn, [row.id for row in chosen])

    def _admit_each(self, conn: Connection, chosen: list[jobs_db.QueuedRow], now: int) -> list[str]:
        """Hold and admit each job in its own savepoint; returns the ids admitted."""
        admitted: list[str] = []
        for row in chosen:
            savepoint = conn.begin_nested()
            try:
                self._hold_and_admit(conn, row, now)
            except (InsufficientFunds, Conflict):
                savepoint.rollback()  # credit moved or another replica took it: it stays as it is
                continue
            savepoint.commit()
            admitted.append(row.id)
        return admitted

    def _hold_and_admit(self, conn: Connection, row: jobs_db.QueuedRow, now: int) -> None:
        """Hold the job's maximum cost and move it to ADMITTED.

        Raises :class:`Conflict` when the job is no longer queued (the conditional update is the guard:
        the caller's savepoint rollback then takes the hold back too).
        """
        hold = self.c.ledger.place_hold(
            conn,
            org_id=row.org_id,
            amount=row.max_cost,
            resource_classes=_classes(row.resources),
            job_id=row.id,
            now_ms=now,
            expires_ms=now + (row.max_runtime_s + HOLD_GRACE_S) * 1000,
        )
        jobs_db.admit(conn, row.id, hold_id=hold.id, now_ms=now)
        self.c.audit.append(
            conn,
            ts_ms=now,
            actor=None,
            action="job.admit",
            object_type="job",
            object_id=row.id,
            org_id=row.org_id,
            details={"hold_id": hold.id, "held": hold.amount},
        )

    def _start(self, job: Job) -> int:
        """Hand an admitted job to the backend; a refusal releases its hold. Returns 1 when started."""
        try:
            launch = self._launch(job)
            self.c.compute.create(launch)
            self.c.compute.start(launch)
        except DomainError as exc:  # the backend refused, or the kind could not stage its input
            self._fail_submit(job, exc.detail)
            return 0
        return 1

    def _launch(self, job: Job) -> JobLaunch:
        base = self._base_launch(job)
        kind = self._kinds.get(job.kind)
        if kind is None:
            return base
        return kind.launch(job, base, stage_locally=stages_locally(self.c.compute))

    def _base_launch(self, job: Job) -> JobLaunch:
        self._code_here(job)
        return JobLaunch(
            name=job.name,
            job_id=job.id,
            org_id=job.org_id,
            entrypoint=job.entrypoint,
            working_dir=Path(job.working_dir) if job.working_dir else None,
            requirements=job.requirements,
            resources=job.resources,
            max_runtime_s=job.max_runtime_s,
            labels={"kind": job.kind},
            harness=job.kind != CODE_KIND,
            job_dir=self.c.job_files.job_dir(job.id),
        )

    def _fail_submit(self, job: Job, reason: str) -> None:
        now = self.c.clock.now_ms()

        def tx(conn: Connection) -> None:
            current = jobs_db.get_job(conn, job.id, lock=True)
            if current.state is not JobState.ADMITTED or current.hold_id is None:
                return
            hold = self.c.ledger.get_hold(conn, hold_id=current.hold_id, org_id=None, lock=True)
            if hold.state is HoldState.HELD:
                self.c.ledger.close(conn, hold=hold, target=HoldState.RELEASED, cost=0, now_ms=now)
            jobs_db.move(
                conn,
                current,
                JobState.FAILED,
                message=f"the cluster refused the job: {reason}",
                cost=0,
                voucher_paid=0,
                copaid=0,
                settled_ms=now,
            )

        self.c.db.write(tx)

    # -- the reconcile pass ------------------------------------------------------------------------
    def reconcile_pass(self) -> int:
        """Bring every admitted or running job in line with the backend; returns how many were settled."""
        with self._pass_lock:
            active = self.c.db.read(lambda conn: jobs_db.jobs_in(conn, jobs_db.ACTIVE_STATES))
            settled = 0
            running: list[str] = []  # ids the backend reports running this pass
            for job in active:
                try:
                    settled += self._reconcile(job, running)
                except BackendError:
                    continue  # the backend is unreachable: try again next round, bill nothing meanwhile
                except Conflict:
                    continue  # another replica or request moved this job meanwhile: next round sees it
            if running:  # what a lost job is billed up to: one statement for the whole pass
                now = self.c.clock.now_ms()
                self.c.db.write(lambda conn: jobs_db.mark_seen(conn, running, now))
            return settled

    def _reconcile(self, job: Job, running: list[str]) -> int:
        now = self.c.clock.now_ms()
        status = self.c.compute.status(job.name)
        if status.state is BackendState.NOT_FOUND:
            return self._not_found(job, now)
        if status.state.is_terminal:
            self._settle(job, status)
            self._after_settle(job)
            return 1
        if status.state is BackendState.RUNNING:
            running.append(job.id)
            if job.state is JobState.ADMITTED:
                self._mark_running(job, status)
            start = status.start_ms or job.started_ms or now
            if now - start >= job.max_runtime_s * 1000 and job.message != TIMEOUT_MESSAGE:
                self.c.db.write(
                    lambda conn: jobs_db.set_fields(
                        conn, job.id, message=TIMEOUT_MESSAGE, stop_requested=True
                    )
                )
                self.c.compute.stop(job.name)
                return 0
        if job.stop_requested:  # a durable stop intent (its first try may have met a backend that was down)
            self.c.compute.stop(job.name)
        return 0

    def _not_found(self, job: Job, now: int) -> int:
        """The backend does not know the job: never started (restart it), or lost (settle what we know)."""
        if job.state is JobState.ADMITTED:
            if job.admitted_ms is not None and now - job.admitted_ms < NEVER_STARTED_GRACE_MS:
                try:
                    launch = self._launch(job)
                    self.c.compute.create(launch)
                    self.c.compute.start(launch)
                    return 0
                except BackendError:
                    pass
            self._requeue(job)
            return 0
        self._settle(job, self._lost_status(job, now), lost=True)
        self._after_settle(job)
        return 1

    @staticmethod
    def _lost_status(job: Job, now: int) -> BackendStatus:
        """A job the backend lost is billed up to the last time a reconcile saw it running, never for the
        outage that followed (a job never seen running is billed nothing)."""
        seen = job.last_seen_ms if job.last_seen_ms is not None else job.started_ms
        end = min(seen, now) if seen is not None else None
        message = (
            "the cluster lost the job; it was billed up to when the broker last saw it running"
            + ("" if seen is None else f" ({seen} ms since the epoch)")
            + "; resubmit it"
        )
        return BackendStatus(BackendState.FAILED, job.started_ms, end, message)

    def _after_settle(self, job: Job) -> None:
        """Keep the finished job's log beside its output (the backend's copy goes with a head restart), then
        run its kind's hook."""
        with contextlib.suppress(BackendError):
            self.c.job_files.keep_log(
                job.id, self.c.compute.logs(job.name, max_bytes=self.c.settings.sandbox_log_bytes)
            )
        kind = self._kinds.get(job.kind)
        if kind is not None:
            kind.settled(job)

    def _requeue(self, job: Job) -> None:
        """A job admitted but never started: release its hold and queue it again."""
        now = self.c.clock.now_ms()

        def tx(conn: Connection) -> None:
            current = jobs_db.get_job(conn, job.id, lock=True)
            if current.state is not JobState.ADMITTED or current.hold_id is None:
                return
            hold = self.c.ledger.get_hold(conn, hold_id=current.hold_id, org_id=None, lock=True)
            if hold.state is HoldState.HELD:
                self.c.ledger.close(conn, hold=hold, target=HoldState.RELEASED, cost=0, now_ms=now)
            jobs_db.move(conn, current, JobState.QUEUED, hold_id=None, admitted_ms=None)

        self.c.db.write(tx)

    def _settle(self, job: Job, status: BackendStatus, *, lost: bool = False) -> None:
        """Meter, settle the hold and finish the job in one transaction (exactly once)."""
        now = self.c.clock.now_ms()

        def tx(conn: Connection) -> None:
            current = jobs_db.get_job(conn, job.id, lock=True)
            if current.state.is_terminal() or current.hold_id is None:
                return
            card = jobs_db.rate_card(conn, current.rate_card_version)
            start = status.start_ms or current.started_ms
            records, cost = [], 0
            if start is not None:
                end = max(start, status.end_ms or now)
                end = min(end, start + current.max_runtime_s * 1000)
                records = meter(current.id, current.resources, start, end)
                cost = price(current.resources, end - start, card)
            hold = self.c.ledger.get_hold(conn, hold_id=current.hold_id, org_id=None, lock=True)
            cost = min(cost, hold.amount)
            voucher_paid = sum(s for line, s, _ in split_settlement(hold.lines, cost) if line.voucher)
            jobs_db.record_usage(conn, org_id=current.org_id, records=records)
            if hold.state is HoldState.HELD:
                self.c.ledger.close(conn, hold=hold, target=HoldState.SETTLED, cost=cost, now_ms=now)
            final = JobState.LOST if lost else _final_state(current, status)
            if current.state is JobState.ADMITTED and final is not JobState.STOPPED:
                current = jobs_db.move(conn, current, JobState.RUNNING, started_ms=start)
            jobs_db.move(
                conn,
                current,
                final,
                cost=cost,
                voucher_paid=voucher_paid,
                copaid=cost - voucher_paid,
                started_ms=start,
                ended_ms=status.end_ms or now,
                settled_ms=now,
                message=current.message or status.message[:500],
                reason=status.reason,
            )
            self.c.audit.append(
                conn,
                ts_ms=now,
                actor=None,
                action="job.settle",
                object_type="job",
                object_id=current.id,
                org_id=current.org_id,
                details={"state": final.value, "cost": cost, "voucher_paid": voucher_paid},
            )
            after_commit(conn, lambda: self._count_settled(records, status.reason))

        self.c.db.write(tx)

    def _count_settled(self, records: list[UsageRecord], reason: str | None) -> None:
        """Process counters of one settlement, once its transaction committed (a rolled-back or retried
        settlement counts nothing)."""
        self.c.metrics.record_usage(records)
        if reason is not None:
            self.c.metrics.sandbox_kill(reason)

    # -- helpers -----------------------------------------------------------------------------------
    def _visible(self, principal: Principal, job_id: str) -> Job:
        scope = read_scope(principal)
        return self.c.db.read(lambda conn: jobs_db.get_job(conn, job_id, org_id=scope))

    def _cluster_total(self) -> Resources:
        cached = self._capacity
        if cached is not None and time.monotonic() - cached[0] < 10:
            return cached[1]
        total = self.c.compute.capacity()
        self._capacity = (time.monotonic(), total)
        return total


def _mark_files_expired(job_id: str, now_ms: int) -> Callable[[Connection], None]:
    def tx(conn: Connection) -> None:
        jobs_db.set_fields(conn, job_id, files_expired_ms=now_ms)

    return tx


def _final_state(job: Job, status: BackendStatus) -> JobState:
    if job.message == TIMEOUT_MESSAGE:
        return JobState.TIMED_OUT
    if status.state is BackendState.SUCCEEDED:
        return JobState.SUCCEEDED
    if status.state is BackendState.STOPPED or job.stop_requested:
        return JobState.STOPPED
    return JobState.FAILED


MAX_CREDITS = 2**62


def _bounded(cost: int) -> int:
    """A job's maximum cost, refused when no credit line could ever hold it (it would overflow a balance)."""
    if cost > MAX_CREDITS:
        raise InvalidInput(
            f"this job could cost {cost} credits, more than any account can hold; ask for less"
        )
    return cost


def _check_runtime(max_runtime_s: int) -> None:
    if not 1 <= max_runtime_s <= MAX_RUNTIME_S:
        raise InvalidInput(f"max_runtime_s must be between 1 and {MAX_RUNTIME_S} seconds")


def _check_request(request: JobRequest) -> None:
    if not request.entrypoint.strip():
        raise InvalidInput("a job needs an entrypoint, e.g. 'python train.py'")
    _check_runtime(request.max_runtime_s)
    if not -100 <= request.priority <= 100:
        raise InvalidInput("priority must be between -100 and 100")
    if request.resources.is_zero:
        raise InvalidInput("a job must ask for some CPU or memory")


_CLUSTER_REASONS = frozenset({WaitReason.CAPACITY.value, WaitReason.FAIR_SHARE.value})


def _same_limit(stored: str | None, current: str) -> bool:
    """Whether a stored pending reason names the same limit as the current one (the cluster's two count as
    one: which of them applies flips with every pass that starts with some room)."""
    return stored == current or (stored in _CLUSTER_REASONS and current in _CLUSTER_REASONS)


def _tenant_state(
    org: str,
    now: int,
    use: dict[str, tuple[Resources, int]],
    served: dict[str, int],
    quotas: dict[str, Quota],
    accounts: jobs_db.AdmissionAccounts,
) -> TenantState:
    """One SME as admission sees it, from the pass's set-based reads (the ledger's ``balance`` figures)."""
    balance, floor = accounts.copay.get(org, (0, 0))
    available = sum(g.balance for g in accounts.grants.get(org, ()) if g.expires_ms > now)
    in_use, running = use.get(org, (Resources(), 0))
    quota = _with_copay_limit(quotas.get(org, DEFAULT_QUOTA), -floor)
    return TenantState(quota, in_use, running, available, balance - floor, served.get(org, 0))


def _split(
    cost: int, grants: list[GrantBalance], classes: frozenset[str], now: int, tenant: TenantState
) -> tuple[int, int]:
    """How a hold of ``cost`` would be paid now: (voucher share, co-payment share); a hold that cannot be
    paid asks for more co-payment than the SME has, so it waits with the ``credit`` reason."""
    try:
        plan = plan_hold(
            cost,
            eligible_grants(grants, resource_classes=classes, now_ms=now),
            copay_account_id=0,
            copay_headroom=tenant.copay_headroom,
        )
    except InsufficientFunds:
        return cost, tenant.copay_headroom + 1
    return plan.voucher_total, plan.copay_total


def _with_copay_limit(base: Quota, copay_limit: int) -> Quota:
    """An SME's quota as admission sees it: the stored limits plus its co-payment limit from the ledger."""
    return Quota(base.max_resources, base.max_running_jobs, base.max_queued_jobs, copay_limit)
