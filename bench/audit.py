"""Audit log benchmark: what an append adds to an action's transaction, and ``verify`` throughput.

(a) append overhead: the action is a real one — a privacy-budget reservation (three conditional updates,
    :func:`broker.db.datasets.reserve`) on the broker's durable SQLite (WAL, synchronous=FULL, group commit).
    ``SBX_BENCH_AUDIT_OPS`` (default 1000) transactions without and with ``AuditRepo.append`` alternate;
    the time the append takes inside its transaction is measured directly (its p50 is the added latency;
    the commit's fsync is shared), and end-to-end p50s of both kinds are printed for context.
    The same is done for what every ledger transfer adds (its body and hash, ``ledger_chain.record_transfer``).
(b) verify: ``SBX_BENCH_AUDIT_ENTRIES`` (default 100,000) entries are appended (2,000 per transaction),
    checkpointed (the Merkle tree is extended and a C2SP checkpoint signed), and ``AuditRepo.verify`` (record,
    tree heads, chain, queryable columns) is timed, best of three runs.
(c) proofs: the log is grown to ``SBX_BENCH_AUDIT_TREE_ENTRIES`` (default 1,000,000) entries (bulk-inserted
    valid entries), the tree extended and checkpointed; then the p50 of ``AuditRepo.prove`` (inclusion proof
    of a random entry with the entry and the signed checkpoint) and of ``AuditRepo.consistency`` (between a
    random older size and the newest) over ``SBX_BENCH_AUDIT_PROOFS`` (default 300) calls each; every
    proof is verified.

Last line: ``BENCH audit append_overhead_ms=… verify_entries_per_s=… proof_ms=… consistency_ms=…``
(plus ``transfer_chain_ms=…``).
"""

from __future__ import annotations

import base64
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import Connection

from broker.audit import leaf_of, merkle, next_record
from broker.audit.checkpoints import Checkpoint
from broker.bootstrap import initialise
from broker.container import Container, build_container
from broker.db import audit_tree, ledger_chain
from broker.db import datasets as repo
from broker.db.orgs import Principal
from broker.services.registry import Services, build_services
from broker.settings import Settings
from privacy.budget import PrivacyCost

OPS = int(os.environ.get("SBX_BENCH_AUDIT_OPS", "1000"))
ENTRIES = int(os.environ.get("SBX_BENCH_AUDIT_ENTRIES", "100000"))
TREE_ENTRIES = int(os.environ.get("SBX_BENCH_AUDIT_TREE_ENTRIES", "1000000"))
PROOFS = int(os.environ.get("SBX_BENCH_AUDIT_PROOFS", "300"))
BATCH = 2000
VERIFY_RUNS = 3  # best of three: the first run also pays for reading the file into the page cache
CSV = "household_id,kwh\n" + "".join(f"h{i},{i % 90}.5\n" for i in range(200))
POLICY = {
    "privacy_unit": "household_id",
    "max_rows_per_unit": 1,
    "columns": [
        {"name": "household_id", "kind": "unit"},
        {"name": "kwh", "kind": "numeric", "lo": "0", "hi": "100", "decimals": 1},
    ],
    "total_budget": {"epsilon_micro": 10**15, "delta_e12": 0},
    "sme_cap": {"epsilon_micro": 10**12, "delta_e12": 0},
}


def _principal(services: Services, op: Principal | None, name: str, role: str) -> Principal:
    org = services.orgs.create(op, name=name, role=role)
    found = services.orgs.authenticate(services.orgs.create_token(None, org_id=org["id"])["token"])
    assert found is not None
    return found


def setup(services: Services) -> tuple[Principal, str, str]:
    """An SME with an approved grant on a small dataset: what a reservation needs."""
    op = _principal(services, None, "op", "operator")
    sme = _principal(services, op, "sme", "sme")
    custodian = _principal(services, op, "custodian", "custodian")
    ds = services.datasets.register(
        custodian, name="bench", description="", policy=POLICY, fmt="csv", content=CSV.encode()
    )
    req = services.datasets.request_access(sme, dataset_id=ds["id"], purpose="bench", epsilon_micro=10**12)
    services.datasets.approve(custodian, request_id=req["id"], valid_for_s=86_400)
    return sme, ds["id"], req["id"]


def append_overhead(c: Container, sme: Principal, dsid: str, req: str) -> tuple[float, float, float]:
    """p50 of the in-transaction append time, and end-to-end p50 without and with it (ms)."""
    inside: list[float] = []
    plain: list[float] = []
    audited: list[float] = []
    cost = PrivacyCost(1)

    def action(conn: Connection) -> None:
        repo.reserve(conn, dataset_id=dsid, sme_org=sme.org_id, request_id=req, cost=cost)

    def with_audit(conn: Connection) -> None:
        action(conn)
        t0 = time.perf_counter_ns()
        c.audit.append(
            conn,
            ts_ms=c.clock.now_ms(),
            actor=sme,
            action="query.reserve",
            object_type="query",
            object_id="qry_bench",
            org_id=sme.org_id,
            dataset_id=dsid,
            details={"charged": cost.to_dict(), "queries": [{"kind": "count", "epsilon_micro": 1}]},
        )
        inside.append((time.perf_counter_ns() - t0) / 1e6)

    for _ in range(OPS):
        t0 = time.perf_counter()
        c.db.write(action)
        plain.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        c.db.write(with_audit)
        audited.append((time.perf_counter() - t0) * 1000)
    return statistics.median(inside), statistics.median(plain), statistics.median(audited)


def verify_rate(c: Container, services: Services, sme: Principal, dsid: str) -> tuple[int, float]:
    """Append ENTRIES entries, checkpoint, and time a full verify; returns (checked, entries per second)."""

    def batch(conn: Connection, start: int) -> None:
        for i in range(start, min(start + BATCH, ENTRIES)):
            c.audit.append(
                conn,
                ts_ms=c.clock.now_ms(),
                actor=sme,
                action="query.answered",
                object_type="query",
                object_id=f"qry_{i}",
                org_id=sme.org_id,
                dataset_id=dsid,
                details={"credits": i % 7, "elapsed_ms": 12},
            )

    for start in range(0, ENTRIES, BATCH):
        c.db.write(lambda conn, s=start: batch(conn, s))  # type: ignore[misc]
    services.audit.checkpoint(None)
    elapsed = float("inf")
    for _ in range(VERIFY_RUNS):
        t0 = time.perf_counter()
        result = c.audit.verify(
            c.db, services.audit.config.log_keys, services.audit.config, now_ms=c.clock.now_ms()
        )
        elapsed = min(elapsed, time.perf_counter() - t0)
        assert result.ok, result.reason
    return result.checked, result.checked / elapsed


def transfer_chain_overhead(c: Container) -> float:
    """p50 of what a ledger transfer's chaining adds inside its transaction (body, hash, one INSERT), in ms."""
    inside: list[float] = []
    legs = [(1, -500, "org_issuer"), (2, 500, None)]

    def tx(conn: Connection, i: int) -> None:
        t0 = time.perf_counter_ns()
        ledger_chain.record_transfer(
            conn,
            txn_id=f"txn_bench_{i}",
            kind="settle",
            org_id="org_sme",
            hold_id="hld_bench",
            now_ms=i,
            legs=legs,
        )
        inside.append((time.perf_counter_ns() - t0) / 1e6)

    for i in range(OPS):
        c.db.write(lambda conn, i=i: tx(conn, i))  # type: ignore[misc]
    c.db.write(
        lambda conn: conn.exec_driver_sql("DELETE FROM ledger_transfers WHERE txn_id LIKE 'txn_bench_%'")
    )
    return statistics.median(inside)


def grow(c: Container, total: int) -> float:
    """Bulk-append valid entries up to ``total`` (as the loop would see them), then extend the tree and sign;
    returns the tree extension rate (entries/s)."""
    head = c.db.read(lambda conn: conn.exec_driver_sql("SELECT seq, entry_hash FROM audit_head").one())
    seq, prev = int(head[0]), str(head[1])
    while seq < total:
        rows = []
        for _ in range(min(50_000, total - seq)):
            record = next_record(
                seq,
                prev,
                ts_ms=c.clock.now_ms(),
                actor_org="org_x",
                actor_role="sme",
                action="query.answered",
                object_type="query",
                object_id=f"qry_{seq}",
                org_id="org_x",
                dataset_id="ds_x",
                details={"n": seq},
            )
            rows.append(
                (
                    record.seq,
                    record.ts_ms,
                    "org_x",
                    record.action,
                    "query",
                    record.object_id,
                    "org_x",
                    "ds_x",
                    record.body(),
                    record.prev_hash,
                    record.entry_hash,
                )
            )
            seq, prev = record.seq, record.entry_hash

        def insert(
            conn: Connection, rows: Sequence[tuple[object, ...]] = rows, seq: int = seq, prev: str = prev
        ) -> None:
            cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
            cursor.executemany(
                "INSERT INTO audit_entries (seq, ts_ms, actor_org, action, object_type, object_id, org_id, "
                "dataset_id, body, prev_hash, entry_hash) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                rows,
            )
            cursor.execute("UPDATE audit_head SET seq = ?, entry_hash = ? WHERE id = 1", (seq, prev))

        c.db.write(insert)
    before = c.db.read(
        lambda conn: int(conn.exec_driver_sql("SELECT size FROM audit_tree_head").scalar_one())
    )
    t0 = time.perf_counter()
    c.db.write(audit_tree.extend_tree)
    return (total - before) / (time.perf_counter() - t0)


def proof_times(c: Container, services: Services) -> tuple[float, float, int]:
    """p50 ms of an inclusion proof and of a consistency proof at the current size (each one verified)."""
    services.audit.checkpoint(None)
    size = c.db.read(
        lambda conn: int(conn.exec_driver_sql("SELECT checkpoint_size FROM audit_tree_head").scalar_one())
    )
    rng = random.Random(12)
    incl: list[float] = []
    cons: list[float] = []
    for _ in range(PROOFS):
        seq = rng.randint(1, size)
        t0 = time.perf_counter()
        proof = c.db.read(partial(c.audit.prove, seq=seq))
        incl.append((time.perf_counter() - t0) * 1000)
        cp = Checkpoint.parse(proof["checkpoint"])
        path = [base64.b64decode(p) for p in proof["proof"]]
        assert merkle.verify_inclusion(seq - 1, size, leaf_of(proof["entry"]["entry_hash"]), path, cp.root)
        old = rng.randint(1, size)
        t0 = time.perf_counter()
        answer = c.db.read(partial(c.audit.consistency, old=old, new=size))
        cons.append((time.perf_counter() - t0) * 1000)
        old_root = c.db.read(partial(audit_tree.tree_root_at, size=old))
        path = [base64.b64decode(p) for p in answer["proof"]]
        assert merkle.verify_consistency(old, size, old_root, cp.root, path)
    return statistics.median(incl), statistics.median(cons), size


def main() -> None:
    """Run both parts on a fresh state directory and print the BENCH line."""
    with tempfile.TemporaryDirectory(prefix="sbx-bench-audit-") as tmp:
        settings = Settings(state_dir=Path(tmp) / "state", compute="fake", background_loops=False)
        initialise(settings.state_dir, settings=settings)
        container = build_container(settings)
        services = build_services(container)
        try:
            sme, dsid, req = setup(services)
            inside, plain, audited = append_overhead(container, sme, dsid, req)
            print(
                f"{OPS} reservations each way: p50 end-to-end {plain:.2f} ms without, {audited:.2f} ms with the "
                f"audit append; the append itself takes p50 {inside:.3f} ms inside the transaction"
            )
            chain_ms = transfer_chain_overhead(container)
            print(f"a ledger transfer's chaining takes p50 {chain_ms:.4f} ms inside its transaction")
            checked, rate = verify_rate(container, services, sme, dsid)
            print(
                f"verified {checked:,} entries (record, tree heads, chain, queryable columns): {rate:,.0f}/s"
            )
            extend_rate = grow(container, TREE_ENTRIES)
            print(
                f"grew the log to {TREE_ENTRIES:,} entries; the tree extends at {extend_rate:,.0f} entries/s"
            )
            proof_ms, consistency_ms, size = proof_times(container, services)
            print(
                f"at {size:,} entries: inclusion proof p50 {proof_ms:.3f} ms, consistency proof p50 {consistency_ms:.3f} ms"
            )
            print(
                f"BENCH audit append_overhead_ms={inside:.3f} verify_entries_per_s={rate:.0f} "
                f"proof_ms={proof_ms:.3f} consistency_ms={consistency_ms:.3f} transfer_chain_ms={chain_ms:.4f}"
            )
        finally:
            container.close()


if __name__ == "__main__":
    main()
