"""Integrity, backup and restore of the embedded (SQLite) database.

* :func:`quick_check` runs ``PRAGMA quick_check``; :func:`refuse_if_corrupt` stops a start on a damaged file
  with a message that says how to restore (the broker would otherwise serve whatever pages it can read);
* :func:`backup` copies the live database with SQLite's online backup API: a consistent snapshot while the
  broker keeps serving (readers and writers are not stopped), written beside the target and renamed into
  place once it passes ``quick_check``;
* :func:`restore` puts a backup back (the broker stopped: ``sbx serve`` holds the state dir's serving lock,
  :func:`serving`, and a restore under it is refused). A restore rolls the audit log back: the signed
  checkpoints exported outside the database (``<state dir>/audit/checkpoints.jsonl``) may cover entries the
  backup does not hold. Then it is refused unless ``accept_loss``, which appends a signed "restored at size
  N" record to ``<state dir>/audit/restores.jsonl`` (:func:`restore_record`), naming the sizes lost.

PostgreSQL is backed up with its own tools (base backup + WAL archiving, ``docs/deploy.md``); these functions
refuse a PostgreSQL URL. The key-encryption key (``SBX_KEK_FILE``) is never in a backup: it stays outside the
state dir and the database and must come from where it is kept (the operator's secret store).
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker.audit import CheckpointFile
from broker.audit.checkpoints import private_key
from broker.db.audit import CHECKPOINT_FILE
from common.canonical import canonical_json
from common.errors import Conflict, InvalidInput

RESTORE_FILE = "restores.jsonl"
SERVING_LOCK = "serving.lock"
RESTORE_FORMAT = "sbx-restore/1"
_PAGES_PER_STEP = 1024


@dataclass(frozen=True, slots=True)
class BackupInfo:
    """What a backup holds: its file, size in bytes and the audit log's size (entries) inside it."""

    path: Path
    bytes: int
    audit_size: int


def sqlite_path(url: str) -> Path:
    """The file of a ``sqlite:///`` URL; InvalidInput for PostgreSQL (use its own backup tools)."""
    if not url.startswith("sqlite:///"):
        raise InvalidInput(
            "sbx backup/restore handle the embedded SQLite database; back PostgreSQL up with a base backup "
            "and WAL archiving (docs/deploy.md)"
        )
    return Path(url.removeprefix("sqlite:///"))


def quick_check(path: Path) -> list[str]:
    """``PRAGMA quick_check`` of a SQLite file: empty when sound, else SQLite's findings (or why it failed)."""
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            rows = [str(r[0]) for r in conn.execute("PRAGMA quick_check")]
    except sqlite3.DatabaseError as exc:
        return [str(exc)]
    return [] if rows == ["ok"] else rows


def refuse_if_corrupt(url: str) -> None:
    """Stop the start when the SQLite file fails ``quick_check`` (PostgreSQL: nothing to do here)."""
    if not url.startswith("sqlite:///"):
        return
    path = sqlite_path(url)
    if not path.exists():
        return
    problems = quick_check(path)
    if problems:
        raise SystemExit(
            f"refusing to start: the database {path} is damaged (PRAGMA quick_check: {'; '.join(problems[:5])}).\n"
            "Restore the latest good backup with the broker stopped:  sbx restore BACKUP_FILE\n"
            "(take backups with `sbx backup FILE` while serving; the key-encryption key SBX_KEK_FILE is not in "
            "a backup: keep it where it is, or put it back from your secret store). See docs/deploy.md."
        )


def audit_size(path: Path) -> int:
    """The number of audit entries a SQLite file holds (its audit head's sequence number)."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        row = conn.execute("SELECT seq FROM audit_head WHERE id = 1").fetchone()
    return 0 if row is None else int(row[0])


def backup(url: str, dest: Path) -> BackupInfo:
    """Copy the live database to ``dest`` (online: the broker may be serving); refuse to overwrite a file."""
    source = sqlite_path(url)
    if dest.exists():
        raise Conflict(f"{dest} exists; refusing to overwrite a backup", code="backup_exists")
    partial = dest.with_name(dest.name + ".partial")
    partial.unlink(missing_ok=True)
    with sqlite3.connect(source, timeout=60) as src, sqlite3.connect(partial) as out:
        src.backup(out, pages=_PAGES_PER_STEP, sleep=0.005)
    problems = quick_check(partial)
    if problems:
        partial.unlink(missing_ok=True)
        raise Conflict(f"the backup failed its integrity check: {problems[:3]}", code="backup_corrupt")
    _fsync(partial)
    os.replace(partial, dest)
    _fsync_dir(dest.parent)
    return BackupInfo(dest, dest.stat().st_size, audit_size(dest))


@dataclass(frozen=True, slots=True)
class RestorePlan:
    """What a restore would do to the audit record: the backup's size against the last checkpoint's."""

    backup: BackupInfo
    checkpointed: int  # entries the last exported checkpoint covers (0: none)

    @property
    def loses_entries(self) -> bool:
        """The backup is older than the last checkpoint: signed entries would be rolled back."""
        return self.backup.audit_size < self.checkpointed


def plan_restore(src: Path, state_dir: Path) -> RestorePlan:
    """Check a backup (integrity, audit size) against the state dir's checkpoint record."""
    if not src.is_file():
        raise InvalidInput(f"no backup file {src}")
    problems = quick_check(src)
    if problems:
        raise Conflict(f"{src} is damaged ({problems[:3]}); pick another backup", code="backup_corrupt")
    info = BackupInfo(src, src.stat().st_size, audit_size(src))
    last = CheckpointFile(state_dir / "audit" / CHECKPOINT_FILE).last()
    return RestorePlan(info, 0 if last is None else last.size)


@contextmanager
def serving(state_dir: Path) -> Iterator[None]:
    """Hold the state dir's serving lock while ``sbx serve`` runs (an advisory ``flock``, released by the
    kernel when the process dies, even by SIGKILL), so that ``sbx restore`` can refuse to run under it."""
    state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(state_dir / SERVING_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # shared: the restore's exclusive attempt is what fails
        yield
    finally:
        os.close(fd)


def _refuse_while_serving(state_dir: Path) -> None:
    """Conflict ``broker_running`` when a broker holds the state dir's serving lock."""
    path = state_dir / SERVING_LOCK
    if not path.exists():
        return
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise Conflict(
            f"a broker is serving from {state_dir}; stop it before restoring", code="broker_running"
        ) from None
    finally:
        os.close(fd)


def restore(url: str, src: Path, *, state_dir: Path, accept_loss: bool) -> RestorePlan:
    """Put the backup ``src`` in place of the database (the broker must be stopped).

    Refused (``audit_rollback``) when the backup is older than the last signed checkpoint, unless
    ``accept_loss``; the caller then records the rollback with :func:`restore_record`.
    """
    target = sqlite_path(url)
    _refuse_while_serving(state_dir)
    plan = plan_restore(src, state_dir)
    if plan.loses_entries and not accept_loss:
        raise Conflict(
            f"the backup holds {plan.backup.audit_size} audit entries but a signed checkpoint already covers "
            f"{plan.checkpointed}: restoring it rolls the audit log back and its verification would fail. "
            "Use a newer backup, or pass --accept-loss to restore anyway and record the rollback (signed).",
            code="audit_rollback",
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(src) as source, sqlite3.connect(target, timeout=60) as live:
        source.backup(live)
    return plan


def restore_record(state_dir: Path, plan: RestorePlan, *, key_pem: bytes, kid: str) -> dict[str, Any]:
    """Append the signed "restored at size N" record (Ed25519 by the broker's audit key) and return it."""
    body = {
        "format": RESTORE_FORMAT,
        "restored_at_size": plan.backup.audit_size,
        "last_checkpoint_size": plan.checkpointed,
        "backup_bytes": plan.backup.bytes,
        "backup_name": plan.backup.path.name,
        "ts_ms": int(time.time() * 1000),
        "kid": kid,
    }
    signature = private_key(key_pem).sign(canonical_json(body))
    record = {**body, "signature": base64.b64encode(signature).decode()}
    path = state_dir / "audit" / RESTORE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as out:
        out.write(json.dumps(record, sort_keys=True) + "\n")
        out.flush()
        os.fsync(out.fileno())
    return record


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    _fsync(path)
