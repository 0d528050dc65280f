"""The admission pass's one write transaction (issue 21.2): all admissions in one savepoint, and when one
fails between the snapshot and the write — its credit moved, or another replica took it — only that job
stays queued, the others are admitted, and the ledger stays balanced; on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest

from broker.compute.fake import FakeBackend
from broker.db import jobs as jobs_db
from broker.services.jobs import JobRequest
from broker.services.registry import Services
from common.errors import Conflict, InsufficientFunds
from common.resources import Resources
from tests.conftest import BACKENDS, World

pytestmark = pytest.mark.parametrize("database_url", BACKENDS, indirect=True)
CPU = Resources(milli_cpu=1000, gpus=0, memory_mib=1024)


@pytest.fixture
def fake(services: Services, clock: Any) -> FakeBackend:
    backend = FakeBackend(clock, capacity=Resources(milli_cpu=8000, gpus=0, memory_mib=16_384))
    services.container.use_compute(backend)
    return backend


def _three_jobs(world: World) -> list[dict[str, Any]]:
    world.credit(10_000_000)
    jobs = []
    for _ in range(3):
        jobs.append(
            world.services.jobs.submit(world.sme, JobRequest("python x.py", CPU, 60), idempotency_key=None)
        )
        world.clock.advance(1)
    return jobs


def _states(world: World, jobs: list[dict[str, Any]]) -> list[str]:
    return [world.services.jobs.get(world.operator, job_id=j["id"])["state"] for j in jobs]


def test_one_pass_admits_everything_in_one_savepoint(world: World, fake: FakeBackend) -> None:
    jobs = _three_jobs(world)
    assert world.services.jobs.admission_pass() == 3
    assert set(_states(world, jobs)) <= {"admitted", "running"}
    held = world.services.ledger.balance(world.sme)["held"]
    assert held == sum(j["max_cost"] for j in jobs)
    assert world.services.ledger.invariants() == []


@pytest.mark.parametrize("failure", [InsufficientFunds, Conflict])
def test_a_job_that_fails_at_write_time_stays_queued_and_the_others_are_admitted(
    world: World, fake: FakeBackend, monkeypatch: pytest.MonkeyPatch, failure: type[Exception]
) -> None:
    jobs = _three_jobs(world)
    ledger, real_admit = world.services.container.ledger, jobs_db.admit
    real_hold = ledger.place_hold
    victim = jobs[1]["id"]

    def hold(conn: Any, **kw: Any) -> Any:
        if failure is InsufficientFunds and kw["job_id"] == victim:
            raise InsufficientFunds("credit moved meanwhile")
        return real_hold(conn, **kw)

    def admit(conn: Any, job_id: str, **kw: Any) -> None:
        if failure is Conflict and job_id == victim:
            raise Conflict("another replica took it", code="job_changed")
        real_admit(conn, job_id, **kw)

    monkeypatch.setattr(ledger, "place_hold", hold)
    monkeypatch.setattr(jobs_db, "admit", admit)
    assert world.services.jobs.admission_pass() == 2
    states = _states(world, jobs)
    assert states[1] == "queued" and {states[0], states[2]} <= {"admitted", "running"}
    balance = world.services.ledger.balance(world.sme)
    assert balance["held"] == jobs[0]["max_cost"] + jobs[2]["max_cost"]  # the victim's hold was undone
    assert world.services.ledger.invariants() == []
    monkeypatch.undo()
    assert world.services.jobs.admission_pass() == 1  # next pass: nothing stands in its way any more
