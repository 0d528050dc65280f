"""Admission benchmark through the service path: 10,000 queued jobs from 1,000 SMEs on the fake backend.

``path=service`` is what the broker runs. Jobs are submitted through :class:`JobService` (``queue_in``: the
quota check, pricing, the job row and its audit entry, in batches of one transaction each) on SQLite (WAL,
``synchronous=FULL``) or on PostgreSQL (``--database-url``, or ``SBX_TEST_DATABASE_URL`` with ``--pg``; a
scratch database is created and dropped). A simulated clock drives the fake backend: every ``--period-ms``
the reconcile pass settles the jobs whose runtime is over (not timed), then one whole
``JobService.admission_pass`` is timed: the database snapshot, ``decide``, the ledger holds and state changes
in their transaction, and the backend create + start of every admitted job.

``path=decide`` replays the same workload in memory through the pure ``quotas.admission.decide`` alone
(snapshot built in memory, no writes): the figure the service path is compared with, side by side.

Two groups of SMEs have equal demand within the group: CPU SMEs (each job 1 CPU, 2 GiB) and GPU SMEs (each
job 1 GPU, 1 CPU, 8 GiB). The default cluster (4200 CPUs, 840 GPUs) lets DRF give every SME the same dominant
share in whole jobs. Fairness = the largest, over the groups, of max/min dominant share among the group's
SMEs that still have queued jobs, measured after the pass at which half of all jobs have been admitted.

``--one-pass`` instead queues ``--smes × --jobs-per-sme`` jobs and times the first three admission passes
(the "pass at depth 100k" figure: the first fills the cluster and records every reason, the next ones run
after some jobs ended): ``BENCH admission_pass depth=… first_pass_ms=… steady_pass_ms=… admitted_first=…``.

Usage: ``.venv/bin/python bench/admission.py [--pg] [--profile FILE]``
Last line: ``BENCH admission path=service admissions_per_s=… pass_p99_ms=… fairness=… depth=10000
smes=1000 decide_admissions_per_s=…``
"""

from __future__ import annotations

import argparse
import cProfile
import heapq
import os
import random
import secrets
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from statistics import median
from typing import Any

from sqlalchemy import create_engine, text

from broker.bootstrap import initialise
from broker.compute import launch_name
from broker.compute.fake import FakeBackend, FakeScript
from broker.container import build_container
from broker.db import jobs as jobs_db
from broker.db.orgs import Principal
from broker.services.jobs import JobRequest
from broker.services.registry import Services, build_services
from broker.settings import Settings
from common.clock import FakeClock
from common.resources import Resources
from quotas.admission import QueuedJob, Snapshot, TenantState, admitted, decide, dominant_share
from quotas.jobs import JobState
from quotas.quota import Quota

CPU_JOB = Resources(milli_cpu=1_000, gpus=0, memory_mib=2_048)
GPU_JOB = Resources(milli_cpu=1_000, gpus=1, memory_mib=8_192)
QUOTA = {
    "max_milli_cpu": 64_000,
    "max_gpus": 8,
    "max_memory_mib": 262_144,
    "max_running_jobs": 16,
    "max_queued_jobs": 1_000,
}
SUBMIT_BATCH = 500
RUNTIME_S = 3_600  # the declared maximum runtime; the fake script ends each job much earlier
START_MS = 1_800_000_000_000


@dataclass(frozen=True)
class Workload:
    """What both paths replay: SMEs, jobs per SME, the cluster, the scheduler period and job runtimes."""

    smes: int
    jobs_per_sme: int
    gpu_smes: int
    cluster: Resources
    period_ms: int
    min_runtime_ms: int
    max_runtime_ms: int
    seed: int

    @property
    def depth(self) -> int:
        """How many jobs are queued at the start."""
        return self.smes * self.jobs_per_sme

    def jobs(self) -> list[tuple[int, int, int, int]]:
        """(sequence, SME index, priority, runtime ms) of every job, interleaved in submission order."""
        rng = random.Random(self.seed)
        out = []
        for k in range(self.jobs_per_sme):
            for i in range(self.smes):
                out.append(
                    (
                        k * self.smes + i,
                        i,
                        rng.randint(0, 2),
                        rng.randint(self.min_runtime_ms, self.max_runtime_ms),
                    )
                )
        return out

    def resources(self, sme: int) -> Resources:
        """The shape of every job of SME number ``sme``."""
        return GPU_JOB if sme < self.gpu_smes else CPU_JOB


@dataclass
class Result:
    """One path's run: admissions, passes and the time spent in admission passes."""

    admissions: int = 0
    passes: int = 0
    pass_s: list[float] = field(default_factory=list)
    fairness: Fraction | None = None
    sim_s: float = 0.0

    @property
    def rate(self) -> float:
        """Admissions per second of admission-pass time."""
        total = sum(self.pass_s)
        return self.admissions / total if total else 0.0

    @property
    def p99_ms(self) -> float:
        """The 99th percentile of one pass's time, in milliseconds."""
        ordered = sorted(self.pass_s)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000 if ordered else 0.0

    @property
    def fair(self) -> float:
        """Fairness as a float (NaN when half the jobs were never admitted)."""
        return float(self.fairness) if self.fairness is not None else float("nan")


def fairness(shares: dict[bool, list[Fraction]]) -> Fraction:
    """max/min dominant share within each equal-demand group (True: GPU SMEs), the worst group."""
    worst = Fraction(1)
    for group in shares.values():
        if group:
            low = min(group)
            if low == 0:
                return Fraction(10**9)
            worst = max(worst, max(group) / low)
    return worst


# -- the service path ------------------------------------------------------------------------------------
class ServiceWorld:
    """A broker on a scratch database with the fake backend, an operator, one issuer and the SMEs."""

    def __init__(self, state_dir: Path, database_url: str | None, work: Workload) -> None:
        settings = Settings(
            state_dir=state_dir / "broker",
            compute="fake",
            background_loops=False,
            kek_file=state_dir / "kek",
        )
        if database_url:
            settings = settings.model_copy(update={"database_url": database_url})
        token = initialise(settings.state_dir, settings=settings)["token"]
        self.clock = FakeClock(start_ms=START_MS)
        self.container = build_container(settings, clock=self.clock)
        self.fake = FakeBackend(self.clock, capacity=work.cluster)
        self.container.use_compute(self.fake)
        self.services: Services = build_services(self.container)
        self.work = work
        self.operator = self._principal(token)
        self.smes = self._create_smes()

    def _principal(self, token: str) -> Principal:
        found = self.services.orgs.authenticate(token)
        assert found is not None
        return found

    def _create_smes(self) -> list[Principal]:
        orgs, op = self.services.orgs, self.operator
        issuer_org = orgs.create(op, name="issuer", role="issuer", year_budget=10**15, sme_cap=10**13)
        issuer = self._principal(orgs.create_token(op, org_id=issuer_org["id"])["token"])
        self.services.vouchers.create_key(issuer)
        now_s = self.clock.now_ms() // 1000
        smes = []
        for i in range(self.work.smes):
            org = orgs.create(op, name=f"sme{i:05d}", role="sme")
            sme = self._principal(orgs.create_token(op, org_id=org["id"])["token"])
            self.services.jobs.set_quota(op, org_id=sme.org_id, values=dict(QUOTA))
            classes = ("cpu", "gpu", "memory")
            voucher = self.services.vouchers.issue(
                issuer,
                sme_org=sme.org_id,
                credits=10**12,
                coverage_bps=10_000,
                resources=classes,
                valid_from_s=None,
                valid_until_s=now_s + 30 * 86_400,
                credit_expires_s=now_s + 365 * 86_400,
            )
            self.services.vouchers.redeem(sme, token=voucher["token"], idempotency_key=None)
            smes.append(sme)
        return smes

    def submit_all(self) -> dict[str, int]:
        """Queue every job through ``JobService.queue_in``; returns each job id's SME index."""
        jobs = self.services.jobs
        cluster = jobs.cluster_total()
        sme_of: dict[str, int] = {}
        batch = self.work.jobs()
        for start in range(0, len(batch), SUBMIT_BATCH):
            chunk = batch[start : start + SUBMIT_BATCH]

            def tx(conn: Any, chunk: list[tuple[int, int, int, int]] = chunk) -> None:
                for seq, i, priority, runtime_ms in chunk:
                    job_id = f"job_{seq:07d}"
                    request = JobRequest("python train.py", self.work.resources(i), RUNTIME_S, priority)
                    jobs.queue_in(
                        conn, self.smes[i], request, job_id=job_id, workdir=None, cluster_total=cluster
                    )
                    self.fake.script(launch_name(job_id), FakeScript(run_ms=runtime_ms))
                    sme_of[job_id] = i

            self.container.db.write(tx)
        return sme_of

    def shares(self) -> dict[bool, list[Fraction]]:
        """Dominant shares of the SMEs that still have queued jobs, grouped GPU / CPU."""

        def tx(conn: Any) -> tuple[dict[str, tuple[Resources, int]], set[str]]:
            waiting = {j.org_id for j in jobs_db.jobs_in(conn, (JobState.QUEUED.value,), limit=10**7)}
            return jobs_db.in_use(conn), waiting

        use, waiting = self.container.db.read(tx)
        index = {sme.org_id: i for i, sme in enumerate(self.smes)}
        groups: dict[bool, list[Fraction]] = {True: [], False: []}
        for org in waiting:
            in_use = use.get(org, (Resources(), 0))[0]
            groups[index[org] < self.work.gpu_smes].append(dominant_share(in_use, self.work.cluster))
        return groups

    def close(self) -> None:
        """Close the container (the database engine and its files)."""
        self.container.close()


def run_service(world: ServiceWorld, profile: cProfile.Profile | None) -> Result:
    """Replay the workload through the service until every job has run; only admission passes are timed."""
    result = Result()
    jobs = world.services.jobs
    total = world.work.depth
    while True:
        world.services.jobs.reconcile_pass()
        if profile is not None:
            profile.enable()
        started = time.perf_counter()
        count = jobs.admission_pass()
        elapsed = time.perf_counter() - started
        if profile is not None:
            profile.disable()
        result.passes += 1
        result.pass_s.append(elapsed)
        result.admissions += count
        if result.fairness is None and result.admissions * 2 >= total:
            result.fairness = fairness(world.shares())
        if result.admissions >= total and not world.fake.active():
            break
        world.clock.advance(world.work.period_ms)
    result.sim_s = (world.clock.now_ms() - START_MS) / 1000
    return result


def deep_passes(world: ServiceWorld, passes: int = 3) -> list[tuple[float, int, int]]:
    """Time the first passes over a deep queue: (seconds, admitted, still queued) for each.

    The first pass fills the cluster and records every waiting job's reason (all of them are new); the
    later ones each run one scheduler period later, after a reconcile pass, as the loop would.
    """
    out = []
    for _ in range(passes):
        started = time.perf_counter()
        count = world.services.jobs.admission_pass()
        seconds = time.perf_counter() - started
        queued = world.container.db.read(lambda conn: len(jobs_db.queued_for_admission(conn)))
        out.append((seconds, count, queued))
        world.clock.advance(world.work.period_ms)
        world.services.jobs.reconcile_pass()
    return out


# -- the pure decide path --------------------------------------------------------------------------------
def run_decide(work: Workload) -> Result:
    """Replay the workload in memory through ``decide`` alone; only the decisions are timed."""
    quota = Quota(
        Resources(QUOTA["max_milli_cpu"], QUOTA["max_gpus"], QUOTA["max_memory_mib"]),
        QUOTA["max_running_jobs"],
        QUOTA["max_queued_jobs"],
        0,
    )
    orgs = [f"org{i:05d}" for i in range(work.smes)]
    tenants = {org: TenantState(quota, Resources(), 0, 10**15, 0) for org in orgs}
    queue: dict[str, QueuedJob] = {}
    runtime: dict[str, int] = {}
    for seq, i, priority, runtime_ms in work.jobs():
        job = QueuedJob(f"job{seq:07d}", orgs[i], work.resources(i), priority, seq, 100, 0)
        queue[job.job_id] = job
        runtime[job.job_id] = runtime_ms
    free, now, result = work.cluster, 0, Result()
    running: list[tuple[int, str, QueuedJob]] = []
    while queue or running:
        while running and running[0][0] <= now:
            _, _, done = heapq.heappop(running)
            free = free + done.resources
            state = tenants[done.org_id]
            tenants[done.org_id] = replace(
                state, in_use=state.in_use - done.resources, running_jobs=state.running_jobs - 1
            )
        if queue:
            started = time.perf_counter()
            chosen = admitted(decide(Snapshot(free, tenants, work.cluster), list(queue.values())))
            result.pass_s.append(time.perf_counter() - started)
            result.passes += 1
            for job in chosen:
                del queue[job.job_id]
                free = free - job.resources
                state = tenants[job.org_id]
                tenants[job.org_id] = replace(
                    state, in_use=state.in_use + job.resources, running_jobs=state.running_jobs + 1
                )
                heapq.heappush(running, (now + runtime[job.job_id], job.job_id, job))
            result.admissions += len(chosen)
            if result.fairness is None and result.admissions * 2 >= work.depth:
                result.fairness = _memory_fairness(tenants, queue, work)
        now += work.period_ms
    result.sim_s = now / 1000
    return result


def _memory_fairness(
    tenants: dict[str, TenantState], queue: dict[str, QueuedJob], work: Workload
) -> Fraction:
    groups: dict[bool, list[Fraction]] = {True: [], False: []}
    for org in {j.org_id for j in queue.values()}:
        groups[int(org[3:]) < work.gpu_smes].append(dominant_share(tenants[org].in_use, work.cluster))
    return fairness(groups)


# -- the databases ---------------------------------------------------------------------------------------
@contextmanager
def scratch_database(admin_url: str | None) -> Iterator[str | None]:
    """A fresh PostgreSQL database for one run (dropped afterwards), or None for SQLite in the state dir."""
    if admin_url is None:
        yield None
        return
    url = admin_url.replace("postgresql://", "postgresql+psycopg://", 1)
    name = f"sbx_bench_{secrets.token_hex(5)}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{url.rsplit('/', 1)[0]}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def service_world(admin_url: str | None, work: Workload) -> Iterator[ServiceWorld]:
    """A :class:`ServiceWorld` in a temporary state dir on SQLite or a scratch PostgreSQL database."""
    with tempfile.TemporaryDirectory(prefix="bench-admission-") as tmp, scratch_database(admin_url) as url:
        world = ServiceWorld(Path(tmp), url, work)
        try:
            yield world
        finally:
            world.close()


def service_run(
    admin_url: str | None, work: Workload, profile: cProfile.Profile | None
) -> tuple[Result, float]:
    """Set up, submit and replay through the service; returns the result and the setup time."""
    started = time.perf_counter()
    with service_world(admin_url, work) as world:
        world.submit_all()
        setup_s = time.perf_counter() - started
        result = run_service(world, profile)
        if result.admissions != work.depth:
            raise SystemExit(f"service: {result.admissions} admissions of {work.depth} jobs")
        invariants = world.services.ledger.invariants()
        if invariants:
            raise SystemExit(f"service: ledger invariants broken: {invariants[:3]}")
    return result, setup_s


def report(label: str, result: Result) -> None:
    """One human line per path."""
    ms = [s * 1000 for s in result.pass_s]
    print(
        f"[{label}] admissions={result.admissions} passes={result.passes} sim_s={result.sim_s:.0f} "
        f"admissions_per_s={result.rate:.0f} pass_ms p50={median(ms):.2f} p99={result.p99_ms:.2f} "
        f"max={max(ms):.2f} total_s={sum(result.pass_s):.3f} fairness={result.fair:.3f}",
        flush=True,
    )


def parse() -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--smes", type=int, default=1_000)
    parser.add_argument("--jobs-per-sme", type=int, default=10)
    parser.add_argument("--gpu-smes", type=int, default=200)
    parser.add_argument("--cluster-cpus", type=int, default=4_200)
    parser.add_argument("--cluster-gpus", type=int, default=840)
    parser.add_argument("--period-ms", type=int, default=1_000, help="scheduler period (simulated)")
    parser.add_argument("--min-runtime-s", type=int, default=5)
    parser.add_argument("--max-runtime-s", type=int, default=60)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--pg", action="store_true", help="also on PostgreSQL (SBX_TEST_DATABASE_URL)")
    parser.add_argument("--database-url", default=None, help="a PostgreSQL admin URL (implies --pg)")
    parser.add_argument("--one-pass", action="store_true", help="time only the first pass over the queue")
    parser.add_argument("--profile", type=Path, default=None, help="cProfile the service passes into FILE")
    return parser.parse_args()


def workload(args: argparse.Namespace) -> Workload:
    """The workload the options describe."""
    return Workload(
        smes=args.smes,
        jobs_per_sme=args.jobs_per_sme,
        gpu_smes=min(args.gpu_smes, args.smes),
        cluster=Resources(args.cluster_cpus * 1_000, args.cluster_gpus, args.cluster_cpus * 4_096),
        period_ms=args.period_ms,
        min_runtime_ms=args.min_runtime_s * 1_000,
        max_runtime_ms=args.max_runtime_s * 1_000,
        seed=args.seed,
    )


def main() -> None:
    """Run the pure path and the service path (SQLite, and PostgreSQL when asked) side by side."""
    args = parse()
    work = workload(args)
    pg_url = args.database_url or (os.environ.get("SBX_TEST_DATABASE_URL") if args.pg else None)
    if args.one_pass:
        for label, url in [("sqlite", None), *([("postgresql", pg_url)] if pg_url else [])]:
            with service_world(url, work) as world:
                world.submit_all()
                timed = deep_passes(world)
            for i, (seconds, count, queued) in enumerate(timed, 1):
                print(f"[{label}] pass {i}: {seconds * 1000:.0f} ms, admitted {count}, {queued} still queued")
            steady = max(seconds for seconds, _, _ in timed[1:])
            print(
                f"BENCH admission_pass db={label} depth={work.depth} first_pass_ms={timed[0][0] * 1000:.0f} "
                f"steady_pass_ms={steady * 1000:.0f} admitted_first={timed[0][1]}"
            )
        return
    pure = run_decide(work)
    report("decide", pure)
    profile = cProfile.Profile() if args.profile else None
    service, setup_s = service_run(None, work, profile)
    print(f"[service sqlite] setup_s={setup_s:.1f}")
    report("service sqlite", service)
    if profile is not None:
        profile.dump_stats(str(args.profile))
    if pg_url:
        pg, pg_setup_s = service_run(pg_url, work, None)
        print(f"[service postgresql] setup_s={pg_setup_s:.1f}")
        report("service postgresql", pg)
        print(
            f"BENCH admission path=service db=postgresql admissions_per_s={pg.rate:.0f} pass_p99_ms={pg.p99_ms:.1f}"
        )
    print(
        f"BENCH admission path=service admissions_per_s={service.rate:.0f} pass_p99_ms={service.p99_ms:.1f} "
        f"fairness={service.fair:.3f} depth={work.depth} smes={args.smes} "
        f"decide_admissions_per_s={pure.rate:.0f}"
    )


if __name__ == "__main__":
    main()
