"""Alembic environment: runs migrations on the connection or URL the broker hands it."""

from __future__ import annotations

from alembic import context

import broker.db.data_tables  # noqa: F401 - registers the data foundation's tables
from broker.db.engine import make_null_pool_engine
from broker.db.tables import metadata

config = context.config


def run_migrations() -> None:
    """Migrate the database given as ``connection`` (preferred) or ``sqlalchemy.url``."""
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_null_pool_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.connect() as conn:
        context.configure(connection=conn, target_metadata=metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations()
