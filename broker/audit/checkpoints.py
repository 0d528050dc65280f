"""Signed tree heads of the audit log (C2SP checkpoints) and the append-only file that keeps them.

A checkpoint says "the audit log's Merkle tree (RFC 9162) of ``size`` entries has root ``root``, as of
``time_ms``", in the C2SP tlog-checkpoint text, signed as a C2SP signed note with the broker's Ed25519 key
(key name = the log's origin). Witnesses add their tlog cosignatures as further signature lines of the same
note, so one note carries every party's signature. The broker never signs two checkpoints that are not
consistent with each other; a verifier holding any earlier one can demand a consistency proof.

The file (``<state dir>/audit/checkpoints.jsonl``, one ``{"note": …}`` object per line) is the copy outside
the database; the database holds the same sequence (``audit_checkpoints``) for every replica.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from broker.audit.note import (
    NoteError,
    SignatureLine,
    SignedNote,
    TreeHead,
    key_id,
    parse_note,
    parse_tree_head,
    sign_text,
    verify_cosignature,
    verify_line,
)
from common.errors import DomainError
from vouchers.errors import KeyFormatError
from vouchers.keys import public_key_from_jwk


class CheckpointFileError(DomainError):
    """The checkpoint file cannot be read as checkpoints (edited by hand, or damaged)."""

    code = "audit_checkpoints_unreadable"


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed tree head: what it states (``head``) and the whole signed note (log signature, cosignatures)."""

    head: TreeHead
    note: SignedNote

    @property
    def size(self) -> int:
        """How many entries the tree covers."""
        return self.head.size

    @property
    def root(self) -> bytes:
        """The tree's root hash."""
        return self.head.root

    @property
    def ts_ms(self) -> int:
        """When the broker signed it (unix ms, part of the signed text)."""
        return self.head.time_ms

    def render(self) -> str:
        """The signed note, as served and stored."""
        return self.note.render()

    def to_json_dict(self) -> dict[str, Any]:
        """One line of the checkpoint file."""
        return {"note": self.render()}

    @classmethod
    def parse(cls, note: str) -> Checkpoint:
        """Read a signed checkpoint note; ``NoteError`` if it is not one."""
        signed = parse_note(note)
        return cls(parse_tree_head(signed.text), signed)

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any]) -> Checkpoint:
        """Read a line written by :meth:`to_json_dict`; raises ``ValueError`` on anything else."""
        if not isinstance(data, Mapping) or set(data) != {"note"} or not isinstance(data["note"], str):
            raise ValueError("not a checkpoint object")
        try:
            return cls.parse(data["note"])
        except NoteError as exc:
            raise ValueError(str(exc)) from exc

    def with_signatures(self, lines: Iterable[SignatureLine]) -> Checkpoint:
        """This checkpoint with more signature lines (cosignatures); a line already present is kept once."""
        merged = list(self.note.signatures)
        for line in lines:
            if line not in merged:
                merged.append(line)
        return Checkpoint(self.head, SignedNote(self.note.text, tuple(merged)))


def private_key(private_pem: bytes) -> Ed25519PrivateKey:
    """The Ed25519 private key of a PEM (``KeyFormatError`` for anything else)."""
    key = serialization.load_pem_private_key(private_pem, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFormatError("the audit signing key is not Ed25519")
    return key


def sign_checkpoint(origin: str, size: int, root: bytes, time_ms: int, private_pem: bytes) -> Checkpoint:
    """Sign the tree head ``(size, root)`` at ``time_ms`` with the broker's key (key name = ``origin``)."""
    head = TreeHead(origin, size, root, time_ms)
    text = head.text()
    parse_tree_head(text)  # refuse a head we could not read back (an origin with a newline, ...)
    line = sign_text(text, origin, private_key(private_pem))
    return Checkpoint(head, SignedNote(text, (line,)))


def log_keys(keys: Mapping[str, Any]) -> list[Ed25519PublicKey]:
    """The Ed25519 keys of a JWK or a JWK Set (the broker's current and former audit keys)."""
    candidates = keys.get("keys") if "keys" in keys else [keys]
    if not isinstance(candidates, list):
        return []
    return [public_key_from_jwk(jwk) for jwk in candidates if isinstance(jwk, Mapping)]


def verify_checkpoint(checkpoint: Checkpoint, keys: Mapping[str, Any]) -> bool:
    """Whether the note carries a valid log signature (name = origin) by one of ``keys`` (JWK or JWK Set).

    Other signature lines (cosignatures, unknown keys) are ignored here, as C2SP requires.
    """
    origin = checkpoint.head.origin
    publics = {key_id(origin, public): public for public in log_keys(keys)}
    for line in checkpoint.note.signatures:
        public = publics.get(line.key_id)
        if public is not None and verify_line(checkpoint.note.text, line, origin, public):
            return True
    return False


def cosigners(checkpoint: Checkpoint, witnesses: Mapping[str, Ed25519PublicKey]) -> dict[str, int]:
    """The configured witnesses (name → key) with a valid cosignature on it, each with its timestamp (s)."""
    out: dict[str, int] = {}
    for line in checkpoint.note.signatures:
        public = witnesses.get(line.name)
        if public is None or line.name in out:
            continue
        stamp = verify_cosignature(checkpoint.note.text, line, line.name, public)
        if stamp is not None:
            out[line.name] = stamp
    return out


class CheckpointFile:
    """An append-only JSON-lines file of checkpoints: every append is flushed and fsynced before returning.

    Appends from processes on one host are serialised with ``flock``. A torn last line (a crash in the
    middle of an append, never acknowledged) is cut off by the next append; any other unreadable line makes
    :meth:`read_all` raise :class:`CheckpointFileError` — an audit trail is never read past damage.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def exists(self) -> bool:
        """Whether the file is there at all (its absence is a verification failure once a log has entries)."""
        return self.path.exists()

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
