"""The unit of work: every state change is one function run inside one transaction.

``Database.write(fn)`` runs ``fn(conn)`` atomically and returns its result (or raises its exception, with
nothing written). On SQLite, concurrent writes are *group-committed*: one writer thread takes every write
that is waiting, runs each inside its own SAVEPOINT (so one failure rolls back only itself) and commits
them together — one ``fsync`` for many transactions at full durability. A caller's ``write`` returns only
after that commit. On PostgreSQL each write is its own transaction; row locks are taken in a fixed order
by the repositories, and serialization failures are retried.

Infrastructure failures leave here as domain errors, translated once (:func:`translate`): a database that
cannot be reached (refused connection, a server shutting down or restarting, a lost connection) is
``DatabaseUnavailable``; a full disk (SQLite ``SQLITE_FULL``, ``ENOSPC``, PostgreSQL ``53100``) is
``StorageFull``. Both are 503 with ``Retry-After`` in the error table (``broker/errors.py``). A transaction
that failed so was rolled back: nothing of it was written.
"""

from __future__ import annotations

import errno
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from broker.db.engine import READ_ONLY, is_sqlite
from broker.errors import DatabaseUnavailable, ServiceUnavailable, StorageFull

T = TypeVar("T")
log = logging.getLogger("sbx.db")
_MAX_BATCH = 256
_PG_RETRYABLE = {"40001", "40P01"}  # serialization_failure, deadlock_detected
# Connection exceptions (class 08), operator intervention (57P01 admin shutdown, 57P02 crash shutdown,
# 57P03 cannot connect now), too many connections (53300); 53100 is disk_full.
_PG_UNAVAILABLE_PREFIXES = ("08", "57P", "53300")
_PG_DISK_FULL = "53100"
_SQLITE_FULL_TEXT = "database or disk is full"
_CHAIN_LINKS = 4
_SQLITE_UNAVAILABLE = {
    sqlite3.SQLITE_CANTOPEN,
    sqlite3.SQLITE_IOERR,
    sqlite3.SQLITE_NOTADB,
    sqlite3.SQLITE_CORRUPT,
}
_AFTER_COMMIT = "sbx_after_commit"  # key in Connection.info: callbacks of the write running now


def after_commit(conn: Connection, callback: Callable[[], None]) -> None:
    """Run ``callback`` once the write transaction running on ``conn`` is durably committed.

    For side effects that must not happen for a transaction that is rolled back (process counters): a
    failing write, a group-committed write whose SAVEPOINT was rolled back, a PostgreSQL attempt that is
    retried, or a batch whose commit failed never runs its callbacks. Outside :meth:`Database.write`
    (a bare ``engine.begin()`` in a tool or test) the callback is dropped: nobody commits through us.
    """
    pending = conn.info.get(_AFTER_COMMIT)
    if pending is not None:
        pending.append(callback)


def _run_callbacks(callbacks: list[Callable[[], None]]) -> None:
    """Run after-commit callbacks; one failing never undoes the commit or skips the others."""
    for callback in callbacks:
        try:
            callback()
        except Exception:  # a counter must not turn a committed write into an error
            log.exception("an after-commit callback failed")


def _collect(conn: Connection, fn: Callable[[Connection], T]) -> tuple[T, list[Callable[[], None]]]:
    """Run ``fn`` with a fresh after-commit list on ``conn``; return its result and the callbacks."""
    callbacks: list[Callable[[], None]] = []
    conn.info[_AFTER_COMMIT] = callbacks
    try:
        return fn(conn), callbacks
    finally:
        conn.info.pop(_AFTER_COMMIT, None)  # info outlives the checkout (it is the pooled connection's)


def translate(exc: BaseException) -> ServiceUnavailable | None:
    """The domain error an infrastructure failure means (``None``: it is not one; let it propagate).

    The exception's chain is followed a few links: a lost connection often surfaces as SQLAlchemy's
    ``PendingRollbackError`` raised while the driver's own error (its cause or context) was handled."""
    current: BaseException | None = exc
    for _ in range(_CHAIN_LINKS):
        if current is None:
            return None
        domain = _translate_one(current)
        if domain is not None:
            return domain
        current = current.__cause__ or current.__context__
    return None


def _translate_one(exc: BaseException) -> ServiceUnavailable | None:
    """:func:`translate` for one exception of the chain."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return StorageFull("the broker's disk is full; nothing was written; retry once space is freed")
    if not isinstance(exc, DBAPIError):
        return None
    orig = exc.orig
    if isinstance(orig, sqlite3.Error):
        code = getattr(orig, "sqlite_errorcode", None)
        if code == sqlite3.SQLITE_FULL or _SQLITE_FULL_TEXT in str(orig):
            return StorageFull("the database's disk is full; nothing was written; retry once space is freed")
        if code is not None and (code & 0xFF) in _SQLITE_UNAVAILABLE:
            return DatabaseUnavailable(f"the database file cannot be used ({orig}); retry shortly")
        return None
    state = str(getattr(orig, "sqlstate", None) or "")
    if state == _PG_DISK_FULL:
        return StorageFull(
            "the database server's disk is full; nothing was written; retry once space is freed"
        )
    unreachable = state.startswith(_PG_UNAVAILABLE_PREFIXES) or exc.connection_invalidated
    if unreachable or (not state and isinstance(exc, OperationalError | InterfaceError)):
        return DatabaseUnavailable(
            "the broker's database cannot be reached; retry shortly (with the same Idempotency-Key)"
        )
    return None


class Database:
    """Owns the engine; the only way the service reads or writes state."""

    def __init__(self, engine: Engine, *, group_commit: bool = True) -> None:
        self.engine = engine
        self.sqlite = is_sqlite(str(engine.url))
        self._queue: queue.SimpleQueue[tuple[Callable[[Connection], object], Future[object]] | None] = (
            queue.SimpleQueue()
        )
        self._writer: threading.Thread | None = None
        self._busy = threading.Lock()  # held by whoever is running a SQLite write transaction
        self._closed = False
        if self.sqlite and group_commit:
            self._writer = threading.Thread(target=self._write_loop, name="sbx-sqlite-writer", daemon=True)
            self._writer.start()

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.engine.dialect.name

    def write(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` in one write transaction and return its result once it is durably committed
        (infrastructure failures raised as their domain errors, see :func:`translate`)."""
        try:
            return self._write(fn)
        except Exception as exc:  # only infrastructure failures are translated; the rest propagate
            domain = translate(exc)
            if domain is None:
                raise
            raise domain from exc

    def read(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` on a read-only snapshot (a plain connection; SQLite WAL readers never block);
        infrastructure failures raised as their domain errors."""
        try:
            return self._read(fn)
        except Exception as exc:  # only infrastructure failures are translated; the rest propagate
            domain = translate(exc)
            if domain is None:
                raise
            raise domain from exc

    def _write(self, fn: Callable[[Connection], T]) -> T:
        if self._closed:
            raise RuntimeError("the database is closed")
        if self._writer is None:
            return self._write_direct(fn)
        if self._queue.empty() and self._busy.acquire(blocking=False):
            # Nobody else is writing: commit in this thread (no hand-off). Concurrent writers queue up
            # behind the lock and are group-committed by the writer thread.
            try:
                return self._write_direct(fn)
            finally:
                self._busy.release()
        future: Future[object] = Future()
        self._queue.put((fn, future))
        return future.result()  # type: ignore[return-value]

    def _read(self, fn: Callable[[Connection], T]) -> T:
        with self.engine.connect() as conn:
            if self.sqlite:
                conn = conn.execution_options(**{READ_ONLY: True})
            else:
                # One consistent snapshot for the whole read (READ COMMITTED would let a multi-statement
                # read, such as the invariant check, see some commits and not others).
                conn = conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
            with conn.begin():
                return fn(conn)

    def close(self) -> None:
        """Finish every queued write, stop the writer thread and dispose of the engine."""
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            self._queue.put(None)
            self._writer.join()
        with self._busy:  # a direct write still in flight finishes first
            self.engine.dispose()

    def _write_direct(self, fn: Callable[[Connection], T]) -> T:
        attempts = 0
        while True:
            attempts += 1
            try:
                with self.engine.begin() as conn:
                    result, callbacks = _collect(conn, fn)
            except DBAPIError as exc:
                code = getattr(exc.orig, "sqlstate", None)
                if code in _PG_RETRYABLE and attempts < 20:
                    continue
                raise
            _run_callbacks(callbacks)
            return result

    def _write_loop(self) -> None:
        stopping = False
        while not stopping:
            item = self._queue.get()
            if item is None:
                break
            batch = [item]
            while len(batch) < _MAX_BATCH:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stopping = True
                    break
                batch.append(nxt)
            with self._busy:
                self._run_batch(batch)

    def _run_batch(self, batch: list[tuple[Callable[[Connection], object], Future[object]]]) -> None:
        outcomes: list[tuple[bool, object]] = []
        callbacks: list[Callable[[], None]] = []
        try:
            with self.engine.begin() as conn:
                for fn, _future in batch:
                    savepoint = conn.begin_nested()
                    try:
                        result, mine = _collect(conn, fn)
                    except BaseException as exc:
                        savepoint.rollback()
                        outcomes.append((False, exc))
                    else:
                        savepoint.commit()
                        outcomes.append((True, result))
                        callbacks.extend(mine)
        except BaseException as exc:
            for _fn, future in batch:
                future.set_exception(exc)
            return
        _run_callbacks(callbacks)
        for (_fn, future), (ok, value) in zip(batch, outcomes, strict=True):
            if ok:
                future.set_result(value)
            else:
                assert isinstance(value, BaseException)
                future.set_exception(value)
