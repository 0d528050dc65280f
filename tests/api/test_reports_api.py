"""Reports over real HTTP and through the ``sbx report`` CLI: formats, progress, scoping, signature checks."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from broker.cli.main import app
from broker.compute import launch_name
from broker.compute.fake import FakeBackend, FakeScript
from broker.services.jobs import JobRequest
from common.resources import Resources
from tests.api.conftest import Live


def _settled_job(live: Live) -> dict[str, Any]:
    world = live.world
    fake = FakeBackend(world.clock, capacity=Resources(milli_cpu=4000, gpus=0, memory_mib=8192))
    world.services.container.use_compute(fake)
    world.credit(100_000, coverage_bps=8_000)
    world.services.ledger.set_copay_limit(world.operator, org_id=world.sme.org_id, limit=50_000)
    job = world.services.jobs.submit(
        world.sme, JobRequest("python x.py", Resources(1000, 0, 1024), 60, 0), idempotency_key=None
    )
    fake.script(launch_name(job["id"]), FakeScript(run_ms=5_000))
    for _ in range(5):
        world.clock.advance(3_000)
        world.services.jobs.reconcile_pass()
        world.services.jobs.admission_pass()
    return world.services.jobs.get(world.operator, job_id=job["id"])


def _period(live: Live) -> str:
    return datetime.fromtimestamp(live.world.clock.now_ms() / 1000, tz=UTC).strftime("%Y-%m")


def _cli(live: Live, name: str, *args: str) -> Any:
    return CliRunner().invoke(app, ["--url", live.url, "--token", live.world.tokens[name], "report", *args])


def test_http_formats_and_scoping(live: Live) -> None:
    job = _settled_job(live)
    period = _period(live)
    with live.client("issuer") as issuer:
        doc = issuer.get("/api/v1/reports/subsidy", params={"period": period}).json()
        assert doc["report"]["totals"]["cost"] == job["cost"]
        csv_text = issuer.get("/api/v1/reports/subsidy", params={"period": period, "format": "csv"})
        assert csv_text.headers["content-type"].startswith("text/csv") and "voucher_share" in csv_text.text
        page = issuer.get("/api/v1/reports/subsidy", params={"period": period, "format": "html"})
        assert page.headers["content-type"].startswith("text/html") and "<svg" in page.text
        lines = [
            json.loads(x)
            for x in issuer.get(
                "/api/v1/reports/subsidy", params={"period": period[:4], "stream": "true"}
            ).text.splitlines()
        ]
        assert [x["progress"]["done"] for x in lines[:-1]] == list(range(1, 13))
        assert "result" in lines[-1]
        other = issuer.get(
            "/api/v1/reports/subsidy", params={"period": period, "issuer_org": live.world.sme.org_id}
        )
        assert other.status_code == 404
        assert issuer.get("/api/v1/reports/subsidy", params={"period": "2026-13"}).status_code == 422
    with live.client("sme-a") as sme:
        assert sme.get("/api/v1/reports/subsidy", params={"period": period}).status_code == 403
        assert sme.get("/api/v1/reports/data-access", params={"period": period}).status_code == 403
    with live.client(None) as anonymous:
        assert anonymous.get("/api/v1/reports/subsidy", params={"period": period}).status_code == 401
    with live.client("op2") as op:
        access = op.get("/api/v1/reports/data-access", params={"period": period})
        assert access.status_code == 200 and access.json()["report"]["rows"] == []


def test_cli_writes_verifies_and_detects_tampering(live: Live, tmp_path: Path) -> None:
    _settled_job(live)
    period = _period(live)
    signed = tmp_path / "report.json"
    result = _cli(live, "issuer", "subsidy", "--period", period, "--out", str(signed))
    assert result.exit_code == 0, result.output
    assert "1/1 months" not in result.stderr and "\r" not in result.stderr  # no progress bar off a terminal
    ok = _cli(live, "issuer", "verify", str(signed))
    assert ok.exit_code == 0 and "valid" in ok.stdout
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(live.world.services.vouchers.jwks()))
    offline = CliRunner().invoke(
        app, ["--url", "http://127.0.0.1:9", "report", "verify", str(signed), "--jwks", str(jwks)]
    )
    assert offline.exit_code == 0, offline.output
    doc = json.loads(signed.read_text())
    doc["report"]["rows"][0]["copay"] -= 1
    signed.write_text(json.dumps(doc))
    bad = _cli(live, "issuer", "verify", str(signed))
    assert bad.exit_code == 4 and "NOT VALID" in bad.stderr  # verification failed
    csv_out = _cli(live, "op2", "subsidy", "--period", period, "--format", "csv")
    assert csv_out.exit_code == 0 and csv_out.stdout.splitlines()[0].startswith("org_id,name,jobs")
    html_file = tmp_path / "r.html"
    assert (
        _cli(
            live, "issuer", "subsidy", "--period", period, "--format", "html", "--out", str(html_file)
        ).exit_code
        == 0
    )
    assert "<svg" in html_file.read_text()
    refused = _cli(live, "sme-a", "subsidy", "--period", period)
    assert refused.exit_code == 1 and "forbidden" in refused.stderr
