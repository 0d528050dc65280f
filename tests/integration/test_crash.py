"""Crash safety: a broker process killed with SIGKILL between two statements of a ledger transaction.

SQLite only (the embedded default, where the group-commit writer thread owns every transaction; PostgreSQL's
own crash recovery is not ours to test). ``crash_worker.py`` runs redeem / hold / settle / release over the
test's own state directory and database, and a ``before_cursor_execute`` hook kills it at a seeded statement
inside the target operation — in the middle of a redemption, a hold, a settlement or a release — or, with
four client threads at once, anywhere inside a group-committed batch. After every kill the test reopens
the database with a new container and checks:

* the ledger invariants are empty (sum zero, floors, entries = balances, balanced transactions, holds);
* every redeemed voucher has exactly one grant, and no grant belongs to a voucher that is not redeemed;
* every hold is ``HELD`` or closed with ``settled + released = amount``;
* everything the worker acknowledged (printed after the service call returned) is there: grants, holds,
  settlements and releases;
* the operation that was killed left no trace (every statement of it runs before its commit); with threads,
  at most one unacknowledged write per client thread (committed, killed before it could print);
* the audit chain, appended in the same transactions, still verifies.

Set ``SBX_CRASH_SEED`` to replay another sequence; the seed and every kill point are printed.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Connection, text

from broker.container import build_container
from broker.services.registry import build_services
from broker.settings import Settings
from tests.conftest import World

WORKER = Path(__file__).with_name("crash_worker.py")
KILLS = 16
TARGETS = ("redeem", "settle", "hold", "release", "threads")
THREADS = 4  # crash_worker.THREADS: client threads of a ``threads`` run
SEED = int(os.environ.get("SBX_CRASH_SEED", "20261125"))


@dataclass
class Acks:
    """What one worker run acknowledged, parsed from its stdout."""

    redeemed: list[tuple[str, str, int]] = field(default_factory=list)  # jti, grant id, credits
    holds: dict[str, int] = field(default_factory=dict)  # hold id -> credits
    settled: dict[str, int] = field(default_factory=dict)  # hold id -> cost
    released: list[str] = field(default_factory=list)
    last_begin: str = ""
    in_flight: str = ""  # the voucher jti or hold id of the operation that was killed
    kill_line: str = ""


def parse(stdout: str) -> Acks:
    """Read the worker's protocol lines."""
    acks = Acks()
    for line in stdout.splitlines():
        word, *rest = line.split()
        if word == "BEGIN":
            acks.last_begin = rest[0]
            acks.in_flight = rest[1] if len(rest) > 1 else ""
        elif word == "KILL":
            acks.kill_line = line
        elif word == "REDEEMED":
            acks.redeemed.append((rest[0], rest[1], int(rest[2])))
        elif word == "HOLD":
            acks.holds[rest[0]] = int(rest[1])
        elif word == "SETTLED":
            acks.settled[rest[0]] = int(rest[1])
        elif word == "RELEASED":
            acks.released.append(rest[0])
    return acks


def run_worker(settings: Settings, world: World, *, seed: int, target: str, kill_after: int) -> Acks:
    """Start the worker on the test's state and wait for it to be killed."""
    env = {
        **os.environ,
        "SBX_CRASH_OPERATOR_TOKEN": world.tokens["op2"],
        "SBX_CRASH_ISSUER_TOKEN": world.tokens["issuer"],
        "SBX_CRASH_SME_TOKEN": world.tokens["sme-a"],
        "SBX_KEK_FILE": str(settings.kek_file),  # the worker opens the same state dir: the same KEK
    }
    argv = [str(settings.state_dir), settings.resolved_database_url, str(seed), target, str(kill_after)]
    done = subprocess.run(
        [sys.executable, str(WORKER), *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
        check=False,
    )
    assert done.returncode == -signal.SIGKILL, (
        f"the worker was not killed (exit {done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    )
    acks = parse(done.stdout)
    if target == "threads":
        assert acks.kill_line.startswith("KILL any "), acks.kill_line
    else:
        assert acks.kill_line.startswith(f"KILL {target} "), acks.kill_line
        assert acks.last_begin == target
    return acks


def structural_problems(conn: Connection) -> list[str]:
    """Vouchers without exactly one grant (or grants without a redeemed voucher), holds that do not add up."""
    problems = [
        f"voucher {r.jti} is redeemed but has {r.n} grants"
        for r in conn.execute(
            text(
                "SELECT v.jti, count(g.id) AS n FROM vouchers v LEFT JOIN grants g ON g.voucher_jti = v.jti "
                "WHERE v.status = 'redeemed' GROUP BY v.jti HAVING count(g.id) != 1"
            )
        )
    ]
    problems += [
        f"grant {r.id} belongs to voucher {r.voucher_jti} in status {r.status}"
        for r in conn.execute(
            text(
                "SELECT g.id, g.voucher_jti, v.status FROM grants g JOIN vouchers v ON v.jti = g.voucher_jti "
                "WHERE v.status != 'redeemed'"
            )
        )
    ]
    problems += [
        f"hold {r.id} is {r.state} with settled {r.settled} + released {r.released} != {r.amount}"
        for r in conn.execute(
            text(
                "SELECT id, state, amount, settled, released FROM holds "
                "WHERE NOT (state = 'HELD' AND settled = 0 AND released = 0) "
                "AND NOT (state != 'HELD' AND settled + released = amount)"
            )
        )
    ]
    return problems


def check_after_crash(
    settings: Settings, all_acks: list[Acks], *, threads: bool, known_holds: set[str]
) -> set[str]:
    """Reopen the database and check soundness, the durability of what was acknowledged and that the killed
    operation left no trace; returns every hold id now in the database."""
    container = build_container(settings)
    try:
        services = build_services(container)
        assert services.ledger.invariants() == []
        assert container.db.read(structural_problems) == []
        grants = container.db.read(
            lambda conn: {
                r.id: (r.voucher_jti, int(r.amount)) for r in conn.execute(text("SELECT * FROM grants"))
            }
        )
        holds = container.db.read(
            lambda conn: {
                r.id: (r.state, int(r.amount), int(r.settled))
                for r in conn.execute(text("SELECT * FROM holds"))
            }
        )
        for earlier in all_acks:  # what any run acknowledged is still there
            for jti, grant_id, credits in earlier.redeemed:
                assert grants[grant_id] == (jti, credits)
            for hold_id, amount in earlier.holds.items():
                assert holds[hold_id][1] == amount
            for hold_id, cost in earlier.settled.items():
                assert holds[hold_id] == ("SETTLED", holds[hold_id][1], cost)
            for hold_id in earlier.released:
                assert holds[hold_id][0] == "RELEASED"
        killed = all_acks[-1]
        if threads:
            pass  # several operations were in flight; only the bounds below apply
        elif killed.last_begin == "redeem":  # the killed redemption never committed
            assert killed.in_flight not in {jti for jti, _amount in grants.values()}
            status = container.db.read(
                lambda conn: conn.execute(
                    text("SELECT status FROM vouchers WHERE jti = :jti"), {"jti": killed.in_flight}
                ).scalar_one()
            )
            assert status == "issued"
        elif killed.last_begin in ("settle", "release"):  # the killed close never committed
            assert holds[killed.in_flight][0] == "HELD"
        unacknowledged = set(holds) - known_holds - {h for earlier in all_acks for h in earlier.holds}
        if killed.last_begin == "hold" and not threads:  # the killed hold never committed
            assert unacknowledged == set()
        # a client thread may have been killed after its commit, before it printed the acknowledgement
        assert len(unacknowledged) <= (THREADS if threads else 0)
        verified = services.audit.verify(None)
        assert verified["ok"], verified
        return set(holds)
    finally:
        container.close()


def test_sigkill_mid_transaction_leaves_a_sound_durable_ledger(settings: Settings, world: World) -> None:
    world.services.container.close()  # the worker is the only process writing while it runs
    rng = random.Random(SEED)
    print(f"crash test seed {SEED}")
    all_acks: list[Acks] = []
    known_holds: set[str] = set()
    mid_transaction = 0
    for i in range(KILLS):
        target = TARGETS[i % len(TARGETS)]
        kill_after = rng.randint(20, 300) if target == "threads" else rng.randint(1, 40)
        acks = run_worker(settings, world, seed=SEED + i, target=target, kill_after=kill_after)
        print(f"kill {i}: seed {SEED + i} after statement {kill_after} of {target}: {acks.kill_line}")
        all_acks.append(acks)
        known_holds = check_after_crash(
            settings, all_acks, threads=target == "threads", known_holds=known_holds
        )
        mid_transaction += acks.kill_line.split()[2].upper() not in ("BEGIN", "SAVEPOINT")
    # most kills really fell inside a transaction, after its first statements (not on BEGIN / SAVEPOINT)
    assert mid_transaction >= KILLS // 2
