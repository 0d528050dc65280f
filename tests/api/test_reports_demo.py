"""The demo's report steps against a live broker: files written, signed JSON verifies, CSV matches it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from broker.cli.client import BrokerClient
from broker.demo import DemoState, foundation_steps
from broker.demo_reports import report_steps
from broker.services.reports import verify_report
from tests.api.conftest import Live


def test_report_steps_write_the_report_and_name_the_dashboard(
    live: Live, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = DemoState(
        url=live.url, operator=BrokerClient(live.url, live.world.tokens["op2"]), state_dir=tmp_path
    )
    try:
        for _title, step in [*foundation_steps(), *report_steps()]:
            assert step(state)
    finally:
        for client in [state.operator, *state.clients.values()]:
            client.close()
    out = capsys.readouterr().out
    assert f"{live.url}/ui" in out and "report (printable)" in out
    written = sorted(p.name for p in (tmp_path / "reports").iterdir())
    assert [n.rsplit(".", 1)[1] for n in written] == ["csv", "html", "json", "xlsx"]
    document = json.loads((tmp_path / "reports" / written[2]).read_text())
    assert verify_report(document, live.world.services.vouchers.jwks())["ok"]
    rows = list(csv.DictReader((tmp_path / "reports" / written[0]).open(encoding="utf-8-sig")))
    acme = next(r for r in rows if r["name"] == "Acme Mobility GmbH")
    assert int(acme["credit_redeemed"]) == 200_000 and int(acme["credit_left"]) == 200_000
    assert "<svg" in (tmp_path / "reports" / written[1]).read_text()
