"""Subsidy-report benchmark: 1,000,000 usage records across 1,000 SMEs in one month (SQLite, the embedded default).

Set-up (not timed): a fresh state directory, the real schema (migrations), a programme created through the
services, and then — for speed — rows shaped exactly like the broker's own inserted in one transaction with
``executemany``: per SME its accounts, a redeemed voucher grant, 334 settled jobs with their holds,
settlement entries (held → programme ``spent`` + SME ``copaid``) and usage records (CPU and memory for every
job, GPU for enough jobs to make exactly 1,000,000 records).

Timed, side by side in one run (best of ``--repeat``):

* ``report_s``: ``ReportService.subsidy`` — the project's code path: the subsidy roll-up the broker keeps at
  settlement (one row per SME and day; filled here, untimed, by the same rebuild an upgrade runs), the credit
  flows, ``quotas.report.build_report`` over ``SmeTotals``, names, canonical JSON and the Ed25519 signature;
* ``raw_s``: hand-written SQL ``GROUP BY`` statements over the ledger tables giving the same per-SME numbers.

The raw statements are the plain ones a DBA would write for this data (settled entries by SME and account
kind; usage records by SME and resource ending in the month). The two results are compared number by number
before timing is printed, so the roll-up is checked against the ledger on every run. Last line:
``BENCH report report_s=… raw_s=… ratio=… rows=…``. Goal: ratio ≤ 1.5 and report_s ≤ 1 s.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from broker.bootstrap import initialise
from broker.container import build_container
from broker.db import subsidy
from broker.services.registry import build_services
from broker.settings import Settings
from common.clock import FakeClock

SMES = 1_000
JOBS_PER_SME = 334
TARGET_RECORDS = 1_000_000
MONTH_START = int(datetime(2026, 11, 1, tzinfo=UTC).timestamp()) * 1000
MONTH_MS = 30 * 86_400_000


def _say(message: str) -> None:
    print(f"[bench report] {message}", file=sys.stderr, flush=True)


def _rows(
    issuer: str, programme_acc: int, spent_acc: int, first_acc: int
) -> dict[str, list[tuple[Any, ...]]]:
    """Every row to insert, per table (ids are deterministic; amounts vary with the job number)."""
    out: dict[str, list[tuple[Any, ...]]] = {
        k: [] for k in ("orgs", "accounts", "vouchers", "grants", "jobs", "holds", "entries", "usage")
    }
    gpu_jobs = TARGET_RECORDS - 2 * SMES * JOBS_PER_SME
    acc = first_acc
    job_no = 0
    for s in range(SMES):
        org = f"org_bench{s:05d}"
        out["orgs"].append((org, f"Bench SME {s:04d}", "sme", MONTH_START))
        copay, held, copaid, grant_acc = acc, acc + 1, acc + 2, acc + 3
        acc += 4
        out["accounts"] += [
            (copay, "copay", org, None, 0, -(10**9)),
            (held, "held", org, None, 0, 0),
            (copaid, "copaid", org, None, 0, 0),
            (grant_acc, "grant", org, f"grant_b{s:05d}", 0, 0),
        ]
        jti = f"vch_b{s:05d}"
        out["vouchers"].append(
            (
                jti,
                issuer,
                org,
                "kid",
                10**9,
                8000,
                "cpu,gpu,memory",
                0,
                2**40,
                2**40,
                2026,
                MONTH_START,
                "redeemed",
                MONTH_START,
                "{}",  # the issued record's claims (redemption reads them; the report does not)
            )
        )
        out["grants"].append(
            (
                f"grant_b{s:05d}",
                org,
                issuer,
                jti,
                grant_acc,
                10**9,
                8000,
                "cpu,gpu,memory",
                2**40,
                MONTH_START,
                "active",
            )
        )
        out["entries"] += [
            (f"txn_r{s:05d}", "redeem", programme_acc, -(10**9), org, issuer, None, MONTH_START + 1),
            (f"txn_r{s:05d}", "redeem", grant_acc, 10**9, org, issuer, None, MONTH_START + 1),
        ]
        for _ in range(JOBS_PER_SME):
            job, hold = f"job_b{job_no:07d}", f"hold_b{job_no:07d}"
            t0 = MONTH_START + 60_000 + (job_no * 7_919) % (MONTH_MS - 7_200_000)
            run_ms = 60_000 + (job_no % 97) * 1_000
            cost = 10 + job_no % 500
            voucher = cost * 8 // 10
            out["jobs"].append(
                (
                    job,
                    org,
                    "job",
                    f"b{job_no}",
                    "succeeded",
                    "python x.py",
                    "[]",
                    1000,
                    1 if job_no < gpu_jobs else 0,
                    2048,
                    3600,
                    0,
                    1,
                    cost * 4,
                    hold,
                    cost,
                    voucher,
                    cost - voucher,
                    "",
                    t0,
                    t0,
                    t0,
                    t0 + run_ms,
                    t0 + run_ms + 1,
                )
            )
            out["holds"].append(
                (hold, org, job, cost * 4, cost, cost * 3, "SETTLED", "[]", t0, t0 + 10**9, t0 + run_ms + 1)
            )
            settled_at = t0 + run_ms + 1
            out["entries"] += [
                (f"txn_s{job_no:07d}", "settle", held, -cost, org, None, hold, settled_at),
                (f"txn_s{job_no:07d}", "settle", spent_acc, voucher, org, issuer, hold, settled_at),
                (f"txn_s{job_no:07d}", "settle", copaid, cost - voucher, org, None, hold, settled_at),
            ]
            out["usage"] += [
                (job, "cpu", org, 1000 * run_ms, t0, t0 + run_ms),
                (job, "memory", org, 2048 * run_ms, t0, t0 + run_ms),
            ]
            if job_no < gpu_jobs:
                out["usage"].append((job, "gpu", org, run_ms, t0, t0 + run_ms))
            job_no += 1
    return out


_INSERTS = {
    "orgs": "INSERT INTO organisations (id, name, role, created_ms) VALUES (?,?,?,?)",
    "accounts": "INSERT INTO accounts (id, kind, org_id, grant_id, balance, floor) VALUES (?,?,?,?,?,?)",
    "vouchers": "INSERT INTO vouchers (jti, issuer_org, sme_org, kid, credits, coverage_bps, resources, nbf, exp, "
    "credit_exp, year, issued_ms, status, changed_ms, claims) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
    "grants": "INSERT INTO grants (id, org_id, issuer_org, voucher_jti, account_id, amount, coverage_bps, resources, "
    "expires_ms, created_ms, status) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
    "jobs": "INSERT INTO jobs (id, org_id, kind, name, state, entrypoint, requirements, milli_cpu, gpus, memory_mib, "
    "max_runtime_s, priority, rate_card_version, max_cost, hold_id, cost, voucher_paid, copaid, message, "
    "submitted_ms, admitted_ms, started_ms, ended_ms, settled_ms, stop_requested) "
    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,0)",
    "holds": "INSERT INTO holds (id, org_id, job_id, amount, settled, released, state, lines, created_ms, expires_ms, "
    "closed_ms) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
    "entries": "INSERT INTO entries (txn_id, kind, account_id, amount, org_id, issuer_org, hold_id, created_ms) "
    "VALUES (?,?,?,?,?,?,?,?)",
    "usage": "INSERT INTO usage_records (job_id, resource, org_id, quantity, start_ms, end_ms) VALUES (?,?,?,?,?,?)",
}

RAW_SQL = {
    "money": """
        SELECT e.org_id, SUM(CASE WHEN e.account_id = :spent THEN 1 ELSE 0 END),
               SUM(CASE WHEN e.account_id = :spent THEN e.amount ELSE 0 END),
               SUM(CASE WHEN a.kind = 'copaid' THEN e.amount ELSE 0 END)
        FROM entries e JOIN accounts a ON a.id = e.account_id
        WHERE e.kind = 'settle' AND e.created_ms >= :start AND e.created_ms < :end
        GROUP BY e.org_id""",
    "usage": """
        SELECT org_id, resource, SUM(quantity) FROM usage_records
        WHERE end_ms >= :start AND end_ms < :end GROUP BY org_id, resource""",
    "credit": """
        SELECT e.org_id, a.kind, SUM(e.amount) FROM entries e JOIN accounts a ON a.id = e.account_id
        WHERE a.org_id = :issuer AND a.kind IN ('programme', 'expired')
          AND e.created_ms >= :start AND e.created_ms < :end GROUP BY e.org_id, a.kind""",
    "left": """
        SELECT g.org_id, SUM(e.amount) FROM grants g JOIN entries e ON e.account_id = g.account_id
        WHERE g.issuer_org = :issuer AND e.created_ms < :end GROUP BY g.org_id""",
}


def raw_report(db_path: Path, issuer: str, spent: int) -> dict[str, dict[str, int]]:
    """The same per-SME numbers from hand-written SQL over a plain sqlite3 connection."""
    params = {"spent": spent, "issuer": issuer, "start": MONTH_START, "end": MONTH_START + 30 * 86_400_000}
    out: dict[str, dict[str, int]] = {}
    with sqlite3.connect(db_path) as conn:
        for org, jobs, voucher, copay in conn.execute(RAW_SQL["money"], params):
            out.setdefault(org, {}).update(jobs=jobs, voucher_share=voucher, copay=copay or 0)
        for org, resource, quantity in conn.execute(RAW_SQL["usage"], params):
            out.setdefault(org, {})[resource] = quantity
        for org, kind, amount in conn.execute(RAW_SQL["credit"], params):
            key = "credit_redeemed" if kind == "programme" else "credit_expired"
            out.setdefault(org, {})[key] = -amount if kind == "programme" else amount
        for org, amount in conn.execute(RAW_SQL["left"], params):
            out.setdefault(org, {})["credit_left"] = amount
    return out


def _best(fn: Any, repeat: int) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return best, result


def main() -> None:
    """Build the data, time both paths, check they agree, print the BENCH line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--keep", type=Path, default=None, help="Keep the state directory here (must not exist)."
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sbx-bench-report-") as tmp:
        state = args.keep or Path(tmp) / "state"
        settings = Settings(state_dir=state, compute="fake", background_loops=False)
        operator_token = initialise(state, settings=settings)["token"]
        container = build_container(settings, clock=FakeClock(MONTH_START + 31 * 86_400_000 - 1))
        services = build_services(container)
        try:
            op = services.orgs.authenticate(operator_token)
            assert op is not None
            issuer_org = services.orgs.create(
                op, name="Bench Programme", role="issuer", year_budget=10**15, sme_cap=10**12
            )
            token = services.orgs.create_token(None, org_id=issuer_org["id"])["token"]
            issuer = services.orgs.authenticate(token)
            assert issuer is not None
            db_path = state / "broker.db"
            with sqlite3.connect(db_path) as conn:
                accounts = dict(
                    conn.execute(
                        "SELECT kind, id FROM accounts WHERE org_id = ?", (issuer.org_id,)
                    ).fetchall()
                )
                first = conn.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM accounts").fetchone()[0]
            _say("generating rows …")
            rows = _rows(issuer.org_id, accounts["programme"], accounts["spent"], first)
            started = time.perf_counter()
            with sqlite3.connect(db_path) as conn:
                conn.execute("PRAGMA foreign_keys=ON")
                for table, values in rows.items():
                    conn.executemany(_INSERTS[table], values)
                    _say(f"inserted {len(values):,} {table}")
            # The broker keeps the subsidy roll-up as it settles; rows inserted behind its back get theirs the
            # way an upgrade does (the migration's rebuild from the ledger), and the roll-up is checked below
            # against the raw SQL over the ledger itself.
            container.db.write(subsidy.rebuild)
            with sqlite3.connect(db_path) as conn:
                conn.execute("ANALYZE")
            _say(
                f"{len(rows['usage']):,} usage records, {len(rows['jobs']):,} jobs in {time.perf_counter() - started:.1f} s"
            )
            period = "2026-11"
            report_s, document = _best(lambda: services.reports.subsidy(issuer, period=period), args.repeat)
            raw_s, raw = _best(lambda: raw_report(db_path, issuer.org_id, accounts["spent"]), args.repeat)
            _check(document["report"]["rows"], raw)
        finally:
            container.close()
    print(
        f"report rows: {len(document['report']['rows'])}, totals cost {document['report']['totals']['cost']:,}"
    )
    print(
        f"BENCH report report_s={report_s:.3f} raw_s={raw_s:.3f} ratio={report_s / raw_s:.2f} rows={len(rows['usage'])}"
    )


def _check(rows: list[dict[str, Any]], raw: dict[str, dict[str, int]]) -> None:
    """The project's report and the raw SQL agree on every SME's money, credit and job count."""
    if len(rows) != len(raw):
        raise SystemExit(f"row count differs: report {len(rows)} vs raw {len(raw)}")
    for row in rows:
        theirs = raw[row["org_id"]]
        for key in ("jobs", "voucher_share", "copay", "credit_redeemed", "credit_left"):
            if row[key] != theirs.get(key, 0):
                raise SystemExit(f"{row['org_id']} {key}: report {row[key]} vs raw {theirs.get(key, 0)}")
        if row["cpu_hours"] != _hours(theirs.get("cpu", 0), 1000 * 3_600_000):
            raise SystemExit(f"{row['org_id']}: CPU-hours differ")


def _hours(quantity: int, per_hour: int) -> str:
    from fractions import Fraction

    f = Fraction(quantity, per_hour)
    return f"{f.numerator}/{f.denominator}"


if __name__ == "__main__":
    main()
