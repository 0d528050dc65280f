"""One answer per request (issue 14, item 6): a streamed subsidy report is validated before its first byte, so
a bad period or programme is its 4xx status with the error body, never a 200 with an error line inside."""

from __future__ import annotations

import json

import pytest

from broker.services.reports import ReportService
from tests.api.conftest import Live

URL = "/api/v1/reports/subsidy"


@pytest.mark.parametrize(
    ("params", "status", "code"),
    [
        ({"period": "2026-13", "stream": "true"}, 422, "out_of_range"),
        ({"period": "26-1x", "stream": "true"}, 422, "invalid_input"),
        ({"period": "2026-01", "stream": "true", "issuer_org": "org_nobody"}, 404, "not_found"),
    ],
)
def test_a_bad_streamed_request_is_its_status(
    live: Live, params: dict[str, str], status: int, code: str
) -> None:
    with live.client("issuer") as issuer:
        r = issuer.get(URL, params=params)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json") and r.json()["error"] == code


def test_a_good_streamed_request_streams_progress_then_the_result(live: Live) -> None:
    with live.client("issuer") as issuer:
        r = issuer.get(URL, params={"period": "2026-01..2026-02", "stream": "true"})
    assert r.status_code == 200
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert [line["progress"]["done"] for line in lines[:-1]] == [1, 2] and "result" in lines[-1]


def test_without_the_check_the_stream_says_200_and_hides_the_error(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Negative control: the route as it was answered 200 with the 422 inside the body."""
    monkeypatch.setattr(ReportService, "check_subsidy_request", lambda *_a, **_k: None)
    with live.client("issuer") as issuer:
        r = issuer.get(URL, params={"period": "2026-13", "stream": "true"})
    assert r.status_code == 200 and json.loads(r.text.splitlines()[-1])["status"] == 422
