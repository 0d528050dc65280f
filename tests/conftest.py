"""Shared fixtures: one suite on SQLite always and on PostgreSQL when SBX_TEST_DATABASE_URL is set."""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from broker.bootstrap import initialise
from broker.container import Container, build_container
from broker.db.orgs import Principal
from broker.services.registry import Services, build_services
from broker.settings import Settings
from common.clock import FakeClock

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
PG_URL = os.environ.get("SBX_TEST_DATABASE_URL")
DAY_S = 24 * 3600

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run ``slow`` tests (the bank runs, minutes each) first: under ``pytest -n 2 --dist loadfile`` their file
    then starts on one worker at once while the other worker takes the rest, instead of both workers
    finishing with the longest file. The sort is stable, so everything else keeps its order."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def psycopg_url(url: str) -> str:
    """``url`` with the psycopg (v3) driver named, as SQLAlchemy needs it (other URLs unchanged)."""
    prefix = "postgresql://"
    return "postgresql+psycopg://" + url.removeprefix(prefix) if url.startswith(prefix) else url


def _pg_admin_url() -> str:
    assert PG_URL is not None
    return psycopg_url(PG_URL)


@contextmanager
def _scratch_pg_database(prefix: str, template: str | None = None) -> Iterator[str]:
    """Create a PostgreSQL database (empty, or a copy of ``template``), yield its URL, drop it afterwards."""
    name = f"{prefix}_{secrets.token_hex(6)}"
    admin = create_engine(_pg_admin_url(), isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")))
    try:
        yield f"{_pg_admin_url().rsplit('/', 1)[0]}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def empty_pg_database() -> Iterator[str]:
    """A fresh, empty PostgreSQL database (``sbx init`` / ``sbx serve`` migrate it), dropped afterwards."""
    if not PG_URL:
        pytest.skip("this test needs PostgreSQL: set SBX_TEST_DATABASE_URL (CI sets it)")
    with _scratch_pg_database("sbx_empty") as url:
        yield url


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str | None]:
    """A migrated PostgreSQL template database, made once per session (None without PostgreSQL)."""
    if not PG_URL:
        yield None
        return
    from broker.db.migrate import upgrade

    name = f"sbx_tmpl_{secrets.token_hex(6)}"
    admin = create_engine(_pg_admin_url(), isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    upgrade(f"{_pg_admin_url().rsplit('/', 1)[0]}/{name}")
    try:
        yield name
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path: Path, pg_template: str | None) -> Iterator[str]:
    """A fresh database: a SQLite file, or a PostgreSQL database cloned from the migrated template."""
    kind = getattr(request, "param", "sqlite")
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'broker.db'}"
        return
    if not PG_URL or pg_template is None:
        pytest.skip("PostgreSQL tests need SBX_TEST_DATABASE_URL (CI sets it)")
    with _scratch_pg_database("sbx_test", pg_template) as url:
        yield url


@pytest.fixture
def clock() -> FakeClock:
    """A clock at a fixed instant (2026-11-25) that only moves when told to."""
    return FakeClock(start_ms=int(time.time()) * 1000)


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    """Settings for a fresh state dir on the chosen database, with fake compute."""
    return Settings(
        state_dir=tmp_path / "state",
        database_url=database_url,
        compute="fake",
        background_loops=False,
        kek_file=tmp_path / "kek",  # outside the state dir, as SBX_KEK_FILE must be
    )


@pytest.fixture
def container(settings: Settings, clock: FakeClock) -> Iterator[Container]:
    """An initialised state dir and a container over it with the fake clock."""
    initialise(settings.state_dir, settings=settings)
    built = build_container(settings, clock=clock)
    try:
        yield built
    finally:
        built.close()


@pytest.fixture
def services(container: Container) -> Services:
    """All services over the test container."""
    return build_services(container)


@dataclass
class World:
    """A small world: an operator, an issuer with a key and programme, two SMEs."""

    services: Services
    clock: FakeClock
    operator: Principal
    issuer: Principal
    sme: Principal
    sme_b: Principal
    tokens: dict[str, str]

    def voucher(
        self,
        *,
        sme: Principal | None = None,
        credits: int = 1000,
        coverage_bps: int = 10_000,
        valid_s: int = 30 * DAY_S,
        credit_s: int = 365 * DAY_S,
        resources: tuple[str, ...] = ("cpu", "memory"),
        valid_from_s: int | None = None,
    ) -> dict[str, Any]:
        """Issue a voucher (default: to the first SME, fully covered)."""
        now_s = self.clock.now_ms() // 1000
        return self.services.vouchers.issue(
            self.issuer,
            sme_org=(sme or self.sme).org_id,
            credits=credits,
            coverage_bps=coverage_bps,
            resources=resources,
            valid_from_s=valid_from_s,
            valid_until_s=now_s + valid_s,
            credit_expires_s=now_s + credit_s,
        )

    def credit(
        self, amount: int, *, sme: Principal | None = None, coverage_bps: int = 10_000
    ) -> dict[str, Any]:
        """Issue and redeem a voucher for ``amount`` credits."""
        who = sme or self.sme
        token = self.voucher(sme=who, credits=amount, coverage_bps=coverage_bps)["token"]
        return self.services.vouchers.redeem(who, token=token, idempotency_key=None)


def make_world(
    services: Services,
    clock: FakeClock,
    *,
    year_budget: int = 10**9,
    sme_cap: int = 10**8,
    copay_limit: int = 0,
) -> World:
    """Create the organisations and tokens of a :class:`World`."""
    tokens: dict[str, str] = {}

    def principal(name: str, role: str, **extra: Any) -> Principal:
        if role == "operator":
            org = services.orgs.create(None, name=name, role=role)
        else:
            org = services.orgs.create(op, name=name, role=role, **extra)
        token = services.orgs.create_token(None, org_id=org["id"])["token"]
        tokens[name] = token
        found = services.orgs.authenticate(token)
        assert found is not None
        return found

    op = principal("op2", "operator")
    issuer = principal("issuer", "issuer", year_budget=year_budget, sme_cap=sme_cap)
    services.vouchers.create_key(issuer)
    sme = principal("sme-a", "sme", copay_limit=copay_limit)
    sme_b = principal("sme-b", "sme", copay_limit=copay_limit)
    return World(services, clock, op, issuer, sme, sme_b, tokens)


@pytest.fixture
def world(services: Services, clock: FakeClock) -> World:
    """A :class:`World` on the test database."""
    return make_world(services, clock)
