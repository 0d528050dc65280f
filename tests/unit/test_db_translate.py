"""One translation of database and OS failures into domain errors (issue 14, item 4), and their 503s."""

from __future__ import annotations

import errno
import sqlite3
from typing import Any

import pytest
from sqlalchemy.exc import IntegrityError, OperationalError, PendingRollbackError

from broker.db.database import translate
from broker.errors import DatabaseUnavailable, ServiceUnavailable, StorageFull, status_for


class _PgError(Exception):
    """A driver error carrying a SQLSTATE, as psycopg's do."""

    def __init__(self, sqlstate: str | None) -> None:
        super().__init__(f"pg error {sqlstate}")
        self.sqlstate = sqlstate


def _sqlite_error(code: int, message: str) -> sqlite3.OperationalError:
    err = sqlite3.OperationalError(message)
    err.sqlite_errorcode = code
    return err


def _wrapped(orig: Exception, cls: Any = OperationalError) -> Any:
    return cls("INSERT ...", {}, orig)


@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), StorageFull),
        (_wrapped(_sqlite_error(sqlite3.SQLITE_FULL, "database or disk is full")), StorageFull),
        (
            _wrapped(_sqlite_error(sqlite3.SQLITE_CANTOPEN, "unable to open database file")),
            DatabaseUnavailable,
        ),
        (
            _wrapped(_sqlite_error(sqlite3.SQLITE_CORRUPT, "database disk image is malformed")),
            DatabaseUnavailable,
        ),
        (_wrapped(_PgError("57P01")), DatabaseUnavailable),  # admin shutdown (a restart)
        (_wrapped(_PgError("57P03")), DatabaseUnavailable),  # the database system is starting up
        (_wrapped(_PgError("08006")), DatabaseUnavailable),  # connection failure
        (_wrapped(_PgError(None)), DatabaseUnavailable),  # connection refused before any SQLSTATE
        (_wrapped(_PgError("53100")), StorageFull),  # disk_full
    ],
)
def test_infrastructure_failures_become_503s(
    failure: BaseException, expected: type[ServiceUnavailable]
) -> None:
    domain = translate(failure)
    assert isinstance(domain, expected)
    assert status_for(domain) == 503 and domain.retry_after_s > 0


@pytest.mark.parametrize(
    "failure",
    [
        OSError(errno.EACCES, "Permission denied"),
        ValueError("a bug"),
        _wrapped(_PgError("23505"), IntegrityError),  # unique violation: the caller's conflict, not an outage
        _wrapped(_PgError("40001")),  # serialization failure: retried by the adapter, never a 503
        _wrapped(_sqlite_error(sqlite3.SQLITE_CONSTRAINT, "UNIQUE constraint failed"), IntegrityError),
    ],
)
def test_other_failures_are_left_alone(failure: BaseException) -> None:
    """Negative control: a bug or a constraint is not dressed up as an outage."""
    assert translate(failure) is None


def test_a_lost_connection_behind_sqlalchemys_pending_rollback_is_a_503() -> None:
    """A driver error surfacing as ``PendingRollbackError`` raised while it was handled is still an outage."""
    try:
        try:
            raise _wrapped(_PgError("57P01"))
        except OperationalError:
            raise PendingRollbackError("Can't reconnect until invalid transaction is rolled back") from None
    except PendingRollbackError as exc:
        assert isinstance(translate(exc), DatabaseUnavailable)
    assert translate(PendingRollbackError("a bug of ours")) is None  # control: no outage in its chain
