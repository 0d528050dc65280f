"""The audit log in the database: appended with its action, tamper detected with the first bad entry named."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from quotas.errors import InsufficientFunds
from tests.conftest import BACKENDS, World

pytestmark = pytest.mark.parametrize("database_url", BACKENDS, indirect=True)


def _verify(world: World) -> dict:  # type: ignore[type-arg]
    return world.services.audit.verify(world.operator)


def _tamper(world: World, sql: str) -> None:
    world.services.container.db.write(lambda conn: conn.execute(text(sql)))


def _checkpointed(world: World) -> int:
    world.credit(100)
    world.credit(200)
    cp = world.services.audit.checkpoint(world.operator)
    assert cp is not None
    assert _verify(world)["ok"] is True
    return int(cp["seq"])


def test_every_action_appends_and_a_failed_action_appends_nothing(world: World) -> None:
    before = len(world.services.audit.entries(world.operator, limit=1000))
    world.credit(100)
    after = world.services.audit.entries(world.operator, limit=1000)
    assert [e["action"] for e in after[before:]] == ["voucher.issue", "voucher.redeem"]
    with pytest.raises(InsufficientFunds):
        world.services.ledger.place_hold(world.sme, amount=10**6)
    assert len(world.services.audit.entries(world.operator, limit=1000)) == len(after)
    seqs = [e["seq"] for e in after]
    assert seqs == list(range(1, len(seqs) + 1))  # gapless


def test_edited_column_is_named(world: World) -> None:
    seq = _checkpointed(world)
    _tamper(world, f"UPDATE audit_entries SET org_id = 'org_someone_else' WHERE seq = {seq - 1}")
    result = _verify(world)
    assert result["ok"] is False and result["first_bad_seq"] == seq - 1


def test_edited_body_is_named(world: World) -> None:
    seq = _checkpointed(world)
    dialect = world.services.container.db.dialect
    if dialect == "sqlite":
        _tamper(
            world,
            f"UPDATE audit_entries SET body = CAST(REPLACE(CAST(body AS TEXT), '100', '900') AS BLOB) WHERE seq = {seq - 2}",
        )
    else:
        _tamper(
            world,
            f"UPDATE audit_entries SET body = convert_to(replace(convert_from(body, 'UTF8'), '100', '900'), 'UTF8') WHERE seq = {seq - 2}",
        )
    result = _verify(world)
    assert result["ok"] is False and result["first_bad_seq"] == seq - 2


def test_deleted_and_truncated_entries_are_detected(world: World) -> None:
    seq = _checkpointed(world)
    _tamper(world, f"DELETE FROM audit_entries WHERE seq = {seq}")
    result = _verify(world)
    assert result["ok"] is False
    assert result["first_bad_seq"] is not None and result["first_bad_seq"] <= seq
