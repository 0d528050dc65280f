"""The bank test on PostgreSQL with two broker replicas, either of which the chaos loop may SIGKILL (issue 8,
point 1; see :mod:`tests.e2e.test_bank` for the SQLite run). A file of its own so that ``pytest -n 2`` runs
the two bank tests side by side.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.bank_workload import MIN_KILLS, MIN_OPS, BankConfig, check_report, run_bank, seed_from_env

PG_URL = os.environ.get("SBX_TEST_DATABASE_URL")


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
@pytest.mark.slow
@pytest.mark.timeout(480)
def test_bank_on_postgresql_with_two_replicas_either_killed_at_random(
    tmp_path: Path, pg_database: str
) -> None:
    report = run_bank(
        BankConfig(
            seed=seed_from_env(),
            work_dir=tmp_path,
            database_url=pg_database,
            replicas=2,
            min_ops=MIN_OPS,
            min_kills=MIN_KILLS,
            progress=print,
        )
    )
    check_report(report)
