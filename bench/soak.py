"""Soak: the bank workload of ``tests/e2e/test_bank.py`` run for longer (``make soak``).

Real ``sbx serve`` processes with fake compute, concurrent clients with idempotency keys and retries (DP
queries among them, retried with their keys through kills), a seeded chaos loop that SIGKILLs a broker at
random moments, a reader checking conservation at every read and the end-state checks, privacy work and the
subsidy report against the ledger included (see :mod:`tests.bank_workload`).

Environment:
  SBX_SOAK_SECONDS       how long the clients run (default 300)
  SBX_SOAK_SEED          the seed (default: random, printed)
  SBX_SOAK_DATABASE_URL  a PostgreSQL server URL (``postgresql://user@host:port/db``): run two replicas on a
                         fresh database created next to it (dropped afterwards); default one broker on SQLite

Last line: ``BENCH soak ops=… kills=… violations=… reads=… seconds=… ops_per_s=… seed=…``; the exit status
is 1 when a violation was seen (each one is printed above).
"""

from __future__ import annotations

import os
import random
import secrets
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import create_engine, text

from tests.bank_workload import BankConfig, Report, run_bank


@contextmanager
def fresh_postgresql(server_url: str) -> Iterator[str]:
    """A new empty database on the server of ``server_url``, dropped afterwards."""
    admin_url = "postgresql+psycopg://" + server_url.removeprefix("postgresql://")
    name = f"sbx_soak_{secrets.token_hex(5)}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{server_url.rsplit('/', 1)[0]}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def soak(seconds: float, seed: int, database_url: str | None, work_dir: Path) -> Report:
    """Run the bank workload for ``seconds`` (at least five kills) and return its report."""
    config = BankConfig(
        seed=seed,
        work_dir=work_dir,
        database_url=database_url,
        replicas=2 if database_url else 1,
        vouchers_per_sme=max(40, int(seconds) // 3),
        min_ops=0,
        min_kills=5,
        min_seconds=seconds,
        max_seconds=seconds + 120,
        progress=lambda line: print(line, flush=True),
    )
    return run_bank(config)


def main() -> int:
    """Run the soak, print every violation and the BENCH line; 1 when a promise was broken."""
    seconds = float(os.environ.get("SBX_SOAK_SECONDS", "300"))
    seed = int(os.environ.get("SBX_SOAK_SEED") or random.SystemRandom().randrange(1, 10**6))
    server = os.environ.get("SBX_SOAK_DATABASE_URL")
    print(f"soak: {seconds:.0f} s, seed {seed}, {'two replicas on PostgreSQL' if server else 'SQLite'}")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sbx-soak-") as tmp:
        if server:
            with fresh_postgresql(server) as url:
                report = soak(seconds, seed, url, Path(tmp))
        else:
            report = soak(seconds, seed, None, Path(tmp))
    for violation in report.violations:
        print(f"VIOLATION {violation}")
    print(f"kills at (s, broker): {report.kill_times}")
    print(f"answers: {dict(report.answers)}")
    print(f"done in {time.monotonic() - started:.0f} s: {report.line()}")
    rate = report.ops / report.seconds if report.seconds else 0.0
    print(
        f"BENCH soak ops={report.ops} kills={report.kills} violations={len(report.violations)}"
        f" reads={report.reads} seconds={report.seconds:.0f} ops_per_s={rate:.1f} seed={seed}"
    )
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
