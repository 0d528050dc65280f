"""Migration 0011 adds the pending-reason columns to jobs that already exist: their rows are kept, the new
columns start empty, and the next admission pass fills the queued ones."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from broker.db.migrate import upgrade
from tests.conftest import psycopg_url


def test_existing_jobs_keep_their_rows_and_get_empty_reasons(tmp_path: Path) -> None:
    _check_upgrade(f"sqlite:///{tmp_path / 'old.db'}")


@pytest.mark.postgres
def test_the_same_on_postgresql(empty_pg_database: str) -> None:
    _check_upgrade(psycopg_url(empty_pg_database))


def _check_upgrade(url: str) -> None:
    upgrade(url, "0010")
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO organisations (id, name, role, created_ms) VALUES ('org_s', 'org_s', 'sme', 0)"
                )
            )
            for job_id, state in (("job_q", "queued"), ("job_r", "rejected")):
                conn.execute(
                    text(
                        "INSERT INTO jobs (id, org_id, kind, name, state, entrypoint, requirements, milli_cpu,"
                        " gpus, memory_mib, max_runtime_s, priority, rate_card_version, max_cost, message,"
                        " submitted_ms, stop_requested, code_bytes) VALUES (:id, 'org_s', 'job', :id, :state,"
                        " 'python x.py', '[]', 1000, 0, 1024, 60, 0, 0, 600, 'kept', 5, false, 0)"
                    ),
                    {"id": job_id, "state": state},
                )
        upgrade(url)
        with engine.connect() as conn:
            columns = {c["name"] for c in inspect(conn).get_columns("jobs")}
            rows = conn.execute(
                text("SELECT id, state, message, max_cost, wait_reason, wait_detail FROM jobs ORDER BY id")
            ).all()
            version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
    finally:
        engine.dispose()
    assert {"wait_reason", "wait_detail"} <= columns
    assert [tuple(r) for r in rows] == [
        ("job_q", "queued", "kept", 600, None, None),
        ("job_r", "rejected", "kept", 600, None, None),
    ]
    assert version >= "0011"
