"""Keeping the state sound: the periodic integrity check (``sbx_db_integrity_ok``) and a restore that records
the audit rollback it causes (``sbx restore``; the SQLite mechanics are in :mod:`broker.db.backup`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sqlalchemy import text

from broker.container import Container, build_container
from broker.db import backup
from broker.settings import Settings

log = logging.getLogger("sbx.maintenance")


def integrity_pass(c: Container) -> bool:
    """Check the database's integrity and export it (SQLite: ``PRAGMA quick_check`` of the live file;
    PostgreSQL, whose pages carry their own checksums: the schema answers). Returns whether it is sound."""
    url = c.settings.resolved_database_url
    if url.startswith("sqlite:///"):
        problems = backup.quick_check(backup.sqlite_path(url))
    else:
        try:
            c.db.read(lambda conn: conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one())
            problems = []
        except Exception as exc:  # any failure to answer counts as not verified
            problems = [type(exc).__name__]
    if problems:
        log.error("database integrity check failed: %s", "; ".join(problems[:5]))
    c.metrics.db_integrity_ok.set(0 if problems else 1)
    return not problems


def restore_from(settings: Settings, src: Path, *, accept_loss: bool) -> dict[str, Any]:
    """Restore ``src`` over the embedded database (the broker stopped); when the backup is older than the last
    signed checkpoint and ``accept_loss`` allows it, append the signed "restored at size N" record."""
    url = settings.resolved_database_url
    plan = backup.restore(url, src, state_dir=settings.state_dir, accept_loss=accept_loss)
    out: dict[str, Any] = {
        "restored": str(src),
        "audit_size": plan.backup.audit_size,
        "last_checkpoint_size": plan.checkpointed,
        "record": None,
    }
    if plan.loses_entries:
        c = build_container(settings)  # the broker key comes from the restored database, unwrapped by the KEK
        try:
            out["record"] = backup.restore_record(
                settings.state_dir, plan, key_pem=c.broker_key_pem, kid=c.broker_kid
            )
        finally:
            c.close()
    return out
