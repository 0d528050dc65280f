"""The bank test under crashes (issue 8, point 1), after Jepsen's bank workload.

Real ``sbx serve`` processes with fake compute; concurrent clients redeem, hold, settle, release, close
twice, redeem twice and submit jobs with idempotency keys and retries while a seeded chaos loop SIGKILLs a
broker at random moments and restarts it; a reader checks conservation at every read; the end state is
checked from a container over the same database (see :mod:`tests.bank_workload`). On SQLite with one
broker, and on PostgreSQL with two replicas of which either may be killed. ``SBX_BANK_SEED`` replays a
seed (the schedule of operations and kills; thread timing is not reproducible).
"""

from __future__ import annotations

import os
import random
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.bank_workload import BankConfig, Report, run_bank

pytestmark = [pytest.mark.slow, pytest.mark.timeout(480)]
PG_URL = os.environ.get("SBX_TEST_DATABASE_URL")
MIN_OPS, MIN_KILLS = 10_000, 5


def _seed() -> int:
    return int(os.environ.get("SBX_BANK_SEED") or random.SystemRandom().randrange(1, 10**6))


def _check(report: Report) -> None:
    print(
        f"bank: {report.line()}\nkills at (s, broker): {report.kill_times}\nanswers: {dict(report.answers)}"
    )
    shown = "\n  ".join(report.violations[:30])
    assert report.violations == [], (
        f"seed {report.seed}: {len(report.violations)} violations (SBX_BANK_SEED={report.seed} replays the"
        f" schedule):\n  {shown}"
    )
    assert report.ops >= MIN_OPS, (
        f"only {report.ops} operations in {report.seconds:.0f} s (seed {report.seed})"
    )
    assert report.kills >= MIN_KILLS, f"only {report.kills} kills (seed {report.seed})"
    assert report.reads > 0 and report.replayed > 0


def test_bank_on_sqlite_with_one_broker_killed_at_random(tmp_path: Path) -> None:
    report = run_bank(
        BankConfig(seed=_seed(), work_dir=tmp_path, min_ops=MIN_OPS, min_kills=MIN_KILLS, progress=print)
    )
    _check(report)


def _psycopg(url: str) -> str:
    prefix = "postgresql://"
    return "postgresql+psycopg://" + url.removeprefix(prefix) if url.startswith(prefix) else url


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A fresh, empty PostgreSQL database (``sbx init`` migrates it), dropped afterwards."""
    if not PG_URL:
        pytest.skip("the two-replica bank test needs PostgreSQL: set SBX_TEST_DATABASE_URL (CI sets it)")
    name = f"sbx_bank_{secrets.token_hex(5)}"
    admin = create_engine(_psycopg(PG_URL), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{PG_URL.rsplit('/', 1)[0]}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.mark.postgres
def test_bank_on_postgresql_with_two_replicas_either_killed_at_random(
    tmp_path: Path, pg_database: str
) -> None:
    report = run_bank(
        BankConfig(
            seed=_seed(),
            work_dir=tmp_path,
            database_url=pg_database,
            replicas=2,
            min_ops=MIN_OPS,
            min_kills=MIN_KILLS,
            progress=print,
        )
    )
    _check(report)
