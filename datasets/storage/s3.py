"""An S3 object store (MinIO or any S3) through the official ``minio`` client.

Each object carries its SHA-256 as user metadata (``x-amz-meta-sha256``), which the immutability check
compares; an object written by someone else without it is downloaded and hashed instead. S3 has no
create-only put here, so the check-then-put is not atomic across writers: with content-addressed keys a race
can only write the same bytes twice, which is harmless. Every ``S3Error`` and transport error is re-raised as
a :class:`StorageError` (``StorageNotFound`` for a missing key) from the original.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import urllib3
from minio import Minio
from minio.error import InvalidResponseError, MinioException, S3Error

from datasets.storage.base import (
    CHUNK_SIZE,
    ObjectInfo,
    StorageError,
    StorageNotFound,
    conflict,
    sha256_file,
    validate_key,
    validate_prefix,
)

T = TypeVar("T")
_META = "sha256"
_MISSING = frozenset({"NoSuchKey", "NoSuchObject", "NoSuchBucket"})


def _translate(exc: Exception, what: str) -> StorageError:
    if isinstance(exc, S3Error):
        if exc.code in _MISSING:
            return StorageNotFound(f"{what}: not found")
        return StorageError(f"{what}: the object store refused ({exc.code})")
    if isinstance(exc, InvalidResponseError):
        # Some servers (rclone) answer a GET of a missing key with a terse 404 body minio cannot parse.
        status = getattr(exc, "_code", None)
        if status == 404:
            return StorageNotFound(f"{what}: not found")
        return StorageError(f"{what}: the object store answered HTTP {status}")
    return StorageError(f"{what}: the object store is unreachable ({type(exc).__name__})")


def _call(what: str, fn: Callable[[], T]) -> T:
    try:
        return fn()
    except (MinioException, urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
        raise _translate(exc, what) from exc


class S3Store:
    """Immutable objects in one S3 bucket."""

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        *,
        secure: bool = False,
        region: str = "us-east-1",
        create_bucket: bool = True,
        timeout_s: float = 30.0,
        retries: int = 2,
    ) -> None:
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=min(timeout_s, 5.0), read=timeout_s),
            retries=urllib3.Retry(total=retries, backoff_factor=0.1, status_forcelist=[500, 502, 503, 504]),
        )
        self._client = Minio(
            endpoint,
            access_key=access_key,
            secret_key=secret_key,
            secure=secure,
            region=region,
            http_client=http,
        )
        self._bucket = bucket
        if create_bucket:
            self.ensure_bucket()

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (refused credentials raise StorageError here)."""

        def run() -> None:
            if self._client.bucket_exists(self._bucket):
                return
            try:
                self._client.make_bucket(self._bucket)
            except S3Error as exc:  # another replica created it between the two calls
                if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

        _call(f"bucket {self._bucket!r}", run)

    def _existing_sha(self, key: str, meta: Any) -> str:
        value = meta.get(f"x-amz-meta-{_META}") if meta is not None else None
        if value:
            return str(value)
        digest = hashlib.sha256()
        for chunk in self.iter_bytes(key):
            digest.update(chunk)
        return digest.hexdigest()

    def _check_existing(self, key: str, sha: str) -> ObjectInfo | None:
        """The existing object if it has the same content; None if absent; StorageConflict if it differs."""
        try:
            stat = _call(f"object {key!r}", lambda: self._client.stat_object(self._bucket, key))
        except StorageNotFound:
            return None
        if self._existing_sha(key, stat.metadata) != sha:
            raise conflict(key)
        return ObjectInfo(key, int(stat.size or 0), sha)

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        """Store ``data`` under ``key`` (no-op if identical, StorageConflict if different)."""
        validate_key(key)
        sha = hashlib.sha256(data).hexdigest()
        existing = self._check_existing(key, sha)
        if existing is not None:
            return existing
        _call(
            f"put {key!r}",
            lambda: self._client.put_object(
                self._bucket, key, io.BytesIO(data), len(data), metadata={_META: sha}
            ),
        )
        return ObjectInfo(key, len(data), sha)

    def put_file(self, key: str, path: Path) -> ObjectInfo:
        """Upload a file (multipart for large ones) under ``key`` (same immutability rule)."""
        validate_key(key)
        try:
            sha, size = sha256_file(Path(path))
        except OSError as exc:
            raise StorageError(f"cannot read {path}: {exc.strerror}") from exc
        existing = self._check_existing(key, sha)
        if existing is not None:
            return existing
        _call(
            f"put {key!r}",
            lambda: self._client.fput_object(self._bucket, key, str(path), metadata={_META: sha}),
        )
        return ObjectInfo(key, size, sha)

    def get_bytes(self, key: str) -> bytes:
        """The object's whole content."""
        return b"".join(self.iter_bytes(key))

    def get_file(self, key: str, path: Path) -> ObjectInfo:
        """Download to ``path`` (the client writes a temporary part file and renames it)."""
        validate_key(key)
        _call(f"get {key!r}", lambda: self._client.fget_object(self._bucket, key, str(path)))
        return self.stat(key)

    def iter_bytes(self, key: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        """Stream the object's content in chunks (the connection is released at the end)."""
        validate_key(key)
        response = _call(f"get {key!r}", lambda: self._client.get_object(self._bucket, key))

        def chunks() -> Iterator[bytes]:
            stream = response.stream(chunk_size)
            try:
                while True:
                    chunk = _call(f"get {key!r}", lambda: next(stream, None))
                    if chunk is None:
                        return
                    yield chunk
            finally:
                with contextlib.suppress(Exception):
                    response.close()
                    response.release_conn()

        return chunks()

    def stat(self, key: str) -> ObjectInfo:
        """Size and SHA-256 (from metadata, else by hashing the content)."""
        validate_key(key)
        stat = _call(f"object {key!r}", lambda: self._client.stat_object(self._bucket, key))
        return ObjectInfo(key, int(stat.size or 0), self._existing_sha(key, stat.metadata))

    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""
        validate_key(key)
        try:
            _call(f"object {key!r}", lambda: self._client.stat_object(self._bucket, key))
        except StorageNotFound:
            return False
        return True

    def list(self, prefix: str = "") -> list[str]:
        """The sorted keys starting with ``prefix``."""
        validate_prefix(prefix)
        objects = _call(
            f"list {prefix!r}",
            lambda: [
                o.object_name for o in self._client.list_objects(self._bucket, prefix=prefix, recursive=True)
            ],
        )
        return sorted(name for name in objects if name)

    def delete(self, key: str) -> None:
        """Remove the object (absent keys are a no-op, as in S3)."""
        validate_key(key)
        _call(f"delete {key!r}", lambda: self._client.remove_object(self._bucket, key))
