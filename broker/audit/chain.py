"""The audit log's hash chain: building entries and verifying a whole log against signed tree heads.

Each entry's ``entry_hash`` is ``SHA-256(prev_hash || body)`` in lowercase hex, where ``prev_hash`` is the
previous entry's hash as 64 ASCII hex characters (:data:`GENESIS_HASH` before the first entry) and ``body``
is :func:`body_bytes`: the canonical JSON of every field except ``entry_hash`` — including ``seq`` and
``prev_hash`` — plus a format version ``v``. Entries are numbered 1, 2, 3, ... without gaps.

Verification walks the log in ``seq`` order and stops at the first entry it cannot vouch for, reported as
``first_bad_seq`` (every entry before it links correctly). It detects a changed field (the hash no longer
matches), a deleted, inserted or reordered entry (``seq`` out of step, or ``prev_hash`` not linking), and,
through anchors proven by signed tree heads (``broker.audit.transparency``), a rewritten prefix or a
truncated end. What no hash chain can detect, and this one does not claim to: entries rewritten or removed
*after* the last signed tree head that a witness has seen. Checkpoint often.

Two ways in:
- :func:`verify_chain` over :class:`AuditRecord` values rebuilds each body from the fields, so it also
  proves that queryable columns were not edited (the deep check).
- :func:`verify_chain_bodies` over ``(seq, prev_hash, entry_hash, body)`` rows hashes the stored body bytes
  directly (the fast check). A database layer that stores the body should either render entries from it
  (:func:`record_from_body`) or compare its columns with :func:`columns_match` /
  :func:`record_matches_body`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from broker.audit.merkle import leaf_hash
from common.canonical import canonical_json

GENESIS_HASH = "0" * 64
BODY_VERSION = 1
_HEX64 = re.compile(r"[0-9a-f]{64}")
_BODY_FIELDS = frozenset(
    {
        "v",
        "seq",
        "ts_ms",
        "actor_org",
        "actor_role",
        "action",
        "object_type",
        "object_id",
        "org_id",
        "dataset_id",
        "details",
        "prev_hash",
    }
)

Row = tuple[int, str, str, bytes]


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One audit entry as stored: who (actor), did what (action) to which object, for which org/dataset."""

    seq: int
    ts_ms: int
    actor_org: str | None
    actor_role: str | None
    action: str
    object_type: str
    object_id: str
    org_id: str | None
    dataset_id: str | None
    details: dict[str, Any] = field(hash=False)
    prev_hash: str
    entry_hash: str

    def body(self) -> bytes:
        """Return the canonical bytes this entry's hash covers (see :func:`body_bytes`)."""
        return body_bytes(
            seq=self.seq,
            ts_ms=self.ts_ms,
            actor_org=self.actor_org,
            actor_role=self.actor_role,
            action=self.action,
            object_type=self.object_type,
            object_id=self.object_id,
            org_id=self.org_id,
            dataset_id=self.dataset_id,
            details=self.details,
            prev_hash=self.prev_hash,
        )


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """The verdict on a log: ``ok``, how many entries were ``checked`` good, where and why it failed.

    ``first_bad_seq`` is the first entry that could not be vouched for (``None`` when ``ok``);
    ``proven_seq`` the highest entry covered by a valid, matching signed tree head.
    """

    ok: bool
    checked: int
    first_bad_seq: int | None
    reason: str
    proven_seq: int = 0


def body_bytes(
    *,
    seq: int,
    ts_ms: int,
    actor_org: str | None,
    actor_role: str | None,
    action: str,
    object_type: str,
    object_id: str,
    org_id: str | None,
    dataset_id: str | None,
    details: Mapping[str, Any],
    prev_hash: str,
) -> bytes:
    """Return the canonical JSON of an entry's fields except ``entry_hash`` (what the hash covers).

    Raises ``TypeError``/``ValueError`` for values canonical JSON refuses (a float in ``details``, ...).
    """
    return canonical_json(
        {
            "v": BODY_VERSION,
            "seq": seq,
            "ts_ms": ts_ms,
            "actor_org": actor_org,
            "actor_role": actor_role,
            "action": action,
            "object_type": object_type,
            "object_id": object_id,
            "org_id": org_id,
            "dataset_id": dataset_id,
            "details": dict(details),
            "prev_hash": prev_hash,
        }
    )


def compute_hash(prev_hash: str, body: bytes) -> str:
    """Return ``SHA-256(prev_hash as ASCII || body)`` as lowercase hex: the entry hash."""
    return hashlib.sha256(prev_hash.encode("ascii") + body).hexdigest()


def _check_fields(
    seq: int, ts_ms: int, prev_hash: str, optional: Mapping[str, object], required: Mapping[str, object]
) -> None:
    """Refuse values no entry may hold (they would make an entry unverifiable or ambiguous)."""
    if type(seq) is not int or seq < 1:
        raise ValueError(f"seq must be a positive integer, got {seq!r}")
    if type(ts_ms) is not int or ts_ms < 0:
        raise ValueError(f"ts_ms must be a non-negative integer (epoch milliseconds), got {ts_ms!r}")
    if not isinstance(prev_hash, str) or not _HEX64.fullmatch(prev_hash):
        raise ValueError("prev_hash must be 64 lowercase hex characters")
    for name, value in optional.items():
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{name} must be a string or None, got {type(value).__name__}")
    for name, value in required.items():
        if not isinstance(value, str) or not value:
            raise TypeError(f"{name} must be a non-empty string, got {value!r}")


def next_record(
    prev_seq: int,
    prev_hash: str,
    *,
    ts_ms: int,
    actor_org: str | None,
    actor_role: str | None,
    action: str,
    object_type: str,
    object_id: str,
    org_id: str | None,
    dataset_id: str | None,
    details: Mapping[str, Any],
) -> AuditRecord:
    """Build the entry that follows ``(prev_seq, prev_hash)`` (``(0, GENESIS_HASH)`` for the first).

    The caller writes it in the same transaction as the action it records, with a unique ``seq`` so two
    writers cannot both append after the same entry.
    """
    seq = prev_seq + 1
    _check_fields(
        seq,
        ts_ms,
        prev_hash,
        {"actor_org": actor_org, "actor_role": actor_role, "org_id": org_id, "dataset_id": dataset_id},
        {"action": action, "object_type": object_type, "object_id": object_id},
    )
    fields: dict[str, Any] = {
        "seq": seq,
        "ts_ms": ts_ms,
        "actor_org": actor_org,
        "actor_role": actor_role,
        "action": action,
        "object_type": object_type,
        "object_id": object_id,
        "org_id": org_id,
        "dataset_id": dataset_id,
        "details": dict(details),
        "prev_hash": prev_hash,
    }
    return AuditRecord(**fields, entry_hash=compute_hash(prev_hash, body_bytes(**fields)))


def record_from_body(body: bytes, entry_hash: str) -> AuditRecord:
    """Rebuild the record a stored body describes (so a reader can show the hashed truth, not columns).

    Raises ``ValueError`` if ``body`` is not a version-1 entry body in canonical form.
    """
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise ValueError("not an audit entry body") from exc
    if not isinstance(data, dict) or set(data) != _BODY_FIELDS or data["v"] != BODY_VERSION:
        raise ValueError("not a version-1 audit entry body")
    if not isinstance(data["details"], dict):
        raise ValueError("audit entry details must be an object")
    fields = {k: v for k, v in data.items() if k != "v"}
    record = AuditRecord(entry_hash=entry_hash, **fields)
    if record.body() != body:
        raise ValueError("audit entry body is not in canonical form")
    return record


def record_matches_body(record: AuditRecord, body: bytes) -> bool:
    """Return whether the record's fields (e.g. a row's queryable columns) are exactly what ``body`` holds."""
    try:
        return record.body() == body
    except (TypeError, ValueError):
        return False


def columns_match(body: bytes, columns: Mapping[str, Any]) -> bool:
    """Return whether each queryable column (name → value read from the row) equals the body's field.

    For a database layer that stores the body next to columns used for filtering (``org_id``,
    ``dataset_id``, ``action``, ...): run it over every row in a deep check, since the fast chain check
    hashes the body only and cannot see an edited column. Unknown column names never match.
    """
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return False
    if not isinstance(data, dict):
        return False
    missing = object()
    for name, value in columns.items():
        stored = data.get(name, missing)
        if stored is missing or type(stored) is not type(value) or stored != value:
            return False
    return True


class _UnreadableRecordError(Exception):
    """A record whose fields cannot be canonicalised (so it cannot be an entry we wrote)."""


def _rows_of(records: Iterable[AuditRecord]) -> Iterator[Row]:
    for record in records:
        try:
            body = record.body()
        except (TypeError, ValueError) as exc:
            raise _UnreadableRecordError(f"entry {record.seq!r} holds values we never write: {exc}") from exc
        yield record.seq, record.prev_hash, record.entry_hash, body


def leaf_of(entry_hash: str) -> bytes:
    """The Merkle leaf hash of an entry: RFC 9162 ``leaf_hash`` of its 32-byte entry hash.

    The tree's leaves are the chain's hashes, so one leaf at index ``s - 1`` commits to every entry up to
    ``s``: a signed tree head of size ``s`` is tied to the whole chain by the inclusion of that one leaf.
    """
    return leaf_hash(bytes.fromhex(entry_hash))


def verify_chain(
    records: Iterable[AuditRecord],
    anchors: Mapping[int, bytes],
    *,
    after_seq: int = 0,
    after_hash: str = GENESIS_HASH,
) -> VerifyResult:
    """Verify records (in ``seq`` order, as stored) against anchors: the deep check.

    Each body is rebuilt from the record's fields, so an edited column is caught too. ``anchors`` maps a
    sequence number to the leaf hash a signed tree head proves for it (:func:`leaf_of` of the entry's hash;
    see ``broker.audit.transparency``). To verify only new entries, pass ``after_seq``/``after_hash`` of an
    entry already proven.
    """
    return verify_chain_bodies(_rows_of(records), anchors, after_seq=after_seq, after_hash=after_hash)


def _fail(checked: int, seq: int, reason: str, proven: int) -> VerifyResult:
    return VerifyResult(ok=False, checked=checked, first_bad_seq=seq, reason=reason, proven_seq=proven)


def verify_chain_bodies(
    rows: Iterable[Row],
    anchors: Mapping[int, bytes],
    *,
    after_seq: int = 0,
    after_hash: str = GENESIS_HASH,
) -> VerifyResult:
    """Verify ``(seq, prev_hash, entry_hash, body)`` rows in stored order: the fast check.

    ``body`` must be exactly the bytes that were hashed (:func:`body_bytes`). Checks, per row: ``seq`` is
    the next number, ``prev_hash`` is the previous entry's hash, ``entry_hash`` is the hash of
    ``prev_hash || body``, and where an anchor exists, that this hash is the proven leaf. At the end, no
    anchor may lie beyond the last entry (truncation).
    """
    marks = sorted(seq for seq in anchors if seq > after_seq)
    sha256 = hashlib.sha256
    expected, running, proven = after_seq + 1, after_hash, after_seq
    mark_index = 0
    mark = marks[0] if marks else -1
    try:
        for seq, prev_hash, entry_hash, body in rows:
            if seq != expected:
                return _fail(expected - after_seq - 1, expected, _out_of_step(expected, seq), proven)
            if prev_hash != running:
                return _fail(seq - after_seq - 1, seq, _unlinked(seq), proven)
            if sha256(prev_hash.encode("ascii") + body).hexdigest() != entry_hash:
                return _fail(seq - after_seq - 1, seq, _changed(seq), proven)
            running = entry_hash
            if seq == mark:
                if leaf_of(entry_hash) != anchors[seq]:
                    return _fail(seq - after_seq - 1, seq, _rewritten(proven, seq), proven)
                proven = seq
                mark_index += 1
                mark = marks[mark_index] if mark_index < len(marks) else -1
            expected += 1
    except _UnreadableRecordError as exc:
        return _fail(expected - after_seq - 1, expected, str(exc), proven)
    except (AttributeError, TypeError, UnicodeEncodeError, ValueError) as exc:
        reason = f"entry {expected} is not a well-formed row ({type(exc).__name__}): the table was altered"
        return _fail(expected - after_seq - 1, expected, reason, proven)
    checked = expected - after_seq - 1
    if mark_index < len(marks):
        reason = (
            f"the log ends at entry {expected - 1} but a signed tree head covers {marks[mark_index]} "
            f"entries: entries {expected}..{marks[mark_index]} were removed from the end (a rollback)"
        )
        return _fail(checked, expected, reason, proven)
    return VerifyResult(ok=True, checked=checked, first_bad_seq=None, reason="ok", proven_seq=proven)


def _unlinked(seq: int) -> str:
    return f"entry {seq} does not link to entry {seq - 1}: an entry was removed, inserted or replaced"


def _changed(seq: int) -> str:
    return f"entry {seq} was changed after it was written: its content no longer matches its hash"


def _rewritten(proven: int, seq: int) -> str:
    return f"entry {seq} differs from the leaf a signed tree head proves: entries {proven + 1}..{seq} were rewritten"


def _out_of_step(expected: int, seq: object) -> str:
    if isinstance(seq, int) and seq > expected:
        return f"expected entry {expected} but found {seq}: entries {expected}..{seq - 1} are missing"
    return f"expected entry {expected} but found {seq!r}: entries were inserted or reordered"
