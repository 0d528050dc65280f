"""The dashboard over plain HTTP (no browser): the session cookie's flags, scoping per role exactly like the
API, refused cross-site posts, the polled JSON, and the data-access report after a real DP query."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import httpx

from broker.services.reports import verify_report
from tests.api.conftest import Live
from tests.integration.test_datasets_service import COUNT, add_custodian, grant, register


@contextmanager
def _session(live: Live, name: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.url, timeout=30) as client:
        response = client.post("/ui/login", data={"token": live.world.tokens[name]})
        assert response.status_code == 303 and response.headers["location"] == "/ui"
        cookie = response.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/ui" in cookie
        yield client


def test_login_cookie_scoping_and_polling(live: Live) -> None:
    world = live.world
    world.credit(50_000)
    world.credit(70_000, sme=world.sme_b)
    with httpx.Client(base_url=live.url, timeout=30) as anonymous:
        assert anonymous.get("/ui").status_code == 303
        assert anonymous.post("/ui/login", data={"token": "sbx_tok_x_y"}).status_code == 401
        assert anonymous.get("/ui/data.json").status_code == 401
        assert anonymous.get("/ui/static/style.css").status_code == 200
        assert anonymous.get("/ui/static/../routes.py").status_code == 404
    with _session(live, "sme-a") as sme:
        page = sme.get("/ui").text
        assert "50,000" in page and "70,000" not in page and world.sme_b.org_id not in page
        assert sme.get("/ui/data.json").json()["available"] == 50_000
        assert sme.get("/ui/report").status_code == 403
        assert world.tokens["sme-a"] not in page
    with _session(live, "op2") as op:
        page = op.get("/ui").text
        assert "sme-a" in page and "sme-b" in page and "Recent audit entries" in page
        assert op.get("/ui/data.json").json()["available"] == 120_000
        logout = op.post("/ui/logout")
        assert logout.status_code == 303 and 'sbx_session=""' in logout.headers["set-cookie"]
    with _session(live, "issuer") as issuer:
        assert "120,000" in issuer.get("/ui").text
        assert "Subsidy report" in issuer.get("/ui/report").text


def test_custodian_decisions_from_the_page_and_access_report(live: Live) -> None:
    world = live.world
    world.credit(100_000)
    custodian = add_custodian(world, "city-data")
    other = add_custodian(world, "other-data")
    ds = register(world, custodian)
    grant(world, custodian, ds["id"], eps=1_000_000)
    world.services.datasets.query(world.sme, dataset_id=ds["id"], queries=[COUNT, COUNT])
    pending = world.services.datasets.request_access(
        world.sme_b, dataset_id=ds["id"], purpose="mobility study", epsilon_micro=300_000
    )
    with _session(live, "other-data") as foreign:
        assert "mobility study" not in foreign.get("/ui").text
        refused = foreign.post(f"/ui/requests/{pending['id']}/refuse", data={"reason": "no"})
        assert "Not+done" in refused.headers["location"]
    with _session(live, "city-data") as mine:
        assert "mobility study" in mine.get("/ui").text
        cross = mine.post(
            f"/ui/requests/{pending['id']}/refuse",
            data={"reason": "x"},
            headers={"Origin": "https://evil.example"},
        )
        assert cross.status_code == 403
        done = mine.post(f"/ui/requests/{pending['id']}/refuse", data={"reason": "purpose too broad"})
        assert "refused" in done.headers["location"]
    assert (
        world.services.datasets.get_request(world.operator, request_id=pending["id"])["status"] == "refused"
    )

    month = datetime.fromtimestamp(world.clock.now_ms() / 1000, tz=UTC).strftime("%Y-%m")
    with httpx.Client(
        base_url=live.url, timeout=30, headers={"Authorization": f"Bearer {world.tokens['city-data']}"}
    ) as c:
        doc = c.get("/api/v1/reports/data-access", params={"period": month}).json()
    rows = doc["report"]["rows"]
    assert len(rows) == 1 and rows[0]["sme_org"] == world.sme.org_id
    assert rows[0]["releases"] == 1 and rows[0]["queries"] == 1
    assert rows[0]["epsilon_micro"] == 2 * COUNT["epsilon_micro"]
    assert verify_report(doc, world.services.vouchers.jwks())["ok"]
    assert world.services.reports.data_access(other, period=month)["report"]["rows"] == []
