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
operation must leave no trace.

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
from pathlib import Path
from typing import Any

from sqlalchemy import event

from broker.container import build_container
from broker.db.orgs import Principal
from broker.services.ledger import LedgerService
from broker.services.orgs import OrgService
from broker.services.vouchers import VoucherService
from broker.settings import Settings
from quotas.errors import DomainError
from quotas.ledger import HoldState

TARGETS = ("redeem", "hold", "settle", "release")
MAX_OPS = 5000  # far more than any kill point needs; the worker is always killed before the end
DAY_S = 24 * 3600


def say(line: str) -> None:
    """Print one protocol line and flush it, so the parent sees it even after SIGKILL."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class Killer:
    """Counts statements of the target operation and kills this process at the chosen one."""

    def __init__(self, target: str, kill_after: int) -> None:
        self.target = target
        self.kill_after = kill_after
        self.current = ""
        self.count = 0

    def before_cursor_execute(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        """The SQLAlchemy hook: runs before every statement, on whichever thread executes it."""
        if self.current != self.target:
            return
        self.count += 1
        if self.count >= self.kill_after:
            say(f"KILL {self.current} {' '.join(statement.split())[:80]}")
            os.kill(os.getpid(), signal.SIGKILL)


def principal(orgs: OrgService, env: str) -> Principal:
    """The principal of the bearer token in environment variable ``env``."""
    found = orgs.authenticate(os.environ[env])
    if found is None:
        raise SystemExit(f"{env} is not a valid token")
    return found


def main(argv: list[str]) -> None:
    """Run operations until the kill hook fires."""
    state_dir, database_url, seed, target, kill_after = argv
    if target not in TARGETS:
        raise SystemExit(f"TARGET_OP must be one of {TARGETS}")
    settings = Settings(
        state_dir=Path(state_dir), database_url=database_url, compute="fake", background_loops=False
    )
    container = build_container(settings)
    orgs, vouchers, ledger = OrgService(container), VoucherService(container), LedgerService(container)
    operator = principal(orgs, "SBX_CRASH_OPERATOR_TOKEN")
    issuer = principal(orgs, "SBX_CRASH_ISSUER_TOKEN")
    sme = principal(orgs, "SBX_CRASH_SME_TOKEN")
    killer = Killer(target, int(kill_after))
    event.listen(container.db.engine, "before_cursor_execute", killer.before_cursor_execute)
    rng = random.Random(int(seed))
    open_holds: list[tuple[str, int]] = []
    say("READY")
    for _ in range(MAX_OPS):
        op = rng.choice(("redeem", "hold", "hold", "settle", "release"))
        if op in ("settle", "release") and not open_holds:
            op = "hold"
        try:
            if op == "redeem":
                killer.current = "issue"
                now_s = container.clock.now_ms() // 1000
                issued = vouchers.issue(
                    issuer,
                    sme_org=sme.org_id,
                    credits=rng.randint(20, 200),
                    coverage_bps=10_000,
                    resources=("cpu",),
                    valid_from_s=None,
                    valid_until_s=now_s + DAY_S,
                    credit_expires_s=now_s + 30 * DAY_S,
                )
                token = issued["token"]
                say(f"BEGIN redeem {issued['jti']}")
                killer.current = "redeem"
                out = vouchers.redeem(sme, token=token, idempotency_key=None)
                killer.current = ""
                grant = out["grant"]
                say(f"REDEEMED {grant['voucher_jti']} {grant['id']} {grant['amount']}")
            elif op == "hold":
                amount = rng.randint(1, 60)
                say("BEGIN hold")
                killer.current = "hold"
                hold = ledger.place_hold(sme, amount=amount)
                killer.current = ""
                open_holds.append((hold["id"], amount))
                say(f"HOLD {hold['id']} {amount}")
            elif op == "settle":
                hold_id, amount = open_holds.pop(rng.randrange(len(open_holds)))
                cost = rng.randint(0, amount)
                say(f"BEGIN settle {hold_id}")
                killer.current = "settle"
                ledger.close_hold(operator, hold_id=hold_id, target=HoldState.SETTLED, cost=cost)
                killer.current = ""
                say(f"SETTLED {hold_id} {cost}")
            else:
                hold_id, _amount = open_holds.pop(rng.randrange(len(open_holds)))
                say(f"BEGIN release {hold_id}")
                killer.current = "release"
                ledger.close_hold(sme, hold_id=hold_id, target=HoldState.RELEASED)
                killer.current = ""
                say(f"RELEASED {hold_id}")
        except DomainError as exc:
            killer.current = ""
            say(f"REFUSED {op} {exc.code}")
    say("NOT KILLED")
    container.close()


if __name__ == "__main__":
    main(sys.argv[1:])
