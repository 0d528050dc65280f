"""Jobs on the scriptable fake backend (a fake clock drives it), on SQLite and PostgreSQL: admission, order,
quotas, fairness, enforcement, failure, settlement exactly once and reconciliation after a restart."""

from __future__ import annotations

from typing import Any

import pytest

from broker.compute import launch_name
from broker.compute.fake import FakeBackend, FakeScript
from broker.container import build_container
from broker.errors import Forbidden
from broker.services.jobs import JobRequest
from broker.services.registry import Services, build_services
from common.errors import InvalidInput
from common.resources import Resources
from quotas.pricing import price
from quotas.quota import QuotaExceeded
from tests.conftest import BACKENDS, World, make_world

pytestmark = pytest.mark.parametrize("database_url", BACKENDS, indirect=True)
ONE_CPU = Resources(milli_cpu=1000, gpus=0, memory_mib=1024)


@pytest.fixture
def fake(services: Services, clock: Any) -> FakeBackend:
    backend = FakeBackend(clock, capacity=Resources(milli_cpu=4000, gpus=0, memory_mib=16_384))
    services.container.use_compute(backend)
    return backend


def _submit(
    world: World, *, sme: Any = None, runtime_s: int = 60, priority: int = 0, res: Resources = ONE_CPU
) -> dict[str, Any]:
    return world.services.jobs.submit(
        sme or world.sme, JobRequest("python train.py", res, runtime_s, priority), idempotency_key=None
    )


def _tick(world: World, ms: int = 0) -> None:
    world.clock.advance(ms)
    world.services.jobs.reconcile_pass()
    world.services.jobs.admission_pass()


def _state(world: World, job: dict[str, Any]) -> dict[str, Any]:
    return world.services.jobs.get(world.operator, job_id=job["id"])


def test_job_runs_is_metered_and_settled_once(world: World, fake: FakeBackend) -> None:
    world.credit(1_000_000)
    job = _submit(world)
    fake.script(launch_name(job["id"]), FakeScript(run_ms=5_000))
    _tick(world)
    admitted = _state(world, job)
    assert admitted["state"] in ("admitted", "running") and admitted["hold_id"]
    assert world.services.ledger.balance(world.sme)["held"] == admitted["max_cost"]
    _tick(world, 1_000)
    assert _state(world, job)["state"] == "running"
    _tick(world, 10_000)
    done = _state(world, job)
    card = world.services.jobs.rate_card()
    assert done["state"] == "succeeded"
    assert done["cost"] == price(ONE_CPU, 5_000, _card(card))
    assert done["voucher_paid"] == done["cost"] and done["copaid"] == 0
    balance = world.services.ledger.balance(world.sme)
    assert balance["held"] == 0 and balance["available"] == 1_000_000 - done["cost"]
    _tick(world, 10_000)  # settling again changes nothing
    assert world.services.ledger.balance(world.sme)["available"] == balance["available"]
    assert world.services.ledger.invariants() == []
    assert fake.start_count(launch_name(job["id"])) == 1


def _card(data: dict[str, Any]) -> Any:
    from quotas.pricing import RateCard

    return RateCard.from_dict(data)


def test_quote_matches_the_hold(world: World, fake: FakeBackend) -> None:
    world.credit(1_000_000)
    quote = world.services.jobs.quote(world.sme, resources=ONE_CPU, max_runtime_s=60)
    assert quote["affordable"] and quote["voucher_share"] == quote["max_cost"]
    job = _submit(world)
    _tick(world)
    assert (
        world.services.ledger.get_hold(world.sme, hold_id=_state(world, job)["hold_id"])["amount"]
        == quote["max_cost"]
    )


def test_one_cpu_quota_runs_three_jobs_one_at_a_time_in_priority_then_fifo_order(
    world: World, fake: FakeBackend
) -> None:
    world.credit(10_000_000)
    world.services.jobs.set_quota(
        world.operator,
        org_id=world.sme.org_id,
        values={
            "max_milli_cpu": 1000,
            "max_gpus": 0,
            "max_memory_mib": 4096,
            "max_running_jobs": 4,
            "max_queued_jobs": 10,
        },
    )
    first = _submit(world)
    world.clock.advance(1)
    second = _submit(world)
    world.clock.advance(1)
    urgent = _submit(world, priority=5)
    for job in (first, second, urgent):
        fake.script(launch_name(job["id"]), FakeScript(run_ms=2_000))
    order = []
    for _ in range(20):
        _tick(world, 500)
        running = [
            j["id"] for j in (first, second, urgent) if _state(world, j)["state"] in ("admitted", "running")
        ]
        assert len(running) <= 1
        if running and running[0] not in order:
            order.append(running[0])
    assert order == [urgent["id"], first["id"], second["id"]]
    assert all(_state(world, j)["state"] == "succeeded" for j in (first, second, urgent))


def test_max_runtime_kills_and_bills_the_maximum(world: World, fake: FakeBackend) -> None:
    world.credit(1_000_000)
    job = _submit(world, runtime_s=10)
    fake.script(launch_name(job["id"]), FakeScript(run_ms=None))  # would run forever
    _tick(world)
    _tick(world, 100)
    _tick(world, 10_500)  # over its max runtime: stopped
    _tick(world, 100)
    done = _state(world, job)
    assert done["state"] == "timed_out"
    assert done["cost"] == done["max_cost"]
    assert world.services.ledger.invariants() == []


def test_nonzero_exit_is_failed_and_settled_for_what_it_used(world: World, fake: FakeBackend) -> None:
    world.credit(1_000_000)
    job = _submit(world)
    fake.script(launch_name(job["id"]), FakeScript(run_ms=3_000, exit_code=1, output="boom"))
    for _ in range(3):
        _tick(world, 2_000)
    done = _state(world, job)
    assert done["state"] == "failed"
    assert 0 < done["cost"] < done["max_cost"]


def test_failed_backend_submit_releases_the_hold(world: World, fake: FakeBackend) -> None:
    world.credit(1_000_000)
    fake.fail_next_starts(1)
    job = _submit(world)
    _tick(world)
    done = _state(world, job)
    assert done["state"] == "failed" and done["cost"] == 0
    assert world.services.ledger.balance(world.sme)["available"] == 1_000_000
    assert world.services.ledger.invariants() == []


def test_without_credit_a_job_waits_then_runs_when_credit_arrives(world: World, fake: FakeBackend) -> None:
    job = _submit(world)
    _tick(world)
    assert _state(world, job)["state"] == "queued"
    world.credit(1_000_000)
    _tick(world)
    assert _state(world, job)["state"] in ("admitted", "running")


def test_stop_a_queued_job_and_a_running_one(world: World, fake: FakeBackend) -> None:
    world.credit(1_000_000)
    queued = world.services.jobs.submit(world.sme, JobRequest("x", ONE_CPU, 60), idempotency_key=None)
    assert world.services.jobs.stop(world.sme, job_id=queued["id"])["state"] == "stopped"
    running = _submit(world)
    fake.script(launch_name(running["id"]), FakeScript(run_ms=None))
    _tick(world, 10)
    _tick(world, 2_000)
    world.services.jobs.stop(world.sme, job_id=running["id"])
    _tick(world, 10)
    done = _state(world, running)
    assert done["state"] == "stopped" and done["cost"] > 0
    assert world.services.ledger.invariants() == []


def test_fairness_two_smes_alternate(world: World, fake: FakeBackend) -> None:
    fake.set_capacity(Resources(milli_cpu=1000, gpus=0, memory_mib=16_384))
    world.credit(10_000_000)
    world.credit(10_000_000, sme=world.sme_b)
    a = [_submit(world) for _ in range(10)]
    b = [_submit(world, sme=world.sme_b) for _ in range(10)]
    for job in a + b:
        fake.script(launch_name(job["id"]), FakeScript(run_ms=1_000))
    seen: list[str] = []
    by_id = {j["id"]: "A" for j in a} | {j["id"]: "B" for j in b}
    for _ in range(80):
        _tick(world, 600)
        for job_id in by_id:
            if _state(world, {"id": job_id})["admitted_ms"] and job_id not in seen:
                seen.append(job_id)
    owners = [by_id[j] for j in seen]
    assert len(owners) == 20
    assert all(owners[i] != owners[i + 1] for i in range(19)), owners


def test_submission_beyond_quota_is_refused(world: World, fake: FakeBackend) -> None:
    with pytest.raises(QuotaExceeded):
        _submit(world, res=Resources(milli_cpu=64_000, gpus=0, memory_mib=1024))
    with pytest.raises(InvalidInput):
        world.services.jobs.submit(world.sme, JobRequest("", ONE_CPU, 60), idempotency_key=None)


def test_restarted_broker_reconciles_and_settles_once(
    world: World, fake: FakeBackend, settings: Any, clock: Any
) -> None:
    world.credit(1_000_000)
    job = _submit(world)
    fake.script(launch_name(job["id"]), FakeScript(run_ms=4_000))
    _tick(world)
    _tick(world, 1_000)
    assert _state(world, job)["state"] == "running"
    # A second broker (as after a restart) over the same database and cluster settles it exactly once.
    other = build_container(settings, clock=clock)
    try:
        other.use_compute(fake)
        restarted = build_services(other)
        clock.advance(5_000)
        assert restarted.jobs.reconcile_pass() == 1
        assert world.services.jobs.reconcile_pass() == 0
        assert restarted.jobs.reconcile_pass() == 0
        done = restarted.jobs.get(world.operator, job_id=job["id"])
        assert done["state"] == "succeeded" and done["cost"] == price(
            ONE_CPU, 4_000, _card(restarted.jobs.rate_card())
        )
        assert restarted.ledger.invariants() == []
    finally:
        other.close()


def test_admitted_but_never_started_job_is_requeued_with_its_hold_released(
    services: Services, clock: Any
) -> None:
    w = make_world(services, clock)
    backend = FakeBackend(clock)
    services.container.use_compute(backend)
    w.credit(1_000_000)
    job = _submit(w)
    backend.fail_next_starts(0)
    _tick(w)
    # Simulate a crash after the hold was written but before the backend knew the job: forget it.
    backend.stop(launch_name(job["id"]))
    backend._runs.pop(launch_name(job["id"]), None)  # the cluster lost it
    clock.advance(60_000)
    services.jobs.reconcile_pass()
    assert _state(w, job)["state"] == "queued"
    assert services.ledger.balance(w.sme)["held"] == 0
    assert services.ledger.invariants() == []


def test_the_queued_jobs_quota_is_enforced(world: World, fake: FakeBackend) -> None:
    world.services.jobs.set_quota(
        world.operator,
        org_id=world.sme.org_id,
        values={
            "max_milli_cpu": 4000,
            "max_gpus": 0,
            "max_memory_mib": 8192,
            "max_running_jobs": 1,
            "max_queued_jobs": 2,
        },
    )
    _submit(world)
    _submit(world)
    with pytest.raises(QuotaExceeded):
        _submit(world)


def test_tenants_overview_matches_each_smes_quota_and_balance(world: World) -> None:
    """The operator's one-transaction overview says what the per-SME calls say, for every SME."""
    world.credit(5_000)
    world.credit(700, sme=world.sme_b)
    jobs, ledger = world.services.jobs, world.services.ledger
    overview = jobs.tenants(world.operator)
    assert sorted(t["org_id"] for t in overview) == sorted([world.sme.org_id, world.sme_b.org_id])
    for tenant in overview:
        assert tenant["quota"] == jobs.quota(world.operator, org_id=tenant["org_id"])
        assert tenant["balance"] == ledger.balance(world.operator, org_id=tenant["org_id"])
    with pytest.raises(Forbidden):
        jobs.tenants(world.sme)
