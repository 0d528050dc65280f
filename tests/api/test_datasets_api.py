"""The data foundation over real HTTP (and the ``sbx`` CLI over it): register, ask, decide, query, audit."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from broker.cli.main import app
from tests.api.conftest import Live
from tests.conftest import BACKENDS
from tests.integration.test_datasets_service import add_custodian, csv_bytes, energy_frame, energy_policy

pytestmark = pytest.mark.parametrize("database_url", BACKENDS, indirect=True)


def _ok(r: httpx.Response, status: int = 200) -> Any:
    assert r.status_code == status, r.text
    return r.json()


def _refused(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.json()["error"] == code


def _register(c: httpx.Client, name: str = "household-energy") -> dict[str, Any]:
    body = {
        "name": name,
        "format": "csv",
        "policy": energy_policy(),
        "content_b64": base64.b64encode(csv_bytes(energy_frame())).decode(),
    }
    return _ok(c.post("/api/v1/datasets", json=body), 201)  # type: ignore[no-any-return]


def test_custodian_sme_flow_over_http(live: Live) -> None:
    add_custodian(live.world, "custodian")
    add_custodian(live.world, "custodian-b")
    live.world.credit(100_000)
    with live.client("custodian") as cust, live.client("sme-a") as sme, live.client("custodian-b") as other:
        ds = _register(cust)
        dsid = ds["id"]
        assert [d["id"] for d in _ok(sme.get("/api/v1/datasets"))] == [dsid]
        assert _ok(other.get("/api/v1/datasets")) == []
        _refused(other.get(f"/api/v1/datasets/{dsid}"), 404, "not_found")
        _refused(other.get(f"/api/v1/datasets/{dsid}/audit"), 404, "not_found")
        _refused(
            sme.post("/api/v1/datasets", json={"name": "x", "format": "csv", "policy": {}}), 403, "forbidden"
        )
        _refused(
            cust.post("/api/v1/datasets", json={"name": "x", "format": "csv", "policy": {}, "owner": "me"}),
            422,
            "invalid_request",
        )
        q = {"queries": [{"kind": "count", "epsilon_micro": 100_000}]}
        _refused(sme.post(f"/api/v1/datasets/{dsid}/queries", json=q), 403, "access_denied")

        req = _ok(
            sme.post(
                f"/api/v1/datasets/{dsid}/access-requests",
                json={"purpose": "heat-pump sizing", "epsilon_micro": 500_000},
            ),
            201,
        )
        _refused(
            other.post(f"/api/v1/access-requests/{req['id']}/approve", json={"valid_for_s": 60}),
            404,
            "not_found",
        )
        approved = _ok(
            cust.post(
                f"/api/v1/access-requests/{req['id']}/approve",
                json={"valid_for_s": 3600, "epsilon_micro": 250_000},
            )
        )
        assert approved["grant"]["cap"]["epsilon_micro"] == 250_000

        batch = {
            "queries": [
                {"kind": "count", "epsilon_micro": 100_000},
                {"kind": "mean", "column": "kwh", "group_by": "district", "epsilon_micro": 100_000},
            ]
        }
        out = _ok(sme.post(f"/api/v1/datasets/{dsid}/queries", json=batch))
        assert (
            out["charged"]["epsilon_micro"] == 200_000 and out["grant_remaining"]["epsilon_micro"] == 50_000
        )
        assert out["results"][1]["confidence_interval"]["Nord"][0] <= out["results"][1]["values"]["Nord"]
        _refused(sme.post(f"/api/v1/datasets/{dsid}/queries", json=q), 409, "budget_exceeded")
        _refused(
            sme.post(
                f"/api/v1/datasets/{dsid}/queries", json={"queries": [{"kind": "count", "epsilon": "lots"}]}
            ),
            422,
            "invalid_number",
        )

        assert _ok(sme.get(f"/api/v1/datasets/{dsid}/budget"))["sme_cap"]["spent"]["epsilon_micro"] == 200_000
        assert _ok(cust.get(f"/api/v1/datasets/{dsid}/budget"))["remaining"]["epsilon_micro"] == 9_800_000
        actions = [e["action"] for e in _ok(cust.get(f"/api/v1/datasets/{dsid}/audit"))]
        assert actions == [
            "dataset.register",
            "access.request",
            "access.approve",
            "query.reserve",
            "query.answered",
        ]
        # The SME sees the entries about its own actions in the general audit listing too.
        assert "query.reserve" in [e["action"] for e in _ok(sme.get("/api/v1/audit"))]

        _ok(cust.post(f"/api/v1/access-requests/{req['id']}/revoke", json={"reason": "project ended"}))
        assert _ok(sme.get(f"/api/v1/access-requests/{req['id']}"))["status"] == "revoked"
        _refused(sme.post(f"/api/v1/datasets/{dsid}/queries", json=q), 403, "access_denied")


def _sbx(live: Live, who: str, *args: str) -> Any:
    result = CliRunner().invoke(
        app, ["--url", live.url, "--token", live.world.tokens[who], "--json", *args], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_cli_register_request_approve_query(live: Live, tmp_path: Path) -> None:
    add_custodian(live.world, "custodian")
    live.world.credit(100_000)
    data, policy = tmp_path / "energy.csv", tmp_path / "policy.json"
    data.write_bytes(csv_bytes(energy_frame()))
    policy.write_text(json.dumps(energy_policy()))
    ds = _sbx(
        live, "custodian", "dataset", "register", "energy", "--policy", str(policy), "--file", str(data)
    )
    shown = _sbx(live, "sme-a", "dataset", "show", ds["id"])["versions"][0]["policy"]["columns"]
    assert [c["name"] for c in shown] == ["household_id", "district", "kwh"]
    req = _sbx(live, "sme-a", "access", "request", ds["id"], "--purpose", "tariffs", "--epsilon", "0.5")
    assert req["asked"]["epsilon_micro"] == 500_000
    _sbx(live, "custodian", "access", "approve", req["id"], "--epsilon", "0.3", "--valid-days", "7")
    out = _sbx(
        live,
        "sme-a",
        "query",
        "run",
        ds["id"],
        "--kind",
        "histogram",
        "--column",
        "district",
        "--epsilon",
        "0.1",
    )
    assert out["grant_remaining"]["epsilon_micro"] == 200_000
    assert [r["status"] for r in _sbx(live, "custodian", "access", "list")] == ["approved"]
    assert _sbx(live, "custodian", "dataset", "budget", ds["id"])["spent"]["epsilon_micro"] == 100_000
    bad = CliRunner().invoke(
        app,
        [
            "--url",
            live.url,
            "--token",
            live.world.tokens["sme-a"],
            "access",
            "request",
            ds["id"],
            "--purpose",
            "x",
            "--epsilon",
            "0.0000001",
        ],
    )
    assert bad.exit_code != 0 and "at most 6 decimals" in bad.output
