"""Every case of issue 13's "what was found", through the API: each is a prompt 4xx with a stable code, nothing is
charged or stored, and another tenant is served meanwhile (generous time-outs, no timed assertions)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from broker.server import RunningServer
from tests import training_data as td
from tests.api.world_full import FullWorld, served_full_world

Case = tuple[str, str, str, dict[str, Any], int, str]  # method, path, caller, request kwargs, status, code
HUGE = "1e-99999999"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FullWorld, RunningServer]]:
    with served_full_world(Path(tmp_path_factory.mktemp("bad-input"))) as pair:
        yield pair


def _cases(full: FullWorld) -> list[Case]:
    ds = full.ids["dataset"]
    sme = full.world.sme.org_id
    query = f"/api/v1/datasets/{ds}/queries"

    def quantiles(*levels: object) -> dict[str, Any]:
        q = {"kind": "quantile", "epsilon_micro": 30_000, "column": td.FEATURES[0], "quantiles": list(levels)}
        return {"json": {"queries": [q]}}

    def training(**overrides: Any) -> dict[str, Any]:
        return {"json": {"dataset_id": ds, "spec": td.spec(**overrides)}}

    return [
        ("POST", query, "sme-a", quantiles(HUGE), 422, "invalid_number"),
        ("POST", query, "sme-a", quantiles("1e-3000000"), 422, "invalid_number"),
        ("POST", query, "sme-b", quantiles(HUGE), 403, "access_denied"),  # no grant: refused before parsing
        ("POST", query, "sme-a", quantiles(0.5, "1/2", "0.50"), 422, "duplicate_value"),
        (
            "POST",
            query,
            "sme-a",
            {"json": {"queries": [{"kind": "count", "epsilon_micro": 10**30}]}},
            422,
            "out_of_range",
        ),
        ("POST", "/api/v1/training", "sme-a", training(target_epsilon=HUGE), 422, "invalid_number"),
        ("POST", "/api/v1/training", "sme-a", training(learning_rate="1e-3000000"), 422, "invalid_number"),
        ("GET", "/api/v1/audit", "sme-a", {"params": {"after_seq": 2**64}}, 422, "out_of_range"),
        ("GET", f"/api/v1/datasets/{ds}/audit", "op2", {"params": {"after_seq": 2**63}}, 422, "out_of_range"),
        ("GET", "/api/v1/ledger/entries", "sme-a", {"params": {"after_id": 2**63}}, 422, "out_of_range"),
        (
            "GET",
            "/api/v1/meter/check",
            "op2",
            {"params": {"start_ms": 0, "end_ms": 2**63}},
            422,
            "out_of_range",
        ),
        (
            "POST",
            "/api/v1/orgs",
            "op2",
            {"json": {"name": "evil\x00org", "role": "sme"}},
            422,
            "control_character",
        ),
        (
            "POST",
            f"/api/v1/orgs/{sme}/tokens",
            "sme-a",
            {"json": {"label": "a\x00b"}},
            422,
            "control_character",
        ),
        (
            "POST",
            "/api/v1/jobs",
            "sme-a",
            {"json": {"entrypoint": "python x.py\x00", "max_runtime_s": 60}},
            422,
            "control_character",
        ),
        (
            "POST",
            f"/api/v1/datasets/{ds}/access-requests",
            "sme-b",
            {"json": {"purpose": "p\x1b[31m", "epsilon_micro": 1}},
            422,
            "control_character",
        ),
        ("GET", "/api/v1/vouchers/%00", "sme-a", {}, 422, "control_character"),
        ("GET", "/api/v1/reports/subsidy", "op2", {"params": {"period": "9999-12"}}, 422, "out_of_range"),
        (
            "GET",
            "/api/v1/reports/subsidy",
            "op2",
            {"params": {"period": "2026-1\x00"}},
            422,
            "control_character",
        ),
    ]


def _state(full: FullWorld) -> dict[str, Any]:
    """What a refused request must not change: budgets, balances, organisations, tokens, jobs, the audit log."""
    svc, world = full.world.services, full.world
    return {
        "budget": svc.datasets.budget(world.operator, dataset_id=full.ids["dataset"]),
        "balance": svc.ledger.balance(world.sme),
        "orgs": len(svc.orgs.list(world.operator)),
        "tokens": len(svc.tokens.list(world.operator)),
        "jobs": len(svc.jobs.list_jobs(world.operator, limit=1000)),
        "audit": svc.audit.newest(world.operator, limit=1)[0]["seq"],
    }


def _send(server: RunningServer, full: FullWorld, case: Case) -> httpx.Response:
    method, path, who, kwargs, _status, _code = case
    headers = {"Authorization": f"Bearer {full.tokens[who]}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=120) as c:
        return c.request(method, path, **kwargs)


def test_every_case_is_a_prompt_4xx_nothing_is_stored_and_others_are_served(
    served: tuple[FullWorld, RunningServer],
) -> None:
    full, server = served
    before = _state(full)
    cases = _cases(full)
    with ThreadPoolExecutor(max_workers=4) as pool:
        refused = [pool.submit(_send, server, full, case) for case in cases]
        with httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {full.tokens['sme-b']}"}, timeout=120
        ) as other:
            served_meanwhile = [other.get("/api/v1/balance").status_code for _ in range(10)]
        answers = [f.result(timeout=120) for f in refused]
    assert served_meanwhile == [200] * 10
    for case, r in zip(cases, answers, strict=True):
        assert (r.status_code, r.json()["error"]) == (case[4], case[5]), (case[:3], r.text)
        assert set(r.json()) == {"error", "detail"}
    assert _state(full) == before


def test_refusals_name_the_field(served: tuple[FullWorld, RunningServer]) -> None:
    full, server = served
    cases = _cases(full)
    level = next(c for c in cases if "1e-3000000" in str(c[3]) and c[1].endswith("/queries"))
    assert "quantiles[0]" in _send(server, full, level).json()["detail"]
    rate = next(c for c in cases if "'learning_rate': '1e-3000000'" in str(c[3]))
    assert "spec.learning_rate" in _send(server, full, rate).json()["detail"]
    period = next(c for c in cases if c[5] == "out_of_range" and "period" in str(c[3]))
    assert "period" in _send(server, full, period).json()["detail"]
