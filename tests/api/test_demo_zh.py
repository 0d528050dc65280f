"""The Chinese demo against a live broker (without its Ray job): a CNY programme with a ¥10,000,000 budget,
SMEs with valid codes, a Chinese dataset, and the report files in Chinese."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from broker.cli.client import BrokerClient
from broker.demo import DemoState
from broker.demo_zh import SMES, step_data, step_orgs, step_report, step_voucher
from common.uscc import validate
from tests.api.conftest import Live


def test_chinese_programme_end_to_end(live: Live, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = DemoState(
        url=live.url, operator=BrokerClient(live.url, live.world.tokens["op2"]), state_dir=tmp_path
    )
    state.locale = "zh_CN"
    try:
        assert "¥10,000,000.00" in step_orgs(state)
        assert "¥200,000.00" in step_voucher(state)
        assert "港城区" in step_data(state)
        assert "Asia/Shanghai" in step_report(state)
    finally:
        for client in [state.operator, *state.clients.values()]:
            client.close()
    assert all(validate(code) == code for *_names, code in SMES)
    assert "控制台" in capsys.readouterr().out
    reports = tmp_path / "reports"
    names = sorted(p.suffix for p in reports.iterdir())
    assert names == [".csv", ".html", ".json", ".xlsx"]
    document = json.loads(next(reports.glob("*.json")).read_text())
    assert (
        document["report"]["currency"] == "CNY"
        and document["report"]["programme"]["name_zh"] == "新港市科学技术局"
    )
    assert next(reports.glob("*.csv")).read_bytes().startswith(b"\xef\xbb\xbf")
    assert "补贴报告" in next(reports.glob("*.html")).read_text(encoding="utf-8")
