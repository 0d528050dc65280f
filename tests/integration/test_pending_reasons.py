"""Pending reasons (issue 17.1) through the service on SQLite and PostgreSQL: each admission pass records why
every queued job waits (quota, running jobs, credit, cluster, fair share behind whom) and its place in the
fair order, writes a reason only when it changes, and a refused submission is kept as a rejected job."""

from __future__ import annotations

from typing import Any

import pytest

from broker.compute import launch_name
from broker.compute.fake import FakeBackend, FakeScript
from broker.db import jobs as jobs_db
from broker.services.jobs import JobRequest
from broker.services.registry import Services
from common.resources import Resources
from quotas.quota import QuotaExceeded
from tests.conftest import BACKENDS, World

pytestmark = pytest.mark.parametrize("database_url", BACKENDS, indirect=True)
CPU = Resources(milli_cpu=1000, gpus=0, memory_mib=1024)
QUOTA = {
    "max_milli_cpu": 8000,
    "max_gpus": 0,
    "max_memory_mib": 32_768,
    "max_running_jobs": 4,
    "max_queued_jobs": 20,
}


@pytest.fixture
def fake(services: Services, clock: Any) -> FakeBackend:
    backend = FakeBackend(clock, capacity=Resources(milli_cpu=4000, gpus=0, memory_mib=16_384))
    services.container.use_compute(backend)
    return backend


def _submit(world: World, sme: Any, res: Resources = CPU, runtime_s: int = 60) -> dict[str, Any]:
    job = world.services.jobs.submit(sme, JobRequest("python x.py", res, runtime_s), idempotency_key=None)
    world.clock.advance(1)
    return job


def _view(world: World, job: dict[str, Any]) -> dict[str, Any]:
    return world.services.jobs.get(world.operator, job_id=job["id"])


def _quota(world: World, sme: Any, **values: int) -> None:
    world.services.jobs.set_quota(world.operator, org_id=sme.org_id, values={**QUOTA, **values})


def test_quota_and_running_jobs_say_which_limit_and_by_how_much(world: World, fake: FakeBackend) -> None:
    world.credit(10_000_000)
    _quota(world, world.sme, max_milli_cpu=2500, max_running_jobs=2)
    first, second = _submit(world, world.sme), _submit(world, world.sme)
    over = _submit(world, world.sme)
    world.services.jobs.admission_pass()
    assert {_view(world, j)["state"] for j in (first, second)} <= {"admitted", "running"}
    waits = _view(world, over)
    assert waits["state"] == "queued" and waits["pending_reason"] == "running_jobs"
    assert waits["queue_position"] == 1
    _quota(world, world.sme, max_milli_cpu=2500, max_running_jobs=4)
    world.services.jobs.admission_pass()
    waits = _view(world, over)
    assert waits["pending_reason"] == "quota"
    assert (
        waits["pending_detail"] == "quota: needs 1 CPU, 0.5 CPU left of its SME's CPU quota (0.5 CPU short)"
    )


def test_credit_names_what_the_hold_needs_and_what_is_left(world: World, fake: FakeBackend) -> None:
    world.credit(700)  # a 1-CPU, 60-second job holds 600 at the default card plus memory
    first, second = _submit(world, world.sme), _submit(world, world.sme)
    world.services.jobs.admission_pass()
    assert _view(world, first)["state"] in ("admitted", "running")
    waits = _view(world, second)
    assert waits["pending_reason"] == "credit"
    assert f"needs {waits['max_cost']} credits of voucher credit" in waits["pending_detail"]


def test_cluster_and_fair_share_behind_whom(world: World, fake: FakeBackend) -> None:
    world.credit(10_000_000)
    world.credit(10_000_000, sme=world.sme_b)
    for sme in (world.sme, world.sme_b):
        _quota(world, sme)
    a = [_submit(world, world.sme, Resources(2000, 0, 1024)) for _ in range(2)]
    b = _submit(world, world.sme_b, Resources(2000, 0, 1024))
    huge = _submit(world, world.sme_b, Resources(4000, 0, 1024))
    world.services.jobs.admission_pass()
    assert _view(world, a[0])["state"] in ("admitted", "running")
    assert _view(world, b)["state"] in ("admitted", "running")
    behind = _view(world, a[1])
    assert (
        behind["pending_reason"] == "fair_share"
        and f"behind {world.sme_b.org_id}" in behind["pending_detail"]
    )
    assert _view(world, huge)["pending_reason"] == "fair_share"  # 4 CPUs were free when the pass began
    world.services.jobs.admission_pass()  # full from the start now: `capacity`, but the swap is not yet written
    assert _view(world, huge)["pending_reason"] == "fair_share"
    world.clock.advance(10_000)  # past the refresh interval (no reconcile: the jobs still hold the cluster)
    world.services.jobs.admission_pass()
    full = _view(world, huge)
    assert full["pending_reason"] == "capacity"
    assert full["pending_detail"] == "cluster: needs 4 CPU, 0 CPU left free in the cluster (4 CPU short)"
    positions = sorted((_view(world, j)["queue_position"], j["id"]) for j in (a[1], huge))
    assert [p for p, _ in positions] == [1, 2]
    listed = {j["id"]: j for j in world.services.jobs.list_jobs(world.operator)}
    assert {listed[a[1]["id"]]["org_id"], listed[huge["id"]]["org_id"]} == {
        world.sme.org_id,
        world.sme_b.org_id,
    }
    assert listed[huge["id"]]["queue_position"] == full["queue_position"]


def test_a_reason_is_written_only_when_it_changes(
    world: World, fake: FakeBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.credit(10_000_000)
    _quota(world, world.sme, max_running_jobs=1)
    jobs = [_submit(world, world.sme) for _ in range(4)]
    for job in jobs:
        fake.script(launch_name(job["id"]), FakeScript(run_ms=None))
    written: list[int] = []
    real = jobs_db.set_waits

    def recorded(conn: Any, waits: list[tuple[str, str, str]]) -> None:
        written.append(len(waits))
        real(conn, waits)

    monkeypatch.setattr(jobs_db, "set_waits", recorded)
    world.services.jobs.admission_pass()
    assert written == [3]  # three jobs wait behind the running one
    for _ in range(3):
        world.services.jobs.admission_pass()
    assert written == [3]  # nothing changed: no pass wrote again (and with nothing to admit, no transaction)
    assert [_view(world, j)["queue_position"] for j in jobs[1:]] == [1, 2, 3]


def test_an_admitted_job_carries_no_pending_reason(world: World, fake: FakeBackend) -> None:
    world.credit(10_000_000)
    _quota(world, world.sme, max_running_jobs=1)
    first, second = _submit(world, world.sme, runtime_s=1), _submit(world, world.sme)
    fake.script(launch_name(first["id"]), FakeScript(run_ms=100))
    world.services.jobs.admission_pass()
    assert _view(world, second)["pending_reason"] == "running_jobs"
    world.clock.advance(2_000)
    world.services.jobs.reconcile_pass()
    world.services.jobs.admission_pass()
    admitted = _view(world, second)
    assert admitted["state"] in ("admitted", "running")
    assert admitted["pending_reason"] is None and admitted["queue_position"] is None


def test_a_refused_submission_is_kept_as_a_rejected_job_whose_id_answers(
    world: World, fake: FakeBackend
) -> None:
    request = JobRequest("python x.py", Resources(64_000, 0, 1024), 60)
    refusal = QuotaExceeded("job new asks for more than the quota allows")
    raised = world.services.jobs.record_rejection(world.sme, request, refusal)
    assert isinstance(raised, QuotaExceeded) and raised.code == "quota_exceeded"
    job_id = raised.detail.split("kept as rejected job ")[1].split(":")[0]
    kept = world.services.jobs.get(world.sme, job_id=job_id)
    assert kept["state"] == "rejected" and kept["pending_reason"] == "quota_exceeded"
    assert kept["pending_detail"] == refusal.detail and kept["cost"] == 0
    assert not world.services.container.job_files.job_dir(job_id).exists()
    assert world.services.jobs.admission_pass() == 0
    assert world.services.ledger.invariants() == []
