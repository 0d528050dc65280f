"""Kueue's baseline scheduler-performance workload replayed through the broker's service path.

The profile (Kueue's ``test/performance/scheduler`` baseline): 5 cohorts × 6 queues, each queue nominal 20
units with a borrowing limit of 100; per queue 350 small workloads (1 unit, 200 ms, priority 50, one every
100 ms), 100 medium (5 units, 500 ms, priority 100, one every 500 ms) and 50 large (20 units, 1,000 ms,
priority 200, one every 1,200 ms). Mapped here onto 5 cohorts of 6 SMEs on a 600-unit cluster (1 unit =
1 CPU + 1 GiB), each SME's quota its nominal 20 units plus its borrowing limit 100 (the broker has no
cohorts yet, issue 21.3: an SME borrows from the whole pool, not only from its cohort), priorities halved
into the broker's range (25, 50, 100), max runtime 1 s for the 200 ms and 500 ms classes.

Every job goes through ``JobService.submit`` and is admitted by ``JobService.admission_pass`` on the fake
backend, whose jobs run for their class's duration; the reconcile pass settles them. Two runs:

* ``sim``: a simulated clock jumps from event to event (arrivals, job ends), running a reconcile and an
  admission pass at each — the schedule the broker's decisions make, free of this machine's speed;
* ``real``: the system clock, a submitter thread sleeping until each arrival and the scheduler looping as
  fast as it can — what this machine sustains.

Printed: wall time (first arrival to last job end), mean usage (work done / (cluster × wall)), mean time
to admission per class, beside the perfectly packed lower bound max(work / cluster, last arrival + its
runtime). ``--scale`` shrinks the job counts (not the rates) for a quick run.

Last line: ``BENCH scheduling sim_wall_s=… real_wall_s=… usage=… wait_small_s=… wait_medium_s=…
wait_large_s=… lower_bound_s=…`` (``usage`` of the simulated run).
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from broker.bootstrap import initialise
from broker.compute import launch_name
from broker.compute.fake import FakeBackend, FakeScript
from broker.container import build_container
from broker.db import jobs as jobs_db
from broker.db.orgs import Principal
from broker.services.jobs import JobRequest
from broker.services.registry import Services, build_services
from broker.settings import Settings
from common.clock import Clock, FakeClock, SystemClock
from common.resources import Resources

COHORTS, QUEUES_PER_COHORT = 5, 6
NOMINAL, BORROWING = 20, 100
CLUSTER_UNITS = 600
START_MS = 1_800_000_000_000


@dataclass(frozen=True)
class JobClass:
    """One class of Kueue's profile."""

    name: str
    units: int
    runtime_ms: int
    priority: int
    every_ms: int
    count: int


CLASSES = (
    JobClass("small", 1, 200, 25, 100, 350),
    JobClass("medium", 5, 500, 50, 500, 100),
    JobClass("large", 20, 1_000, 100, 1_200, 50),
)


def unit(units: int) -> Resources:
    """``units`` of the profile: a CPU and a GiB each."""
    return Resources(milli_cpu=units * 1_000, gpus=0, memory_mib=units * 1_024)


@dataclass(frozen=True)
class Arrival:
    """One job to submit: when (ms after the start), by which SME, of which class."""

    at_ms: int
    sme: int
    cls: JobClass


def arrivals(scale: float) -> list[Arrival]:
    """Every job of the profile in arrival order (the same instants for every queue, as Kueue's generator)."""
    out: list[Arrival] = []
    for sme in range(COHORTS * QUEUES_PER_COHORT):
        for cls in CLASSES:
            out.extend(Arrival(k * cls.every_ms, sme, cls) for k in range(max(1, round(cls.count * scale))))
    return sorted(out, key=lambda a: (a.at_ms, a.sme, a.cls.name))


@dataclass
class Figures:
    """What one run measured."""

    wall_s: float
    usage: float
    wait_s: dict[str, float]


class Broker:
    """A broker on SQLite in a temporary state dir, with the fake backend, an operator and the 30 SMEs."""

    def __init__(self, state_dir: Path, clock: Clock) -> None:
        settings = Settings(
            state_dir=state_dir / "broker", compute="fake", background_loops=False, kek_file=state_dir / "kek"
        )
        token = initialise(settings.state_dir, settings=settings)["token"]
        self.clock = clock
        self.container = build_container(settings, clock=clock)
        self.fake = FakeBackend(clock, capacity=unit(CLUSTER_UNITS))
        self.container.use_compute(self.fake)
        self.services: Services = build_services(self.container)
        self.operator = self._principal(token)
        self.smes = self._smes()
        self.kind: dict[str, JobClass] = {}

    def _principal(self, token: str) -> Principal:
        found = self.services.orgs.authenticate(token)
        assert found is not None
        return found

    def _smes(self) -> list[Principal]:
        orgs, op = self.services.orgs, self.operator
        issuer_org = orgs.create(op, name="issuer", role="issuer", year_budget=10**15, sme_cap=10**13)
        issuer = self._principal(orgs.create_token(op, org_id=issuer_org["id"])["token"])
        self.services.vouchers.create_key(issuer)
        now_s = self.clock.now_ms() // 1000
        quota = unit(NOMINAL + BORROWING)
        smes = []
        for i in range(COHORTS * QUEUES_PER_COHORT):
            org = orgs.create(
                op, name=f"cohort{i // QUEUES_PER_COHORT}-sme{i % QUEUES_PER_COHORT}", role="sme"
            )
            sme = self._principal(orgs.create_token(op, org_id=org["id"])["token"])
            values = {
                "max_milli_cpu": quota.milli_cpu,
                "max_gpus": 0,
                "max_memory_mib": quota.memory_mib,
                "max_running_jobs": 1_000,
                "max_queued_jobs": 1_000,
            }
            self.services.jobs.set_quota(op, org_id=sme.org_id, values=values)
            voucher = self.services.vouchers.issue(
                issuer,
                sme_org=sme.org_id,
                credits=10**12,
                coverage_bps=10_000,
                resources=("cpu", "memory"),
                valid_from_s=None,
                valid_until_s=now_s + 30 * 86_400,
                credit_expires_s=now_s + 365 * 86_400,
            )
            self.services.vouchers.redeem(sme, token=voucher["token"], idempotency_key=None)
            smes.append(sme)
        return smes

    def submit(self, arrival: Arrival) -> None:
        """Submit one job through ``JobService.submit`` and script its runtime on the fake backend."""
        cls = arrival.cls
        runtime_s = max(1, cls.runtime_ms // 1000)
        request = JobRequest("python work.py", unit(cls.units), runtime_s, cls.priority)
        job = self.services.jobs.submit(self.smes[arrival.sme], request, idempotency_key=None)
        self.kind[job["id"]] = cls
        self.fake.script(launch_name(job["id"]), FakeScript(run_ms=cls.runtime_ms))

    def tick(self) -> None:
        """One scheduler round: settle what ended, then admit what fits."""
        self.services.jobs.reconcile_pass()
        self.services.jobs.admission_pass()

    def figures(self, start_ms: int, done_ms: int, work_unit_ms: int) -> Figures:
        """Wall time, usage and mean time to admission per class, from the job rows."""
        jobs = self.container.db.read(lambda conn: jobs_db.list_jobs(conn, limit=10**6))
        waits: dict[str, list[int]] = {cls.name: [] for cls in CLASSES}
        for job in jobs:
            if job.admitted_ms is not None and job.id in self.kind:
                waits[self.kind[job.id].name].append(job.admitted_ms - job.submitted_ms)
        wall_ms = max(1, done_ms - start_ms)
        return Figures(
            wall_ms / 1000,
            work_unit_ms / (CLUSTER_UNITS * wall_ms),
            {name: (sum(w) / len(w) / 1000 if w else float("nan")) for name, w in waits.items()},
        )

    def close(self) -> None:
        """Close the container."""
        self.container.close()


@contextmanager
def broker(clock: Clock) -> Iterator[Broker]:
    """A :class:`Broker` in a temporary directory."""
    with tempfile.TemporaryDirectory(prefix="bench-scheduling-") as tmp:
        b = Broker(Path(tmp), clock)
        try:
            yield b
        finally:
            b.close()


def work_unit_ms(plan: list[Arrival]) -> int:
    """The profile's whole work in unit-milliseconds."""
    return sum(a.cls.units * a.cls.runtime_ms for a in plan)


def simulated(plan: list[Arrival]) -> Figures:
    """Replay on a simulated clock that jumps from event to event (arrivals and job ends)."""
    clock = FakeClock(start_ms=START_MS)
    with broker(clock) as b:
        clock.set(START_MS)
        ends: list[int] = []
        i, last_end = 0, START_MS
        while i < len(plan) or ends or b.fake.active():
            now = clock.now_ms()
            while i < len(plan) and START_MS + plan[i].at_ms <= now:
                b.submit(plan[i])
                i += 1
            b.tick()
            ends = sorted(e for e in _ends(b) if e > now)
            if ends:
                last_end = max(last_end, ends[-1])
            upcoming = [START_MS + plan[i].at_ms] if i < len(plan) else []
            if not (ends or upcoming):
                if b.fake.active():
                    clock.advance(1)
                    continue
                break
            clock.set(min(ends + upcoming))
        return b.figures(START_MS, max(last_end, clock.now_ms()), work_unit_ms(plan))


def _ends(b: Broker) -> list[int]:
    """When each admitted or running job ends on the fake backend (its start plus its class's runtime)."""
    active = b.container.db.read(lambda conn: jobs_db.jobs_in(conn, jobs_db.ACTIVE_STATES))
    return [
        (job.started_ms or job.admitted_ms or 0) + b.kind[job.id].runtime_ms
        for job in active
        if job.id in b.kind
    ]


def real_time(plan: list[Arrival]) -> Figures:
    """Replay on the system clock: a submitter thread keeps the arrival times, the scheduler loops."""
    clock = SystemClock()
    with broker(clock) as b:
        start_ms = clock.now_ms() + 500
        submitted = threading.Event()

        def submitter() -> None:
            for arrival in plan:
                delay = (start_ms + arrival.at_ms - clock.now_ms()) / 1000
                if delay > 0:
                    time.sleep(delay)
                b.submit(arrival)
            submitted.set()

        thread = threading.Thread(target=submitter, daemon=True)
        thread.start()
        done_ms = start_ms
        while True:
            b.tick()
            if submitted.is_set() and not b.fake.active() and not _queued(b):
                done_ms = clock.now_ms()
                break
            time.sleep(0.005)
        thread.join()
        return b.figures(start_ms, done_ms, work_unit_ms(plan))


def _queued(b: Broker) -> int:
    return len(b.container.db.read(lambda conn: jobs_db.queued_for_admission(conn)))


def lower_bound_s(plan: list[Arrival]) -> float:
    """The perfectly packed schedule's length: all work on the whole cluster, and never before the last
    arrival has run."""
    last = max(a.at_ms + a.cls.runtime_ms for a in plan)
    return max(work_unit_ms(plan) / CLUSTER_UNITS, last) / 1000


def main() -> None:
    """Run both replays and print the figures beside the lower bound."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of each class's job count")
    parser.add_argument("--skip-real", action="store_true", help="only the simulated replay")
    args = parser.parse_args()
    plan = arrivals(args.scale)
    bound = lower_bound_s(plan)
    started = time.perf_counter()
    sim = simulated(plan)
    print(
        f"[sim] jobs={len(plan)} wall_s={sim.wall_s:.2f} usage={sim.usage:.3f} waits={sim.wait_s} "
        f"(took {time.perf_counter() - started:.0f} s of real time)",
        flush=True,
    )
    real = sim if args.skip_real else real_time(plan)
    if not args.skip_real:
        print(f"[real] wall_s={real.wall_s:.2f} usage={real.usage:.3f} waits={real.wait_s}", flush=True)
    print(
        f"BENCH scheduling sim_wall_s={sim.wall_s:.2f} real_wall_s={real.wall_s:.2f} usage={sim.usage:.3f} "
        f"wait_small_s={sim.wait_s['small']:.3f} wait_medium_s={sim.wait_s['medium']:.3f} "
        f"wait_large_s={sim.wait_s['large']:.3f} lower_bound_s={bound:.2f} "
        f"real_usage={real.usage:.3f} real_wait_large_s={real.wait_s['large']:.3f}"
    )


if __name__ == "__main__":
    main()
