"""The bank test under crashes (issue 8, point 1), after Jepsen's bank workload.

Real ``sbx serve`` processes with fake compute; concurrent clients redeem, hold, settle, release, close
twice, redeem twice and submit jobs with idempotency keys and retries while a seeded chaos loop SIGKILLs a
broker at random moments and restarts it; a reader checks conservation at every read; the end state is
checked from a container over the same database (see :mod:`tests.bank_workload`). On SQLite with one
broker, and on PostgreSQL with two replicas of which either may be killed. Both runs live in this one file
so that ``pytest -n 2 --dist loadfile`` runs them one after the other on one worker (side by side they
would share the two cores and each take far longer), and the suite starts them first (``slow`` tests lead,
see ``tests/conftest.py``). ``SBX_BANK_SEED`` replays a
seed (the schedule of operations and kills; thread timing is not reproducible).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import update

from broker.db import tables as t
from quotas.ledger import HoldState
from tests.bank_workload import (
    MIN_KILLS,
    MIN_OPS,
    BankConfig,
    Knowledge,
    check_report,
    privacy_problems,
    report_problems,
    roll_up_problems,
    run_bank,
    seed_from_env,
    table_problems,
)
from tests.conftest import World
from tests.integration.test_datasets_service import COUNT, add_custodian, grant, register


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_bank_on_sqlite_with_one_broker_killed_at_random(tmp_path: Path) -> None:
    report = run_bank(
        BankConfig(
            seed=seed_from_env(), work_dir=tmp_path, min_ops=MIN_OPS, min_kills=MIN_KILLS, progress=print
        )
    )
    check_report(report)


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_bank_on_postgresql_with_two_replicas_either_killed_at_random(
    tmp_path: Path, empty_pg_database: str
) -> None:
    report = run_bank(
        BankConfig(
            seed=seed_from_env(),
            work_dir=tmp_path,
            database_url=empty_pg_database,
            replicas=2,
            min_ops=MIN_OPS,
            min_kills=MIN_KILLS,
            progress=print,
        )
    )
    check_report(report)


def test_end_state_checks_catch_a_wrong_acknowledgement_and_a_hold_closed_but_held(world: World) -> None:
    """Negative control for the end-state checks: they pass on a sound state and flag broken ones."""
    services = world.services
    redeemed = world.credit(1_000)
    hold = services.ledger.place_hold(world.sme, amount=100, idempotency_key=None)
    services.ledger.close_hold(world.operator, hold_id=hold["id"], target=HoldState.SETTLED, cost=40)
    smes = [world.sme.org_id, world.sme_b.org_id]
    jti = redeemed["grant"]["voucher_jti"]
    know = Knowledge(
        books={}, grants={jti: redeemed["grant"]["id"]}, holds={hold["id"]: (world.sme.org_id, 100)}
    )
    know.closed[hold["id"]] = ("SETTLED", 40)
    read = services.container.db.read
    assert read(lambda conn: table_problems(conn, know, smes)) == []

    know.closed[hold["id"]] = ("RELEASED", 0)  # a client was told something the database does not hold
    know.grants[jti] = "grant-that-never-was"
    problems = read(lambda conn: table_problems(conn, know, smes))
    assert any(hold["id"] in p and "acknowledged RELEASED" in p for p in problems), problems
    assert any(jti in p and "grant-that-never-was" in p for p in problems), problems

    know.closed[hold["id"]] = ("SETTLED", 40)
    know.grants[jti] = redeemed["grant"]["id"]
    services.container.db.write(
        lambda conn: conn.execute(update(t.holds).where(t.holds.c.id == hold["id"]).values(state="HELD"))
    )
    problems = read(lambda conn: table_problems(conn, know, smes))
    assert any(f"hold {hold['id']} is HELD with 1 closings" in p for p in problems), problems

    db = services.container.db
    assert roll_up_problems(db) == []
    db.write(lambda conn: conn.execute(update(t.subsidy_daily).values(voucher=t.subsidy_daily.c.voucher + 1)))
    problems = roll_up_problems(db)
    assert len(problems) == 1 and "subsidy roll-up differs" in problems[0], problems
    assert roll_up_problems(db) == problems  # the check's rebuild was rolled back


class _Crash(BaseException):
    """The broker dying mid-query: no handler sees it, so nothing settles."""


def test_privacy_end_checks_catch_a_reserved_charge_a_wrong_ack_and_a_report_off_the_ledger(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Negative controls for the issue 14 end checks: sound states pass, each broken one is flagged."""
    services, db = world.services, world.services.container.db
    world.credit(100_000)
    custodian = add_custodian(world)
    dataset = register(world, custodian)
    grant(world, custodian, dataset["id"])
    answer = services.datasets.query(
        world.sme, dataset_id=dataset["id"], queries=[COUNT], idempotency_key="k"
    )
    know = Knowledge(books={})
    eps = int(str(COUNT["epsilon_micro"]))
    know.queries[answer["query_id"]] = (world.sme.org_id, eps)
    assert privacy_problems(db, know, now_ms=world.clock.now_ms()) == []

    def dies(*_args: object) -> None:
        raise _Crash

    with monkeypatch.context() as patch:
        patch.setattr(services.datasets, "_run", dies)
        with pytest.raises(_Crash):
            services.datasets.query(world.sme, dataset_id=dataset["id"], queries=[COUNT], idempotency_key="c")
    problems = privacy_problems(db, know, now_ms=world.clock.now_ms())
    assert any("still reserved" in p for p in problems), problems
    world.clock.advance((services.container.settings.query_deadline_s + 1) * 1000)
    assert services.datasets.reconcile_interrupted() == 1
    assert privacy_problems(db, know, now_ms=world.clock.now_ms()) == []

    know.queries[answer["query_id"]] = (world.sme.org_id, eps + 1)  # told another ε
    problems = privacy_problems(db, know, now_ms=world.clock.now_ms())
    assert any("is stored as" in p for p in problems), problems

    operator = services.orgs.authenticate(world.tokens["op2"])
    assert operator is not None
    hold = services.ledger.place_hold(world.sme, amount=500, idempotency_key=None)
    services.ledger.close_hold(world.operator, hold_id=hold["id"], target=HoldState.SETTLED, cost=321)
    assert report_problems(services, operator) == []
    db.write(lambda conn: conn.execute(update(t.subsidy_daily).values(voucher=t.subsidy_daily.c.voucher + 1)))
    problems = report_problems(services, operator)
    assert any("report row" in p for p in problems), problems
