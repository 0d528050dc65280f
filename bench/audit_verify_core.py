"""Audit chain verification speed: the fast path (stored bodies) and the deep path (bodies rebuilt).

Usage: .venv/bin/python bench/audit_verify_core.py [--entries N] [--every K]
The last line is ``BENCH audit_verify_core ...`` with entries per second for both paths (the goal for the
fast path is >= 500,000 entries/s).
"""

from __future__ import annotations

import argparse
import time

from broker.audit import (
    GENESIS_HASH,
    AuditRecord,
    leaf_of,
    next_record,
    verify_chain,
    verify_chain_bodies,
)


def build(n: int) -> list[AuditRecord]:
    records: list[AuditRecord] = []
    seq, prev = 0, GENESIS_HASH
    for i in range(n):
        record = next_record(
            seq,
            prev,
            ts_ms=1_764_000_000_000 + i,
            actor_org=f"org-{i % 50}",
            actor_role="sme",
            action="dp.query",
            object_type="dataset",
            object_id=f"ds-{i % 7}",
            org_id=f"org-{i % 50}",
            dataset_id=f"ds-{i % 7}",
            details={"epsilon_micro": 100_000, "kind": "count", "query_id": f"q-{i}"},
        )
        records.append(record)
        seq, prev = record.seq, record.entry_hash
    return records


def best_of(runs: int, fn: object) -> float:
    assert callable(fn)
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
        assert result.ok, result.reason
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, default=200_000)
    parser.add_argument("--every", type=int, default=1_000, help="a signed tree head every K entries")
    args = parser.parse_args()
    records = build(args.entries)
    # what signed tree heads prove once tied to the stored tree (broker.audit.transparency): each size's last leaf
    cps = {s: leaf_of(records[s - 1].entry_hash) for s in range(args.every, args.entries + 1, args.every)}
    rows = [(r.seq, r.prev_hash, r.entry_hash, r.body()) for r in records]
    fast = best_of(3, lambda: verify_chain_bodies(rows, cps))
    deep = best_of(1, lambda: verify_chain(records, cps))
    print(f"fast path: {args.entries / fast:,.0f} entries/s; deep path: {args.entries / deep:,.0f} entries/s")
    print(
        f"BENCH audit_verify_core entries={args.entries} checkpoints={len(cps)} "
        f"fast_entries_per_s={args.entries / fast:.0f} deep_entries_per_s={args.entries / deep:.0f}"
    )


if __name__ == "__main__":
    main()
