"""DP queries through faults (issue 14, items 1 and 2), on SQLite and PostgreSQL.

A retry with the same ``Idempotency-Key`` and body gets the first answer (same ``query_id``, same released
values: never a fresh draw) and is charged once; another body under the key is 409; a twin racing the first
reserves nothing. A query cut off between its reservation and its settlement (the process died) stays
``reserved`` until its deadline, then reconciliation closes it: ε spent, hold released, ``interrupted`` with
an audit entry the SME reads, and its key answers ``query_interrupted``. Each check has a negative control.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from broker.db import idempotency
from broker.db.orgs import Principal
from broker.loops import BackgroundLoops
from broker.services.datasets import QueryFailed, QueryInterrupted
from broker.services.idem import purge_expired
from common.errors import Conflict
from tests.conftest import BACKENDS, DAY_S, World
from tests.integration.test_datasets_service import COUNT, add_custodian, grant, register

pytestmark = pytest.mark.parametrize("database_url", BACKENDS, indirect=True)

BATCH = [COUNT, {"kind": "sum", "column": "kwh", "epsilon_micro": 100_000}]


class _Crash(BaseException):
    """The process dying mid-run: no ``except Exception`` handler sees it, so nothing settles."""


@pytest.fixture
def custodian(world: World) -> Principal:
    """A custodian in the world."""
    return add_custodian(world)


def _dataset(world: World, custodian: Principal) -> str:
    world.credit(100_000)
    ds = register(world, custodian)
    grant(world, custodian, ds["id"], eps=2_000_000)
    return str(ds["id"])


def _spent(world: World, custodian: Principal, dataset_id: str) -> int:
    return int(world.services.datasets.budget(custodian, dataset_id=dataset_id)["spent"]["epsilon_micro"])


def _ask(
    world: World, dataset_id: str, key: str | None, batch: list[dict[str, Any]] = BATCH
) -> dict[str, Any]:
    return world.services.datasets.query(world.sme, dataset_id=dataset_id, queries=batch, idempotency_key=key)


def test_a_retry_with_its_key_gets_the_first_answer_and_is_charged_once(
    world: World, custodian: Principal
) -> None:
    dataset_id = _dataset(world, custodian)
    first = _ask(world, dataset_id, "q-1")
    again = _ask(world, dataset_id, "q-1")
    assert again == first  # same query_id, same noisy values, same bill
    assert _spent(world, custodian, dataset_id) == 200_000
    charges = world.services.datasets.budget(custodian, dataset_id=dataset_id)["charges"]
    assert [c["id"] for c in charges] == [first["query_id"]]
    assert world.services.ledger.balance(world.sme)["available"] == 100_000 - first["credits"]
    # Negative control: without a key the same batch is a new draw, charged again.
    fresh = _ask(world, dataset_id, None)
    assert fresh["query_id"] != first["query_id"] and fresh["results"] != first["results"]
    assert _spent(world, custodian, dataset_id) == 400_000
    assert world.services.ledger.invariants() == []


def test_the_same_key_with_another_body_is_a_conflict(world: World, custodian: Principal) -> None:
    dataset_id = _dataset(world, custodian)
    _ask(world, dataset_id, "q-1")
    with pytest.raises(Conflict) as info:
        _ask(world, dataset_id, "q-1", [COUNT])
    assert info.value.code == "idempotency_conflict"
    assert _spent(world, custodian, dataset_id) == 200_000
    _ask(world, dataset_id, "q-2", [COUNT])  # control: a new key runs
    assert _spent(world, custodian, dataset_id) == 300_000


def test_twins_racing_with_one_key_reserve_once(world: World, custodian: Principal) -> None:
    dataset_id = _dataset(world, custodian)
    barrier = threading.Barrier(6)

    def twin(_: int) -> str:
        barrier.wait()
        try:
            return str(_ask(world, dataset_id, "race")["query_id"])
        except Conflict as exc:  # the first is still running
            assert exc.code == "query_in_progress"
            return "in-progress"

    with ThreadPoolExecutor(6) as pool:
        outcomes = list(pool.map(twin, range(6)))
    answered = {o for o in outcomes if o != "in-progress"}
    assert len(answered) == 1
    assert _spent(world, custodian, dataset_id) == 200_000
    assert _ask(world, dataset_id, "race")["query_id"] in answered


def test_a_failed_run_answers_its_retry_with_the_same_failure(world: World, custodian: Principal) -> None:
    dataset_id = _dataset(world, custodian)
    ds = world.services.datasets.describe(custodian, dataset_id=dataset_id)
    world.services.container.storage.delete(ds["versions"][0]["object_key"])
    for _ in range(2):
        with pytest.raises(QueryFailed):
            _ask(world, dataset_id, "q-fail")
    assert _spent(world, custodian, dataset_id) == 200_000  # charged once, not per retry


def _crash_mid_run(world: World, dataset_id: str, key: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reserve a query, then die before it answers or settles."""
    svc = world.services.datasets

    def dies(*_args: Any) -> Any:
        raise _Crash

    with monkeypatch.context() as patch:
        patch.setattr(svc, "_run", dies)
        with pytest.raises(_Crash):
            _ask(world, dataset_id, key)


def test_an_interrupted_query_is_reconciled_after_its_deadline(
    world: World, custodian: Principal, monkeypatch: pytest.MonkeyPatch
) -> None:
    svc = world.services.datasets
    dataset_id = _dataset(world, custodian)
    _crash_mid_run(world, dataset_id, "q-crash", monkeypatch)
    assert world.services.ledger.balance(world.sme)["held"] > 0
    with pytest.raises(Conflict) as info:  # its retry: still reserved, so "in progress"
        _ask(world, dataset_id, "q-crash")
    assert info.value.code == "query_in_progress"
    # Negative control: before the deadline nothing is closed (a live run may still be going).
    assert svc.reconcile_interrupted() == 0
    world.clock.advance(world.services.container.settings.query_deadline_s * 1000 + 1)
    assert svc.reconcile_interrupted() == 1
    assert svc.reconcile_interrupted() == 0  # once
    (charge,) = svc.budget(world.sme, dataset_id=dataset_id)["charges"]  # the SME sees it
    assert charge["status"] == "interrupted" and charge["credits"] == 0
    assert _spent(world, custodian, dataset_id) == 200_000  # ε stays spent
    balance = world.services.ledger.balance(world.sme)
    assert balance["held"] == 0 and balance["available"] == 100_000  # nothing billed for it
    with pytest.raises(QueryInterrupted):  # its key answers the truth, and charges nothing more
        _ask(world, dataset_id, "q-crash")
    assert _spent(world, custodian, dataset_id) == 200_000
    actions = [e["action"] for e in svc.audit_entries(custodian, dataset_id=dataset_id)]
    assert actions[-2:] == ["query.reserve", "query.interrupted"]
    assert world.services.ledger.invariants() == []


def test_idempotency_keys_are_kept_for_their_retention(world: World, custodian: Principal) -> None:
    c = world.services.container
    dataset_id = _dataset(world, custodian)
    first = _ask(world, dataset_id, "q-kept")
    retention = c.settings.idempotency_retention_s
    assert retention >= 7 * DAY_S
    world.clock.advance((retention - 60) * 1000)
    assert purge_expired(c.db, now_ms=c.clock.now_ms(), retention_s=retention) == 0
    assert _ask(world, dataset_id, "q-kept") == first
    world.clock.advance(120 * 1000)
    assert purge_expired(c.db, now_ms=c.clock.now_ms(), retention_s=retention) >= 1
    body = {"dataset_id": dataset_id, "version": None, "queries": BATCH}
    req_hash = idempotency.request_hash("dataset.query", body)
    assert (
        c.db.read(
            lambda conn: idempotency.lookup(conn, org_id=world.sme.org_id, key="q-kept", req_hash=req_hash)
        )
        is None
    )


def test_a_run_that_outlives_its_deadline_answers_interrupted(
    world: World, custodian: Principal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another replica closed the charge while the run was still going: the late answer is withheld."""
    svc = world.services.datasets
    dataset_id = _dataset(world, custodian)
    real_run = svc._run

    def slow(*args: Any) -> Any:
        world.clock.advance(world.services.container.settings.query_deadline_s * 1000 + 1)
        assert svc.reconcile_interrupted() == 1  # another replica's loop
        return real_run(*args)

    monkeypatch.setattr(svc, "_run", slow)
    with pytest.raises(QueryInterrupted):
        _ask(world, dataset_id, "q-late")
    monkeypatch.undo()
    with pytest.raises(QueryInterrupted):
        _ask(world, dataset_id, "q-late")
    assert _spent(world, custodian, dataset_id) == 200_000
    assert world.services.ledger.balance(world.sme)["held"] == 0
    assert world.services.ledger.invariants() == []


def test_the_background_loop_reconciles_on_its_first_round(
    world: World, custodian: Principal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop's first round (a start) runs the reconciliation, the key retention and the integrity check."""
    dataset_id = _dataset(world, custodian)
    _crash_mid_run(world, dataset_id, "q-loop", monkeypatch)
    world.clock.advance(world.services.container.settings.query_deadline_s * 1000 + 1)
    loops = BackgroundLoops(world.services, interval_ms=500)
    names = [name for name, _body, _every in loops.bodies]
    assert {"privacy-reconcile", "idempotency-retention", "integrity"} <= set(names)
    try:
        loops.run_once()
    finally:
        loops.stop()  # waits for the audit verification the round started on its side thread
    (charge,) = world.services.datasets.budget(world.sme, dataset_id=dataset_id)["charges"]
    assert charge["status"] == "interrupted"
    assert world.services.container.metrics.db_integrity_ok._value.get() == 1
