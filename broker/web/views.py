"""What each role's dashboard shows, assembled from the same service calls the REST API makes.

Every number comes through a service method called with the logged-in principal, so a page is scoped
exactly like the API: an SME sees its own balance, grants, jobs and bills; a custodian its datasets,
requests and budgets; an issuer its vouchers and programme report; operators everything.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, select

from broker.db import tables as t
from broker.db.orgs import Principal
from broker.services.registry import Services

ACTIVE = ("admitted", "running")
AUDIT_ROWS = 15
TOKEN_ROWS = 50


def current_period(now_ms: int, zone: str = "UTC") -> str:
    """The calendar month in ``zone`` (a programme's) that contains ``now_ms``, as ``2026-11``."""
    tz = UTC if zone == "UTC" else ZoneInfo(zone)
    return datetime.fromtimestamp(now_ms / 1000, tz=tz).strftime("%Y-%m")


def programme_zone(services: Services, org_id: str) -> str:
    """An issuer's programme time zone (UTC when it has no programme yet)."""

    def read(conn: Connection) -> str:
        zone = conn.execute(select(t.programmes.c.time_zone).where(t.programmes.c.org_id == org_id)).scalar()
        return str(zone or "UTC")

    return services.container.db.read(read)


def dashboard(services: Services, principal: Principal) -> dict[str, Any]:
    """The template context of the caller's dashboard."""
    now = services.container.clock.now_ms()
    me = services.orgs.list(principal)
    name = next((o["name"] for o in me if o["id"] == principal.org_id), principal.org_id)
    ctx: dict[str, Any] = {
        "role": principal.role,
        "org_name": name,
        "org_id": principal.org_id,
        "now_ms": now,
        "period": current_period(now),
    }
    builder = {"operator": _operator, "sme": _sme, "custodian": _custodian, "issuer": _issuer}[principal.role]
    ctx.update(builder(services, principal))
    ctx["live"] = live_numbers(ctx)
    return ctx


def live_numbers(ctx: dict[str, Any]) -> dict[str, Any]:
    """The few numbers the page refreshes by polling (``/ui/data.json``), keyed like ``data-live`` attributes."""
    keys = ("queued", "running", "held", "available", "audit_count", "pending_requests", "redeemed")
    return {k: ctx[k] for k in keys if k in ctx}


def _operator(services: Services, op: Principal) -> dict[str, Any]:
    orgs = services.orgs.list(op)
    names = {o["id"]: o["name"] for o in orgs}
    use = services.reports.in_use(op)
    by_id = {o["id"]: o for o in orgs}
    idle = {"milli_cpu": 0, "gpus": 0, "memory_mib": 0, "jobs": 0}
    tenants = [
        {
            "org": by_id[t["org_id"]],
            "quota": t["quota"],
            "balance": t["balance"],
            "used": use["per_org"].get(t["org_id"], idle),
        }
        for t in services.jobs.tenants(op)
        if t["org_id"] in by_id
    ]
    jobs = services.jobs.list_jobs(op, limit=200)
    queue = sorted(  # the fair order of the last admission pass (jobs it has not placed yet last)
        (j for j in jobs if j["state"] == "queued"), key=lambda j: j.get("queue_position") or 1 << 62
    )
    running = [j for j in jobs if j["state"] in ACTIVE]
    audit = _recent_audit(services, op)
    return {
        "names": names,
        "tenants": tenants,
        "queue": queue,
        "running_jobs": running,
        "queued": len(queue),
        "running": len(running),
        "held": sum(t["balance"]["held"] for t in tenants),
        "available": sum(t["balance"]["available"] for t in tenants),
        "cluster": use,
        "datasets": _budgets(services, op),
        "audit": audit,
        "audit_count": audit[0]["seq"] if audit else 0,
        "orgs": orgs,
        "tokens": services.tokens.list(op)[:TOKEN_ROWS],
    }


def _recent_audit(services: Services, principal: Principal) -> list[dict[str, Any]]:
    """The newest audit entries the caller may read, newest first."""
    return services.audit.newest(principal, limit=AUDIT_ROWS)


def _budgets(services: Services, principal: Principal) -> list[dict[str, Any]]:
    out = []
    for ds in services.datasets.list_datasets(principal):
        budget = services.datasets.budget(principal, dataset_id=ds["id"])
        out.append({"dataset": ds, "budget": budget})
    return out


def _sme(services: Services, sme: Principal) -> dict[str, Any]:
    balance = services.ledger.balance(sme)
    jobs = services.jobs.list_jobs(sme, limit=100)
    quota = services.jobs.quota(sme)
    used = services.reports.in_use(sme)["per_org"].get(
        sme.org_id, {"milli_cpu": 0, "gpus": 0, "memory_mib": 0, "jobs": 0}
    )
    return {
        "balance": balance,
        "grants": balance["grants"],
        "jobs": jobs,
        "bills": [j for j in jobs if j["cost"] is not None],
        "quota": quota,
        "used": used,
        "held": balance["held"],
        "available": balance["available"],
        "queued": sum(1 for j in jobs if j["state"] == "queued"),
        "running": sum(1 for j in jobs if j["state"] in ACTIVE),
        "requests": services.datasets.list_requests(sme),
    }


def _custodian(services: Services, custodian: Principal) -> dict[str, Any]:
    requests = services.datasets.list_requests(custodian)
    audit = _recent_audit(services, custodian)
    return {
        "datasets": _budgets(services, custodian),
        "requests": requests,
        "pending_requests": sum(1 for r in requests if r["status"] == "pending"),
        "audit": audit,
        "audit_count": len(audit),
    }


def _issuer(services: Services, issuer: Principal) -> dict[str, Any]:
    vouchers = services.vouchers.list(issuer)
    period = current_period(services.container.clock.now_ms(), programme_zone(services, issuer.org_id))
    report = services.reports.subsidy(issuer, period=period)["report"]
    return {
        "period": period,  # this month in the programme's zone
        "vouchers": vouchers,
        "report": report,
        "redeemed": report["totals"]["credit_redeemed"],
    }
