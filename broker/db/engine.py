"""Engines per dialect: SQLite in WAL mode with durable commits and ``BEGIN IMMEDIATE``; PostgreSQL."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.pool import NullPool, QueuePool

READ_ONLY = "sbx_read_only"


def is_sqlite(url: str) -> bool:
    """True for a SQLite URL."""
    return url.startswith("sqlite")


def make_engine(url: str, *, pool_size: int = 8) -> Engine:
    """Build the engine for ``url``.

    SQLite: WAL journal, ``synchronous=FULL`` (an acknowledged write survives power loss), a busy timeout,
    foreign keys on, and every transaction opened with ``BEGIN IMMEDIATE`` so writers serialise up front
    instead of failing on lock upgrade. PostgreSQL: ``READ COMMITTED`` with explicit row locks / conditional
    updates in the repositories.
    """
    if is_sqlite(url):
        # SQLite connections are cheap and every request thread reads on its own: keep enough for the
        # server's whole threadpool (40) so no request waits for a connection.
        engine = create_engine(
            url,
            poolclass=QueuePool,
            pool_size=max(pool_size, 48),
            max_overflow=16,
            connect_args={"check_same_thread": False, "timeout": 60, "isolation_level": None},
        )
        _configure_sqlite(engine)
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return create_engine(url, pool_size=pool_size, max_overflow=pool_size * 2, pool_pre_ping=True)


def make_null_pool_engine(url: str) -> Engine:
    """An engine with no pool (migrations, one-shot CLI commands)."""
    if is_sqlite(url):
        engine = create_engine(url, poolclass=NullPool, connect_args={"timeout": 60, "isolation_level": None})
        _configure_sqlite(engine)
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return create_engine(url, poolclass=NullPool)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Readers take a deferred transaction (a WAL snapshot that never blocks the writer); writers
        # take the write lock up front.
        if conn.get_execution_options().get(READ_ONLY):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
