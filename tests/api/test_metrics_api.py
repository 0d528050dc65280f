"""``/metrics`` over real HTTP: parsed by prometheus_client's own parser (and ``promtool`` where installed);
database-derived metrics follow the ledger, quotas and jobs; label sets stay bounded."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from broker.compute import launch_name
from broker.compute.fake import FakeBackend, FakeScript
from broker.services.jobs import JobRequest
from common.resources import Resources
from tests.api.conftest import Live

ALLOWED_LABELS = {"kind", "org_id", "name", "role", "state", "dataset_id", "code", "route", "status", "le"}
DOCUMENTED = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


def _scrape(live: Live) -> tuple[str, dict[str, dict[tuple[tuple[str, str], ...], float]]]:
    with live.client("op2") as operator:
        response = operator.get("/metrics")
    assert response.status_code == 200, response.text
    body = response.text
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return body, samples


def test_metrics_parse_and_follow_the_database(live: Live) -> None:
    world = live.world
    fake = FakeBackend(world.clock, capacity=Resources(milli_cpu=4000, gpus=0, memory_mib=8192))
    world.services.container.use_compute(fake)
    world.credit(100_000)
    running = world.services.jobs.submit(
        world.sme, JobRequest("python x.py", Resources(1500, 0, 2048), 60, 0), idempotency_key=None
    )
    fake.script(launch_name(running["id"]), FakeScript(run_ms=None))
    world.services.jobs.admission_pass()
    world.clock.advance(500)
    world.services.jobs.reconcile_pass()
    _, s = _scrape(live)
    sme = (("org_id", world.sme.org_id),)
    assert s["sbx_metrics_database_up"][()] == 1
    assert s["sbx_ledger_redeemed_credits_total"][()] == 100_000
    held = s["sbx_ledger_held_credits"][()]
    assert held > 0 and s["sbx_sme_held_credits"][sme] == held
    assert s["sbx_sme_available_credits"][sme] == 100_000 - held
    assert s["sbx_quota_used_cpu_cores"][sme] == 1.5
    assert s["sbx_quota_limit_cpu_cores"][sme] == 8.0
    assert s["sbx_quota_used_memory_bytes"][sme] == 2048 * 1024 * 1024
    assert s["sbx_quota_used_running_jobs"][sme] == 1
    assert s["sbx_jobs"][(("state", "running"),)] + s["sbx_jobs"][(("state", "admitted"),)] == 1
    assert s["sbx_queue_length_jobs"][()] == 0
    assert s["sbx_audit_entries_total"][()] > 0
    assert "sbx_admission_latency_seconds_bucket" in s
    assert s["sbx_org_info"][(("name", "sme-a"), ("org_id", world.sme.org_id), ("role", "sme"))] == 1


def test_exposition_is_valid_documented_and_bounded(live: Live) -> None:
    body, _ = _scrape(live)
    docs = DOCUMENTED.read_text()
    families = list(text_string_to_metric_families(body))
    for family in families:
        assert family.name.startswith("sbx_"), family.name
        base = family.name.removesuffix("_created")  # the client's counter/histogram creation timestamps
        assert f"`{base}" in docs, f"{base} is not documented in docs/metrics.md"
        for sample in family.samples:
            assert set(sample.labels) <= ALLOWED_LABELS, (sample.name, sample.labels)
            assert not any(v.startswith(("job_", "vch_", "hold_")) for v in sample.labels.values())
    promtool = shutil.which("promtool") or (
        "/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None
    )
    if promtool is None:
        print("promtool check skipped: no promtool on this machine (Debian package 'prometheus' provides it)")
        return
    result = subprocess.run(
        [promtool, "check", "metrics"], input=body, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_dashboard_uses_only_exported_metrics(live: Live) -> None:
    import json
    import re

    body, samples = _scrape(live)
    exported = set(samples) | {
        f.name + suffix for f in text_string_to_metric_families(body) for suffix in ("", "_total", "_bucket")
    }
    board = json.loads(
        (DOCUMENTED.parents[1] / "helm/sandbox-broker/dashboards/sandbox-broker.json").read_text()
    )
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    used = {name for e in exprs for name in re.findall(r"\bsbx_[a-z0-9_]+", e)}
    assert len(exprs) >= 15 and used
    assert used <= exported, used - exported
    assert {p["title"] for p in board["panels"]} >= {"Queued jobs", "Privacy budget left per dataset (ε)"}


def test_metrics_are_for_operators_only(live: Live) -> None:
    """The exposition names tenants and their credit: anonymous callers and SMEs are refused."""
    with live.client(None) as anonymous:
        assert anonymous.get("/metrics").status_code == 401
    with live.client("sme-a") as sme:
        assert sme.get("/metrics").status_code == 403


def test_audit_health_is_absent_until_known_then_follows_verification(live: Live) -> None:
    """The alerts' gauges: unknown before the first verification; 1 when the chain verifies, 0 once an
    entry is edited in the database; the checkpoint timestamp is the newest signed checkpoint's."""
    from sqlalchemy import text

    services = live.world.services
    _, before = _scrape(live)
    assert (
        "sbx_audit_chain_valid" not in before and "sbx_audit_last_checkpoint_timestamp_seconds" not in before
    )
    checkpoint = services.audit.checkpoint(None)
    assert checkpoint is not None
    services.audit.verify(None)
    _, s = _scrape(live)
    assert s["sbx_audit_chain_valid"][()] == 1
    assert s["sbx_audit_verified_entries"][()] == s["sbx_audit_entries_total"][()] > 0
    assert s["sbx_audit_last_checkpoint_timestamp_seconds"][()] == checkpoint["ts_ms"] / 1000
    assert s["sbx_audit_last_verify_timestamp_seconds"][()] == live.world.clock.now_ms() / 1000
    services.container.db.write(
        lambda conn: conn.execute(text("UPDATE audit_entries SET body = CAST('{}' AS BLOB) WHERE seq = 1"))
    )
    services.audit.verify(None)
    _, after = _scrape(live)
    assert after["sbx_audit_chain_valid"][()] == 0
