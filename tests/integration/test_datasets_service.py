"""The data foundation through the service layer on SQLite and PostgreSQL.

Registration (bounded, content-addressed, immutable), access decisions and their scoping, DP queries that
reserve their cost before reading and bill compute, the budget ledger that never overspends (32 threads),
and an audit entry for every action (none for a refused one).
"""

from __future__ import annotations

import io
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import polars as pl
import pytest

from broker.db.orgs import Principal
from broker.errors import Forbidden
from broker.services.datasets import QueryFailed
from common.errors import Conflict, DomainError, InsufficientFunds, InvalidInput, NotFound
from datasets import AccessDenied, PolicyError
from datasets.prepare import content_hash, read_bounded
from privacy.budget import BudgetExceeded
from privacy.queries import QueryError
from tests.conftest import BACKENDS, DAY_S, World

pytestmark = pytest.mark.parametrize("database_url", BACKENDS, indirect=True)

DISTRICTS = ["Altstadt", "Hafen", "Nord", "Sued"]


def energy_policy(*, total: int = 10_000_000, sme_cap: int = 5_000_000, k: int = 2) -> dict[str, Any]:
    """A household-energy policy: household id as unit, district categories, kWh bounded to [0, 2000]."""
    return {
        "privacy_unit": "household_id",
        "max_rows_per_unit": k,
        "columns": [
            {"name": "household_id", "kind": "unit"},
            {"name": "district", "kind": "categorical", "categories": DISTRICTS},
            {"name": "kwh", "kind": "numeric", "lo": "0", "hi": "2000", "decimals": 1},
        ],
        "total_budget": {"epsilon_micro": total, "delta_e12": 0},
        "sme_cap": {"epsilon_micro": sme_cap, "delta_e12": 0},
    }


def energy_frame(households: int = 300, *, seed: int = 7, tag: str = "hh") -> pl.DataFrame:
    """Up to four readings per household (more than the policy keeps), some kWh out of bounds."""
    rng = np.random.default_rng(seed)
    per = rng.integers(1, 5, households)
    ids = np.repeat(np.arange(households), per)
    return pl.DataFrame(
        {
            "household_id": [f"{tag}-{i:06d}" for i in ids],
            "district": [DISTRICTS[i % 4] for i in ids],
            "kwh": rng.normal(900, 400, len(ids)).round(1),
        }
    )


def csv_bytes(frame: pl.DataFrame) -> bytes:
    """The frame as CSV bytes."""
    buf = io.BytesIO()
    frame.write_csv(buf)
    return buf.getvalue()


def add_custodian(world: World, name: str = "custodian") -> Principal:
    """Create a custodian organisation with a token in the world (the token is added to ``world.tokens``)."""
    services = world.services
    org = services.orgs.create(world.operator, name=name, role="custodian")
    token = services.orgs.create_token(None, org_id=org["id"])["token"]
    world.tokens[name] = token
    found = services.orgs.authenticate(token)
    assert found is not None
    return found


def register(world: World, custodian: Principal, **policy: Any) -> dict[str, Any]:
    """Register the energy dataset (CSV upload) as ``custodian``."""
    return world.services.datasets.register(
        custodian,
        name="household-energy",
        description="kWh per household and month",
        policy=energy_policy(**policy),
        fmt="csv",
        content=csv_bytes(energy_frame()),
    )


def grant(world: World, custodian: Principal, dataset_id: str, *, eps: int = 2_000_000) -> dict[str, Any]:
    """SME A asks for ``eps`` and the custodian approves it for a day."""
    ds = world.services.datasets
    req = ds.request_access(world.sme, dataset_id=dataset_id, purpose="tariff design", epsilon_micro=eps)
    return ds.approve(custodian, request_id=req["id"], valid_for_s=DAY_S)


COUNT = {"kind": "count", "epsilon_micro": 100_000}


@pytest.fixture
def custodian(world: World) -> Principal:
    """A custodian in the world."""
    return add_custodian(world)


def test_register_stores_a_bounded_immutable_version(world: World, custodian: Principal) -> None:
    ds = register(world, custodian, k=2)
    (v1,) = ds["versions"]
    assert v1["rows_kept"] <= v1["rows_in"] and v1["rows_in"] == energy_frame().height
    stored = world.services.container.storage.get_bytes(v1["object_key"])
    assert content_hash(stored) == v1["content_hash"] and v1["object_key"].endswith(
        v1["content_hash"] + ".parquet"
    )
    frame = read_bounded(stored, _policy(v1))
    assert frame.group_by("household_id").len()["len"].max() <= 2
    assert frame["kwh"].min() >= 0 and frame["kwh"].max() <= 20_000  # fixed-point tenths, clamped
    # A second version keeps what was spent; the describe view names schema and policy, never values.
    v2 = world.services.datasets.add_version(
        custodian,
        dataset_id=ds["id"],
        policy=energy_policy(),
        fmt="csv",
        content=csv_bytes(energy_frame(seed=8)),
    )
    assert [v["version"] for v in v2["versions"]] == [1, 2]
    sme_view = world.services.datasets.describe(world.sme, dataset_id=ds["id"])
    assert "budget" not in sme_view and "rows_in" not in sme_view["versions"][0]
    assert sme_view["versions"][0]["schema"] == {
        "household_id": "string",
        "district": "string",
        "kwh": "float",
    }


def _policy(version: dict[str, Any]) -> Any:
    from datasets import DatasetPolicy

    return DatasetPolicy.from_dict(version["policy"])


def test_registration_refusals_name_no_value(world: World, custodian: Principal) -> None:
    bad = energy_frame().with_columns(pl.lit("secret-canary").alias("notes"))
    with pytest.raises(PolicyError) as info:
        world.services.datasets.register(
            custodian, name="x", description="", policy=energy_policy(), fmt="csv", content=csv_bytes(bad)
        )
    assert "notes" in info.value.detail and "secret-canary" not in info.value.detail
    with pytest.raises(Forbidden):
        world.services.datasets.register(
            world.sme, name="x", description="", policy=energy_policy(), fmt="csv", content=b"a\n1\n"
        )
    with pytest.raises(NotFound):  # another organisation's incoming object is as absent as a missing one
        world.services.datasets.register(
            custodian,
            name="x",
            description="",
            policy=energy_policy(),
            fmt="csv",
            object_key="incoming/org_x/a.csv",
        )


def test_register_from_an_incoming_object(world: World, custodian: Principal) -> None:
    key = f"incoming/{custodian.org_id}/energy.csv"
    world.services.container.storage.put_bytes(key, csv_bytes(energy_frame()))
    ds = world.services.datasets.register(
        custodian, name="from-store", description="", policy=energy_policy(), fmt="csv", object_key=key
    )
    assert ds["latest_version"] == 1


def test_access_decisions_are_the_custodians_alone(world: World, custodian: Principal) -> None:
    svc = world.services.datasets
    ds = register(world, custodian)
    other = add_custodian(world, "custodian-b")
    req = svc.request_access(world.sme, dataset_id=ds["id"], purpose="p", epsilon_micro=3_000_000)
    with pytest.raises(Conflict):  # one open request per SME and dataset
        svc.request_access(world.sme, dataset_id=ds["id"], purpose="p", epsilon_micro=1)
    with pytest.raises(NotFound):
        svc.approve(other, request_id=req["id"], valid_for_s=DAY_S)
    with pytest.raises(NotFound):
        svc.describe(other, dataset_id=ds["id"])
    with pytest.raises(NotFound):
        svc.get_request(world.sme_b, request_id=req["id"])
    with pytest.raises(Forbidden):
        svc.approve(world.sme, request_id=req["id"], valid_for_s=DAY_S)
    with pytest.raises(InvalidInput):  # more than the per-SME cap (5 ε)
        svc.approve(custodian, request_id=req["id"], valid_for_s=DAY_S, epsilon_micro=3_000_001)
    approved = svc.approve(custodian, request_id=req["id"], valid_for_s=DAY_S, epsilon_micro=1_000_000)
    assert approved["status"] == "approved" and approved["grant"]["cap"]["epsilon_micro"] == 1_000_000
    with pytest.raises(Conflict):
        svc.refuse(custodian, request_id=req["id"], reason="too late")
    refused = svc.request_access(world.sme_b, dataset_id=ds["id"], purpose="p", epsilon_micro=1)
    assert (
        svc.refuse(custodian, request_id=refused["id"], reason="no purpose given")["reason"]
        == "no purpose given"
    )
    assert [r["id"] for r in svc.list_requests(world.sme)] == [req["id"]]
    assert len(svc.list_requests(custodian)) == 2 and svc.list_requests(other) == []


def test_query_charges_exactly_bills_compute_and_audits(world: World, custodian: Principal) -> None:
    world.credit(100_000)
    svc = world.services.datasets
    ds = register(world, custodian)
    grant(world, custodian, ds["id"], eps=1_000_000)
    batch = [
        COUNT,
        {"kind": "sum", "column": "kwh", "epsilon_micro": 100_000},
        {"kind": "mean", "column": "kwh", "group_by": "district", "epsilon_micro": 200_001},
        {"kind": "histogram", "column": "district", "epsilon_micro": 100_000},
        {"kind": "quantile", "column": "kwh", "quantiles": [0.5], "epsilon_micro": 50_000},
    ]
    out = svc.query(world.sme, dataset_id=ds["id"], queries=batch)
    assert out["charged"]["epsilon_micro"] == 550_001
    assert out["grant_remaining"]["epsilon_micro"] == 1_000_000 - 550_001
    assert set(out["results"][2]["values"]) == {*DISTRICTS, "__other__"}
    assert out["results"][0]["noise_scale"]["count"] > 0
    budget = svc.budget(custodian, dataset_id=ds["id"])
    assert budget["spent"]["epsilon_micro"] == 550_001
    assert (
        budget["charges"][0]["status"] == "answered"
        and budget["charges"][0]["credits"] == out["credits"] >= 1
    )
    balance = world.services.ledger.balance(world.sme)
    assert balance["held"] == 0 and balance["available"] == 100_000 - out["credits"]
    assert world.services.ledger.invariants() == []
    actions = [e["action"] for e in svc.audit_entries(custodian, dataset_id=ds["id"])]
    assert actions == [
        "dataset.register",
        "access.request",
        "access.approve",
        "query.reserve",
        "query.answered",
    ]


def test_refusals_before_reading_leave_no_charge_and_no_entry(world: World, custodian: Principal) -> None:
    world.credit(100_000)
    svc = world.services.datasets
    ds = register(world, custodian)
    with pytest.raises(AccessDenied):
        svc.query(world.sme, dataset_id=ds["id"], queries=[COUNT])
    grant(world, custodian, ds["id"], eps=150_000)
    before = len(svc.audit_entries(custodian, dataset_id=ds["id"]))
    with pytest.raises(QueryError):
        svc.query(
            world.sme,
            dataset_id=ds["id"],
            queries=[{"kind": "sum", "column": "district", "epsilon_micro": 1}],
        )
    svc.query(world.sme, dataset_id=ds["id"], queries=[COUNT])
    with pytest.raises(BudgetExceeded) as info:
        svc.query(world.sme, dataset_id=ds["id"], queries=[COUNT])
    assert "grant" in info.value.detail and "remaining ε=0.05" in info.value.detail
    with pytest.raises(Forbidden):
        svc.query(custodian, dataset_id=ds["id"], queries=[COUNT])
    with pytest.raises(AccessDenied):  # SME B has no grant
        svc.query(world.sme_b, dataset_id=ds["id"], queries=[COUNT])
    assert len(svc.audit_entries(custodian, dataset_id=ds["id"])) == before + 2  # one reserve, one answer
    assert len(svc.budget(custodian, dataset_id=ds["id"])["charges"]) == 1


def test_no_credit_no_query(world: World, custodian: Principal) -> None:
    svc = world.services.datasets
    ds = register(world, custodian)
    grant(world, custodian, ds["id"])
    with pytest.raises(InsufficientFunds):
        svc.query(world.sme, dataset_id=ds["id"], queries=[COUNT])
    assert svc.budget(custodian, dataset_id=ds["id"])["spent"]["epsilon_micro"] == 0


def test_revoked_or_expired_grants_run_nothing(world: World, custodian: Principal) -> None:
    world.credit(100_000)
    world.credit(100_000, sme=world.sme_b)
    svc = world.services.datasets
    ds = register(world, custodian)
    req = grant(world, custodian, ds["id"])
    svc.revoke(custodian, request_id=req["id"], reason="purpose changed")
    with pytest.raises(AccessDenied):
        svc.query(world.sme, dataset_id=ds["id"], queries=[COUNT])
    other = svc.request_access(world.sme_b, dataset_id=ds["id"], purpose="p", epsilon_micro=1_000_000)
    svc.approve(custodian, request_id=other["id"], valid_for_s=60)
    world.clock.advance(61_000)
    with pytest.raises(AccessDenied):
        svc.query(world.sme_b, dataset_id=ds["id"], queries=[COUNT])
    assert svc.get_request(world.sme_b, request_id=other["id"])["status"] == "expired"


def test_grant_is_bound_to_its_version(world: World, custodian: Principal) -> None:
    world.credit(100_000)
    svc = world.services.datasets
    ds = register(world, custodian)
    grant(world, custodian, ds["id"])
    svc.add_version(
        custodian,
        dataset_id=ds["id"],
        policy=energy_policy(),
        fmt="csv",
        content=csv_bytes(energy_frame(seed=9)),
    )
    assert svc.query(world.sme, dataset_id=ds["id"], queries=[COUNT])["dataset_version"] == 1
    with pytest.raises(AccessDenied):
        svc.query(world.sme, dataset_id=ds["id"], queries=[COUNT], version=2)


def test_a_failed_run_stays_charged(world: World, custodian: Principal) -> None:
    world.credit(100_000)
    svc = world.services.datasets
    ds = register(world, custodian)
    grant(world, custodian, ds["id"])
    world.services.container.storage.delete(ds["versions"][0]["object_key"])  # the run cannot load its data
    with pytest.raises(QueryFailed) as info:
        svc.query(world.sme, dataset_id=ds["id"], queries=[COUNT])
    assert "stays charged" in info.value.detail
    budget = svc.budget(custodian, dataset_id=ds["id"])
    assert (
        budget["spent"]["epsilon_micro"] == COUNT["epsilon_micro"]
        and budget["charges"][0]["status"] == "failed"
    )
    assert world.services.ledger.balance(world.sme)["held"] == 0


def test_32_concurrent_queries_never_overspend(world: World, custodian: Principal) -> None:
    """Two SMEs, 16 threads each; the dataset total (1.0 ε) is below what they ask together (3.2 ε)."""
    world.credit(1_000_000)
    world.credit(1_000_000, sme=world.sme_b)
    svc = world.services.datasets
    ds = register(world, custodian, total=1_000_000, sme_cap=1_000_000)
    for sme in (world.sme, world.sme_b):
        req = svc.request_access(sme, dataset_id=ds["id"], purpose="p", epsilon_micro=1_000_000)
        svc.approve(custodian, request_id=req["id"], valid_for_s=DAY_S)
    start = threading.Barrier(32)
    query = {"kind": "count", "epsilon_micro": 100_000}

    def one(i: int) -> str:
        start.wait()
        try:
            svc.query(world.sme if i % 2 else world.sme_b, dataset_id=ds["id"], queries=[query])
        except BudgetExceeded:
            return "refused"
        return "answered"

    with ThreadPoolExecutor(32) as pool:
        outcomes = list(pool.map(one, range(32)))
    assert outcomes.count("answered") == 10 and outcomes.count("refused") == 22
    budget = svc.budget(custodian, dataset_id=ds["id"])
    assert budget["spent"]["epsilon_micro"] == 1_000_000
    assert sum(c["charged"]["epsilon_micro"] for c in budget["charges"]) == 1_000_000
    assert sum(s["spent"]["epsilon_micro"] for s in budget["smes"]) == 1_000_000
    assert world.services.ledger.invariants() == []
    reserves = [
        e for e in svc.audit_entries(custodian, dataset_id=ds["id"]) if e["action"] == "query.reserve"
    ]
    assert len(reserves) == 10


def test_training_reserves_only_under_a_training_grant(world: World, custodian: Principal) -> None:
    """A query-only grant cannot train; a training grant reserves the run's ε with its queued job."""
    from tests import training_data as td

    svc = world.services.datasets
    ds = svc.register(
        custodian,
        name="signal",
        description="generated",
        policy=td.policy(),
        fmt="parquet",
        content=td.parquet_bytes(td.make_frame(500)),
    )
    query_only = svc.request_access(
        world.sme, dataset_id=ds["id"], purpose="p", epsilon_micro=500_000, delta_e12=10_000_000
    )
    svc.approve(custodian, request_id=query_only["id"], valid_for_s=DAY_S)
    with pytest.raises(AccessDenied):
        world.services.training.submit(world.sme, dataset_id=ds["id"], spec=td.spec(target_epsilon=0.3))
    req = svc.request_access(
        world.sme_b,
        dataset_id=ds["id"],
        purpose="p",
        epsilon_micro=500_000,
        delta_e12=20_000_000,
        kinds=("query", "training"),
    )
    svc.approve(custodian, request_id=req["id"], valid_for_s=DAY_S)
    run = world.services.training.submit(world.sme_b, dataset_id=ds["id"], spec=td.spec(target_epsilon=0.3))
    assert run["reserved"]["epsilon_micro"] == 300_000 and run["kind"] == "training"
    with pytest.raises(DomainError) as over:  # 0.2 left on the grant: refused before anything is reserved
        world.services.training.submit(world.sme_b, dataset_id=ds["id"], spec=td.spec(target_epsilon=0.3))
    assert over.value.code == "budget_exceeded"
    budget = svc.budget(custodian, dataset_id=ds["id"])
    assert budget["spent"]["epsilon_micro"] == 300_000
    assert [(c["kind"], c["status"]) for c in budget["charges"]] == [("training", "reserved")]
    actions = [e["action"] for e in svc.audit_entries(custodian, dataset_id=ds["id"])]
    assert actions[-1] == "training.reserve"
