"""Signed checkpoints (C2SP tree heads) and their append-only file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.audit import (
    Checkpoint,
    CheckpointFile,
    CheckpointFileError,
    cosigners,
    note,
    sign_checkpoint,
    verify_checkpoint,
)
from vouchers.keys import generate_private_pem, jwks, public_jwk

PEM = generate_private_pem()
JWK = public_jwk(PEM)
ROOT = b"\xab" * 32
ORIGIN = "sbx.test/audit"


def test_a_checkpoint_is_a_c2sp_signed_note_by_the_broker_key() -> None:
    cp = sign_checkpoint(ORIGIN, 7, ROOT, 1_764_000_000_000, PEM)
    text = cp.render()
    lines = text.split("\n")
    assert lines[:4] == [ORIGIN, "7", "q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=", "time 1764000000000"]
    assert lines[4] == "" and lines[5].startswith("\u2014 " + ORIGIN + " ")
    assert Checkpoint.parse(text) == cp
    assert verify_checkpoint(cp, JWK)
    assert verify_checkpoint(cp, jwks([public_jwk(generate_private_pem()), JWK]))  # a rotated key set
    assert not verify_checkpoint(cp, public_jwk(generate_private_pem()))
    assert not verify_checkpoint(cp, {"keys": []})
    assert not verify_checkpoint(cp, {"keys": "nonsense"})


def test_an_edited_checkpoint_does_not_verify() -> None:
    cp = sign_checkpoint(ORIGIN, 7, ROOT, 1, PEM)
    for old, new in (("\n7\n", "\n8\n"), ("time 1", "time 2"), (ORIGIN + "\n", "other/log\n")):
        edited = Checkpoint.parse(cp.render().replace(old, new, 1))
        assert not verify_checkpoint(edited, JWK)


def test_cosignatures_are_counted_for_configured_witnesses_only() -> None:
    cp = sign_checkpoint(ORIGIN, 3, ROOT, 1, PEM)
    alice, bob, mallory = (Ed25519PrivateKey.generate() for _ in range(3))
    lines = [
        note.cosign(cp.note.text, "alice", alice, 100),
        note.cosign(cp.note.text, "bob", bob, 101),
        note.cosign(cp.note.text, "alice", mallory, 102),  # someone else's key under alice's name
    ]
    served = Checkpoint.parse(cp.with_signatures(lines).render())
    assert verify_checkpoint(served, JWK)  # extra lines do not disturb the log signature
    assert cosigners(served, {"alice": alice.public_key(), "bob": bob.public_key()}) == {
        "alice": 100,
        "bob": 101,
    }
    assert cosigners(served, {"alice": mallory.public_key()}) == {"alice": 102}
    assert cosigners(cp, {"alice": alice.public_key()}) == {}


def test_file_appends_and_reads_back_in_order(tmp_path: Path) -> None:
    store = CheckpointFile(tmp_path / "checkpoints.jsonl")
    assert store.read_all() == [] and not store.exists()
    cps = [sign_checkpoint(ORIGIN, s, ROOT, s, PEM) for s in (10, 20, 30)]
    for cp in cps:
        store.append(cp)
    assert store.read_all() == cps and store.exists()
    assert store.last() == cps[-1]


def test_a_torn_last_line_is_ignored_and_cut_by_the_next_append(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints.jsonl"
    store = CheckpointFile(path)
    store.append(sign_checkpoint(ORIGIN, 1, ROOT, 1, PEM))
    with path.open("ab") as fh:
        fh.write(b'{"note": "half')
    assert len(store.read_all()) == 1 and store.last() is not None
    store.append(sign_checkpoint(ORIGIN, 2, ROOT, 2, PEM))
    assert [cp.size for cp in store.read_all()] == [1, 2]


def test_a_damaged_line_is_never_read_past(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints.jsonl"
    store = CheckpointFile(path)
    store.append(sign_checkpoint(ORIGIN, 1, ROOT, 1, PEM))
    with path.open("a") as fh:
        fh.write(json.dumps({"note": "not a note"}) + "\n")
    store.append(sign_checkpoint(ORIGIN, 2, ROOT, 2, PEM))
    with pytest.raises(CheckpointFileError, match="line 2"):
        store.read_all()


def test_last_reads_the_newest_checkpoint_from_the_end(tmp_path: Path) -> None:
    store = CheckpointFile(tmp_path / "checkpoints.jsonl")
    assert store.last() is None
    for size in range(1, 200):
        store.append(sign_checkpoint(ORIGIN, size, ROOT, size, PEM))
    last = store.last()
    assert last is not None and last.size == 199
