"""Pending reasons over HTTP and in the CLI: ``GET /jobs/{id}`` carries why a queued job waits and its place
in the fair order, ``sbx job status`` says it, and an operator's ``sbx job list`` shows every SME's queue."""

from __future__ import annotations

import json

import httpx
from typer.testing import CliRunner

from broker.cli.main import app
from broker.services.jobs import JobRequest
from common.resources import Resources
from tests.api.conftest import Live

QUOTA = {
    "max_milli_cpu": 4000,
    "max_gpus": 0,
    "max_memory_mib": 8192,
    "max_running_jobs": 1,
    "max_queued_jobs": 5,
}


def test_a_waiting_job_says_why_through_the_api_and_the_cli(live: Live) -> None:
    world = live.world
    world.credit(10_000_000)
    world.services.jobs.set_quota(world.operator, org_id=world.sme.org_id, values=dict(QUOTA))
    request = JobRequest("python x.py", Resources(1000, 0, 1024), 60)
    jobs = []
    for _ in range(2):
        jobs.append(world.services.jobs.submit(world.sme, request, idempotency_key=None))
        world.clock.advance(1)
    world.services.jobs.admission_pass()
    with live.client("sme-a") as client:
        body = client.get(f"/api/v1/jobs/{jobs[1]['id']}").json()
    assert body["state"] == "queued" and body["pending_reason"] == "running_jobs"
    assert body["queue_position"] == 1 and "runs as many jobs" in body["pending_detail"]
    runner = CliRunner(env={"SBX_URL": live.url})
    status = runner.invoke(app, ["--token", world.tokens["sme-a"], "job", "status", jobs[1]["id"]])
    assert status.exit_code == 0 and "waits: the SME already runs" in status.stdout
    assert "(#1 in the fair order)" in status.stdout
    listed = runner.invoke(app, ["--token", world.tokens["op2"], "job", "list"])
    assert listed.exit_code == 0 and f"[{world.sme.org_id}] job {jobs[1]['id']}: queued" in listed.stdout
    as_json = runner.invoke(app, ["--token", world.tokens["op2"], "--json", "job", "list"])
    queued = [j for j in json.loads(as_json.stdout) if j["state"] == "queued"]
    assert [j["queue_position"] for j in queued] == [1]


def test_the_dashboard_queue_shows_the_fair_order_and_why(live: Live) -> None:
    world = live.world
    world.credit(10_000_000)
    world.services.jobs.set_quota(world.operator, org_id=world.sme.org_id, values=dict(QUOTA))
    request = JobRequest("python x.py", Resources(1000, 0, 1024), 60)
    for _ in range(3):
        world.services.jobs.submit(world.sme, request, idempotency_key=None)
        world.clock.advance(1)
    world.services.jobs.admission_pass()
    with httpx.Client(base_url=live.url, follow_redirects=False) as op:
        assert op.post("/ui/login", data={"token": world.tokens["op2"]}).status_code in (200, 303)
        page = op.get("/ui").text
    assert page.count('data-reason="running_jobs"') == 2
    assert "<td>1</td><td data-reason" in page and "<td>2</td><td data-reason" in page
