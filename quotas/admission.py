"""Admission: a pure decision over a snapshot, fair across SMEs (DRF) and FIFO-by-priority within one.

How the broker uses it (Kueue's shape): read a :class:`Snapshot` (free cluster capacity, each SME's quota,
use and credit) and the queued jobs, call :func:`decide`, then write the admitted jobs' holds in one
conditional write; a failed write or backend submit rolls that job back to the queue. Nothing here does I/O.

Fairness. Across SMEs the next job comes from the SME with the lowest *dominant share*: the largest, over CPU,
GPU and memory, of ``in_use / cluster_total`` (Dominant Resource Fairness, Ghodsi et al. 2011). Shares are
compared exactly: with ``D = lcm`` of the non-zero cluster totals, ``share * D`` is an integer, so a heap
keyed by that integer ranks SMEs without floats and without Fraction arithmetic in the hot loop. Ties go
to the SME whose next job was submitted first, then to the smaller org id. After each admission the SME's
share is recomputed and it re-enters the heap, so one pass admits as many jobs as fit while staying fair.

Within one SME jobs go by priority (higher first), then submission time (FIFO), then job id.

Backfill (Kueue's BestEffortFIFO). A job that does not fit now waits with a reason and the pass moves on to
the SME's next job and to other SMEs, so a large job does not idle the cluster. Everything a pass changes only
shrinks (free capacity, quota room, credit), so a job that failed once in a pass cannot fit later in the same
pass: every job is examined exactly once and a pass costs O(n log m) for n jobs from m SMEs.

Reasons, checked in this order: ``running_jobs`` (the SME runs as many jobs as its quota allows), ``quota``
(the job would take the SME over its resource quota), ``credit`` (its covered share exceeds the SME's voucher
credit, or its co-payment its co-payment headroom), ``capacity`` (the cluster has no room now).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from fractions import Fraction
from typing import NamedTuple

from common.errors import InvalidInput
from common.resources import Resources
from quotas.quota import Quota, QuotaExceeded

OrgId = str
"""An organisation (SME) identifier."""


@dataclass(frozen=True, slots=True)
class TenantState:
    """One SME as admission sees it.

    ``in_use`` and ``running_jobs`` count its admitted and running jobs; ``available_credit`` is the voucher
    credit it can still hold (grants minus holds), ``copay_headroom`` its co-payment limit minus outstanding
    co-payment holds.
    """

    quota: Quota
    in_use: Resources
    running_jobs: int
    available_credit: int
    copay_headroom: int
    last_admitted_ms: int = 0
    """When this SME last had a job admitted (0: never): among equal dominant shares, the SME served least
    recently goes first, so SMEs with equal demand alternate even when capacity frees one job at a time."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything a decision needs: free ``capacity`` now, each SME's state, and the cluster's total size."""

    capacity: Resources
    tenants: Mapping[OrgId, TenantState]
    cluster_total: Resources


@dataclass(frozen=True, slots=True)
class QueuedJob:
    """A job waiting for admission, with the two shares its hold would reserve.

    ``max_cost_covered`` is drawn from voucher credit and ``max_cost_copay`` from co-payment headroom
    (``quotas.pricing.quote`` computes both at submission).
    """

    job_id: str
    org_id: OrgId
    resources: Resources
    priority: int
    submitted_ms: int
    max_cost_covered: int
    max_cost_copay: int

    @property
    def max_cost(self) -> int:
        """The job's whole maximum cost (covered share plus co-payment)."""
        return self.max_cost_covered + self.max_cost_copay


class Verdict(StrEnum):
    """What admission decided for one job in one pass."""

    ADMIT = "admit"
    WAIT = "wait"


class WaitReason(StrEnum):
    """Why a job waits (stable values, shown to the SME)."""

    RUNNING_JOBS = "running_jobs"
    QUOTA = "quota"
    CREDIT = "credit"
    CAPACITY = "capacity"
    FAIR_SHARE = "fair_share"
    """Shown only (see :func:`explain`): the cluster had room at the start of the pass, but SMEs ahead of
    this job in the fair order took it. :func:`decide` itself reports ``capacity``."""


class Decision(NamedTuple):
    """The verdict for one job: admit, or wait with a reason (a named tuple: one pass makes thousands)."""

    job: QueuedJob
    verdict: Verdict
    reason: WaitReason | None = None

    @property
    def admitted(self) -> bool:
        """True when the job was admitted in this pass."""
        return self.verdict is Verdict.ADMIT


_ADMIT = Verdict.ADMIT
_WAIT = Verdict.WAIT


class DominantShare:
    """Exact DRF shares as integers: ``key(use) / denominator`` is the dominant share of ``use``.

    Resources the cluster has none of are ignored (no job needing them can fit anyway).
    """

    __slots__ = ("_w_cpu", "_w_gpu", "_w_mem", "denominator")

    def __init__(self, cluster_total: Resources) -> None:
        totals = (cluster_total.milli_cpu, cluster_total.gpus, cluster_total.memory_mib)
        self.denominator = math.lcm(*(t for t in totals if t > 0)) if any(totals) else 1
        self._w_cpu, self._w_gpu, self._w_mem = (self.denominator // t if t else 0 for t in totals)

    def key(self, milli_cpu: int, gpus: int, memory_mib: int) -> int:
        """Return ``dominant_share * denominator`` for the given use (an exact integer)."""
        return max(milli_cpu * self._w_cpu, gpus * self._w_gpu, memory_mib * self._w_mem)

    def share(self, use: Resources) -> Fraction:
        """Return the dominant share of ``use`` as an exact fraction."""
        return Fraction(self.key(use.milli_cpu, use.gpus, use.memory_mib), self.denominator)


def dominant_share(in_use: Resources, cluster_total: Resources) -> Fraction:
    """The DRF dominant share of ``in_use``: max over resources of ``in_use / cluster_total``, exactly."""
    return DominantShare(cluster_total).share(in_use)


_SERVED_IN_THIS_PASS = itertools.count(2**62)


def _served_now() -> int:
    """A tie-break later than any real admission time: an SME just served in this pass yields ties."""
    return next(_SERVED_IN_THIS_PASS)


def _job_order(job: QueuedJob) -> tuple[int, int, str]:
    return (-job.priority, job.submitted_ms, job.job_id)


def _group_by_org(queue: Iterable[QueuedJob]) -> dict[OrgId, list[QueuedJob]]:
    """Group jobs per SME, each list in priority-then-FIFO order."""
    groups: dict[OrgId, list[QueuedJob]] = {}
    for job in queue:
        group = groups.get(job.org_id)
        if group is None:
            groups[job.org_id] = [job]
        else:
            group.append(job)
    for group in groups.values():
        if len(group) > 1:
            group.sort(key=_job_order)
    return groups


class _Tenant:
    """Mutable working copy of one SME's state during a pass."""

    __slots__ = (
        "copay",
        "cpu",
        "credit",
        "gpu",
        "jobs",
        "last_admitted_ms",
        "max_cpu",
        "max_gpu",
        "max_mem",
        "max_running",
        "mem",
        "next",
        "running",
    )

    def __init__(self, state: TenantState, jobs: list[QueuedJob]) -> None:
        limits = state.quota.max_resources
        self.cpu, self.gpu, self.mem = state.in_use.milli_cpu, state.in_use.gpus, state.in_use.memory_mib
        self.max_cpu, self.max_gpu, self.max_mem = limits.milli_cpu, limits.gpus, limits.memory_mib
        self.running = state.running_jobs
        self.max_running = state.quota.max_running_jobs
        self.credit = state.available_credit
        self.copay = state.copay_headroom
        self.jobs = jobs
        self.next = 0
        self.last_admitted_ms = state.last_admitted_ms


def _tenants(snapshot: Snapshot, groups: dict[OrgId, list[QueuedJob]]) -> dict[OrgId, _Tenant]:
    tenants: dict[OrgId, _Tenant] = {}
    for org_id, jobs in groups.items():
        state = snapshot.tenants.get(org_id)
        if state is None:
            raise InvalidInput(
                f"queued job {jobs[0].job_id} belongs to {org_id}, which the snapshot does not know"
            )
        tenants[org_id] = _Tenant(state, jobs)
    return tenants


def order_queue(queue: Iterable[QueuedJob], snapshot: Snapshot) -> list[QueuedJob]:
    """Return the queue in fair order: the order jobs would be admitted if every one of them fitted.

    Same ranking as :func:`decide` (lowest dominant share first, each job's resources counted as admitted
    before the next pick; within an SME priority then FIFO) but ignoring capacity, quota and credit. Use it to
    show queue positions.
    """
    groups = _group_by_org(queue)
    tenants = _tenants(snapshot, groups)
    drf = DominantShare(snapshot.cluster_total)
    heap = [
        (drf.key(t.cpu, t.gpu, t.mem), t.last_admitted_ms, t.jobs[0].submitted_ms, org)
        for org, t in tenants.items()
    ]
    heapq.heapify(heap)
    ordered: list[QueuedJob] = []
    while heap:
        *_, org = heapq.heappop(heap)
        tenant = tenants[org]
        job = tenant.jobs[tenant.next]
        tenant.next += 1
        ordered.append(job)
        res = job.resources
        tenant.cpu += res.milli_cpu
        tenant.gpu += res.gpus
        tenant.mem += res.memory_mib
        if tenant.next < len(tenant.jobs):
            key = drf.key(tenant.cpu, tenant.gpu, tenant.mem)
            heapq.heappush(heap, (key, _served_now(), tenant.jobs[tenant.next].submitted_ms, org))
    return ordered


def decide(snapshot: Snapshot, queue: Iterable[QueuedJob]) -> list[Decision]:
    """Decide one admission pass: a :class:`Decision` for every queued job, in the order they were considered.

    Admitted jobs are those that fit their SME's running-job limit, resource quota, voucher credit and
    co-payment headroom, and the free cluster capacity, each counted after the admissions before it in this
    pass. Never raises for a job that does not fit (it waits, with a reason); raises :class:`InvalidInput`
    only for a job whose SME is missing from the snapshot.
    """
    groups = _group_by_org(queue)
    tenants = _tenants(snapshot, groups)
    drf = DominantShare(snapshot.cluster_total)
    heap = [
        (drf.key(t.cpu, t.gpu, t.mem), t.last_admitted_ms, t.jobs[0].submitted_ms, org)
        for org, t in tenants.items()
    ]
    heapq.heapify(heap)
    decisions: list[Decision] = []
    free = [snapshot.capacity.milli_cpu, snapshot.capacity.gpus, snapshot.capacity.memory_mib]
    while heap:
        *_, org = heapq.heappop(heap)
        tenant = tenants[org]
        if _admit_next(tenant, free, decisions) and tenant.next < len(tenant.jobs):
            key = drf.key(tenant.cpu, tenant.gpu, tenant.mem)
            heapq.heappush(heap, (key, _served_now(), tenant.jobs[tenant.next].submitted_ms, org))
    return decisions


def _admit_next(tenant: _Tenant, free: list[int], decisions: list[Decision]) -> bool:
    """Walk one SME's jobs from where it stopped: record waits until one job is admitted (True) or none is.

    The hot loop of :func:`decide`: the tenant's limits are read into locals once per visit, which is valid
    because nothing changes them until the admission that ends the visit.
    """
    append = decisions.append
    jobs, i, n = tenant.jobs, tenant.next, len(tenant.jobs)
    if tenant.running >= tenant.max_running:
        for job in jobs[i:]:
            append(Decision(job, _WAIT, WaitReason.RUNNING_JOBS))
        tenant.next = n
        return False
    room_cpu, room_gpu = tenant.max_cpu - tenant.cpu, tenant.max_gpu - tenant.gpu
    room_mem, credit, copay = tenant.max_mem - tenant.mem, tenant.credit, tenant.copay
    free_cpu, free_gpu, free_mem = free
    while i < n:
        job = jobs[i]
        i += 1
        res = job.resources
        cpu, gpu, mem = res.milli_cpu, res.gpus, res.memory_mib
        if cpu > room_cpu or gpu > room_gpu or mem > room_mem:
            append(Decision(job, _WAIT, WaitReason.QUOTA))
        elif job.max_cost_covered > credit or job.max_cost_copay > copay:
            append(Decision(job, _WAIT, WaitReason.CREDIT))
        elif cpu > free_cpu or gpu > free_gpu or mem > free_mem:
            append(Decision(job, _WAIT, WaitReason.CAPACITY))
        else:
            append(Decision(job, _ADMIT))
            free[0], free[1], free[2] = free_cpu - cpu, free_gpu - gpu, free_mem - mem
            tenant.cpu += cpu
            tenant.gpu += gpu
            tenant.mem += mem
            tenant.running += 1
            tenant.credit = credit - job.max_cost_covered
            tenant.copay = copay - job.max_cost_copay
            tenant.next = i
            return True
    tenant.next = n
    return False


def admitted(decisions: Sequence[Decision]) -> list[QueuedJob]:
    """The jobs a pass admitted, in admission order (what the hold write needs)."""
    return [d.job for d in decisions if d.verdict is Verdict.ADMIT]


class Pending(NamedTuple):
    """Why one job waits after a pass, in the words an SME or operator can act on (Kueue's pending reason).

    ``reason`` is the first limit that stopped it (``fair_share`` when the cluster had room for it at the
    start of the pass but other SMEs ahead of it in the fair order took that room: ``behind`` names the
    latest of them); ``facts`` are the integers behind the reason (see :func:`describe`), so a caller can tell whether
    the reason changed without formatting text; ``position`` is its 1-based place among the waiting jobs in
    the pass's fair order.
    """

    job_id: str
    org_id: OrgId
    reason: WaitReason
    facts: tuple[int, ...]
    behind: OrgId | None
    position: int

    def detail(self) -> str:
        """The human sentence for this reason (see :func:`describe`)."""
        return describe(self.reason, self.facts, self.behind)


def explain(snapshot: Snapshot, decisions: Sequence[Decision]) -> list[Pending]:
    """For every job :func:`decide` left waiting, the amounts behind its reason and its place in the order.

    Replays ``decisions`` in the order they were made against a working copy of the snapshot, so each
    waiting job is described by the room, credit and capacity that were left when it was considered.
    """
    room: dict[OrgId, list[int]] = {}
    free = [snapshot.capacity.milli_cpu, snapshot.capacity.gpus, snapshot.capacity.memory_mib]
    start = tuple(free)
    recent: list[OrgId] = []  # the two SMEs most recently admitted in this pass, the latest last
    out: list[Pending] = []
    for job, verdict, reason in decisions:
        left = room.get(job.org_id)
        if left is None:
            left = room[job.org_id] = _room(snapshot.tenants[job.org_id])
        res = job.resources
        need = (res.milli_cpu, res.gpus, res.memory_mib)
        if verdict is _ADMIT:
            for i in range(3):
                left[i] -= need[i]
                free[i] -= need[i]
            left[3] -= 1
            left[4] -= job.max_cost_covered
            left[5] -= job.max_cost_copay
            if not recent or recent[-1] != job.org_id:
                recent = [*recent[-1:], job.org_id]
            continue
        assert reason is not None  # a waiting decision always has one
        ahead = next((org for org in reversed(recent) if org != job.org_id), None)
        why, facts, behind = _why(reason, job, need, left, free, start, ahead)
        out.append(Pending(job.job_id, job.org_id, why, facts, behind, len(out) + 1))
    return out


def _room(state: TenantState) -> list[int]:
    """[cpu, gpu, memory room, running-job room, credit, co-payment headroom] of one SME."""
    limit, use = state.quota.max_resources, state.in_use
    return [
        limit.milli_cpu - use.milli_cpu,
        limit.gpus - use.gpus,
        limit.memory_mib - use.memory_mib,
        state.quota.max_running_jobs - state.running_jobs,
        state.available_credit,
        state.copay_headroom,
    ]


def _why(
    reason: WaitReason,
    job: QueuedJob,
    need: tuple[int, int, int],
    left: list[int],
    free: list[int],
    start: tuple[int, ...],
    ahead: OrgId | None,
) -> tuple[WaitReason, tuple[int, ...], OrgId | None]:
    """The facts behind one waiting job's reason (see :func:`describe` for their meaning); ``ahead`` is the
    other SME most recently admitted in this pass (the one a job that lost the room waits behind)."""
    if reason is WaitReason.RUNNING_JOBS:
        return reason, (left[3],), None
    if reason is WaitReason.QUOTA:
        return reason, _short(need, left), None
    if reason is WaitReason.CREDIT:
        return reason, (job.max_cost_covered, left[4], job.max_cost_copay, left[5]), None
    if ahead is not None and all(n <= s for n, s in zip(need, start, strict=False)):
        return WaitReason.FAIR_SHARE, _short(need, free), ahead
    return reason, _short(need, free), None


def _short(need: tuple[int, int, int], have: Sequence[int]) -> tuple[int, ...]:
    """(resource index, needed, available) of the first resource ``need`` exceeds."""
    for i in range(3):
        if need[i] > have[i]:
            return (i, need[i], have[i])
    return (0, need[0], have[0])


_RESOURCE = ("CPU", "GPU", "memory")


def _amount(resource: int, value: int) -> str:
    """An amount in its unit: CPU in cores (from milli-CPU), GPUs, memory in MiB."""
    if resource == 0:
        cores = f"{value // 1000}.{value % 1000:03d}".rstrip("0").rstrip(".")
        return f"{cores} CPU"
    if resource == 1:
        return f"{value} GPU"
    return f"{value} MiB of memory"


def describe(reason: WaitReason, facts: Sequence[int], behind: OrgId | None) -> str:
    """One sentence for a pending reason, with the amounts that stop the job.

    Facts by reason: ``running_jobs`` (running-job room, 0 or less); ``quota``, ``capacity`` and
    ``fair_share`` (resource index, needed, available); ``credit`` (voucher share, voucher credit left,
    co-payment share, co-payment headroom left).
    """
    if reason is WaitReason.RUNNING_JOBS:
        return "the SME already runs as many jobs as its quota allows; one must end first"
    if reason is WaitReason.CREDIT:
        covered, credit, copay, headroom = facts
        if covered > credit:
            return f"its hold needs {covered} credits of voucher credit and {credit} are left"
        return f"its hold needs {copay} credits of co-payment and the co-payment headroom left is {headroom}"
    resource, need, have = facts
    short = f"needs {_amount(resource, need)}, {_amount(resource, max(have, 0))} left"
    if reason is WaitReason.QUOTA:
        return f"quota: {short} of its SME's {_RESOURCE[resource]} quota ({_amount(resource, need - have)} short)"
    if reason is WaitReason.FAIR_SHARE:
        return f"fair share: behind {behind}, whose share of the cluster is lower; {short} in the cluster"
    return f"cluster: {short} free in the cluster ({_amount(resource, need - have)} short)"


def check_submittable(
    job: QueuedJob, quota: Quota, queued_count: int, cluster_total: Resources | None = None
) -> None:
    """Refuse at submission a job that could never be admitted, instead of letting it queue forever.

    Raises :class:`QuotaExceeded` when the job asks for more than the SME's whole quota (or than the whole
    cluster, when ``cluster_total`` is given), when its co-payment exceeds the SME's co-payment limit, when
    the quota allows no running jobs, or when the SME already has ``max_queued_jobs`` jobs queued
    (``queued_count`` excludes this job). Raises :class:`InvalidInput` for a job that asks for no resources.
    """
    res = job.resources
    if res.is_zero:
        raise InvalidInput(f"job {job.job_id} asks for no resources; ask for at least some CPU or memory")
    if not res.fits_in(quota.max_resources):
        raise QuotaExceeded(
            f"job {job.job_id} asks for {_fmt(res)} but the quota of {job.org_id} allows at most "
            f"{_fmt(quota.max_resources)} at once; ask for less or ask an operator to raise the quota"
        )
    if cluster_total is not None and not res.fits_in(cluster_total):
        raise QuotaExceeded(
            f"job {job.job_id} asks for {_fmt(res)} but the whole cluster has {_fmt(cluster_total)}; "
            "ask for less"
        )
    if quota.max_running_jobs == 0:
        raise QuotaExceeded(f"the quota of {job.org_id} allows no running jobs; ask an operator to raise it")
    if job.max_cost_copay > quota.copay_limit:
        raise QuotaExceeded(
            f"job {job.job_id} needs a co-payment hold of {job.max_cost_copay} credits but the co-payment "
            f"limit of {job.org_id} is {quota.copay_limit}; shorten max runtime, use fewer resources "
            "or ask an operator to raise the limit"
        )
    if queued_count >= quota.max_queued_jobs:
        raise QuotaExceeded(
            f"{job.org_id} already has {queued_count} queued jobs, the most its quota allows "
            f"({quota.max_queued_jobs}); wait for some to start or cancel some"
        )


def _fmt(res: Resources) -> str:
    return f"{res.milli_cpu} milli-CPU, {res.gpus} GPU, {res.memory_mib} MiB"
