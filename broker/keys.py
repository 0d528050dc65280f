"""The broker's own Ed25519 key (audit checkpoints, signed reports), kept in the state dir with mode 0600."""

from __future__ import annotations

import os
from pathlib import Path

from vouchers import generate_private_pem

BROKER_KEY_FILE = "broker.pem"


def create_broker_key(keys_dir: Path) -> Path:
    """Generate the broker key if absent (never overwrites); returns its path."""
    keys_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(keys_dir, 0o700)
    path = keys_dir / BROKER_KEY_FILE
    if path.exists():
        return path
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(generate_private_pem())
        fh.flush()
        os.fsync(fh.fileno())
    return path


def load_broker_key(keys_dir: Path) -> bytes:
    """Read the broker key; a clear error tells the operator to run ``sbx init`` when it is missing."""
    path = keys_dir / BROKER_KEY_FILE
    if not path.exists():
        raise FileNotFoundError(
            f"no broker key at {path}; run `sbx init` first (or mount the key Secret there)"
        )
    return path.read_bytes()
