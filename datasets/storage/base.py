"""The object-store interface, its errors and key rules (no I/O here).

Exception tree::

    DomainError
    ├── StorageError            code "storage_error"   the store failed or refused (credentials, network, I/O)
    │   ├── StorageConflict     code "object_conflict" a put would change an existing immutable object
    │   └── InvalidKey          code "invalid_key"     a key breaks the key rules (traversal, bad characters)
    └── NotFound
        └── StorageNotFound     code "not_found"       no object under that key (also a StorageError)

Keys are ``/``-separated segments of ``[A-Za-z0-9._=-]``, never ``.`` or ``..``, no empty segment, at most
1024 characters. Objects are immutable: putting an existing key with the same bytes is a no-op that returns
the existing object, with other bytes it raises :class:`StorageConflict`. Dataset keys are content-addressed
(see :func:`dataset_key`), so the same key always means the same bytes.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from common.errors import Conflict, DomainError, NotFound

MAX_KEY_LENGTH = 1024
CHUNK_SIZE = 1 << 20
_SEGMENT = re.compile(r"[A-Za-z0-9._=-]+")


class StorageError(DomainError):
    """The object store failed or refused an operation."""

    code = "storage_error"


class StorageNotFound(StorageError, NotFound):
    """No object exists under the key."""

    code = "not_found"


class StorageConflict(StorageError, Conflict):
    """An object exists under the key with different content; objects are immutable."""

    code = "object_conflict"


class InvalidKey(StorageError):
    """A key breaks the key rules."""

    code = "invalid_key"


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What a store knows about one object: its key, size in bytes and SHA-256 (hex) when known."""

    key: str
    size: int
    sha256: str | None


def validate_key(key: str) -> str:
    """Return ``key`` if it follows the key rules, else raise InvalidKey (blocks path traversal)."""
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_LENGTH:
        raise InvalidKey(f"an object key must be 1..{MAX_KEY_LENGTH} characters")
    for segment in key.split("/"):
        if segment in ("", ".", "..") or not _SEGMENT.fullmatch(segment):
            raise InvalidKey(f"invalid object key {key!r}: use '/'-separated [A-Za-z0-9._=-] segments")
    return key


def validate_prefix(prefix: str) -> str:
    """Return a listing prefix ('' or a key, optionally ending in '/') if valid, else raise InvalidKey."""
    if prefix == "":
        return prefix
    validate_key(prefix.removesuffix("/"))
    return prefix


def dataset_key(content_sha256: str, suffix: str = "parquet") -> str:
    """The content-addressed key of a dataset version: ``datasets/sha256/<hex>.<suffix>``."""
    if not re.fullmatch(r"[0-9a-f]{64}", content_sha256):
        raise InvalidKey("a dataset key needs a lowercase hex SHA-256")
    return validate_key(f"datasets/sha256/{content_sha256}.{suffix}")


def sha256_stream(stream: BinaryIO) -> tuple[str, int]:
    """SHA-256 (hex) and length of everything left in ``stream``, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    while chunk := stream.read(CHUNK_SIZE):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def sha256_file(path: Path) -> tuple[str, int]:
    """SHA-256 (hex) and length of a file."""
    with path.open("rb") as handle:
        return sha256_stream(handle)


def conflict(key: str) -> StorageConflict:
    """The refusal for a put that would change an immutable object."""
    return StorageConflict(f"object {key!r} already exists with different content; objects are immutable")


class ObjectStore(Protocol):
    """A store of immutable objects under validated keys (local directory, S3)."""

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        """Store ``data`` under ``key`` (no-op if identical, StorageConflict if different)."""
        ...

    def put_file(self, key: str, path: Path) -> ObjectInfo:
        """Store a file's content under ``key``, streaming it (same immutability rule)."""
        ...

    def get_bytes(self, key: str) -> bytes:
        """The object's whole content (StorageNotFound if absent)."""
        ...

    def get_file(self, key: str, path: Path) -> ObjectInfo:
        """Download the object to ``path`` (written completely or not at all)."""
        ...

    def iter_bytes(self, key: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        """Stream the object's content in chunks."""
        ...

    def stat(self, key: str) -> ObjectInfo:
        """Size and hash of the object (StorageNotFound if absent)."""
        ...

    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""
        ...

    def list(self, prefix: str = "") -> list[str]:
        """The sorted keys starting with ``prefix``."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object; deleting an absent key is a no-op."""
        ...
