"""A broker process that is killed with SIGKILL in the middle of a ledger transaction (for test_crash.py).

Usage::

    python crash_worker.py STATE_DIR DATABASE_URL SEED TARGET_OP KILL_AFTER

with the bearer tokens of an operator, an issuer and an SME in ``SBX_CRASH_OPERATOR_TOKEN``,
``SBX_CRASH_ISSUER_TOKEN`` and ``SBX_CRASH_SME_TOKEN``. It builds a container over the same state and
database as the test, then loops over redeem (issue + redeem), hold, settle and release operations chosen by
``SEED``. A SQLAlchemy ``before_cursor_execute`` hook counts the statements run while a ``TARGET_OP``
(``redeem`` | ``hold`` | ``settle`` | ``release``) is in progress and, at the ``KILL_AFTER``-th, prints
``KILL <op> <statement>`` and kills its own process — on the group-commit writer thread, between two
statements of an open transaction. Every statement of the operation runs before its commit, so the killed
operation must leave no trace. ``TARGET_OP = threads`` runs the same loop on four client threads at once
(so the writer commits batches of several transactions, each in its savepoint) and counts every statement,
printing ``KILL any <statement>``.

Each operation prints ``BEGIN <op> [<voucher jti> | <hold id>]`` before it starts and, only after the service call returned (its commit
is durable), an acknowledgement line, flushed at once::

    REDEEMED <jti> <grant id> <credits>
    HOLD <hold id> <credits>
    SETTLED <hold id> <cost>
    RELEASED <hold id>
    REFUSED <op> <code>
"""

from __future__ import annotations

import os
import random
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from sqlalchemy import event

from broker.container import Container, build_container
from broker.db.orgs import Principal
from broker.services.ledger import LedgerService
from broker.services.orgs import OrgService
from broker.services.vouchers import VoucherService
from broker.settings import Settings
from common.errors import DomainError
from quotas.ledger import HoldState

TARGETS = ("redeem", "hold", "settle", "release", "threads")
THREADS = 4  # client threads in the ``threads`` mode
MAX_OPS = 5000  # far more than any kill point needs; the worker is always killed before the end
DAY_S = 24 * 3600


_SAY = threading.Lock()


def say(line: str) -> None:
    """Print one protocol line and flush it, so the parent sees it even after SIGKILL."""
    with _SAY:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


class Killer:
    """Counts statements of the target operation (or all, for ``any``) and kills this process at one."""

    def __init__(self, target: str, kill_after: int) -> None:
        self.target = target
        self.kill_after = kill_after
        self.current = ""
        self.count = 0

    def before_cursor_execute(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        """The SQLAlchemy hook: runs before every statement, on whichever thread executes it."""
        if self.target != "any" and self.current != self.target:
            return
        self.count += 1
        if self.count >= self.kill_after:
            say(f"KILL {self.current if self.target != 'any' else 'any'} {' '.join(statement.split())[:80]}")
            os.kill(os.getpid(), signal.SIGKILL)

    def mark(self, op: str) -> None:
        """Name the operation whose statements run next (single-threaded mode only)."""
        if self.target != "any":
            self.current = op


def principal(orgs: OrgService, env: str) -> Principal:
    """The principal of the bearer token in environment variable ``env``."""
    found = orgs.authenticate(os.environ[env])
    if found is None:
        raise SystemExit(f"{env} is not a valid token")
    return found


class Client:
    """One client's loop of ledger operations over the services, acknowledging each after it returned."""

    def __init__(self, container: Container, killer: Killer) -> None:
        orgs = OrgService(container)
        self.clock = container.clock
        self.vouchers, self.ledger = VoucherService(container), LedgerService(container)
        self.operator = principal(orgs, "SBX_CRASH_OPERATOR_TOKEN")
        self.issuer = principal(orgs, "SBX_CRASH_ISSUER_TOKEN")
        self.sme = principal(orgs, "SBX_CRASH_SME_TOKEN")
        self.killer = killer

    def run(self, seed: int) -> None:
        """Run operations chosen by ``seed`` until the process is killed (or MAX_OPS)."""
        rng = random.Random(seed)
        open_holds: list[tuple[str, int]] = []
        for _ in range(MAX_OPS):
            op = rng.choice(("redeem", "hold", "hold", "settle", "release"))
            if op in ("settle", "release") and not open_holds:
                op = "hold"
            try:
                self.step(op, rng, open_holds)
            except DomainError as exc:
                self.killer.mark("")
                say(f"REFUSED {op} {exc.code}")

    def step(self, op: str, rng: random.Random, open_holds: list[tuple[str, int]]) -> None:
        """One operation: BEGIN line, the service call (statements counted), then its acknowledgement."""
        if op == "redeem":
            self.killer.mark("issue")
            now_s = self.clock.now_ms() // 1000
            issued = self.vouchers.issue(
                self.issuer,
                sme_org=self.sme.org_id,
                credits=rng.randint(20, 200),
                coverage_bps=10_000,
                resources=("cpu",),
                valid_from_s=None,
                valid_until_s=now_s + DAY_S,
                credit_expires_s=now_s + 30 * DAY_S,
            )
            say(f"BEGIN redeem {issued['jti']}")
            self.killer.mark("redeem")
            grant = self.vouchers.redeem(self.sme, token=issued["token"], idempotency_key=None)["grant"]
            self.killer.mark("")
            say(f"REDEEMED {grant['voucher_jti']} {grant['id']} {grant['amount']}")
        elif op == "hold":
            amount = rng.randint(1, 60)
            say("BEGIN hold")
            self.killer.mark("hold")
            hold = self.ledger.place_hold(self.sme, amount=amount)
            self.killer.mark("")
            open_holds.append((hold["id"], amount))
            say(f"HOLD {hold['id']} {amount}")
        elif op == "settle":
            hold_id, amount = open_holds.pop(rng.randrange(len(open_holds)))
            cost = rng.randint(0, amount)
            say(f"BEGIN settle {hold_id}")
            self.killer.mark("settle")
            self.ledger.close_hold(self.operator, hold_id=hold_id, target=HoldState.SETTLED, cost=cost)
            self.killer.mark("")
            say(f"SETTLED {hold_id} {cost}")
        else:
            hold_id, _amount = open_holds.pop(rng.randrange(len(open_holds)))
            say(f"BEGIN release {hold_id}")
            self.killer.mark("release")
            self.ledger.close_hold(self.sme, hold_id=hold_id, target=HoldState.RELEASED)
            self.killer.mark("")
            say(f"RELEASED {hold_id}")


def main(argv: list[str]) -> None:
    """Run operations until the kill hook fires."""
    state_dir, database_url, seed, target, kill_after = argv
    if target not in TARGETS:
        raise SystemExit(f"TARGET_OP must be one of {TARGETS}")
    settings = Settings(
        state_dir=Path(state_dir), database_url=database_url, compute="fake", background_loops=False
    )
    container = build_container(settings)
    killer = Killer("any" if target == "threads" else target, int(kill_after))
    client = Client(container, killer)
    event.listen(container.db.engine, "before_cursor_execute", killer.before_cursor_execute)
    say("READY")
    if target == "threads":
        threads = [threading.Thread(target=client.run, args=(int(seed) * 100 + i,)) for i in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    else:
        client.run(int(seed))
    say("NOT KILLED")
    container.close()


if __name__ == "__main__":
    main(sys.argv[1:])
