"""KubeRay code archives: a job's working dir, zipped and served by the broker at a job-bound capability URL.

A RayJob's pods cannot read the broker's disk, and must never hold a broker token or object-store
credentials. So when KubeRay creates a job with code, :meth:`CodeArchives.publish` zips the directory the
broker unpacked (one top-level directory, as Ray requires of remote ``working_dir`` URIs), stores the zip in
the object store (shared by every replica; pods never reach it), and registers a fresh 256-bit token for
that job only. The RayJob's ``working_dir`` is ``{SBX_PUBLIC_URL}/api/v1/archives/{token}.zip``; Ray's
nodes fetch it with a plain GET. The token opens that one archive, at most ``SBX_ARCHIVE_MAX_FETCHES`` times,
until the job's deadline plus a grace, and only while the job is admitted or running
(:func:`broker.db.archives.claim_fetch`).
"""

from __future__ import annotations

import os
import re
import secrets
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import Connection

from broker.compute.base import BackendError, JobLaunch
from broker.db import archives as archives_db
from broker.db import tables as t
from broker.db.database import Database
from broker.settings import Settings
from common.clock import Clock
from common.errors import NotFound
from datasets.storage import ObjectStore, StorageError

TOKEN_BYTES = 32  # 256 bits: the token is the capability
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{43}$")  # secrets.token_urlsafe(32)
ROUTE = "/api/v1/archives"
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed entry times: the same directory always zips to the same bytes


class ArchiveNotFound(NotFound):
    """Unknown, expired, used up, revoked or its job ended: one answer for all, so nothing leaks."""


def zip_working_dir(source: Path, target: Path, top: str) -> int:
    """Zip the regular files under ``source`` into ``target`` below the single directory ``top``.

    Symlinks are skipped (the broker unpacked the directory itself; a link could point outside it). Entry
    order and times are fixed, so equal directories give equal zips. Returns the number of files.
    """
    count = 0
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(zipfile.ZipInfo(f"{top}/", _ZIP_TIME), b"")
        for path in sorted(source.rglob("*")):
            if path.is_symlink() or not path.is_file():
                continue
            info = zipfile.ZipInfo(f"{top}/{path.relative_to(source).as_posix()}", _ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            with path.open("rb") as handle:
                archive.writestr(info, handle.read())
            count += 1
    return count


def object_key(job_id: str, token_hash: str) -> str:
    """Where the archive a token opens is stored (one object per capability: objects are immutable)."""
    return f"archives/{job_id}/{token_hash}.zip"


class CodeArchives:
    """Publishes KubeRay jobs' code archives (the backend's ``archive_uploader``) and serves them."""

    def __init__(self, db: Database, storage: ObjectStore, clock: Clock, settings: Settings) -> None:
        """Work over the broker's database and object store; URLs start with ``settings.public_url``."""
        self._db = db
        self._storage = storage
        self._clock = clock
        self._settings = settings

    def publish(self, launch: JobLaunch) -> str:
        """Zip ``launch.working_dir``, store it, and return the capability URL for its RayJob.

        Raises :class:`BackendError` (the job then fails to start with this reason, its hold released)
        when the broker has no public URL or the directory is not on this replica.
        """
        base = self._settings.public_url
        if not base:
            raise BackendError(
                "SBX_PUBLIC_URL is not set: KubeRay jobs with a code archive fetch it from the broker's "
                "in-cluster URL (the chart sets it)"
            )
        source = launch.working_dir
        if source is None or not source.is_dir():
            raise BackendError(f"job {launch.job_id}: its code directory is not on this broker replica")
        token = secrets.token_urlsafe(TOKEN_BYTES)
        token_hash = archives_db.hash_token(token)
        self._store(source, object_key(launch.job_id, token_hash), launch.name)
        self._db.write(lambda conn: self._register(conn, launch, token_hash))
        return f"{base.rstrip('/')}{ROUTE}/{token}.zip"

    def _store(self, source: Path, key: str, top: str) -> None:
        scratch = self._settings.state_dir / "archives"
        scratch.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=scratch, prefix="zip-", suffix=".zip")
        os.close(fd)
        try:
            zip_working_dir(source, Path(name), top)
            self._storage.put_file(key, Path(name))
        except OSError as exc:
            raise BackendError(f"cannot package the job's code: {exc.strerror or exc}") from exc
        except StorageError as exc:
            raise BackendError(f"cannot store the job's code archive: {exc.detail}") from exc
        finally:
            Path(name).unlink(missing_ok=True)

    def _register(self, conn: Connection, launch: JobLaunch, token_hash: str) -> None:
        """Bind the token to the job until its deadline: admitted time + max runtime + grace."""
        admitted = conn.execute(
            t.jobs.select().with_only_columns(t.jobs.c.admitted_ms).where(t.jobs.c.id == launch.job_id)
        ).scalar_one_or_none()
        start = admitted if admitted is not None else self._clock.now_ms()
        archives_db.register(
            conn,
            job_id=launch.job_id,
            token_hash=token_hash,
            expires_ms=start + (launch.max_runtime_s + self._settings.archive_grace_s) * 1000,
            max_fetches=self._settings.archive_max_fetches,
        )

    def fetch(self, token: str) -> Iterator[bytes]:
        """Count one fetch of the archive ``token`` opens and return its bytes, in chunks.

        Raises :class:`ArchiveNotFound` for a malformed, unknown, revoked, expired or used-up token, or
        when its job is no longer admitted or running (the fetch is then not counted).
        """
        if not _TOKEN.match(token):
            raise ArchiveNotFound("no such archive")
        token_hash = archives_db.hash_token(token)
        # The route is unauthenticated: a guessed token costs a read, never a write transaction.
        if self._db.read(lambda conn: archives_db.fetches(conn, token_hash)) is None:
            raise ArchiveNotFound("no such archive")
        now = self._clock.now_ms()
        job_id = self._db.write(lambda conn: archives_db.claim_fetch(conn, token_hash=token_hash, now_ms=now))
        if job_id is None:
            raise ArchiveNotFound("no such archive")
        return self._storage.iter_bytes(object_key(job_id, token_hash))

    def revoke(self, job_id: str) -> int:
        """Revoke the capabilities of ``job_id`` (its archive can no longer be fetched)."""
        return self._db.write(lambda conn: archives_db.revoke_job(conn, job_id))
