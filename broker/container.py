"""The composition root: every adapter is built here, from settings, and nowhere else.

The embedded default and production differ only in what this builds (SQLite or PostgreSQL, local Ray,
an existing Ray or KubeRay, a directory store or S3). Tests build their own containers with a fake clock
or a fake compute backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from broker.db.audit import AuditRepo
from broker.db.database import Database
from broker.db.engine import make_engine
from broker.db.ledger import LedgerRepo
from broker.keys import load_broker_key
from broker.metrics import Metrics
from broker.settings import Settings
from quotas.clock import Clock, SystemClock
from vouchers import key_id, public_jwk


@dataclass
class Container:
    """The built adapters a running broker (or a CLI command, or a test) works with."""

    settings: Settings
    db: Database
    clock: Clock
    ledger: LedgerRepo
    audit: AuditRepo
    metrics: Metrics
    broker_key_pem: bytes
    broker_kid: str
    broker_public_jwk: dict[str, Any]
    closers: list[Any] = field(default_factory=list)

    def close(self) -> None:
        """Release everything this container started (writer thread, engine, backends)."""
        for closer in reversed(self.closers):
            closer()
        self.closers.clear()
        self.db.close()


def build_container(
    settings: Settings, *, clock: Clock | None = None, group_commit: bool = True
) -> Container:
    """Build every adapter from ``settings``; the state directory must have been initialised."""
    key_pem = load_broker_key(settings.keys_dir)
    jwk = public_jwk(key_pem)
    db = Database(make_engine(settings.resolved_database_url), group_commit=group_commit)
    the_clock = clock or SystemClock()
    return Container(
        settings=settings,
        db=db,
        clock=the_clock,
        ledger=LedgerRepo(),
        audit=AuditRepo(key_pem, checkpoint_dir=settings.state_dir / "audit"),
        metrics=Metrics(),
        broker_key_pem=key_pem,
        broker_kid=key_id(key_pem),
        broker_public_jwk=jwk,
    )
