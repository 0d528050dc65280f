"""Migrations build exactly the schema the code declares, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

import broker.db.data_tables  # noqa: F401 - registers the data foundation's tables
from broker.db.engine import make_null_pool_engine
from broker.db.migrate import upgrade
from broker.db.tables import metadata
from tests.conftest import BACKENDS

pytestmark = pytest.mark.parametrize("database_url", BACKENDS, indirect=True)


def test_migrations_match_the_declared_schema(database_url: str) -> None:
    upgrade(database_url)
    engine = make_null_pool_engine(database_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), metadata)
    finally:
        engine.dispose()
    assert diff == [], diff
