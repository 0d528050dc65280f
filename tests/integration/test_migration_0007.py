"""Migration 0007 gives every transfer made before it its recorded body, so the ledger check covers them."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from broker.db import ledger_chain
from broker.db.migrate import upgrade
from tests.conftest import psycopg_url


def test_old_transfers_get_their_bodies(tmp_path: Path) -> None:
    _check_upgrade(f"sqlite:///{tmp_path / 'old.db'}")


@pytest.mark.postgres
def test_the_same_on_postgresql(empty_pg_database: str) -> None:
    _check_upgrade(psycopg_url(empty_pg_database))


def _check_upgrade(url: str) -> None:
    upgrade(url, "0006")
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO organisations VALUES ('org_i', 'org_i', 'issuer', 0)"))
        for kind in ("programme", "spent"):
            conn.execute(
                text("INSERT INTO accounts (kind, org_id, balance) VALUES (:k, 'org_i', 0)"), {"k": kind}
            )
        ids = [r[0] for r in conn.execute(text("SELECT id FROM accounts ORDER BY id"))]
        for account, amount in ((ids[0], -700), (ids[1], 700)):
            conn.execute(
                text(
                    "INSERT INTO entries (txn_id, kind, account_id, amount, org_id, issuer_org, hold_id, created_ms)"
                    " VALUES ('txn_old', 'grant', :a, :m, 'org_s', 'org_i', NULL, 42)"
                ),
                {"a": account, "m": amount},
            )
    upgrade(url, "0007")
    with engine.connect() as conn:
        body, digest, folded = conn.execute(
            text("SELECT body, digest, audit_seq FROM ledger_transfers")
        ).one()
        size = conn.execute(text("SELECT size FROM audit_tree_head WHERE id = 1")).scalar_one()
    engine.dispose()
    expected = ledger_chain.transfer_body(
        txn_id="txn_old",
        kind="grant",
        org_id="org_s",
        hold_id=None,
        now_ms=42,
        idem=None,
        legs=[(ids[0], -700, "org_i"), (ids[1], 700, "org_i")],
    )
    assert bytes(body) == expected  # the migration's frozen copy writes what the code writes
    assert digest == hashlib.sha256(expected).hexdigest() and folded is None and size == 0
