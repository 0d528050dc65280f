"""Ledger benchmark: raw sqlite3 baseline vs the service layer vs HTTP with 32 concurrent clients.

(a) raw: per operation one transaction doing the same row work as a hold or a settle — an idempotency row,
    conditional balance updates on two accounts, two ledger entries — at the broker's durability (WAL,
    synchronous=FULL, BEGIN IMMEDIATE).
(b) service: hold + settle through ``LedgerService`` (idempotency keys, audit-free ledger path), sequential.
(c) http: the same hold + settle over HTTP against ``sbx serve`` in its own process, 32 concurrent clients.

Last line: ``BENCH ledger service_ops_per_s=… raw_ops_per_s=… ratio=… http_ops_per_s=… http_p99_ms=…``
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from broker.bootstrap import initialise
from broker.container import build_container
from broker.server import free_port
from broker.services.registry import build_services
from broker.settings import Settings
from quotas.ledger import HoldState

OPS = int(os.environ.get("SBX_BENCH_LEDGER_OPS", "2000"))
HTTP_SECONDS = float(os.environ.get("SBX_BENCH_HTTP_SECONDS", "8"))
CLIENTS = 32
DAY_S = 24 * 3600


def raw_baseline(path: Path, ops: int) -> float:
    """Ops/s of hand-written sqlite3 doing the same row work per operation."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.executescript(
        """
        CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL, floor INTEGER);
        CREATE TABLE entries (id INTEGER PRIMARY KEY, txn TEXT, account INTEGER, amount INTEGER, ts INTEGER);
        CREATE TABLE idem (org TEXT, key TEXT, hash TEXT, response TEXT, PRIMARY KEY (org, key));
        INSERT INTO accounts VALUES (1, 1000000000, 0), (2, 0, 0);
        """
    )
    start = time.perf_counter()
    for i in range(ops):
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO idem VALUES ('org', ?, 'h', '')", (f"k{i}",))
        for account, delta in ((1, -1), (2, 1)):
            cur = db.execute(
                "UPDATE accounts SET balance = balance + ? WHERE id = ? AND (floor IS NULL OR balance + ? >= floor)",
                (delta, account, delta),
            )
            assert cur.rowcount == 1
        db.executemany(
            "INSERT INTO entries (txn, account, amount, ts) VALUES (?, ?, ?, ?)",
            [(f"t{i}", 1, -1, i), (f"t{i}", 2, 1, i)],
        )
        db.execute("UPDATE idem SET response = '{}' WHERE org = 'org' AND key = ?", (f"k{i}",))
        db.execute("COMMIT")
    elapsed = time.perf_counter() - start
    db.close()
    return ops / elapsed


def _world(state: Path, port: int) -> tuple[Settings, dict[str, str], list[str]]:
    settings = Settings(state_dir=state, compute="fake", background_loops=False, port=port)
    init = initialise(state, settings=settings)
    container = build_container(settings)
    services = build_services(container)
    op = services.orgs.authenticate(init["token"])
    assert op is not None
    issuer_org = services.orgs.create(op, name="issuer", role="issuer", year_budget=10**15, sme_cap=10**14)
    issuer = services.orgs.authenticate(services.orgs.create_token(op, org_id=issuer_org["id"])["token"])
    assert issuer is not None
    services.vouchers.create_key(issuer)
    tokens = {"operator": init["token"]}
    smes = []
    now = int(time.time())
    for n in range(CLIENTS + 1):
        sme_org = services.orgs.create(op, name=f"sme-{n}", role="sme")
        sme_token = services.orgs.create_token(op, org_id=sme_org["id"])["token"]
        sme = services.orgs.authenticate(sme_token)
        assert sme is not None
        voucher = services.vouchers.issue(
            issuer,
            sme_org=sme.org_id,
            credits=10**12,
            coverage_bps=10_000,
            resources=("cpu",),
            valid_from_s=None,
            valid_until_s=now + DAY_S,
            credit_expires_s=now + 30 * DAY_S,
        )
        services.vouchers.redeem(sme, token=voucher["token"], idempotency_key=None)
        tokens[f"sme-{n}"] = sme_token
        smes.append(sme.org_id)
    container.close()
    return settings, tokens, smes


def service_ops(state: Path, ops: int) -> float:
    """Ops/s of hold + settle through the service layer, one after another."""
    settings, tokens, _smes = _world(state, free_port())
    container = build_container(settings)
    services = build_services(container)
    sme = services.orgs.authenticate(tokens["sme-0"])
    op = services.orgs.authenticate(tokens["operator"])
    assert sme is not None and op is not None
    start = time.perf_counter()
    for i in range(ops // 2):
        hold = services.ledger.place_hold(sme, amount=100, idempotency_key=f"h{i}")
        services.ledger.close_hold(
            op, hold_id=hold["id"], target=HoldState.SETTLED, cost=60, idempotency_key=f"s{i}"
        )
    elapsed = time.perf_counter() - start
    assert services.ledger.invariants() == []
    container.close()
    return (ops // 2) * 2 / elapsed


async def _client_loop(
    url: str, sme_token: str, op_token: str, deadline: float, latencies: list[float], n: int
) -> int:
    done = 0
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        sme_h = {"Authorization": f"Bearer {sme_token}"}
        op_h = {"Authorization": f"Bearer {op_token}"}
        i = 0
        while time.perf_counter() < deadline:
            i += 1
            t0 = time.perf_counter()
            r = await http.post(
                "/api/v1/holds", json={"amount": 100}, headers={**sme_h, "Idempotency-Key": f"h{n}-{i}"}
            )
            t1 = time.perf_counter()
            assert r.status_code == 201, r.text
            hold_id = r.json()["id"]
            r = await http.post(
                f"/api/v1/holds/{hold_id}/settle",
                json={"cost": 60},
                headers={**op_h, "Idempotency-Key": f"s{n}-{i}"},
            )
            t2 = time.perf_counter()
            assert r.status_code == 200, r.text
            latencies.extend([t1 - t0, t2 - t1])
            done += 2
    return done


def http_ops(state: Path) -> tuple[float, float]:
    """Ops/s and p99 latency (ms) of hold + settle over HTTP with 32 concurrent clients."""
    port = free_port()
    _settings, tokens, _smes = _world(state, port)
    env = {**os.environ, "SBX_STATE_DIR": str(state), "SBX_COMPUTE": "fake", "SBX_BACKGROUND_LOOPS": "false"}
    server = subprocess.Popen(
        [sys.executable, "-m", "broker.cli.main", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        latencies: list[float] = []

        async def run() -> int:
            deadline = time.perf_counter() + HTTP_SECONDS
            counts = await asyncio.gather(
                *(
                    _client_loop(url, tokens[f"sme-{n}"], tokens["operator"], deadline, latencies, n)
                    for n in range(CLIENTS)
                )
            )
            return sum(counts)

        start = time.perf_counter()
        total = asyncio.run(run())
        elapsed = time.perf_counter() - start
    finally:
        server.terminate()
        server.wait(timeout=30)
    p99 = statistics.quantiles(latencies, n=100)[98] * 1000
    return total / elapsed, p99


def main() -> None:
    """Run the three measurements in one process, side by side."""
    with tempfile.TemporaryDirectory(prefix="sbx-bench-") as tmp:
        root = Path(tmp)
        raw = raw_baseline(root / "raw.db", OPS)
        print(f"raw sqlite3: {raw:.0f} ops/s", flush=True)
        svc = service_ops(root / "svc", OPS)
        print(f"service layer: {svc:.0f} ops/s", flush=True)
        http, p99 = http_ops(root / "http")
        print(f"http (32 clients): {http:.0f} ops/s, p99 {p99:.1f} ms", flush=True)
    print(
        f"BENCH ledger service_ops_per_s={svc:.0f} raw_ops_per_s={raw:.0f} ratio={svc / raw:.2f} "
        f"http_ops_per_s={http:.0f} http_p99_ms={p99:.1f}"
    )


if __name__ == "__main__":
    main()
