"""What a DP query will cost before it is run (``dry_run``), and the caller's past queries (issue 17.4).

A dry run validates and prices a batch exactly as :meth:`DatasetService.query` does — the same grant check
(:meth:`DatasetService.grant_for`), the same spec parser and ε composition, the same three budgets in the
same order (dataset total, the SME's cap, the grant) and the same credit hold — but in one *read*
transaction: nothing is reserved, no credit is held, no data is read and no audit entry is written. The
answer names the ε and δ the batch would be charged and the credit hold it would place (the most it can
cost; a real query is billed its metered compute, at most the hold). A batch a real query would refuse is
refused with the same error.

History lists the caller's budget-ledger rows (queries and training runs): their cost, credits and status,
never a result value.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, select

from broker.db import data_tables as dt
from broker.db import datasets as repo
from broker.db.jobs import current_rate_card
from broker.db.orgs import Principal
from broker.services.access import require_role
from broker.services.datasets import (
    MAX_QUERIES_PER_BATCH,
    QUERY_MAX_RUNTIME_S,
    QUERY_RESOURCES,
    DatasetService,
    _cost_dict,  # the answer's own shapes, so a dry run reads exactly as the real one
    _remaining,
)
from common.errors import InvalidInput
from privacy.budget import PrivacyCost, check_fits, compose
from privacy.queries import QuerySpec, estimate_cost
from quotas.ledger import eligible_grants, plan_hold
from quotas.pricing import max_cost

HISTORY_LIMIT = 1000


def dry_run(
    svc: DatasetService,
    principal: Principal,
    *,
    dataset_id: str,
    queries: Sequence[dict[str, Any]],
    version: int | None = None,
) -> dict[str, Any]:
    """Validate and price a batch as a real query would, reserving and reading nothing."""
    require_role(principal, "sme")
    if not 1 <= len(queries) <= MAX_QUERIES_PER_BATCH:
        raise InvalidInput(f"send 1..{MAX_QUERIES_PER_BATCH} queries in one batch")

    def tx(conn: Connection) -> dict[str, Any]:
        row, ver = svc.grant_for(conn, principal, dataset_id, version)
        specs = [QuerySpec.from_dict(q) for q in queries]
        cost = compose(estimate_cost(s, ver.policy) for s in specs)
        grant_left = _check_budgets(conn, principal, row.request.request_id, ver.dataset_id, cost)
        card = current_rate_card(conn)
        hold = max(1, max_cost(QUERY_RESOURCES, QUERY_MAX_RUNTIME_S, card))
        _check_credit(svc, conn, principal.org_id, hold)
        return {
            "dry_run": True,
            "dataset_id": ver.dataset_id,
            "dataset_version": ver.version,
            "queries": [s.to_dict() for s in specs],
            "charged": _cost_dict(cost),
            "grant_remaining": _cost_dict(grant_left),
            "credits_hold": hold,
            "rate_card_version": card.version,
        }

    return svc.c.db.read(tx)


def _check_budgets(
    conn: Connection, principal: Principal, request_id: str, dataset_id: str, cost: PrivacyCost
) -> PrivacyCost:
    """Refuse as :func:`broker.db.datasets.reserve` would (same order, same words); the grant's ε and δ
    left after the batch."""
    ds = repo.get_dataset(conn, dataset_id)
    check_fits(cost, _remaining(ds.total, ds.spent), what="dataset budget (all SMEs together)")
    cap, spent = repo.sme_budget(conn, dataset_id=dataset_id, sme_org=principal.org_id)
    check_fits(cost, _remaining(cap, spent), what="per-SME cap of this dataset")
    current = repo.get_request(conn, request_id)
    grant = current.request.grant
    assert grant is not None  # grant_for checked it is approved
    left = _remaining(PrivacyCost(grant.epsilon_cap_micro, grant.delta_cap_e12), current.spent)
    check_fits(cost, left, what="grant")
    return PrivacyCost(left.epsilon_micro - cost.epsilon_micro, left.delta_e12 - cost.delta_e12)


def _check_credit(svc: DatasetService, conn: Connection, org_id: str, amount: int) -> None:
    """Refuse as the hold would (``plan_hold`` over the same grants and co-payment headroom)."""
    ledger = svc.c.ledger
    grants, _issuers = ledger.grant_balances(conn, org_id=org_id)
    balance = ledger.balance(conn, org_id=org_id, now_ms=svc.c.clock.now_ms())
    usable = eligible_grants(
        grants, resource_classes=frozenset({"cpu", "memory"}), now_ms=svc.c.clock.now_ms()
    )
    headroom = balance.copay_limit - balance.copay_used
    plan_hold(amount, usable, copay_account_id=0, copay_headroom=headroom)  # raises InsufficientFunds


def history(
    svc: DatasetService, principal: Principal, *, dataset_id: str | None = None, limit: int = 200
) -> list[dict[str, Any]]:
    """The caller's past DP queries and training runs, newest first: cost, credits and status."""
    require_role(principal, "sme")
    limit = max(1, min(limit, HISTORY_LIMIT))
    c = dt.privacy_charges.c
    query = select(dt.privacy_charges).where(c.sme_org == principal.org_id)
    if dataset_id is not None:
        query = query.where(c.dataset_id == dataset_id)
    query = query.order_by(c.created_ms.desc(), c.id.desc()).limit(limit)

    def tx(conn: Connection) -> list[dict[str, Any]]:
        return [_history_row(r) for r in conn.execute(query)]

    return svc.c.db.read(tx)


def _history_row(r: Any) -> dict[str, Any]:
    return {
        "id": r.id,
        "dataset_id": r.dataset_id,
        "dataset_version": int(r.dataset_version),
        "kind": r.kind,
        "charged": _cost_dict(PrivacyCost(int(r.epsilon_micro), int(r.delta_e12))),
        "queries": json.loads(r.spec) if r.kind == "query" else None,
        "credits": None if r.credits is None else int(r.credits),
        "elapsed_ms": None if r.elapsed_ms is None else int(r.elapsed_ms),
        "status": r.status,
        "created_ms": int(r.created_ms),
        "finished_ms": None if r.finished_ms is None else int(r.finished_ms),
    }
