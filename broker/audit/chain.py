"""The audit log's hash chain: building entries and verifying a whole log against signed checkpoints.

Each entry's ``entry_hash`` is ``SHA-256(prev_hash || body)`` in lowercase hex, where ``prev_hash`` is the
previous entry's hash as 64 ASCII hex characters (:data:`GENESIS_HASH` before the first entry) and ``body``
is :func:`body_bytes`: the canonical JSON of every field except ``entry_hash`` — including ``seq`` and
``prev_hash`` — plus a format version ``v``. Entries are numbered 1, 2, 3, ... without gaps.

Verification walks the log in ``seq`` order and stops at the first entry it cannot vouch for, reported as
``first_bad_seq`` (every entry before it links correctly). It detects a changed field (the hash no longer
matches), a deleted, inserted or reordered entry (``seq`` out of step, or ``prev_hash`` not linking), and,
through signed checkpoints, a rewritten prefix or a truncated end. What no hash chain can detect, and this
one does not claim to: entries rewritten or removed *after* the last checkpoint. Checkpoint often.

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
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from broker.audit.checkpoints import Checkpoint, verify_checkpoint
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
    ``proven_seq`` the highest entry covered by a valid, matching signed checkpoint.
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


def verify_chain(
    records: Iterable[AuditRecord],
    checkpoints: Sequence[Checkpoint],
    public_jwk: Mapping[str, Any],
    *,
    after_seq: int = 0,
    after_hash: str = GENESIS_HASH,
) -> VerifyResult:
    """Verify records (in ``seq`` order, as stored) against signed checkpoints: the deep check.

    Each body is rebuilt from the record's fields, so an edited column is caught too. ``public_jwk`` is
    the broker's audit JWK or a JWK Set of its current and former audit keys. To verify only new entries,
    pass ``after_seq``/``after_hash`` of an entry already proven (e.g. the last verified checkpoint).
    """
    return verify_chain_bodies(
        _rows_of(records), checkpoints, public_jwk, after_seq=after_seq, after_hash=after_hash
    )


def _fail(checked: int, seq: int, reason: str, proven: int) -> VerifyResult:
    return VerifyResult(ok=False, checked=checked, first_bad_seq=seq, reason=reason, proven_seq=proven)


def _checked_checkpoints(
    checkpoints: Sequence[Checkpoint], public_jwk: Mapping[str, Any], after_seq: int
) -> tuple[list[Checkpoint], VerifyResult | None]:
    """Verify every checkpoint signature; return those after ``after_seq`` in order, or a failure."""
    by_seq: dict[int, Checkpoint] = {}
    for cp in sorted(checkpoints, key=lambda c: c.seq):
        if not verify_checkpoint(cp, public_jwk):
            reason = (
                f"the checkpoint for entry {cp.seq} (key {cp.kid!r}) does not carry a valid signature by a "
                "known audit key: the checkpoint file was forged or edited"
            )
            return [], _fail(0, cp.seq, reason, 0)
        seen = by_seq.get(cp.seq)
        if seen is not None and seen.entry_hash != cp.entry_hash:
            reason = (
                f"two validly signed checkpoints disagree about entry {cp.seq}: the audit key was misused"
            )
            return [], _fail(0, cp.seq, reason, 0)
        by_seq[cp.seq] = cp
    return [cp for seq, cp in sorted(by_seq.items()) if seq > after_seq], None


def verify_chain_bodies(
    rows: Iterable[Row],
    checkpoints: Sequence[Checkpoint],
    public_jwk: Mapping[str, Any],
    *,
    after_seq: int = 0,
    after_hash: str = GENESIS_HASH,
) -> VerifyResult:
    """Verify ``(seq, prev_hash, entry_hash, body)`` rows in stored order: the fast check.

    ``body`` must be exactly the bytes that were hashed (:func:`body_bytes`). Checks, per row: ``seq`` is
    the next number, ``prev_hash`` is the previous entry's hash, ``entry_hash`` is the hash of
    ``prev_hash || body``, and where a signed checkpoint exists, that it names this hash. At the end, no
    checkpoint may lie beyond the last entry (truncation).
    """
    cps, failure = _checked_checkpoints(checkpoints, public_jwk, after_seq)
    if failure is not None:
        return failure
    sha256 = hashlib.sha256
    expected, running, proven = after_seq + 1, after_hash, after_seq
    cp_index = 0
    cp_seq = cps[0].seq if cps else -1
    try:
        for seq, prev_hash, entry_hash, body in rows:
            if seq != expected:
                return _fail(expected - after_seq - 1, expected, _out_of_step(expected, seq), proven)
            if prev_hash != running:
                return _fail(seq - after_seq - 1, seq, _unlinked(seq), proven)
            if sha256(prev_hash.encode("ascii") + body).hexdigest() != entry_hash:
                return _fail(seq - after_seq - 1, seq, _changed(seq), proven)
            running = entry_hash
            if seq == cp_seq:
                if cps[cp_index].entry_hash != entry_hash:
                    return _fail(seq - after_seq - 1, seq, _rewritten(proven, seq), proven)
                proven = seq
                cp_index += 1
                cp_seq = cps[cp_index].seq if cp_index < len(cps) else -1
            expected += 1
    except _UnreadableRecordError as exc:
        return _fail(expected - after_seq - 1, expected, str(exc), proven)
    except (AttributeError, TypeError, UnicodeEncodeError, ValueError) as exc:
        reason = f"entry {expected} is not a well-formed row ({type(exc).__name__}): the table was altered"
        return _fail(expected - after_seq - 1, expected, reason, proven)
    checked = expected - after_seq - 1
    if cp_index < len(cps):
        reason = (
            f"the log ends at entry {expected - 1} but a signed checkpoint vouches for entry "
            f"{cps[cp_index].seq}: entries {expected}..{cps[cp_index].seq} were removed from the end"
        )
        return _fail(checked, expected, reason, proven)
    return VerifyResult(ok=True, checked=checked, first_bad_seq=None, reason="ok", proven_seq=proven)


def _unlinked(seq: int) -> str:
    return f"entry {seq} does not link to entry {seq - 1}: an entry was removed, inserted or replaced"


def _changed(seq: int) -> str:
    return f"entry {seq} was changed after it was written: its content no longer matches its hash"


def _rewritten(proven: int, seq: int) -> str:
    return f"entry {seq} differs from its signed checkpoint: entries {proven + 1}..{seq} were rewritten"


def _out_of_step(expected: int, seq: object) -> str:
    if isinstance(seq, int) and seq > expected:
        return f"expected entry {expected} but found {seq}: entries {expected}..{seq - 1} are missing"
    return f"expected entry {expected} but found {seq!r}: entries were inserted or reordered"
