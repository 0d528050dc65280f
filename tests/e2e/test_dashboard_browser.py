"""The dashboard in a real browser (Debian's Chromium driven by Playwright): login by token into an HttpOnly,
SameSite=Strict cookie, one page per role scoped like the API, a custodian's approval from the page, live
refresh by polling, and the printable report. Screenshots go to ``artifacts/screenshots/``."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.compute import launch_name
from broker.compute.fake import FakeBackend, FakeScript
from broker.server import serve_in_thread
from broker.services.jobs import JobRequest
from broker.services.registry import Services
from common.resources import Resources
from tests.conftest import World
from tests.integration.test_datasets_service import COUNT, add_custodian, grant, register

pytestmark = pytest.mark.browser
CHROMIUM = os.environ.get("SBX_CHROMIUM", "/usr/bin/chromium")
SHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for the module, or a skip that says why."""
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install -y chromium); browser test skipped")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # pragma: no cover - playwright is a dev dependency
        pytest.skip("the playwright Python package is not installed; browser test skipped")
    with sync_playwright() as pw:
        try:
            instance = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        except Exception as exc:  # any launch failure means no browser here
            pytest.skip(
                f"Chromium did not start ({type(exc).__name__}: {str(exc)[:200]}); browser test skipped"
            )
        yield instance
        instance.close()


def _scene(world: World) -> dict[str, Any]:
    """Credit, a settled and a queued job, a dataset with one answered query and one pending request."""
    fake = FakeBackend(world.clock, capacity=Resources(milli_cpu=2000, gpus=0, memory_mib=8192))
    world.services.container.use_compute(fake)
    world.credit(250_000, coverage_bps=8_000)
    world.services.ledger.set_copay_limit(world.operator, org_id=world.sme.org_id, limit=40_000)
    done = world.services.jobs.submit(
        world.sme, JobRequest("python a.py", Resources(1000, 0, 2048), 60, 0), idempotency_key=None
    )
    fake.script(launch_name(done["id"]), FakeScript(run_ms=20_000))
    for _ in range(6):
        world.clock.advance(5_000)
        world.services.jobs.reconcile_pass()
        world.services.jobs.admission_pass()
    running = world.services.jobs.submit(
        world.sme, JobRequest("python b.py", Resources(2000, 0, 4096), 600, 0), idempotency_key=None
    )
    fake.script(launch_name(running["id"]), FakeScript(run_ms=None))
    world.services.jobs.admission_pass()
    world.clock.advance(1_000)
    world.services.jobs.reconcile_pass()
    custodian = add_custodian(world, "Nordstadt Open Data Office")
    ds = register(world, custodian)
    grant(world, custodian, ds["id"], eps=1_000_000)
    world.services.datasets.query(world.sme, dataset_id=ds["id"], queries=[COUNT])
    pending = world.services.datasets.request_access(
        world.sme_b, dataset_id=ds["id"], purpose="heat-pump sizing", epsilon_micro=800_000
    )
    return {"fake": fake, "dataset": ds, "pending": pending, "running": running}


def _login(browser: Any, url: str, token: str, shot: str) -> Any:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(f"{url}/ui")
    assert page.url.endswith("/ui/login")
    page.fill("#token", token)
    page.click("button[type=submit]")
    page.wait_for_url(f"{url}/ui")
    assert token not in page.url
    cookie = next(c for c in context.cookies() if c["name"] == "sbx_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert page.evaluate("document.cookie") == ""  # scripts cannot read the token
    page.screenshot(path=str(SHOTS / f"{shot}.png"), full_page=True)
    return page


def test_dashboard_pages_per_role(browser: Any, services: Services, world: World) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    scene = _scene(world)
    server = serve_in_thread(services, loops=False)
    url = server.url
    try:
        bad = browser.new_context().new_page()
        bad.goto(f"{url}/ui/login")
        bad.fill("#token", "sbx_tok_nope_nope")
        bad.click("button[type=submit]")
        assert "unknown, expired or revoked" in bad.inner_text("body")

        op = _login(browser, url, world.tokens["op2"], "operator")
        text = op.inner_text("body")
        assert "sme-a" in text and "sme-b" in text and "household-energy" in text
        assert scene["running"]["id"] in text and "Recent audit entries" in text
        assert op.locator("meter").count() >= 6

        sme = _login(browser, url, world.tokens["sme-a"], "sme")
        text = sme.inner_text("body")
        assert "Grants" in text and "Jobs and bills" in text and "succeeded" in text
        assert "sme-b" not in text and world.sme_b.org_id not in sme.content()
        assert sme.goto(f"{url}/ui/report").status == 403

        issuer = _login(browser, url, world.tokens["issuer"], "issuer")
        assert "250,000" in issuer.inner_text("body")
        issuer.click("text=Printable subsidy report")
        issuer.wait_for_selector("svg.chart")
        assert "Subsidy report" in issuer.inner_text("h1")
        issuer.screenshot(path=str(SHOTS / "report.png"), full_page=True)

        custodian = _login(browser, url, world.tokens["Nordstadt Open Data Office"], "custodian")
        assert "heat-pump sizing" in custodian.inner_text("body")
        row = custodian.locator("tr", has_text="heat-pump sizing")
        row.locator("input[name=epsilon]").fill("0.5")
        row.locator("button", has_text="Approve").click()
        custodian.wait_for_selector("text=Request approved.")
        custodian.screenshot(path=str(SHOTS / "custodian-approved.png"), full_page=True)
        decided = world.services.datasets.get_request(world.operator, request_id=scene["pending"]["id"])
        assert decided["status"] == "approved" and decided["grant"]["cap"]["epsilon_micro"] == 500_000

        # live refresh: a new queued job shows up on the open operator page without a manual reload
        before = op.inner_text("[data-live=queued]")
        world.services.jobs.submit(
            world.sme_b, JobRequest("python c.py", Resources(2000, 0, 1024), 60, 0), idempotency_key=None
        )
        op.wait_for_function(
            "before => document.querySelector('[data-live=queued]').textContent !== before",
            arg=before,
            timeout=15_000,
        )
        assert "sme-b" in op.inner_text("body")
    finally:
        server.stop()
