"""A world where SME A owns one object of every kind, for the tenant-isolation matrix and the API fuzzer.

Built through the services (not HTTP) so it is quick; the callers then talk to the broker over HTTP.
Besides the base :class:`~tests.conftest.World` (operator ``op2``, issuer ``issuer``, SMEs ``sme-a`` and
``sme-b``) it adds a second programme (``issuer-b``), the custodian of A's dataset (``custodian``), the
custodian of another dataset (``custodian-b``) and an ``expired`` token of A. A's free-text values carry a
random marker so a leak of them is found by a plain substring search.
"""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker.bootstrap import initialise
from broker.container import build_container
from broker.db import tables as t
from broker.db.orgs import Principal
from broker.server import RunningServer, serve_in_thread
from broker.services.jobs import JobRequest
from broker.services.registry import Services, build_services
from broker.settings import Settings
from common.clock import FakeClock
from common.resources import Resources
from tests import training_data as td
from tests.conftest import World, make_world
from tests.integration.test_datasets_service import add_custodian, csv_bytes, energy_frame, energy_policy

EXPIRED = "expired"


@dataclass
class FullWorld:
    """The base world plus A's objects (``ids``: kind → id) and the strings only A's readers may see."""

    world: World
    ids: dict[str, str] = field(default_factory=dict)
    private: list[str] = field(default_factory=list)
    marker: str = ""

    @property
    def tokens(self) -> dict[str, str]:
        """Bearer tokens by caller name."""
        return self.world.tokens


def _principal(world: World, name: str, role: str, **extra: Any) -> Principal:
    org = world.services.orgs.create(world.operator, name=name, role=role, **extra)
    token = world.services.orgs.create_token(None, org_id=org["id"])["token"]
    world.tokens[name] = token
    found = world.services.orgs.authenticate(token)
    assert found is not None
    return found


def _expired_token(world: World, org_id: str) -> None:
    """A token of A that was valid for a minute, a minute ago (the fake clock moves past it)."""
    token = world.services.orgs.create_token(None, org_id=org_id, ttl_s=60)["token"]
    world.clock.advance(61_000)
    assert world.services.orgs.authenticate(token) is None
    world.tokens[EXPIRED] = token


def _datasets(world: World, full: FullWorld) -> Principal:
    """A's dataset of interest (custodian ``custodian``) and another one (``custodian-b``)."""
    svc = world.services
    custodian = add_custodian(world, "custodian")
    other = add_custodian(world, "custodian-b")
    ds = svc.datasets.register(
        custodian,
        name="signal",
        description="generated",
        policy=td.policy(),
        fmt="parquet",
        content=td.parquet_bytes(td.make_frame(600)),
    )
    full.ids["dataset"] = ds["id"]
    full.ids["custodian_org"] = custodian.org_id
    other_ds = svc.datasets.register(
        other,
        name="energy",
        description="other custodian",
        policy=energy_policy(),
        fmt="csv",
        content=csv_bytes(energy_frame(60)),
    )
    full.ids["other_dataset"] = other_ds["id"]
    return custodian


def _access_query_training(world: World, full: FullWorld, custodian: Principal) -> None:
    svc = world.services
    req = svc.datasets.request_access(
        world.sme,
        dataset_id=full.ids["dataset"],
        purpose=f"purpose of A {full.marker}",
        epsilon_micro=8_000_000,
        delta_e12=40_000_000,
        kinds=("query", "training"),
    )
    full.ids["access_request"] = req["id"]
    svc.datasets.approve(custodian, request_id=req["id"], valid_for_s=30 * 86_400)
    svc.datasets.query(
        world.sme,
        dataset_id=full.ids["dataset"],
        queries=[{"kind": "count", "epsilon_micro": 100_000}],
    )
    run = svc.training.submit(world.sme, dataset_id=full.ids["dataset"], spec=td.spec(target_epsilon=1.0))
    full.ids["training"] = run["id"]


def _ledger_and_jobs(world: World, full: FullWorld) -> None:
    svc = world.services
    voucher = world.voucher(credits=5_000_000)
    full.ids["voucher"] = voucher["jti"]
    grant = svc.vouchers.redeem(world.sme, token=voucher["token"], idempotency_key=None)
    full.ids["grant"] = grant.get("grant_id") or grant.get("id") or ""
    unredeemed = world.voucher(credits=1_000)
    full.ids["voucher_unredeemed"] = unredeemed["jti"]
    hold = svc.ledger.place_hold(world.sme, amount=1_234, resources=("cpu",))
    full.ids["hold"] = hold["id"]
    job = svc.jobs.submit(
        world.sme,
        JobRequest(f"python secret_{full.marker}.py", Resources(1000, 0, 1024), 60, 0),
        idempotency_key=None,
    )
    full.ids["job"] = job["id"]


#: SME A's unified social credit code (a real published one: Baidu's, see tests/unit/test_uscc.py).
A_USCC = "91110000802100433B"
#: A valid code no organisation has (Huawei's): what a "missing" uscc looks like.
UNUSED_USCC = "914403001922038216"


def _give_uscc(world: World, org_id: str, code: str) -> str:
    """Record ``code`` as the organisation's identity (the matrix's fixture; the API sets it at creation)."""

    def tx(conn: Any) -> None:
        conn.execute(t.organisations.update().where(t.organisations.c.id == org_id).values(uscc=code))

    world.services.container.db.write(tx)
    return code


def _spare_token(world: World) -> str:
    """The id of a second token of SME A that the matrix may revoke without locking A out."""
    world.services.orgs.create_token(world.operator, org_id=world.sme.org_id)
    return str(world.services.tokens.list(world.sme)[-1]["id"])


def build_full_world(world: World) -> FullWorld:
    """Give SME A a voucher, a grant, a hold, a job, an approved access request, a query and a training run."""
    full = FullWorld(world, marker=secrets.token_hex(6))
    issuer_b = _principal(world, "issuer-b", "issuer", year_budget=10**9, sme_cap=10**8)
    world.services.vouchers.create_key(issuer_b)
    full.ids["key"] = world.services.vouchers.list_keys(world.issuer)[0]["kid"]
    custodian = _datasets(world, full)
    _ledger_and_jobs(world, full)
    _access_query_training(world, full, custodian)
    _expired_token(world, world.sme.org_id)
    full.ids["org"] = world.sme.org_id
    full.ids["issuer_org"] = world.issuer.org_id
    full.ids["uscc"] = _give_uscc(world, world.sme.org_id, A_USCC)
    full.ids["token"] = _spare_token(world)
    full.private = sorted(
        {full.marker, world.sme.org_id, *(v for k, v in full.ids.items() if k in _A_OWNED and v)}
    )
    return full


_A_OWNED = {
    "voucher",
    "voucher_unredeemed",
    "grant",
    "hold",
    "job",
    "access_request",
    "training",
    "org",
    "uscc",
    "token",
}


def b64(data: bytes) -> str:
    """Base64 text of ``data``."""
    return base64.b64encode(data).decode()


@contextmanager
def sqlite_services(state: Path) -> Iterator[Services]:
    """Services over a fresh SQLite state dir with fake compute and a fake clock (for module fixtures)."""
    settings = Settings(
        state_dir=state / "state",
        database_url=f"sqlite:///{state / 'broker.db'}",
        compute="fake",
        background_loops=False,
    )
    initialise(settings.state_dir, settings=settings)
    container = build_container(settings, clock=FakeClock(start_ms=int(time.time()) * 1000))
    try:
        yield build_services(container)
    finally:
        container.close()


@contextmanager
def served_full_world(state: Path) -> Iterator[tuple[FullWorld, RunningServer]]:
    """A :class:`FullWorld` on SQLite, served over real HTTP on a free local port (no background loops)."""
    with sqlite_services(state) as services:
        clock = services.container.clock
        assert isinstance(clock, FakeClock)
        full = build_full_world(make_world(services, clock))
        server = serve_in_thread(services, loops=False)
        try:
            yield full, server
        finally:
            server.stop()
