"""The audit hash chain: a valid log verifies; any tampering is caught at the right entry."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.audit import (
    GENESIS_HASH,
    AuditRecord,
    VerifyResult,
    columns_match,
    compute_hash,
    leaf_of,
    next_record,
    record_from_body,
    record_matches_body,
    verify_chain,
    verify_chain_bodies,
)

Anchors = dict[int, bytes]

TEXT = st.text(alphabet="abcdefghij-é", min_size=1, max_size=6)
OPTIONAL_TEXT = st.none() | TEXT
DETAILS = st.dictionaries(
    st.text(alphabet="abcdef", max_size=4), st.integers(-(10**12), 10**12) | TEXT | st.none(), max_size=3
)
ENTRY = st.fixed_dictionaries(
    {
        "ts_ms": st.integers(0, 2**41),
        "actor_org": OPTIONAL_TEXT,
        "actor_role": st.sampled_from([None, "issuer", "sme", "custodian", "operator"]),
        "action": TEXT,
        "object_type": TEXT,
        "object_id": TEXT,
        "org_id": OPTIONAL_TEXT,
        "dataset_id": OPTIONAL_TEXT,
        "details": DETAILS,
    }
)


def build(entries: list[dict[str, Any]], after: tuple[int, str] = (0, GENESIS_HASH)) -> list[AuditRecord]:
    records: list[AuditRecord] = []
    seq, prev = after
    for entry in entries:
        record = next_record(seq, prev, **entry)
        records.append(record)
        seq, prev = record.seq, record.entry_hash
    return records


def checkpoints_at(records: list[AuditRecord], seqs: set[int]) -> Anchors:
    """What signed tree heads at ``seqs`` prove (see test_audit_transparency): each size's last leaf."""
    return {s: leaf_of(records[s - 1].entry_hash) for s in sorted(seqs)}


def both(records: list[AuditRecord], cps: Anchors) -> VerifyResult:
    """Verify through both entry points and insist they agree."""
    deep = verify_chain(records, cps)
    fast = verify_chain_bodies([(r.seq, r.prev_hash, r.entry_hash, r.body()) for r in records], cps)
    assert (deep.ok, deep.checked, deep.first_bad_seq, deep.proven_seq) == (
        fast.ok,
        fast.checked,
        fast.first_bad_seq,
        fast.proven_seq,
    )
    return fast


def model(original: list[AuditRecord], tampered: list[AuditRecord], cp_seqs: set[int]) -> int | None:
    """The first seq a correct verifier must reject, or None: first position that differs, else truncation."""
    for position, record in enumerate(tampered, start=1):
        if position > len(original) or record != original[position - 1]:
            return position
    if cp_seqs and max(cp_seqs) > len(tampered):
        return len(tampered) + 1
    return None


# --- mutations that an attacker without the audit key can make -----------------------------------


def _other_hex(h: str) -> str:
    return ("1" if h[0] == "0" else "0") + h[1:]


def mutate_field(record: AuditRecord, name: str, delta: int) -> AuditRecord:
    value = getattr(record, name)
    new: Any
    if name in ("seq", "ts_ms"):
        new = value + delta
    elif name in ("prev_hash", "entry_hash"):
        new = _other_hex(value)
    elif name == "details":
        new = {**value, "~tamper": value.get("~tamper", 0) + delta}
    elif value is None:
        new = "x"
    elif name in ("actor_org", "actor_role", "org_id", "dataset_id") and delta % 2:
        new = None
    else:
        new = value + "x"
    return dataclasses.replace(record, **{name: new})


FIELDS = [f.name for f in dataclasses.fields(AuditRecord)]
MUTATION = st.one_of(
    st.tuples(st.just("field"), st.integers(0, 10**6), st.sampled_from(FIELDS), st.integers(1, 5)),
    st.tuples(st.just("delete"), st.integers(0, 10**6), st.just(""), st.just(0)),
    st.tuples(st.just("swap"), st.integers(0, 10**6), st.just(""), st.integers(1, 10**6)),
    st.tuples(st.just("duplicate"), st.integers(0, 10**6), st.just(""), st.integers(0, 10**6)),
    st.tuples(st.just("insert_forged"), st.integers(0, 10**6), st.just(""), st.integers(0, 10**6)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6), st.just(""), st.just(0)),
)


def apply(records: list[AuditRecord], mutation: tuple[str, int, str, int]) -> list[AuditRecord]:
    kind, raw_index, name, extra = mutation
    out = list(records)
    n = len(out)
    i = raw_index % n
    if kind == "field":
        out[i] = mutate_field(out[i], name, extra)
    elif kind == "delete":
        del out[i]
    elif kind == "swap":
        j = (i + 1 + extra % max(n - 1, 1)) % n
        out[i], out[j] = out[j], out[i]
    elif kind == "duplicate":
        out.insert(extra % (n + 1), out[i])
    elif kind == "insert_forged":  # a plausible entry with the right seq, but the attacker has no key
        position = extra % (n + 1)
        fake = dataclasses.replace(records[i], seq=position + 1, action="forged")
        out.insert(position, fake)
    elif kind == "truncate":
        out = out[:i]
    return out


@settings(max_examples=400, deadline=None)
@given(
    st.lists(ENTRY, min_size=1, max_size=25),
    st.sets(st.integers(1, 25), max_size=5),
    MUTATION,
)
def test_any_tampering_is_detected_at_the_first_bad_entry(
    entries: list[dict[str, Any]], raw_cps: set[int], mutation: tuple[str, int, str, int]
) -> None:
    records = build(entries)
    cp_seqs = {s for s in raw_cps if s <= len(records)}
    cps = checkpoints_at(records, cp_seqs)
    assert both(records, cps).ok

    tampered = apply(records, mutation)
    if mutation[0] == "swap" and tampered == records:  # a one-entry log has nothing to swap with
        return
    expected = model(records, tampered, cp_seqs)
    result = both(tampered, cps)
    if expected is None:  # only a pure truncation behind every checkpoint is out of reach (documented)
        assert mutation[0] == "truncate" or mutation[0] == "delete"
        assert result.ok and result.checked == len(tampered)
    else:
        assert not result.ok
        assert result.first_bad_seq == expected, result.reason
        assert result.checked == expected - 1
        assert result.reason and str(expected) in result.reason


@settings(max_examples=150, deadline=None)
@given(
    st.lists(ENTRY, min_size=1, max_size=20),
    st.sets(st.integers(1, 20), max_size=4),
    st.integers(0, 10**6),
    ENTRY,
)
def test_a_consistent_rewrite_is_caught_by_the_next_checkpoint(
    entries: list[dict[str, Any]], raw_cps: set[int], raw_index: int, replacement: dict[str, Any]
) -> None:
    """An attacker who recomputes every hash from entry k on is caught by the first checkpoint at or after k.

    Without such a checkpoint the rewrite is invisible: that is the documented limit of any hash chain.
    """
    records = build(entries)
    cp_seqs = {s for s in raw_cps if s <= len(records)}
    cps = checkpoints_at(records, cp_seqs)
    k = raw_index % len(records) + 1
    forged_entries = list(entries)
    forged_entries[k - 1] = {**replacement, "action": entries[k - 1]["action"] + "-forged"}
    forged = build(forged_entries)
    result = both(forged, cps)
    later = sorted(s for s in cp_seqs if s >= k)
    if later:
        assert not result.ok and result.first_bad_seq == later[0]
        assert result.proven_seq == max([s for s in cp_seqs if s < k], default=0)
        assert f"{result.proven_seq + 1}..{later[0]}" in result.reason
    else:
        assert result.ok and result.proven_seq == max(cp_seqs, default=0)


# --- examples -------------------------------------------------------------------------------------


def entry(n: int, **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "ts_ms": 1_764_000_000_000 + n,
        "actor_org": "org-sme",
        "actor_role": "sme",
        "action": "dp.query",
        "object_type": "dataset",
        "object_id": "ds-1",
        "org_id": "org-sme",
        "dataset_id": "ds-1",
        "details": {"epsilon_micro": 100_000, "n": n},
    }
    return {**base, **overrides}


def test_an_empty_log_verifies_unless_a_checkpoint_says_otherwise() -> None:
    assert both([], {}) == VerifyResult(ok=True, checked=0, first_bad_seq=None, reason="ok", proven_seq=0)
    records = build([entry(1)])
    result = both([], checkpoints_at(records, {1}))
    assert not result.ok and result.first_bad_seq == 1 and "removed from the end" in result.reason


def test_hash_covers_prev_hash_and_body() -> None:
    first = next_record(0, GENESIS_HASH, **entry(1))
    assert first.seq == 1 and first.prev_hash == GENESIS_HASH
    assert first.entry_hash == compute_hash(GENESIS_HASH, first.body())
    second = next_record(first.seq, first.entry_hash, **entry(2))
    assert second.seq == 2 and second.prev_hash == first.entry_hash
    body = first.body()
    assert b'"seq":1' in body and GENESIS_HASH.encode() in body and b'"v":1' in body


def test_incremental_verification_after_a_proven_entry() -> None:
    records = build([entry(n) for n in range(1, 11)])
    cps = checkpoints_at(records, {5, 10})
    tail = records[5:]
    result = verify_chain(tail, cps, after_seq=5, after_hash=records[4].entry_hash)
    assert result.ok and result.checked == 5 and result.proven_seq == 10
    wrong_start = verify_chain(tail, cps, after_seq=5, after_hash=GENESIS_HASH)
    assert not wrong_start.ok and wrong_start.first_bad_seq == 6


def test_fast_path_catches_edited_body_bytes_and_malformed_rows() -> None:
    records = build([entry(n) for n in range(1, 5)])
    rows: list[Any] = [(r.seq, r.prev_hash, r.entry_hash, r.body()) for r in records]
    edited = list(rows)
    edited[2] = (3, rows[2][1], rows[2][2], rows[2][3].replace(b"100000", b"100001"))
    assert verify_chain_bodies(edited, {}).first_bad_seq == 3
    for bad_row in [
        (3, None, rows[2][2], rows[2][3]),
        (3, rows[2][1], rows[2][2], None),
        ("3", *rows[2][1:]),
    ]:
        broken = list(rows)
        broken[2] = bad_row
        result = verify_chain_bodies(broken, {})
        assert not result.ok and result.first_bad_seq == 3 and result.checked == 2


def test_deep_path_reports_records_holding_values_we_never_write() -> None:
    records = build([entry(n) for n in range(1, 4)])
    records[1] = dataclasses.replace(records[1], details={"epsilon": 0.1})
    result = verify_chain(records, {})
    assert not result.ok and result.first_bad_seq == 2 and "never write" in result.reason


def test_columns_against_body() -> None:
    record = next_record(0, GENESIS_HASH, **entry(1))
    body = record.body()
    assert record_from_body(body, record.entry_hash) == record
    assert record_matches_body(record, body)
    assert not record_matches_body(dataclasses.replace(record, org_id="org-other"), body)
    assert not record_matches_body(dataclasses.replace(record, details={"x": 1.5}), body)
    for bad in (b"garbage", b"[]", body.replace(b'"v":1', b'"v":2'), body.replace(b",", b", ", 1)):
        with pytest.raises(ValueError):
            record_from_body(bad, record.entry_hash)


def test_columns_match_catches_an_edited_queryable_column() -> None:
    record = next_record(0, GENESIS_HASH, **entry(1))
    body = record.body()
    columns = {"seq": 1, "org_id": "org-sme", "dataset_id": "ds-1", "action": "dp.query", "actor_role": "sme"}
    assert columns_match(body, columns)
    assert not columns_match(body, {**columns, "org_id": "org-other"})
    assert not columns_match(body, {**columns, "seq": True})  # 1 == True, but not the same value
    assert not columns_match(body, {**columns, "dataset_id": None})
    assert not columns_match(body, {"no_such_column": 1})
    assert not columns_match(b"garbage", columns)
    assert not columns_match(b"[]", columns)


@pytest.mark.parametrize(
    ("prev_seq", "prev_hash", "overrides", "error"),
    [
        (-1, GENESIS_HASH, {}, ValueError),
        (0, "abc", {}, ValueError),
        (0, GENESIS_HASH.upper().replace("0", "A"), {}, ValueError),
        (0, GENESIS_HASH, {"ts_ms": -1}, ValueError),
        (0, GENESIS_HASH, {"ts_ms": 1.5}, ValueError),
        (0, GENESIS_HASH, {"action": ""}, TypeError),
        (0, GENESIS_HASH, {"org_id": 5}, TypeError),
        (0, GENESIS_HASH, {"details": {"x": 0.5}}, TypeError),
    ],
)
def test_next_record_refuses_values_that_could_not_be_verified(
    prev_seq: int, prev_hash: str, overrides: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        next_record(prev_seq, prev_hash, **entry(1, **overrides))
