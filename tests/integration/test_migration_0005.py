"""Migration 0005 upgrades a database at the last landed schema (0004) with a job in it: the job keeps its
values and gains the new columns, the state check now admits ``lost`` and still refuses anything else."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from broker.db.engine import make_null_pool_engine
from broker.db.migrate import upgrade
from tests.conftest import BACKENDS

pytestmark = pytest.mark.parametrize("database_url", BACKENDS, indirect=True)

ORG = "INSERT INTO organisations (id, name, role, created_ms) VALUES ('org_1', 'Acme', 'sme', 1)"
JOB = (
    "INSERT INTO jobs (id, org_id, kind, name, state, entrypoint, working_dir, requirements, milli_cpu, gpus,"
    " memory_mib, max_runtime_s, priority, rate_card_version, max_cost, message, submitted_ms, stop_requested)"
    " VALUES ('job_1', 'org_1', 'job', 'sbx-job-1', 'running', 'python x.py', NULL, '[]', 1000, 0, 256, 60, 0,"
    " 0, 600, '', 1, false)"
)


def test_0005_upgrades_a_0004_database_with_jobs(database_url: str) -> None:
    upgrade(database_url, "0004")
    engine = make_null_pool_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(text(ORG))
            conn.execute(text(JOB))
        upgrade(database_url, "0005")
        with engine.begin() as conn:
            row = conn.execute(text("SELECT state, code_bytes, reason, last_seen_ms FROM jobs")).one()
            assert tuple(row) == ("running", 0, None, None)
            conn.execute(text("UPDATE jobs SET state = 'lost' WHERE id = 'job_1'"))
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(text("UPDATE jobs SET state = 'vanished' WHERE id = 'job_1'"))
    finally:
        engine.dispose()
