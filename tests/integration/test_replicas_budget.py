"""Two replicas — two brokers, each with its own engine, pool and services, over one database — never
overspend a dataset's privacy budget under 32 concurrent queries (DESIGN §7: collusion-safe across SMEs and
replicas). On SQLite the second broker is a second writer process-alike (its own group-commit writer)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from broker.container import build_container
from broker.services.registry import build_services
from broker.settings import Settings
from common.clock import FakeClock
from privacy.budget import BudgetExceeded
from tests.conftest import BACKENDS, DAY_S, World
from tests.integration.test_datasets_service import add_custodian, register

pytestmark = pytest.mark.parametrize("database_url", BACKENDS, indirect=True)


def test_32_queries_on_two_replicas_never_overspend(
    world: World, settings: Settings, clock: FakeClock
) -> None:
    world.credit(1_000_000)
    world.credit(1_000_000, sme=world.sme_b)
    custodian = add_custodian(world)
    ds = register(world, custodian, total=1_000_000, sme_cap=1_000_000)
    for sme in (world.sme, world.sme_b):
        req = world.services.datasets.request_access(
            sme, dataset_id=ds["id"], purpose="p", epsilon_micro=1_000_000
        )
        world.services.datasets.approve(custodian, request_id=req["id"], valid_for_s=DAY_S)
    second = build_container(settings, clock=clock)
    try:
        replicas = [world.services, build_services(second)]
        start = threading.Barrier(32)
        query: dict[str, Any] = {"kind": "count", "epsilon_micro": 100_000}

        def one(i: int) -> str:
            replica = replicas[i % 2]
            sme = world.sme if (i // 2) % 2 else world.sme_b
            start.wait()
            try:
                replica.datasets.query(sme, dataset_id=ds["id"], queries=[query])
            except BudgetExceeded:
                return "refused"
            return "answered"

        with ThreadPoolExecutor(32) as pool:
            outcomes = list(pool.map(one, range(32)))
        assert outcomes.count("answered") == 10 and outcomes.count("refused") == 22, outcomes
        budget = world.services.datasets.budget(custodian, dataset_id=ds["id"])
        assert budget["spent"]["epsilon_micro"] == 1_000_000
        assert sum(c["charged"]["epsilon_micro"] for c in budget["charges"]) == 1_000_000
        assert world.services.ledger.invariants() == []
    finally:
        second.close()


def test_meter_check_passes_on_settled_usage(world: World) -> None:
    """`sbx meter check`: metered resource-time in a window never exceeds the cluster's capacity."""
    from broker.compute import launch_name
    from broker.compute.fake import FakeBackend, FakeScript
    from broker.services.jobs import JobRequest
    from common.resources import Resources

    fake = FakeBackend(world.clock, capacity=Resources(milli_cpu=2000, gpus=0, memory_mib=4096))
    world.services.container.use_compute(fake)
    world.credit(10_000_000)
    start = world.clock.now_ms()
    for _ in range(4):
        job = world.services.jobs.submit(
            world.sme, JobRequest("x", Resources(1000, 0, 1024), 60), idempotency_key=None
        )
        fake.script(launch_name(job["id"]), FakeScript(run_ms=2_000))
    for _ in range(12):
        world.clock.advance(500)
        world.services.jobs.reconcile_pass()
        world.services.jobs.admission_pass()
    report = world.services.jobs.meter_check(world.operator, start_ms=start, end_ms=world.clock.now_ms())
    assert report["ok"] and report["records"] >= 4, report
