"""Every metric ``docs/metrics.md`` documents is produced by the code path it describes (issue 17, item 6).

A scripted workload over real HTTP — redeem (and a refused redemption), a hold settled by hand, a job
submitted, admitted and settled on the fake backend (one killed by its sandbox), a DP query, a training
submission, readiness, audit and ledger verification, the integrity check, the reaper expiring credit —
then one scrape: each documented counter (and histogram) has grown since the scrape before the workload,
each documented gauge is present. The negative controls show the check reports a metric that does not move
(the counters of a scrape compared with itself; the ledger's held counter when the ledger is built without
counters) and that a rolled-back hold is never counted.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from broker.compute import launch_name
from broker.compute.base import BackendState, BackendStatus
from broker.compute.fake import FakeBackend, FakeScript
from broker.db.ledger import LedgerRepo
from broker.services.maintenance import integrity_pass
from common.resources import Resources
from tests import training_data as td
from tests.api.conftest import Live
from tests.conftest import DAY_S
from tests.integration.test_datasets_service import add_custodian, csv_bytes, energy_frame, energy_policy

DOCS = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
Samples = dict[str, float]  # family name -> sum of its samples (histograms: their _count)


class KillingBackend(FakeBackend):
    """The fake backend, except that launches named in ``killed`` end as the sandbox's OOM kill."""

    killed: set[str]

    def status(self, name: str) -> BackendStatus:
        """A killed launch reports the sandbox's reason once it has ended."""
        status = super().status(name)
        if name in self.killed and status.state is BackendState.SUCCEEDED:
            return BackendStatus(
                BackendState.FAILED, status.start_ms, status.end_ms, "killed: out of memory", "out_of_memory"
            )
        return status


def documented() -> dict[str, str]:
    """Each metric named in the tables of ``docs/metrics.md`` and its type (``counter``, ``gauge`` …)."""
    found: dict[str, str] = {}
    for line in DOCS.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`sbx_"):
            continue
        for name in re.findall(r"`(sbx_[a-z0-9_]+)`", cells[0]):
            found[name] = cells[1].split()[0]
    return found


def scrape(live: Live) -> tuple[set[str], Samples]:
    """The families exposed (by their documented names) and the sum of each one's samples."""
    with live.client("op2") as operator:
        response = operator.get("/metrics")
    assert response.status_code == 200, response.text
    present: set[str] = set()
    sums: Samples = {}
    for family in text_string_to_metric_families(response.text):
        name = family.name + ("_total" if family.type == "counter" else "")
        present.add(name)
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            if family.type == "histogram" and not sample.name.endswith("_count"):
                continue
            sums[name] = sums.get(name, 0.0) + sample.value
    return present, sums


def unmoved(before: Samples, after: tuple[set[str], Samples], docs: dict[str, str]) -> list[str]:
    """Documented metrics the workload did not produce: a counter or histogram that did not grow, a gauge
    that is absent. Empty when every documented metric counts."""
    present, sums = after
    problems: list[str] = []
    for name, kind in sorted(docs.items()):
        if kind in ("counter", "histogram"):
            if sums.get(name, 0.0) <= before.get(name, 0.0):
                problems.append(f"{name} ({kind}) did not move")
        elif name not in present:
            problems.append(f"{name} ({kind}) is absent")
    return problems


def _ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


@pytest.fixture
def backend(live: Live) -> Iterator[KillingBackend]:
    """The killing fake backend as the broker's compute."""
    world = live.world
    fake = KillingBackend(world.clock, capacity=Resources(milli_cpu=8000, gpus=1, memory_mib=16_384))
    fake.killed = set()
    world.services.container.use_compute(fake)
    yield fake


def _money(live: Live) -> None:
    """Redeem over HTTP (and one refused redemption), a voucher that expires, a hold settled by hand; the
    voucher covers half, so settlements are co-paid too."""
    world = live.world
    token = world.voucher(credits=200_000, coverage_bps=5_000, resources=("cpu", "gpu", "memory"))["token"]
    short = world.voucher(credits=500, credit_s=DAY_S)["token"]
    with live.client("sme-a") as sme, live.client("op2") as op:
        _ok(op.put(f"/api/v1/orgs/{world.sme.org_id}/copay-limit", json={"copay_limit": 100_000}))
        _ok(sme.post("/api/v1/vouchers/redeem", json={"token": token}), 201)
        _ok(sme.post("/api/v1/vouchers/redeem", json={"token": short}), 201)
        assert sme.post("/api/v1/vouchers/redeem", json={"token": token}).status_code == 409
        hold = _ok(op.post("/api/v1/holds", json={"org_id": world.sme.org_id, "amount": 100}), 201)
        _ok(op.post(f"/api/v1/holds/{hold['id']}/settle", json={"cost": 40}))
        assert sme.get("/api/v1/jobs/job_nosuch").status_code == 404


def _jobs(live: Live, fake: KillingBackend) -> None:
    """Two jobs over HTTP, admitted and settled by the broker's passes; the second killed by its sandbox."""
    services = live.world.services
    body = {"entrypoint": "python x.py", "milli_cpu": 1000, "memory_mib": 1024, "max_runtime_s": 60}
    with live.client("sme-a") as sme:
        jobs = [_ok(sme.post("/api/v1/jobs", json={**body, "gpus": gpus}), 201) for gpus in (1, 0)]
    for job in jobs:
        fake.script(launch_name(job["id"]), FakeScript(run_ms=2_000))
    fake.killed.add(launch_name(jobs[1]["id"]))
    services.jobs.admission_pass()
    services.jobs.reconcile_pass()
    live.world.clock.advance(5_000)
    services.jobs.reconcile_pass()
    with live.client("sme-a") as sme:
        states = [_ok(sme.get(f"/api/v1/jobs/{job['id']}"))["state"] for job in jobs]
    assert states == ["succeeded", "failed"], states


def _data(live: Live) -> None:
    """A DP query and a training submission over HTTP, each under an approved grant."""
    add_custodian(live.world, "custodian")
    with live.client("custodian") as cust, live.client("sme-a") as sme:
        energy = {
            "name": "energy",
            "format": "csv",
            "policy": energy_policy(),
            "content_b64": base64.b64encode(csv_bytes(energy_frame())).decode(),
        }
        people = {
            "name": "people",
            "format": "parquet",
            "policy": td.policy(),
            "content_b64": base64.b64encode(td.parquet_bytes(td.make_frame(400))).decode(),
        }
        ds = _ok(cust.post("/api/v1/datasets", json=energy), 201)["id"]
        tr = _ok(cust.post("/api/v1/datasets", json=people), 201)["id"]
        asks = [
            (ds, {"purpose": "tariffs", "epsilon_micro": 500_000}),
            (
                tr,
                {
                    "purpose": "churn",
                    "epsilon_micro": 5_000_000,
                    "delta_e12": 10_000_000,
                    "kinds": ["training"],
                },
            ),
        ]
        for dataset, ask in asks:
            req = _ok(sme.post(f"/api/v1/datasets/{dataset}/access-requests", json=ask), 201)
            _ok(cust.post(f"/api/v1/access-requests/{req['id']}/approve", json={"valid_for_s": 3600}))
        batch = {"queries": [{"kind": "count", "epsilon_micro": 100_000}]}
        _ok(sme.post(f"/api/v1/datasets/{ds}/queries", json=batch))
        _ok(sme.post("/api/v1/training", json={"dataset_id": tr, "spec": td.spec(target_epsilon=0.5)}), 201)


def _operations(live: Live) -> None:
    """Readiness, audit checkpoint and verification, ledger verification, integrity, the reaper."""
    services = live.world.services
    with live.client(None) as anonymous, live.client("op2") as op:
        assert anonymous.get("/readyz").status_code == 200
        _ok(op.post("/api/v1/audit/checkpoint"))
        _ok(op.post("/api/v1/audit/verify"))
        _ok(op.post("/api/v1/audit/ledger"))
    assert integrity_pass(services.container)
    live.world.clock.advance(2 * DAY_S * 1000)
    assert services.ledger.reap()["grants_expired"] >= 1


def test_every_documented_metric_moves_under_a_scripted_workload(live: Live, backend: KillingBackend) -> None:
    docs = documented()
    assert len(docs) >= 40 and "sbx_http_requests_total" in docs
    _, before = scrape(live)
    _money(live)
    _jobs(live, backend)
    _data(live)
    _operations(live)
    after = scrape(live)
    assert unmoved(before, after, docs) == []
    # The process counters count what the workload did, not roughly.
    sums = after[1]
    assert sums["sbx_credits_redeemed_total"] == 200_500
    assert sums["sbx_credits_settled_total"] >= 40 and sums["sbx_credits_held_total"] > 100
    assert sums["sbx_voucher_refusals_total"] == 1


def test_http_requests_by_route_template_and_status_class(live: Live) -> None:
    """Labels are the route template and the status class: never an id, a raw path or an exact status."""
    with live.client("sme-a") as sme, live.client(None) as anonymous:
        assert sme.get("/api/v1/jobs/job_abc").status_code == 404
        assert sme.get("/api/v1/jobs/job_def").status_code == 404
        assert anonymous.post("/api/v1/jobs", json={}).status_code == 401  # refused before routing
        assert sme.get("/no/such/path/123").status_code == 404
        assert sme.get("/api/v1/balance").status_code == 200
    with live.client("op2") as operator:
        body = operator.get("/metrics").text
    series = {
        tuple(sorted(s.labels.items())): s.value
        for f in text_string_to_metric_families(body)
        if f.name == "sbx_http_requests"
        for s in f.samples
        if s.name == "sbx_http_requests_total"
    }
    assert series[(("route", "/api/v1/jobs/{job_id}"), ("status", "4xx"))] == 2
    assert series[(("route", "/api/v1/jobs"), ("status", "4xx"))] == 1, series
    assert series[(("route", "unmatched"), ("status", "4xx"))] == 1
    assert series[(("route", "/api/v1/balance"), ("status", "2xx"))] == 1
    raw = ("job_abc", "job_def", "/no/such", "404", "401")
    assert not any(r in v for labels in series for _k, v in labels for r in raw), series


def test_the_check_catches_a_metric_that_does_not_move(live: Live) -> None:
    """Negative controls: a scrape against itself reports every counter; a ledger built without counters
    (the bug this issue found) leaves ``sbx_credits_held_total`` unmoved and the check names it."""
    docs = documented()
    present, sums = scrape(live)
    stale = unmoved(sums, (present, sums), docs)
    assert "sbx_http_requests_total (counter) did not move" in stale
    assert "sbx_credits_held_total (counter) did not move" in stale
    container = live.world.services.container
    container.ledger = LedgerRepo()  # no counters: holds move credit but not the metric
    live.world.credit(1_000)
    _, before = scrape(live)
    with live.client("op2") as op:
        _ok(op.post("/api/v1/holds", json={"org_id": live.world.sme.org_id, "amount": 100}), 201)
    problems = unmoved(before, scrape(live), {"sbx_credits_held_total": "counter"})
    assert problems == ["sbx_credits_held_total (counter) did not move"]


def test_a_rolled_back_hold_is_not_counted(live: Live) -> None:
    """Counted after commit: a transaction that places a hold and then fails adds nothing."""
    world = live.world
    world.credit(1_000)
    c = world.services.container
    held = c.metrics.credits_held

    def hold_then_fail(conn: Any) -> None:
        now = world.clock.now_ms()
        c.ledger.place_hold(
            conn,
            org_id=world.sme.org_id,
            amount=100,
            resource_classes=frozenset({"cpu"}),
            job_id=None,
            now_ms=now,
            expires_ms=now + 60_000,
        )
        raise RuntimeError("fails after the hold")

    start = held._value.get()
    with pytest.raises(RuntimeError):
        c.db.write(hold_then_fail)
    assert held._value.get() == start
    world.services.ledger.place_hold(world.operator, amount=100, org_id=world.sme.org_id)
    assert held._value.get() == start + 100


def test_group_commit_counts_only_the_writes_that_committed(live: Live) -> None:
    """SQLite group commit: of two writes committed in one batch, the one whose SAVEPOINT was rolled back
    adds nothing; the other is counted once the batch commits."""
    from concurrent.futures import Future

    world = live.world
    world.credit(1_000)
    c = world.services.container
    if c.db.dialect != "sqlite":
        pytest.skip("group commit is SQLite's")
    held = c.metrics.credits_held

    def hold(amount: int, *, fail: bool) -> Any:
        def tx(conn: Any) -> None:
            now = world.clock.now_ms()
            c.ledger.place_hold(
                conn,
                org_id=world.sme.org_id,
                amount=amount,
                resource_classes=frozenset({"cpu"}),
                job_id=None,
                now_ms=now,
                expires_ms=now + 60_000,
            )
            if fail:
                raise RuntimeError("rolled back")

        return tx

    futures: list[Future[object]] = [Future(), Future()]
    start = held._value.get()
    with c.db._busy:  # the writer thread's own step: one transaction, a SAVEPOINT per write
        c.db._run_batch([(hold(7, fail=True), futures[0]), (hold(11, fail=False), futures[1])])
    assert isinstance(futures[0].exception(), RuntimeError) and futures[1].exception() is None
    assert held._value.get() == start + 11
