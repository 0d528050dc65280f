"""Is the broker well? Readiness (database, free space, backend) and the refusal of writes on a full disk.

``/readyz`` runs three checks and names the ones that failed: the database answers a real statement (a
read of ``alembic_version``, not a constant), the state dir's file system has free space above the
threshold (``SBX_MIN_FREE_BYTES`` or ``SBX_MIN_FREE_PERCENT`` of its size, whichever is less: 1 GiB or 5%
by default), and the compute backend was up at the last watch round. A failure is a 503 with the error body
of the first failed check (``database_unavailable``, ``storage_full``, ``backend_unavailable``) and
``Retry-After``.

:class:`RefuseWritesWhenFull` answers a mutating API call ``503 storage_full`` *before* the route runs while
free space is below the threshold, so no write starts that the disk may not let finish; reads go on.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi.responses import JSONResponse
from sqlalchemy import text

from broker.db.database import Database
from broker.errors import DatabaseUnavailable, ServiceUnavailable, StorageFull, error_body
from common.errors import DomainError

_WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_CHECK_EVERY_S = 1.0
_DB_PROBE = text("SELECT version_num FROM alembic_version")


class BackendDown(ServiceUnavailable):
    """The compute backend did not answer at the last watch round."""

    code = "backend_unavailable"
    retry_after_s = 10


@dataclass(frozen=True, slots=True)
class FreeSpace:
    """Free and total bytes of a file system, and the free bytes it needs."""

    free: int
    total: int
    needed: int

    @property
    def ok(self) -> bool:
        """Whether free space is at or above what is needed."""
        return self.free >= self.needed


def free_space(path: Path, *, min_bytes: int, min_percent: float) -> FreeSpace:
    """Free space of ``path``'s file system against the threshold ``min(min_bytes, min_percent% of size)``
    (the nearest existing parent is measured when ``path`` does not exist yet)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    stat = os.statvfs(probe)
    total = stat.f_blocks * stat.f_frsize
    free = stat.f_bavail * stat.f_frsize
    return FreeSpace(free, total, min(min_bytes, int(total * min_percent / 100)))


class StorageWatch:
    """The state dir's free space, measured at most once a second (a write path must stay cheap)."""

    def __init__(self, path: Path, *, min_bytes: int, min_percent: float) -> None:
        self._path, self._min_bytes, self._min_percent = path, min_bytes, min_percent
        self._lock = threading.Lock()
        self._last: tuple[float, FreeSpace] | None = None

    def current(self) -> FreeSpace:
        """The latest measurement (fresh when the cached one is older than a second)."""
        now = time.monotonic()
        with self._lock:
            if self._last is None or now - self._last[0] >= _CHECK_EVERY_S:
                measured = free_space(self._path, min_bytes=self._min_bytes, min_percent=self._min_percent)
                self._last = (now, measured)
            return self._last[1]

    def check(self) -> None:
        """Raise :class:`StorageFull` when free space is below the threshold."""
        space = self.current()
        if not space.ok:
            raise StorageFull(
                f"the state dir has {space.free} bytes free, below the {space.needed} it needs; writes are "
                "refused until space is freed (reads go on)"
            )


def check_database(db: Database) -> None:
    """Run a real statement (DatabaseUnavailable when it cannot be answered)."""
    try:
        db.read(lambda conn: conn.execute(_DB_PROBE).scalar_one())
    except DomainError:
        raise
    except Exception as exc:  # a missing table or any other failure is not ready either
        raise DatabaseUnavailable(
            f"the database did not answer its readiness probe ({type(exc).__name__})"
        ) from exc


def readiness(checks: dict[str, Callable[[], None]]) -> tuple[dict[str, str], DomainError | None]:
    """Run every check; the per-check outcome (``ok`` or its error code) and the first failure."""
    outcome: dict[str, str] = {}
    first: DomainError | None = None
    for name, check in checks.items():
        try:
            check()
        except DomainError as exc:
            outcome[name] = exc.code
            first = first or exc
        else:
            outcome[name] = "ok"
    return outcome, first


def unavailable_response(exc: DomainError, status: int, extra: dict[str, Any] | None = None) -> JSONResponse:
    """A 503-style error answer with ``Retry-After``."""
    retry = getattr(exc, "retry_after_s", ServiceUnavailable.retry_after_s)
    body: dict[str, Any] = {**error_body(exc.code, exc.detail), **(extra or {})}
    return JSONResponse(body, status_code=status, headers={"Retry-After": str(retry)})


class RefuseWritesWhenFull:
    """ASGI middleware: a mutating ``/api/`` call while the state dir is below its free-space threshold is
    answered ``503 storage_full`` before the route (or the body) is read."""

    def __init__(self, app: Any, watch: StorageWatch) -> None:
        self.app = app
        self.watch = watch

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Refuse, or pass the request on."""
        if (
            scope["type"] == "http"
            and scope.get("method") in _WRITE_METHODS
            and scope.get("path", "").startswith("/api/")
        ):
            try:
                self.watch.check()
            except StorageFull as exc:
                await unavailable_response(exc, 503)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def backend_check(up: bool) -> None:
    """Raise :class:`BackendDown` when the backend watch last saw the backend down."""
    if not up:
        raise BackendDown("the compute backend is not answering; jobs wait until it is back")
