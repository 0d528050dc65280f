"""Signed audit checkpoints, kept outside the database.

A checkpoint states "entry ``seq`` of the audit log has hash ``entry_hash``", signed with the broker's
Ed25519 audit key. Because the hash chains every earlier entry, one checkpoint vouches for the whole prefix
up to ``seq``; whoever administers the database cannot rewrite that prefix, or cut it short, without the
signing key. Checkpoints are written to an append-only JSON-lines file (and may be copied anywhere else:
object store, the funder's inbox).

What is signed is :func:`checkpoint_message`: the canonical JSON of the checkpoint's fields plus a type tag,
so a checkpoint signature can never be replayed as a report or voucher signature (or the reverse).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from common.canonical import canonical_json
from common.errors import DomainError
from vouchers.keys import key_id, sign_bytes, verify_bytes

CHECKPOINT_TYPE = "sbx.audit.checkpoint.v1"
_HEX64 = re.compile(r"[0-9a-f]{64}")


class CheckpointFileError(DomainError):
    """The checkpoint file cannot be read as checkpoints (edited by hand, or damaged)."""

    code = "audit_checkpoints_unreadable"


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed statement "audit entry ``seq`` has hash ``entry_hash``", made at ``ts_ms`` by ``kid``."""

    seq: int
    entry_hash: str
    ts_ms: int
    kid: str
    signature: str

    def __post_init__(self) -> None:
        if type(self.seq) is not int or self.seq < 1:
            raise ValueError(f"checkpoint seq must be a positive integer, got {self.seq!r}")
        if type(self.ts_ms) is not int or self.ts_ms < 0:
            raise ValueError(f"checkpoint ts_ms must be a non-negative integer, got {self.ts_ms!r}")
        if not isinstance(self.entry_hash, str) or not _HEX64.fullmatch(self.entry_hash):
            raise ValueError("checkpoint entry_hash must be 64 lowercase hex characters")
        if not isinstance(self.kid, str) or not self.kid or not isinstance(self.signature, str):
            raise ValueError("checkpoint kid and signature must be non-empty strings")

    def to_json_dict(self) -> dict[str, Any]:
        """Return the checkpoint as a JSON object (one line of the checkpoint file)."""
        return asdict(self)

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any]) -> Checkpoint:
        """Read a checkpoint written by :meth:`to_json_dict`; raises ``ValueError`` on anything else."""
        if not isinstance(data, Mapping) or set(data) != {"seq", "entry_hash", "ts_ms", "kid", "signature"}:
            raise ValueError("not a checkpoint object")
        return cls(
            seq=data["seq"],
            entry_hash=data["entry_hash"],
            ts_ms=data["ts_ms"],
            kid=data["kid"],
            signature=data["signature"],
        )


def checkpoint_message(seq: int, entry_hash: str, ts_ms: int, kid: str) -> bytes:
    """Return the exact bytes a checkpoint signature covers (canonical JSON with a type tag)."""
    return canonical_json(
        {"type": CHECKPOINT_TYPE, "seq": seq, "entry_hash": entry_hash, "ts_ms": ts_ms, "kid": kid}
    )


def sign_checkpoint(seq: int, entry_hash: str, ts_ms: int, private_pem: bytes) -> Checkpoint:
    """Sign "entry ``seq`` has hash ``entry_hash``" with the broker's audit key (kid = its thumbprint)."""
    kid = key_id(private_pem)
    signature = sign_bytes(private_pem, checkpoint_message(seq, entry_hash, ts_ms, kid))
    return Checkpoint(seq=seq, entry_hash=entry_hash, ts_ms=ts_ms, kid=kid, signature=signature)


def select_key(keys: Mapping[str, Any], kid: str) -> Mapping[str, Any] | None:
    """Pick the JWK named ``kid`` from a single JWK or a JWK Set (``{"keys": [...]}``); ``None`` if absent."""
    candidates = keys.get("keys") if "keys" in keys else [keys]
    if not isinstance(candidates, list):
        return None
    for jwk in candidates:
        if isinstance(jwk, Mapping) and jwk.get("kid") == kid:
            return jwk
    return None


def verify_checkpoint(checkpoint: Checkpoint, keys: Mapping[str, Any]) -> bool:
    """Return whether ``checkpoint`` carries a valid signature by the key it names, found in ``keys``.

    ``keys`` is the broker's public audit JWK or a JWK Set of current and former audit keys. A key that
    is not named is ``False`` (an unknown signer); a named JWK that is not an Ed25519 public key raises
    ``vouchers.KeyFormatError`` (a configuration error, not a forgery, so it must not look like one).
    """
    jwk = select_key(keys, checkpoint.kid)
    if jwk is None:
        return False
    message = checkpoint_message(checkpoint.seq, checkpoint.entry_hash, checkpoint.ts_ms, checkpoint.kid)
    return verify_bytes(jwk, message, checkpoint.signature)


class CheckpointFile:
    """An append-only JSON-lines file of checkpoints: every append is flushed and fsynced before returning.

    Appends from processes on one host are serialised with ``flock``. A torn last line (a crash in the
    middle of an append, never acknowledged) is cut off by the next append; any other unreadable line makes
    :meth:`read_all` raise :class:`CheckpointFileError` — an audit trail is never read past damage.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def append(self, checkpoint: Checkpoint) -> None:
        """Append one checkpoint durably (write, flush, fsync; the directory too when the file is new)."""
        line = json.dumps(checkpoint.to_json_dict(), sort_keys=True, separators=(",", ":")) + "\n"
        is_new = not self.path.exists()
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._cut_torn_tail(fd)
            os.write(fd, line.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)  # closing releases the lock
        if is_new:
            self._fsync_dir()

    @staticmethod
    def _cut_torn_tail(fd: int) -> None:
        size = os.fstat(fd).st_size
        if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
            return
        content = os.pread(fd, size, 0)
        os.ftruncate(fd, content.rfind(b"\n") + 1)

    def _fsync_dir(self) -> None:
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def last(self) -> Checkpoint | None:
        """Return the newest checkpoint without reading the whole file (``None`` if there is none yet).

        Reads backwards from the end; a torn final line is skipped as in :meth:`read_all`.
        """
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            size = os.fstat(fd).st_size
            chunk = 4096
            while True:
                start = max(size - chunk, 0)
                tail = os.pread(fd, size - start, start)
                complete = tail[: tail.rfind(b"\n") + 1]
                lines = complete.split(b"\n")[:-1]
                if len(lines) >= 2 or start == 0:  # the last complete line is whole
                    break
                chunk *= 2
        finally:
            os.close(fd)
        if not lines:
            return None
        try:
            return Checkpoint.from_json_dict(json.loads(lines[-1]))
        except (ValueError, TypeError) as exc:
            raise CheckpointFileError(
                f"{self.path}: the last line is not a checkpoint; the file was damaged or edited"
            ) from exc

    def read_all(self) -> list[Checkpoint]:
        """Return every checkpoint in file order (empty if the file does not exist yet).

        A final line without its newline (torn append) is ignored; any other bad line raises
        :class:`CheckpointFileError` naming the line.
        """
        try:
            content = self.path.read_bytes()
        except FileNotFoundError:
            return []
        lines = content.split(b"\n")
        complete = lines[:-1]  # the part after the last newline is empty, or a torn append
        out: list[Checkpoint] = []
        for number, raw in enumerate(complete, start=1):
            try:
                out.append(Checkpoint.from_json_dict(json.loads(raw)))
            except (ValueError, TypeError) as exc:
                raise CheckpointFileError(
                    f"{self.path}: line {number} is not a checkpoint; the file was damaged or edited. "
                    "Restore it from a copy before trusting the audit log."
                ) from exc
        return out
