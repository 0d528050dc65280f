"""Training submissions on SQLite and PostgreSQL (fake compute): validation before anything is charged,
privacy reserved with the queued job in one transaction, concurrent runs never overspend a grant."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from broker.db.orgs import Principal
from broker.services.registry import Services
from common.errors import DomainError
from tests import training_data as td
from tests.conftest import BACKENDS, World

pytestmark = pytest.mark.parametrize("database_url", BACKENDS, indirect=True)


def _custodian(world: World) -> Principal:
    org = world.services.orgs.create(world.operator, name="custodian", role="custodian")
    found = world.services.orgs.authenticate(
        world.services.orgs.create_token(None, org_id=org["id"])["token"]
    )
    assert found is not None
    return found


def _dataset_with_grant(world: World, *, grant_eps: int = 3) -> tuple[str, str]:
    svc: Services = world.services
    custodian = _custodian(world)
    ds = svc.datasets.register(
        custodian,
        name="signal",
        description="generated",
        policy=td.policy(),
        fmt="parquet",
        content=td.parquet_bytes(td.make_frame(2000)),
    )
    dataset_id = ds["id"] if "id" in ds else ds["dataset_id"]
    req = svc.datasets.request_access(
        world.sme,
        dataset_id=dataset_id,
        purpose="train a model",
        epsilon_micro=grant_eps * 1_000_000,
        delta_e12=40_000_000,
        kinds=("training",),
    )
    svc.datasets.approve(
        custodian, request_id=req["id"] if "id" in req else req["request_id"], valid_for_s=86_400
    )
    return dataset_id, custodian.org_id


def _spent(world: World, dataset_id: str) -> Any:
    return world.services.datasets.budget(world.operator, dataset_id=dataset_id)


def test_a_spec_over_the_grant_is_refused_and_charges_nothing(world: World) -> None:
    dataset_id, _ = _dataset_with_grant(world, grant_eps=3)
    before = _spent(world, dataset_id)
    with pytest.raises(DomainError) as exc:
        world.services.training.submit(world.sme, dataset_id=dataset_id, spec=td.spec(target_epsilon=5.0))
    assert exc.value.code == "budget_exceeded"
    assert _spent(world, dataset_id) == before
    assert world.services.training.list_runs(world.sme) == []


@pytest.mark.parametrize(
    "bad",
    [{"code": "import os"}, {"model": {"kind": "transformer"}}, {"features": ["person"]}, {"label": "x1"}],
)
def test_anything_but_an_allowed_spec_is_refused_before_data(world: World, bad: dict[str, Any]) -> None:
    dataset_id, _ = _dataset_with_grant(world)
    with pytest.raises(DomainError) as exc:
        world.services.training.submit(world.sme, dataset_id=dataset_id, spec={**td.spec(), **bad})
    assert exc.value.code in ("invalid_training_spec", "budget_exceeded")
    assert world.services.training.list_runs(world.sme) == []


def test_without_approved_access_there_is_no_training(world: World) -> None:
    dataset_id, _ = _dataset_with_grant(world)
    with pytest.raises(DomainError) as exc:
        world.services.training.submit(world.sme_b, dataset_id=dataset_id, spec=td.spec())
    assert exc.value.code in ("access_denied", "not_found")


def test_submission_reserves_and_queues_a_billed_job_with_its_audit_entry(world: World) -> None:
    world.credit(10_000_000)
    dataset_id, _ = _dataset_with_grant(world)
    run = world.services.training.submit(
        world.sme, dataset_id=dataset_id, spec=td.spec(target_epsilon=1.5), idempotency_key="t1"
    )
    again = world.services.training.submit(
        world.sme, dataset_id=dataset_id, spec=td.spec(target_epsilon=1.5), idempotency_key="t1"
    )
    assert run["id"] == again["id"] and run["state"] == "queued" and run["kind"] == "training"
    assert run["reserved"]["epsilon_micro"] == 1_500_000
    entries = world.services.audit.entries(world.operator, limit=1000)
    assert any(e["action"] == "training.reserve" and e["dataset_id"] == dataset_id for e in entries)


def test_concurrent_runs_never_overspend_the_grant(world: World) -> None:
    dataset_id, _ = _dataset_with_grant(world, grant_eps=3)
    barrier = threading.Barrier(8)

    def submit(_: int) -> str:
        barrier.wait()
        try:
            world.services.training.submit(world.sme, dataset_id=dataset_id, spec=td.spec(target_epsilon=1.0))
            return "ok"
        except DomainError as exc:
            return exc.code

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(submit, range(8)))
    assert outcomes.count("ok") == 3, outcomes
    assert set(outcomes) <= {"ok", "budget_exceeded"}
    assert len(world.services.training.list_runs(world.sme)) == 3


def test_revoking_the_approval_cancels_queued_runs(world: World) -> None:
    dataset_id, custodian_org = _dataset_with_grant(world)
    run = world.services.training.submit(world.sme, dataset_id=dataset_id, spec=td.spec(target_epsilon=1.0))
    custodian = next(
        p
        for p in [world.services.orgs.authenticate(t) for t in _tokens_of(world, custodian_org)]
        if p is not None
    )
    request_id = world.services.datasets.list_requests(custodian, dataset_id=dataset_id)[0]["id"]
    world.services.datasets.revoke(custodian, request_id=request_id, reason="purpose changed")
    stopped = world.services.jobs.get(world.operator, job_id=run["id"])
    assert stopped["state"] == "stopped" and "revoked" in stopped["message"]
    assert world.services.ledger.invariants() == []


def _tokens_of(world: World, org_id: str) -> list[str]:
    return [world.services.orgs.create_token(None, org_id=org_id)["token"]]
