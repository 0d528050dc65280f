"""A directory-backed object store for the embedded default (same contract as S3).

Layout: ``<root>/objects/<key>`` holds objects, ``<root>/tmp`` holds in-flight writes on the same filesystem.
A put writes a temporary file, fsyncs it, then publishes it with ``os.link`` — atomic and create-only, so two
writers can never interleave and a reader never sees a partial object — and fsyncs the directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

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


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalDirStore:
    """Immutable objects in a local directory, with atomic, durable writes."""

    def __init__(self, root: Path | str) -> None:
        self._root = Path(root).resolve()
        self._objects = self._root / "objects"
        self._tmp = self._root / "tmp"
        try:
            self._objects.mkdir(parents=True, exist_ok=True)
            self._tmp.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create the object store at {self._root}: {exc.strerror}") from exc

    def _path(self, key: str) -> Path:
        path = (self._objects / validate_key(key)).resolve()
        if not path.is_relative_to(self._objects):  # belt and braces: validate_key already blocks '..'
            raise StorageError(f"object key {key!r} escapes the store")
        return path

    def _write_temp(self, source: io.BufferedIOBase | io.BytesIO) -> tuple[Path, str, int]:
        digest = hashlib.sha256()
        size = 0
        fd, name = tempfile.mkstemp(dir=self._tmp, prefix="put-")
        with os.fdopen(fd, "wb") as out:
            while chunk := source.read(CHUNK_SIZE):
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        return Path(name), digest.hexdigest(), size

    def _publish(self, key: str, source: io.BufferedIOBase | io.BytesIO) -> ObjectInfo:
        dest = self._path(key)
        tmp: Path | None = None
        try:
            tmp, sha, size = self._write_temp(source)
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(tmp, dest)
            except FileExistsError:
                existing = self.stat(key)
                if existing.sha256 != sha:
                    raise conflict(key) from None
                return existing
            _fsync_dir(dest.parent)
            return ObjectInfo(key, size, sha)
        except OSError as exc:
            raise StorageError(f"cannot write object {key!r}: {exc.strerror}") from exc
        finally:
            if tmp is not None:
                tmp.unlink(missing_ok=True)

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        """Store ``data`` under ``key`` (no-op if identical, StorageConflict if different)."""
        return self._publish(key, io.BytesIO(data))

    def put_file(self, key: str, path: Path) -> ObjectInfo:
        """Store a file's content under ``key``, copying it in chunks."""
        try:
            with Path(path).open("rb") as handle:
                return self._publish(key, handle)
        except OSError as exc:
            raise StorageError(f"cannot read {path}: {exc.strerror}") from exc

    def _existing(self, key: str) -> Path:
        path = self._path(key)
        if not path.is_file():
            raise StorageNotFound(f"no object {key!r}")
        return path

    def get_bytes(self, key: str) -> bytes:
        """The object's whole content."""
        return self._existing(key).read_bytes()

    def get_file(self, key: str, path: Path) -> ObjectInfo:
        """Copy the object to ``path`` via a temporary file renamed into place."""
        src = self._existing(key)
        dest = Path(path)
        fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
        os.close(fd)
        try:
            shutil.copyfile(src, name)
            os.replace(name, dest)
        except OSError as exc:
            raise StorageError(f"cannot write {dest}: {exc.strerror}") from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)
        return self.stat(key)

    def iter_bytes(self, key: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        """Stream the object's content in chunks."""
        path = self._existing(key)

        def chunks() -> Iterator[bytes]:
            with path.open("rb") as handle:
                while chunk := handle.read(chunk_size):
                    yield chunk

        return chunks()

    def stat(self, key: str) -> ObjectInfo:
        """Size and SHA-256 of the object (the hash is computed by reading it)."""
        sha, size = sha256_file(self._existing(key))
        return ObjectInfo(key, size, sha)

    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        """The sorted keys starting with ``prefix``."""
        validate_prefix(prefix)
        keys = (p.relative_to(self._objects).as_posix() for p in self._objects.rglob("*") if p.is_file())
        return sorted(k for k in keys if k.startswith(prefix))

    def delete(self, key: str) -> None:
        """Remove the object (absent keys are a no-op)."""
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot delete object {key!r}: {exc.strerror}") from exc
