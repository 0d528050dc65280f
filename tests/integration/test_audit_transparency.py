"""The attacks of issue 12 on the audit log and the ledger, each as a test (each passed before the change):

- deleting the checkpoint file (then removing the last entries and rewinding the head) verified "ok";
- a rollback (remove the last entries, rewind ``audit_head``) was signed over by the next checkpoint;
- a balance edited in the database was invisible to ``audit verify``;
- a rewrite re-signed with the broker's own key verified; only a witness can catch it (last test).

Plus proofs: an entry's inclusion proof and a consistency proof check with the standalone verifier.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import text

from broker.audit import merkle
from broker.audit.checkpoints import Checkpoint, sign_checkpoint
from broker.audit.verify_proof import Trust, check_consistency, check_inclusion
from broker.audit.witness import Witness, WitnessRefusal
from broker.db.audit_tree import AuditIntegrityError
from common.errors import NotFound
from tests.conftest import BACKENDS, World

pytestmark = pytest.mark.parametrize("database_url", BACKENDS, indirect=True)
WINDOW_MS = 300_000


def _sql(world: World, sql: str) -> None:
    world.services.container.db.write(lambda conn: conn.execute(text(sql)))


def _scalar(world: World, sql: str) -> Any:
    return world.services.container.db.read(lambda conn: conn.execute(text(sql)).scalar())


def _checkpointed(world: World, credits: int = 3) -> dict[str, Any]:
    for amount in range(credits):
        world.credit(100 + amount)
    cp = world.services.audit.checkpoint(world.operator)
    assert cp is not None
    verdict = world.services.audit.verify(world.operator)
    assert verdict["ok"] is True, verdict
    return cp


def _checkpoint_file(world: World) -> Path:
    return world.services.container.audit.checkpoint_file.path


def test_a_deleted_checkpoint_file_fails_verification_and_is_not_rebuilt(world: World) -> None:
    _checkpointed(world)
    _checkpoint_file(world).unlink()
    result = world.services.audit.verify(world.operator)
    assert result["ok"] is False and "missing" in result["reason"]
    world.clock.advance(WINDOW_MS + 60_000)  # the next rounds neither heal the deletion nor hide it
    world.services.audit.checkpoint(None)
    assert not _checkpoint_file(world).exists()
    assert world.services.audit.verify(world.operator)["ok"] is False


def test_the_issue_attack_delete_file_truncate_rewind_is_caught_and_never_signed(world: World) -> None:
    """Delete checkpoints.jsonl, remove the last entries and rewind the head: verify fails, the loop refuses."""
    cp = _checkpointed(world, credits=4)
    keep = int(cp["seq"]) - 3
    _checkpoint_file(world).unlink()
    _sql(world, f"DELETE FROM audit_entries WHERE seq > {keep}")
    entry_hash = _scalar(world, f"SELECT entry_hash FROM audit_entries WHERE seq = {keep}")
    _sql(world, f"UPDATE audit_head SET seq = {keep}, entry_hash = '{entry_hash}'")
    assert world.services.audit.verify(world.operator)["ok"] is False
    with pytest.raises(AuditIntegrityError, match="rollback"):
        world.services.audit.checkpoint(world.operator)


def test_a_rollback_of_entries_and_tree_is_caught_and_never_signed(world: World) -> None:
    """The thorough attacker also rewinds the tree and the database's checkpoint record; the file still knows."""
    cp = _checkpointed(world, credits=4)
    keep = int(cp["seq"]) - 3
    entry_hash = _scalar(world, f"SELECT entry_hash FROM audit_entries WHERE seq = {keep}")
    _sql(world, f"DELETE FROM audit_entries WHERE seq > {keep}")
    _sql(world, f"UPDATE audit_head SET seq = {keep}, entry_hash = '{entry_hash}'")
    _sql(world, "DELETE FROM audit_cosignatures")
    _sql(world, "DELETE FROM audit_checkpoints")
    _sql(world, f"DELETE FROM audit_tree WHERE idx * (1 << level) + (1 << level) > {keep}")
    _sql(
        world,
        f"UPDATE audit_tree_head SET size = {keep}, last_entry_hash = '{entry_hash}', checkpoint_seq = 0, "
        "checkpoint_size = 0, checkpoint_root = NULL, checkpoint_ms = 0",
    )
    result = world.services.audit.verify(world.operator)
    assert result["ok"] is False and "database" in result["reason"]
    world.clock.advance(WINDOW_MS + 60_000)
    with pytest.raises(AuditIntegrityError, match="no checkpoint is recorded"):
        world.services.audit.checkpoint(world.operator)


def test_a_stale_checkpoint_fails_and_a_fresh_one_passes(world: World) -> None:
    _checkpointed(world)
    world.clock.advance(WINDOW_MS + 60_000)
    stale = world.services.audit.verify(world.operator)
    assert stale["ok"] is False and "window" in stale["reason"]
    world.services.audit.checkpoint(None)  # the loop re-signs the same tree with a fresh time
    assert world.services.audit.verify(world.operator)["ok"] is True


def test_an_edited_balance_is_detected_by_audit_and_ledger_verify(world: World) -> None:
    _checkpointed(world)
    assert world.services.audit.verify_ledger(world.operator)["ok"] is True
    copay = _scalar(world, f"SELECT id FROM accounts WHERE org_id = '{world.sme.org_id}' AND kind = 'copay'")
    _sql(world, f"UPDATE accounts SET balance = balance + 5000000 WHERE id = {copay}")
    ledger = world.services.audit.verify_ledger(world.operator)
    assert ledger["ok"] is False and any("balance" in p for p in ledger["problems"])
    verdict = world.services.audit.verify(world.operator)
    assert verdict["ok"] is False and verdict["ledger_ok"] is False
    exposition = world.services.container.metrics.registry.get_sample_value("sbx_ledger_consistent")
    assert exposition == 0


def test_an_edited_balance_hidden_behind_forged_entries_is_still_detected(world: World) -> None:
    _checkpointed(world)
    copay = _scalar(world, f"SELECT id FROM accounts WHERE org_id = '{world.sme.org_id}' AND kind = 'copay'")
    programme = _scalar(
        world, f"SELECT id FROM accounts WHERE org_id = '{world.issuer.org_id}' AND kind = 'programme'"
    )
    _sql(world, f"UPDATE accounts SET balance = balance + 5000000 WHERE id = {copay}")
    _sql(world, f"UPDATE accounts SET balance = balance - 5000000 WHERE id = {programme}")
    for account, amount in ((copay, 5_000_000), (programme, -5_000_000)):
        _sql(
            world,
            "INSERT INTO entries (txn_id, kind, account_id, amount, org_id, issuer_org, hold_id, created_ms) "
            f"VALUES ('txn_forged', 'grant', {account}, {amount}, NULL, NULL, NULL, 1)",
        )
    assert world.services.ledger.invariants() == []  # the old offline check is satisfied
    ledger = world.services.audit.verify_ledger(world.operator)
    assert ledger["ok"] is False and any("no recorded transfer" in p for p in ledger["problems"])
    # editing a real leg (and its balance) instead differs from the recorded transfer
    _sql(world, "DELETE FROM entries WHERE txn_id = 'txn_forged'")
    _sql(world, f"UPDATE accounts SET balance = balance - 5000000 WHERE id = {copay}")
    _sql(world, f"UPDATE accounts SET balance = balance + 5000000 WHERE id = {programme}")
    first = _scalar(world, "SELECT MIN(id) FROM entries")
    _sql(world, f"UPDATE entries SET amount = amount + 1 WHERE id = {first}")
    assert any("differ" in p for p in world.services.audit.verify_ledger(world.operator)["problems"])


def test_every_transfer_is_folded_into_the_log_by_the_loop(world: World) -> None:
    _checkpointed(world)
    folded = _scalar(world, "SELECT COUNT(*) FROM ledger_transfers WHERE audit_seq IS NULL")
    assert folded == 0
    assert _scalar(world, "SELECT COUNT(*) FROM audit_entries WHERE action = 'ledger.transfers'") >= 1
    _sql(
        world,
        "UPDATE ledger_transfers SET audit_seq = NULL WHERE id = (SELECT MIN(id) FROM ledger_transfers)",
    )
    ledger = world.services.audit.verify_ledger(world.operator)
    assert ledger["ok"] is False and any("differ from what it recorded" in p for p in ledger["problems"])


def _trust(world: World, **extra: Any) -> Trust:
    return Trust({"keys": [world.services.container.broker_public_jwk]}, extra.get("witnesses", {}), 0)


def test_inclusion_and_consistency_proofs_check_without_the_database(world: World) -> None:
    first = _checkpointed(world, credits=2)
    second = _checkpointed(world, credits=3)
    audit = world.services.audit
    own = [e for e in audit.entries(world.sme, limit=1000) if e["seq"] <= second["tree_size"]]
    proof = json.loads(json.dumps(audit.prove(world.sme, seq=own[0]["seq"])))
    assert check_inclusion(proof, _trust(world)) == (True, proof and check_inclusion(proof, _trust(world))[1])
    tampered = {
        **proof,
        "entry": {**proof["entry"], "body": proof["entry"]["body"].replace('"v":1', '"v":2')},
    }
    assert check_inclusion(tampered, _trust(world))[0] is False
    other_seq = next(e["seq"] for e in audit.entries(world.operator, limit=1000) if e["seq"] != proof["seq"])
    moved = {**proof, "seq": other_seq}
    assert check_inclusion(moved, _trust(world))[0] is False
    with pytest.raises(NotFound):  # another SME may not read this entry, nor its proof
        audit.prove(world.sme_b, seq=own[0]["seq"])
    consistency = audit.consistency(world.sme, old=first["tree_size"], new=second["tree_size"])
    ok, why = check_consistency(consistency, _trust(world), first["checkpoint"])
    assert ok, why
    forged_old = sign_checkpoint(
        "sandbox-broker.local/audit",
        first["tree_size"],
        b"\x00" * 32,
        1,
        world.services.container.broker_key_pem,
    )
    assert check_consistency(consistency, _trust(world), forged_old.render())[0] is False


class DirectClient:
    """A witness's view of the broker through the services (the HTTP test uses the real API)."""

    def __init__(self, world: World) -> None:
        self.world = world

    def latest(self) -> dict[str, Any]:
        return self.world.services.audit.latest_checkpoint(self.world.issuer)

    def consistency(self, old: int, new: int) -> dict[str, Any]:
        return self.world.services.audit.consistency(self.world.issuer, old=old, new=new)

    def cosign(self, checkpoint_seq: int, line: str) -> dict[str, Any]:
        return self.world.services.audit.add_cosignature(
            self.world.issuer, checkpoint_seq=checkpoint_seq, cosignature=line
        )


def _witness(world: World, tmp_path: Path, key: Ed25519PrivateKey) -> Witness:
    return Witness(
        name="funder.example/witness",
        key=key,
        origin=world.services.audit.config.origin,
        log_keys={"keys": [world.services.container.broker_public_jwk]},
        state_path=tmp_path / "witness-state.json",
    )


def test_a_rewrite_re_signed_with_the_broker_key_verifies_but_the_witness_refuses(
    world: World, tmp_path: Path
) -> None:
    """The attacker holds the broker key: rewrites an entry, rebuilds the tree, re-signs every checkpoint."""
    from broker.audit.note import vkey

    key = Ed25519PrivateKey.generate()
    world.services.container.settings.audit_witnesses = [
        vkey("funder.example/witness", key.public_key(), 0x04)
    ]
    world.services.audit.__dict__.pop("config", None)
    witness, client = _witness(world, tmp_path, key), DirectClient(world)
    _checkpointed(world)
    assert witness.step(client).cosigned
    world.credit(50)
    world.clock.advance(1_000)
    world.services.audit.checkpoint(None)
    assert witness.step(client).cosigned
    served = world.services.audit.latest_checkpoint(world.operator)
    assert "funder.example/witness" in served["checkpoint"]

    _rewrite_and_resign(world, seq=2)
    assert world.services.audit.verify(world.operator)["ok"] is True  # the key holder fools verify alone
    world.credit(60)
    world.clock.advance(1_000)
    world.services.audit.checkpoint(None)
    with pytest.raises(WitnessRefusal, match="rewritten"):
        witness.step(client)
    world.services.container.settings.audit_witnesses_required = 1
    world.services.audit.__dict__.pop("config", None)
    world.clock.advance(WINDOW_MS + 60_000)
    world.services.audit.checkpoint(None)
    verdict = world.services.audit.verify(world.operator)  # and verifiers demanding a witness refuse it
    assert verdict["ok"] is False and "witness" in verdict["reason"]


def _rewrite_and_resign(world: World, *, seq: int) -> None:
    """Everything an attacker with the database, the state dir and the broker key can do."""
    from broker.audit.chain import compute_hash, leaf_of, record_from_body

    container = world.services.container
    pem = container.broker_key_pem

    def rewrite(conn: Any) -> list[Checkpoint]:
        rows = conn.execute(text("SELECT seq, body, entry_hash FROM audit_entries ORDER BY seq")).all()
        prev, frontier, nodes = None, merkle.Frontier(), []
        for r in rows:
            record = record_from_body(bytes(r.body), r.entry_hash)
            details = {**record.details, "forged": True} if r.seq == seq else record.details
            import dataclasses

            record = dataclasses.replace(record, details=details, prev_hash=prev or record.prev_hash)
            body = record.body()
            new_hash = compute_hash(record.prev_hash, body)
            conn.execute(
                text("UPDATE audit_entries SET body = :b, prev_hash = :p, entry_hash = :h WHERE seq = :s"),
                {"b": body, "p": record.prev_hash, "h": new_hash, "s": r.seq},
            )
            prev = new_hash
            nodes.extend(frontier.append(leaf_of(new_hash)))
        conn.execute(text("UPDATE audit_head SET entry_hash = :h"), {"h": prev})
        conn.execute(text("DELETE FROM audit_tree"))
        for level, idx, value in nodes:
            conn.execute(
                text("INSERT INTO audit_tree (level, idx, hash) VALUES (:l, :i, :h)"),
                {"l": level, "i": idx, "h": value},
            )
        conn.execute(
            text("UPDATE audit_tree_head SET last_entry_hash = :h, size = :n"), {"h": prev, "n": len(rows)}
        )
        conn.execute(text("DELETE FROM audit_cosignatures"))
        resigned = []
        for cp_row in conn.execute(text("SELECT seq, note FROM audit_checkpoints ORDER BY seq")).all():
            old = Checkpoint.parse(cp_row.note)
            root = merkle.root(
                old.size,
                {n: dict(((lv, ix), v) for lv, ix, v in nodes)[n] for n in merkle.root_plan(old.size)},
            )
            cp = sign_checkpoint(old.head.origin, old.size, root, old.ts_ms, pem)
            conn.execute(
                text("UPDATE audit_checkpoints SET note = :n, root = :r WHERE seq = :s"),
                {"n": cp.render(), "r": root, "s": cp_row.seq},
            )
            resigned.append(cp)
        conn.execute(text("UPDATE audit_tree_head SET checkpoint_root = :r"), {"r": resigned[-1].root})
        return resigned

    resigned = container.db.write(rewrite)
    path = container.audit.checkpoint_file.path
    path.unlink()
    for cp in resigned:
        container.audit.checkpoint_file.append(cp)


def test_checkpoints_and_cosignatures_are_copied_to_the_object_store(world: World, tmp_path: Path) -> None:
    from broker.audit.note import vkey

    key = Ed25519PrivateKey.generate()
    world.services.container.settings.audit_witnesses = [
        vkey("funder.example/witness", key.public_key(), 0x04)
    ]
    world.services.audit.__dict__.pop("config", None)
    _checkpointed(world)
    storage = world.services.container.storage
    stored = storage.get_bytes("audit/checkpoints/000000000001.note").decode()
    assert Checkpoint.parse(stored).render() == stored
    _witness(world, tmp_path, key).step(DirectClient(world))
    latest = world.services.audit.latest_checkpoint(world.operator)
    tags = [line for line in latest["checkpoint"].splitlines() if "funder.example/witness" in line]
    import hashlib

    tag = hashlib.sha256(b"funder.example/witness").hexdigest()[:16]
    line = storage.get_bytes(f"audit/cosignatures/{latest['seq']:012d}/{tag}.sig").decode()
    assert tags == [line]
