"""The subsidy report reconciles with the ledger to the unit (issue 14, item 7), SQLite and PostgreSQL.

Per SME and in total: ``cost`` = ``voucher_share`` + ``copay``; ``voucher_share`` equals the programme's
settle legs and ``copay`` the settle legs on the SME's ``copaid`` account, for every hold settled in the
period — including holds with no voucher line (the SME's voucher ran out and it paid alone), which the
report used to leave out. The roll-up's drift check stays green. Negative control: without the co-payment
roll-up the same report falls short of the ledger.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import text

import broker.services.reports as reports_module
from broker.db import subsidy
from broker.db.orgs import Principal
from quotas.ledger import HoldState
from tests.bank_workload import LEDGER_BY_SME
from tests.conftest import BACKENDS, World

pytestmark = pytest.mark.parametrize("database_url", BACKENDS, indirect=True)


def _ledger(world: World, start: int, end: int) -> dict[str, tuple[int, int]]:
    """Per SME, (voucher share, co-payment) straight from the settle entries of the period."""
    rows = world.services.container.db.read(
        lambda conn: conn.execute(LEDGER_BY_SME, {"s": start, "e": end}).all()
    )
    return {r.org_id: (int(r.voucher), int(r.copay)) for r in rows}


def _settle(world: World, sme: Principal, amount: int, cost: int) -> None:
    ledger = world.services.ledger
    hold = ledger.place_hold(sme, amount=amount)
    ledger.close_hold(world.operator, hold_id=hold["id"], target=HoldState.SETTLED, cost=cost)


def _spend(world: World) -> None:
    """SME A: half-covered spending, then its voucher runs dry and it pays alone; SME B: fully covered."""
    for sme in (world.sme, world.sme_b):
        world.services.ledger.set_copay_limit(world.operator, org_id=sme.org_id, limit=1_000_000)
    world.credit(3_000, coverage_bps=5_000)
    world.credit(5_000, sme=world.sme_b)
    _settle(world, world.sme, 4_000, 3_001)  # 50%: a voucher line and a co-payment line
    _settle(world, world.sme, 4_000, 3_999)  # the voucher's rest, the rest co-paid
    _settle(world, world.sme, 9_000, 7_777)  # no voucher credit left: no voucher line at all
    _settle(world, world.sme, 500, 0)  # a zero-cost settlement counts nowhere
    _settle(world, world.sme_b, 2_000, 1_234)


def _report(world: World) -> dict[str, Any]:
    period = datetime.fromtimestamp(world.clock.now_ms() / 1000, tz=UTC).strftime("%Y-%m")
    return dict(world.services.reports.subsidy(world.issuer, period=period)["report"])


def test_the_report_equals_the_ledger_per_sme_and_in_total(world: World) -> None:
    _spend(world)
    report = _report(world)
    truth = _ledger(world, report["period"]["start_ms"], report["period"]["end_ms"])
    rows = {r["org_id"]: r for r in report["rows"]}
    assert set(truth) <= set(rows)
    for org, (voucher, copay) in truth.items():
        row = rows[org]
        assert (row["voucher_share"], row["copay"]) == (voucher, copay), org
        assert row["cost"] == row["voucher_share"] + row["copay"] == voucher + copay
    assert rows[world.sme.org_id]["jobs"] == 3  # the co-paid-only hold is a job of the report too
    assert rows[world.sme.org_id]["copay"] > 7_777
    totals = report["totals"]
    assert totals["voucher_share"] == sum(v for v, _ in truth.values())
    assert totals["copay"] == sum(c for _, c in truth.values())
    assert totals["cost"] == totals["voucher_share"] + totals["copay"]
    over_time = report["over_time"]
    assert sum(b["copay"] for b in over_time) == totals["copay"]
    assert world.services.container.db.write(subsidy.drift) == []
    assert world.services.ledger.invariants() == []


def test_without_the_co_payment_roll_up_the_report_falls_short(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Negative control: the report as it was (co-payment of voucher-less holds left out) misses the ledger."""
    _spend(world)
    monkeypatch.setattr(reports_module, "_COPAY_ONLY", text("SELECT 1 AS org_id WHERE 1 = 0"))
    report = _report(world)
    truth = _ledger(world, report["period"]["start_ms"], report["period"]["end_ms"])
    row = next(r for r in report["rows"] if r["org_id"] == world.sme.org_id)
    assert row["copay"] == truth[world.sme.org_id][1] - 7_777


def test_the_drift_check_sees_a_co_payment_roll_up_that_is_off(world: World) -> None:
    """Negative control of the drift check: a changed co-payment row is reported."""
    _spend(world)
    db = world.services.container.db
    db.write(lambda conn: conn.execute(text("UPDATE subsidy_copay SET copay = copay + 1")))
    assert db.write(subsidy.drift) != []
