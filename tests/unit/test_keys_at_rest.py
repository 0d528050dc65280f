"""The KEK and the broker's wrapped key set (broker/keys.py): wrapping, labels, rotation, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.keys import (
    BROKER_KEY_FILE,
    KEYSET_FILE,
    Kek,
    KekUnavailable,
    broker_keyset,
    create_broker_key,
    create_kek,
    load_broker_keys,
    load_kek,
    new_kek,
    read_kek_file,
    rewrap_broker_keys,
    rotate_broker_key,
    write_kek_file,
)
from vouchers import generate_private_pem, key_id


def test_wrap_unwrap_and_the_label_is_bound() -> None:
    kek = Kek([new_kek()])
    blob = kek.wrap(b"secret pem", label="issuer-key:a")
    assert b"secret pem" not in blob
    assert kek.unwrap(blob, label="issuer-key:a") == b"secret pem"
    with pytest.raises(KekUnavailable, match="does not decrypt"):
        kek.unwrap(blob, label="issuer-key:b")  # moved to another row
    with pytest.raises(KekUnavailable, match="another KEK"):
        Kek([new_kek()]).unwrap(blob, label="issuer-key:a")
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(KekUnavailable):
        kek.unwrap(tampered, label="issuer-key:a")


def test_kek_file_is_0600_never_overwritten_and_refused_inside_the_state_dir(tmp_path: Path) -> None:
    path = create_kek(tmp_path / "cfg" / "kek", state_dir=tmp_path / "state")
    assert path.stat().st_mode & 0o777 == 0o600
    first = read_kek_file(path)
    create_kek(path, state_dir=tmp_path / "state")
    assert read_kek_file(path) == first
    with pytest.raises(KekUnavailable, match="inside the state dir"):
        create_kek(tmp_path / "state" / "kek", state_dir=tmp_path / "state")


def test_production_needs_a_kek_file(tmp_path: Path) -> None:
    with pytest.raises(KekUnavailable, match="SBX_KEK_FILE"):
        load_kek(None, production=True, state_dir=tmp_path / "state")
    with pytest.raises(KekUnavailable, match="no key-encryption key"):
        load_kek(tmp_path / "missing", production=True, state_dir=tmp_path / "state")


def test_a_running_kek_rereads_its_file_after_rotation(tmp_path: Path) -> None:
    path = tmp_path / "kek"
    write_kek_file(path, [new_kek()])
    running = Kek(read_kek_file(path), path)
    rotated = Kek([new_kek(), *running.keys], path)
    write_kek_file(path, rotated.keys)
    blob = rotated.wrap(b"x", label="l")
    assert running.unwrap(blob, label="l") == b"x"


def test_keyset_wraps_the_broker_key_and_keeps_retired_keys(tmp_path: Path) -> None:
    keys_dir, kek = tmp_path / "keys", Kek([new_kek()])
    create_broker_key(keys_dir, kek)
    assert b"PRIVATE KEY" not in (keys_dir / KEYSET_FILE).read_bytes()
    first = load_broker_keys(keys_dir, kek)
    second_kid = rotate_broker_key(keys_dir, kek, now_ms=1)
    now = load_broker_keys(keys_dir, kek)
    assert now.current_kid == second_kid != first.current_kid
    assert set(broker_keyset(keys_dir)) == {first.current_kid, second_kid}
    assert all(k["sbx_role"] == "broker" for k in now.jwks()["keys"])
    other = Kek([new_kek()])
    assert rewrap_broker_keys(keys_dir, kek, other) == 2
    assert load_broker_keys(keys_dir, other).current_pem == now.current_pem
    with pytest.raises(KekUnavailable):
        load_broker_keys(keys_dir, kek)


def test_a_plaintext_key_left_by_an_older_broker_is_wrapped_and_removed(tmp_path: Path) -> None:
    keys_dir, kek = tmp_path / "keys", Kek([new_kek()])
    keys_dir.mkdir()
    pem = generate_private_pem()
    (keys_dir / BROKER_KEY_FILE).write_bytes(pem)
    assert load_broker_keys(keys_dir, kek).current_kid == key_id(pem)  # a mounted Secret works as is
    create_broker_key(keys_dir, kek)
    assert not (keys_dir / BROKER_KEY_FILE).exists()
    assert load_broker_keys(keys_dir, kek).current_pem == pem
