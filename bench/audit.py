"""Audit log benchmark: what an append adds to an action's transaction, and ``verify`` throughput.

(a) append overhead: the action is a real one — a privacy-budget reservation (three conditional updates,
    :func:`broker.db.datasets.reserve`) on the broker's durable SQLite (WAL, synchronous=FULL, group commit).
    ``SBX_BENCH_AUDIT_OPS`` (default 1000) transactions without and with ``AuditRepo.append`` alternate;
    the time the append takes inside its transaction is measured directly (its p50 is the added latency;
    the commit's fsync is shared), and end-to-end p50s of both kinds are printed for context.
(b) verify: ``SBX_BENCH_AUDIT_ENTRIES`` (default 100,000) entries are appended (2,000 per transaction),
    checkpointed, and ``AuditRepo.verify`` (chain, signed checkpoints, queryable columns) is timed, best of
    three runs.

Last line: ``BENCH audit append_overhead_ms=… verify_entries_per_s=…``
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import Connection

from broker.bootstrap import initialise
from broker.container import Container, build_container
from broker.db import datasets as repo
from broker.db.orgs import Principal
from broker.services.registry import Services, build_services
from broker.settings import Settings
from privacy.budget import PrivacyCost

OPS = int(os.environ.get("SBX_BENCH_AUDIT_OPS", "1000"))
ENTRIES = int(os.environ.get("SBX_BENCH_AUDIT_ENTRIES", "100000"))
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


def verify_rate(c: Container, sme: Principal, dsid: str) -> tuple[int, float]:
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
    c.db.read(lambda conn: c.audit.checkpoint(conn, now_ms=c.clock.now_ms()))
    elapsed = float("inf")
    for _ in range(VERIFY_RUNS):
        t0 = time.perf_counter()
        result = c.audit.verify(c.db, c.broker_public_jwk)
        elapsed = min(elapsed, time.perf_counter() - t0)
        assert result.ok, result.reason
    return result.checked, result.checked / elapsed


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
            checked, rate = verify_rate(container, sme, dsid)
            print(f"verified {checked:,} entries (chain, signed checkpoint, queryable columns)")
            print(f"BENCH audit append_overhead_ms={inside:.3f} verify_entries_per_s={rate:.0f}")
        finally:
            container.close()


if __name__ == "__main__":
    main()
