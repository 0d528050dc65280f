"""Signed checkpoints and their append-only file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from broker.audit import (
    Checkpoint,
    CheckpointFile,
    CheckpointFileError,
    checkpoint_message,
    sign_checkpoint,
    verify_checkpoint,
)
from vouchers.keys import generate_private_pem, public_jwk, verify_bytes

PEM = generate_private_pem()
JWK = public_jwk(PEM)
HASH = "ab" * 32


def test_sign_and_verify_checkpoint_with_the_shared_key_helpers() -> None:
    cp = sign_checkpoint(7, HASH, 1_764_000_000_000, PEM)
    assert cp.kid == JWK["kid"]
    assert verify_checkpoint(cp, JWK)
    assert verify_checkpoint(cp, {"keys": [public_jwk(generate_private_pem()), JWK]})
    assert not verify_checkpoint(cp, {"keys": []})
    assert not verify_checkpoint(cp, {"keys": "nonsense"})
    message = checkpoint_message(7, HASH, 1_764_000_000_000, cp.kid)
    assert json.loads(message)["type"] == "sbx.audit.checkpoint.v1"
    assert verify_bytes(JWK, message, cp.signature)


@pytest.mark.parametrize(
    "fields",
    [
        {"seq": 0},
        {"seq": True},
        {"ts_ms": -1},
        {"entry_hash": "AB" * 32},
        {"entry_hash": "ab"},
        {"kid": ""},
    ],
)
def test_checkpoint_refuses_bad_fields(fields: dict[str, object]) -> None:
    base: dict[str, object] = {"seq": 1, "entry_hash": HASH, "ts_ms": 0, "kid": "k", "signature": "s"}
    with pytest.raises(ValueError):
        Checkpoint(**{**base, **fields})  # type: ignore[arg-type]


def test_file_appends_and_reads_back_in_order(tmp_path: Path) -> None:
    store = CheckpointFile(tmp_path / "checkpoints.jsonl")
    assert store.read_all() == []
    cps = [sign_checkpoint(s, HASH, s, PEM) for s in (10, 20, 30)]
    for cp in cps:
        store.append(cp)
    assert store.read_all() == cps
    assert CheckpointFile(tmp_path / "checkpoints.jsonl").read_all() == cps
    assert (tmp_path / "checkpoints.jsonl").read_text().count("\n") == 3


def test_a_torn_last_line_is_ignored_and_cut_by_the_next_append(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints.jsonl"
    store = CheckpointFile(path)
    first, second = sign_checkpoint(1, HASH, 1, PEM), sign_checkpoint(2, HASH, 2, PEM)
    store.append(first)
    with path.open("ab") as handle:
        handle.write(b'{"seq":2,"entry_ha')  # crash in the middle of an append
    assert store.read_all() == [first]
    store.append(second)
    assert store.read_all() == [first, second]


def test_a_damaged_line_is_never_read_past(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints.jsonl"
    store = CheckpointFile(path)
    store.append(sign_checkpoint(1, HASH, 1, PEM))
    with path.open("ab") as handle:
        handle.write(b'{"seq": "two"}\n')
    store.append(sign_checkpoint(3, HASH, 3, PEM))
    with pytest.raises(CheckpointFileError, match="line 2"):
        store.read_all()


def test_last_reads_the_newest_checkpoint_from_the_end(tmp_path: Path) -> None:
    store = CheckpointFile(tmp_path / "checkpoints.jsonl")
    assert store.last() is None
    cps = [sign_checkpoint(s, HASH, s, PEM) for s in range(1, 120)]  # > 4 KiB: several read chunks
    for cp in cps:
        store.append(cp)
    assert store.last() == cps[-1]
    with (tmp_path / "checkpoints.jsonl").open("ab") as handle:
        handle.write(b'{"seq":9')  # torn append
    assert store.last() == cps[-1]
    single = CheckpointFile(tmp_path / "one.jsonl")
    single.append(cps[0])
    assert single.last() == cps[0]
    (tmp_path / "bad.jsonl").write_bytes(b"not json\n")
    with pytest.raises(CheckpointFileError):
        CheckpointFile(tmp_path / "bad.jsonl").last()
