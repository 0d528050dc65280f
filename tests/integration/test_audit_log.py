"""The audit log in the database: appended with its action, tamper detected with the first bad entry named."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from common.errors import InsufficientFunds
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


def test_the_background_loops_checkpoint_and_verify_off_the_loop_thread(world: World) -> None:
    """One round signs a checkpoint and starts a full verification in its own thread; stopping waits for it,
    and the audit-health metrics the alerts read carry both outcomes."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from broker.loops import BackgroundLoops

    world.voucher()
    container = world.services.container
    loops = BackgroundLoops(world.services, interval_ms=500)
    assert {name for name, _body, _every in loops.bodies} >= {"audit-checkpoint", "audit-verify"}
    loops.run_once()
    loops.stop()
    exposition = generate_latest(container.metrics.registry).decode()
    values = {s.name: s.value for f in text_string_to_metric_families(exposition) for s in f.samples}
    assert values["sbx_audit_chain_valid"] == 1
    head = container.db.read(lambda conn: conn.execute(text("SELECT seq FROM audit_head")).scalar_one())
    assert values["sbx_audit_verified_entries"] == head > 0
    assert values["sbx_audit_last_checkpoint_timestamp_seconds"] == world.clock.now_ms() / 1000


def test_newest_entries_are_the_tail_of_the_log_in_each_callers_scope(world: World) -> None:
    """What dashboards show: the last entries, newest first, read from the head and scoped like paging."""
    audit = world.services.audit
    for amount in (100, 200, 300):
        world.credit(amount)
        world.credit(amount, sme=world.sme_b)
    for who in (world.operator, world.sme, world.sme_b):
        everything = audit.entries(who, limit=1000)
        assert len(everything) >= 4
        assert audit.newest(who, limit=3) == list(reversed(everything[-3:]))
        assert audit.newest(who, limit=1000) == list(reversed(everything))
    for who in (world.sme, world.sme_b):
        assert all(who.org_id in (e["org_id"], e["actor_org"]) for e in audit.newest(who, limit=1000))
