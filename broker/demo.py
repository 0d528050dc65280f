"""``make demo``: the main job end to end on the embedded default, step by step with progress.

Every step goes through the broker's REST API (the same calls the ``sbx`` CLI makes), against a broker
served from this process on a free local port with a fresh state directory.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker.bootstrap import initialise
from broker.cli.client import BrokerClient
from broker.container import Container, build_container
from broker.db import orgs
from broker.i18n import gettext
from broker.server import serve_in_thread
from broker.services.registry import build_services
from broker.settings import Settings

DAY_S = 24 * 3600


@dataclass
class DemoState:
    """What the demo's steps share: clients per role and the ids they created."""

    url: str
    operator: BrokerClient
    state_dir: Path
    clients: dict[str, BrokerClient] = field(default_factory=dict)
    ids: dict[str, str] = field(default_factory=dict)
    locale: str = "en"  # sbx demo --lang zh-CN: the Chinese programme only, printed in Chinese

    def as_role(self, name: str) -> BrokerClient:
        """The client of a named organisation created by the demo."""
        return self.clients[name]


Step = tuple[str, Callable[[DemoState], str]]


def _org(state: DemoState, name: str, role: str, **extra: Any) -> None:
    org = state.operator.call("POST", "/api/v1/orgs", body={"name": name, "role": role, **extra})
    token = state.operator.call("POST", f"/api/v1/orgs/{org['id']}/tokens", body={"label": "demo"})["token"]
    state.ids[name] = org["id"]
    state.clients[name] = BrokerClient(state.url, token)


def step_orgs(state: DemoState) -> str:
    """Create the programme (issuer), an SME and a data custodian."""
    _org(  # a credits programme in UTC (issue 16's Chinese programme, in yuan and Beijing time, is demo_zh's)
        state,
        "Innovation Programme Nordstadt",
        "issuer",
        year_budget=10_000_000,
        sme_cap=1_000_000,
        currency=None,
    )
    _org(state, "Acme Mobility GmbH", "sme", copay_limit=500_000)
    _org(state, "Nordstadt Open Data Office", "custodian")
    return "issuer, SME (co-payment limit 500,000) and custodian created, each with its own token"


def step_voucher(state: DemoState) -> str:
    """The issuer creates a signing key and issues a voucher to the SME."""
    issuer = state.as_role("Innovation Programme Nordstadt")
    key = issuer.call("POST", "/api/v1/issuer/keys")
    now = int(time.time())
    voucher = issuer.call(
        "POST",
        "/api/v1/vouchers",
        body={
            "sme_org": state.ids["Acme Mobility GmbH"],
            "credits": 200_000,
            "coverage_bps": 8_000,
            "resources": ["cpu", "memory"],
            "valid_until_s": now + 30 * DAY_S,
            "credit_expires_s": now + 365 * DAY_S,
        },
    )
    state.ids["voucher_token"] = voucher["token"]
    return f"voucher {voucher['jti']} for 200,000 credits at 80% coverage, signed with key {key['kid'][:12]}…"


def step_redeem(state: DemoState) -> str:
    """The SME redeems the voucher; the grant appears on its balance."""
    sme = state.as_role("Acme Mobility GmbH")
    sme.call(
        "POST",
        "/api/v1/vouchers/redeem",
        body={"token": state.ids["voucher_token"]},
        idempotency_key="demo-1",
    )
    again = sme.call(
        "POST",
        "/api/v1/vouchers/redeem",
        body={"token": state.ids["voucher_token"]},
        idempotency_key="demo-1",
    )
    balance = sme.call("GET", "/api/v1/balance")
    return (
        f"redeemed into grant {again['grant']['id']} (a retry with the same idempotency key returned the same "
        f"grant); balance: {balance['available']} credits available"
    )


def foundation_steps() -> list[Step]:
    """The foundation's steps: organisations, a voucher, its redemption."""
    return [
        ("Create organisations", step_orgs),
        ("Issue a voucher", step_voucher),
        ("Redeem it and show the balance", step_redeem),
    ]


def step_audit(state: DemoState) -> str:
    """Checkpoint and verify the audit chain."""
    state.operator.call("POST", "/api/v1/audit/checkpoint")
    result = state.operator.call("POST", "/api/v1/audit/verify")
    return f"audit chain valid: {result['ok']} ({result['checked']} entries, signed checkpoint verified)"


def all_steps(locale: str = "en") -> list[Step]:
    """Every demo step in order (later features add theirs before the audit check); a zh-CN run is the
    Chinese programme's (broker.demo_zh) and the audit check."""
    from broker.demo_data import data_steps
    from broker.demo_jobs import step_training_job
    from broker.demo_reports import report_steps
    from broker.demo_training import step_private_training
    from broker.demo_zh import chinese_steps

    if locale == "zh_CN":
        return [*chinese_steps(), ("Verify the audit log", step_audit)]
    return [
        *foundation_steps(),
        ("Run a voucher-paid training job on Ray", step_training_job),
        *data_steps(),
        ("Train a private model (DP-SGD) on a protected dataset", step_private_training),
        *chinese_steps(),
        ("Verify the audit log", step_audit),
        *report_steps(),
    ]


def _operator_token(container: Container) -> str:
    """A new token for the first operator (a re-run on a kept state dir: ``sbx init`` shows it only once)."""
    services = build_services(container)
    first = container.db.read(lambda conn: orgs.list_orgs(conn, role="operator"))[0]
    return str(services.orgs.create_token(None, org_id=first.id, label="demo re-run")["token"])


def run_demo(
    state_dir: Path, *, fresh: bool = True, settings: Settings | None = None, locale: str = "en"
) -> DemoState:
    """Run every step against a broker served from this process; prints progress as it goes."""
    if fresh and state_dir.exists():
        shutil.rmtree(state_dir)
    settings = (settings or Settings()).model_copy(update={"state_dir": state_dir})
    logging.getLogger("ray").setLevel(logging.WARNING)  # job uploads log at INFO; the demo prints its own
    print(f"[demo] state directory {state_dir.resolve()} (SQLite, local object store)", flush=True)
    init = initialise(state_dir, settings=settings)
    container = build_container(settings)
    services = build_services(container)
    server = serve_in_thread(services)
    token = init["token"] or _operator_token(container)
    state = DemoState(url=server.url, operator=BrokerClient(server.url, token), state_dir=state_dir.resolve())
    state.locale = locale
    steps = all_steps(locale)
    try:
        print(f"[demo] broker serving at {server.url}", flush=True)
        isolation = services.jobs.isolation()
        verdict = "runs SME code isolated" if isolation.sme_code else "refuses SME code"
        print(f"[demo] backend {isolation.backend} {verdict}: {isolation.detail}", flush=True)
        for number, (title, step) in enumerate(steps, start=1):
            started = time.monotonic()
            print(f"[demo] step {number}/{len(steps)}: {gettext(locale, title)} …", flush=True)
            outcome = step(state)
            print(f"[demo]   ✓ {outcome} ({time.monotonic() - started:.1f} s)", flush=True)
        print("[demo] done.", flush=True)
    finally:
        for client in [state.operator, *state.clients.values()]:
            client.close()
        server.stop()
        container.close()
    return state
