"""Subsidy reports from real jobs on the fake backend: totals reconcile to the unit with an independent sum of
ledger entries (raw SQL), scoping by role, signatures, CSV/HTML, and the data-access report (SQLite + PostgreSQL)."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select, text

from broker.compute import launch_name
from broker.compute.fake import FakeBackend, FakeScript
from broker.db import subsidy
from broker.db import tables as t
from broker.errors import Forbidden
from broker.services.jobs import JobRequest
from broker.services.registry import Services
from broker.services.reports import ReportSignatureInvalid, parse_period, subsidy_csv, verify_report
from broker.web.render import subsidy_html
from common.errors import InvalidInput, NotFound
from common.resources import Resources
from tests.conftest import BACKENDS, DAY_S, World

pytestmark = pytest.mark.parametrize("database_url", BACKENDS, indirect=True)
ONE_CPU = Resources(milli_cpu=1000, gpus=0, memory_mib=2048)


@pytest.fixture
def fake(services: Services, clock: Any) -> FakeBackend:
    """The fake backend, with the clock moved to the 2nd of next month so a test's days stay in one month."""
    now = datetime.fromtimestamp(clock.now_ms() / 1000, tz=UTC)
    nxt = datetime(now.year + now.month // 12, now.month % 12 + 1, 2, tzinfo=UTC)
    clock.set(int(nxt.timestamp()) * 1000)
    backend = FakeBackend(clock, capacity=Resources(milli_cpu=8000, gpus=0, memory_mib=32_768))
    services.container.use_compute(backend)
    return backend


def _period(world: World) -> str:
    return datetime.fromtimestamp(world.clock.now_ms() / 1000, tz=UTC).strftime("%Y-%m")


def _run_job(world: World, fake: FakeBackend, sme: Any, run_ms: int) -> dict[str, Any]:
    job = world.services.jobs.submit(sme, JobRequest("python x.py", ONE_CPU, 600, 0), idempotency_key=None)
    fake.script(launch_name(job["id"]), FakeScript(run_ms=run_ms))
    for _ in range(6):
        world.clock.advance(run_ms // 2 + 500)
        world.services.jobs.reconcile_pass()
        world.services.jobs.admission_pass()
    done = world.services.jobs.get(world.operator, job_id=job["id"])
    assert done["settled_ms"], done
    return done


def _independent(services: Services, issuer: str, start: int, end: int) -> dict[str, dict[str, int]]:
    """Per-SME sums written straight from the entries table, without the report's queries."""
    sql = {
        "voucher_share": """
            SELECT e.org_id, SUM(e.amount) FROM entries e JOIN accounts a ON a.id = e.account_id
            WHERE a.kind = 'spent' AND a.org_id = :i AND e.created_ms >= :s AND e.created_ms < :e GROUP BY e.org_id""",
        "copay": """
            SELECT e.org_id, SUM(e.amount) FROM entries e JOIN accounts a ON a.id = e.account_id
            WHERE a.kind = 'copaid' AND e.created_ms >= :s AND e.created_ms < :e AND e.hold_id IN (
              SELECT x.hold_id FROM entries x JOIN accounts b ON b.id = x.account_id
              WHERE b.kind = 'spent' AND b.org_id = :i AND x.amount > 0) GROUP BY e.org_id""",
        "credit_redeemed": """
            SELECT e.org_id, -SUM(e.amount) FROM entries e JOIN accounts a ON a.id = e.account_id
            WHERE a.kind = 'programme' AND a.org_id = :i AND e.created_ms >= :s AND e.created_ms < :e GROUP BY e.org_id""",
        "credit_expired": """
            SELECT e.org_id, SUM(e.amount) FROM entries e JOIN accounts a ON a.id = e.account_id
            WHERE a.kind = 'expired' AND a.org_id = :i AND e.created_ms >= :s AND e.created_ms < :e GROUP BY e.org_id""",
        "credit_left": """
            SELECT a.org_id, SUM(e.amount) FROM entries e JOIN accounts a ON a.id = e.account_id
            JOIN grants g ON g.account_id = a.id WHERE g.issuer_org = :i AND e.created_ms < :e GROUP BY a.org_id""",
    }
    out: dict[str, dict[str, int]] = {}

    def read(conn: Any) -> None:
        for name, query in sql.items():
            for org, value in conn.execute(text(query), {"i": issuer, "s": start, "e": end}):
                out.setdefault(org, {})[name] = int(value)

    services.container.db.read(read)
    return out


def test_subsidy_report_reconciles_with_the_ledger_to_the_unit(world: World, fake: FakeBackend) -> None:
    world.credit(400_000, coverage_bps=8_000)
    world.credit(300_000, sme=world.sme_b, coverage_bps=10_000)
    world.services.ledger.set_copay_limit(world.operator, org_id=world.sme.org_id, limit=100_000)
    jobs_a = [_run_job(world, fake, world.sme, ms) for ms in (4_000, 7_000, 1_500)]
    jobs_b = [_run_job(world, fake, world.sme_b, 9_000)]
    short = world.voucher(sme=world.sme_b, credits=5_000, credit_s=DAY_S)
    world.services.vouchers.redeem(world.sme_b, token=short["token"], idempotency_key=None)
    world.clock.advance((DAY_S + 1) * 1000)  # the short grant expires unused
    world.services.ledger.reap()
    doc = world.services.reports.subsidy(world.issuer, period=_period(world))
    report = doc["report"]
    rows = {r["org_id"]: r for r in report["rows"]}
    period = parse_period(_period(world))
    truth = _independent(world.services, world.issuer.org_id, period.start_ms, period.end_ms)

    for org, jobs in ((world.sme.org_id, jobs_a), (world.sme_b.org_id, jobs_b)):
        row, ledger = rows[org], truth[org]
        assert row["jobs"] == len(jobs)
        assert row["voucher_share"] == ledger["voucher_share"] == sum(j["voucher_paid"] for j in jobs)
        assert row["copay"] == ledger.get("copay", 0) == sum(j["copaid"] for j in jobs)
        assert row["cost"] == sum(j["cost"] for j in jobs) == row["voucher_share"] + row["copay"]
        assert row["credit_redeemed"] == ledger["credit_redeemed"]
        assert row["credit_expired"] == ledger.get("credit_expired", 0)
        assert row["credit_left"] == ledger["credit_left"]
    assert rows[world.sme.org_id]["copay"] > 0  # 80% coverage: the SME co-paid
    assert rows[world.sme_b.org_id]["credit_expired"] == 5_000
    assert rows[world.sme.org_id]["credit_redeemed"] == 400_000
    run_ms = sum(int(j["ended_ms"]) - int(j["started_ms"]) for j in jobs_a)
    assert rows[world.sme.org_id]["cpu_hours"] == _fraction(run_ms, 3_600_000)
    assert rows[world.sme.org_id]["gib_hours"] == _fraction(2 * run_ms, 3_600_000)
    totals = report["totals"]
    for field in (
        "jobs",
        "cost",
        "voucher_share",
        "copay",
        "credit_redeemed",
        "credit_expired",
        "credit_left",
    ):
        assert totals[field] == sum(r[field] for r in report["rows"])
    # the programme's spent and expired accounts hold exactly the report's totals (all activity is in this month)
    balances = world.services.container.db.read(
        lambda conn: dict(
            conn.execute(
                text("SELECT kind, balance FROM accounts WHERE org_id = :i AND grant_id IS NULL"),
                {"i": world.issuer.org_id},
            ).all()
        )
    )
    assert balances["spent"] == totals["voucher_share"]
    assert balances["expired"] == totals["credit_expired"]
    assert -balances["programme"] == totals["credit_redeemed"]
    assert world.services.ledger.invariants() == []
    _assert_roll_up_equals_the_ledger(world)


def _assert_roll_up_equals_the_ledger(world: World) -> None:
    """The roll-up settlements kept, row for row, equals the one recomputed from entries, holds and usage."""
    db = world.services.container.db
    assert db.read(lambda conn: conn.execute(select(t.subsidy_daily)).first()), "settlements kept no roll-up"
    assert db.write(subsidy.drift) == []


def _fraction(num: int, den: int) -> str:
    from fractions import Fraction

    f = Fraction(num, den)
    return f"{f.numerator}/{f.denominator}"


def test_signature_verifies_and_any_change_breaks_it(world: World, fake: FakeBackend) -> None:
    world.credit(100_000)
    _run_job(world, fake, world.sme, 3_000)
    doc = world.services.reports.subsidy(world.operator, period=_period(world))
    jwks = world.services.vouchers.jwks()
    assert verify_report(doc, jwks)["ok"]
    doc["report"]["totals"]["voucher_share"] += 1
    with pytest.raises(ReportSignatureInvalid, match="changed"):
        verify_report(doc, jwks)
    with pytest.raises(ReportSignatureInvalid, match="no key"):
        verify_report(doc, {"keys": []})


def test_scoping_issuers_see_their_programme_only(world: World, fake: FakeBackend) -> None:
    period = _period(world)
    with pytest.raises(Forbidden):
        world.services.reports.subsidy(world.sme, period=period)
    with pytest.raises(NotFound):
        world.services.reports.subsidy(world.issuer, period=period, issuer_org=world.sme.org_id)
    with pytest.raises(NotFound):
        world.services.reports.subsidy(world.operator, period=period, issuer_org=world.sme.org_id)
    own = world.services.reports.subsidy(world.issuer, period=period)
    assert own["report"]["programme"]["org_id"] == world.issuer.org_id


def test_csv_and_html_carry_the_same_numbers(world: World, fake: FakeBackend) -> None:
    world.credit(100_000, coverage_bps=5_000)
    world.services.ledger.set_copay_limit(world.operator, org_id=world.sme.org_id, limit=100_000)
    _run_job(world, fake, world.sme, 6_000)
    doc = world.services.reports.subsidy(world.issuer, period=_period(world))
    rows = list(csv.DictReader(io.StringIO(subsidy_csv(doc))))
    assert rows[-1]["org_id"] == "total"
    by_org = {r["org_id"]: r for r in rows}
    row = by_org[world.sme.org_id]
    assert int(row["voucher_share"]) + int(row["copay"]) == int(row["cost"]) > 0
    page = subsidy_html(doc)
    assert "<svg" in page and "sme-a" in page and f"{int(row['cost']):,}" in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")  # no external resources


def test_progress_over_a_long_period_and_bad_periods(world: World, fake: FakeBackend) -> None:
    seen: list[tuple[int, int, str]] = []
    year = _period(world)[:4]
    world.services.reports.subsidy(world.issuer, period=year, progress=lambda d, t, w: seen.append((d, t, w)))
    assert [s[0] for s in seen] == list(range(1, 13)) and seen[-1][2] == f"{year}-12"
    for bad in ("2026-13", "26-11", "2026-05..2026-01", "1800-01"):
        with pytest.raises(InvalidInput):
            world.services.reports.subsidy(world.issuer, period=bad)


def test_data_access_report_is_scoped_to_the_custodian(world: World) -> None:
    period = _period(world)
    with pytest.raises(Forbidden):
        world.services.reports.data_access(world.sme, period=period)
    doc = world.services.reports.data_access(world.operator, period=period)
    assert doc["report"]["rows"] == [] and doc["report"]["totals"]["releases"] == 0
    assert verify_report(doc, world.services.vouchers.jwks())["ok"]


def test_a_job_paid_by_two_programmes_splits_exactly(world: World, fake: FakeBackend) -> None:
    services = world.services
    second = services.orgs.create(
        world.operator, name="second-programme", role="issuer", year_budget=10**9, sme_cap=10**8
    )
    token = services.orgs.create_token(None, org_id=second["id"])["token"]
    issuer2 = services.orgs.authenticate(token)
    assert issuer2 is not None
    services.vouchers.create_key(issuer2)
    world.credit(50, coverage_bps=10_000)  # the first programme's small grant expires first: drawn first
    now_s = world.clock.now_ms() // 1000
    big = services.vouchers.issue(
        issuer2,
        sme_org=world.sme.org_id,
        credits=100_000,
        coverage_bps=10_000,
        resources=("cpu", "memory"),
        valid_from_s=None,
        valid_until_s=now_s + 30 * DAY_S,
        credit_expires_s=now_s + 400 * DAY_S,
    )
    services.vouchers.redeem(world.sme, token=big["token"], idempotency_key=None)
    job = _run_job(world, fake, world.sme, 8_000)
    period = _period(world)
    first = {r["org_id"]: r for r in services.reports.subsidy(world.issuer, period=period)["report"]["rows"]}
    other = {
        r["org_id"]: r
        for r in services.reports.subsidy(world.operator, period=period, issuer_org=issuer2.org_id)["report"][
            "rows"
        ]
    }
    a, b = first[world.sme.org_id], other[world.sme.org_id]
    assert a["jobs"] == b["jobs"] == 1
    assert a["voucher_share"] + b["voucher_share"] == job["voucher_paid"] == job["cost"]
    assert a["voucher_share"] > 0 and b["voucher_share"] > 0 and a["copay"] == b["copay"] == 0
    assert a["credit_left"] == 50 - a["voucher_share"] and b["credit_left"] == 100_000 - b["voucher_share"]
    _assert_roll_up_equals_the_ledger(world)
