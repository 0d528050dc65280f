"""Organisations carry their legal identity: a validated, unique unified social credit code and registered names;
programmes their currency and time zone; ``sbx org show --uscc``."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from openpyxl import load_workbook
from typer.testing import CliRunner

from broker.cli.main import app
from tests.api.conftest import Live

HUAWEI = "914403001922038216"  # a real published code (see tests/unit/test_uscc.py)


def test_uscc_is_validated_unique_and_found(live: Live) -> None:
    op = live.client("op2")
    body = {"name": "深圳示例科技", "role": "sme", "uscc": HUAWEI.lower(), "name_zh": "深圳示例科技有限公司"}
    created = op.post("/api/v1/orgs", json=body)
    assert created.status_code == 201, created.text
    assert created.json()["uscc"] == HUAWEI and created.json()["name_zh"] == "深圳示例科技有限公司"

    again = op.post("/api/v1/orgs", json={**body, "name": "another"})
    assert again.status_code == 409 and again.json()["error"] == "uscc_taken"

    wrong = op.post("/api/v1/orgs", json={**body, "name": "x", "uscc": HUAWEI[:17] + "7"})
    assert wrong.status_code == 422 and wrong.json()["error"] == "check_character_mismatch"
    illegal = op.post("/api/v1/orgs", json={**body, "name": "y", "uscc": HUAWEI[:5] + "O" + HUAWEI[6:]})
    assert illegal.status_code == 422 and illegal.json()["error"] == "uscc_illegal_character"
    assert "character 6" in illegal.json()["detail"]

    found = op.get(f"/api/v1/orgs/by-uscc/{HUAWEI}")
    assert found.status_code == 200 and found.json()["id"] == created.json()["id"]
    # another organisation cannot look it up: the same 404 as a missing one
    assert live.client("sme-a").get(f"/api/v1/orgs/by-uscc/{HUAWEI}").status_code == 404


def test_issuer_programme_defaults_to_cny_in_shanghai(live: Live) -> None:
    op = live.client("op2")
    body = {"name": "市科技局", "role": "issuer", "year_budget": 10**9, "sme_cap": 10**8}
    created = op.post("/api/v1/orgs", json=body)
    assert created.status_code == 201, created.text
    programme = created.json()["programme"]
    assert programme["currency"] == "CNY" and programme["time_zone"] == "Asia/Shanghai"
    assert programme["default_locale"] == "zh_CN"
    credits = op.post("/api/v1/orgs", json={**body, "name": "credits", "currency": None})
    assert credits.json()["programme"]["currency"] is None
    assert credits.json()["programme"]["time_zone"] == "UTC"
    bad = op.post("/api/v1/orgs", json={**body, "name": "z", "time_zone": "Mars/Olympus"})
    assert bad.status_code == 422 and bad.json()["error"] == "unknown_time_zone"


def test_cli_creates_with_yuan_and_shows_by_uscc(live: Live) -> None:
    runner = CliRunner(env={"SBX_URL": live.url})
    token = live.world.tokens["op2"]
    args = ["--token", token, "--json", "org", "create", "科技局", "--role", "issuer"]
    result = runner.invoke(app, [*args, "--budget-yuan", "10000000", "--cap-yuan", "500000.50"])
    assert result.exit_code == 0, result.stderr
    programme = json.loads(result.stdout)["programme"]
    assert programme["year_budget"] == 1_000_000_000 and programme["sme_cap"] == 50_000_050  # fen

    result = runner.invoke(app, [*args, "--budget-yuan", "0.001", "--cap-yuan", "1"])
    assert result.exit_code != 0 and "invalid_number" in result.stderr

    runner.invoke(app, ["--token", token, "org", "create", "华为", "--role", "sme", "--uscc", HUAWEI])
    result = runner.invoke(app, ["--token", token, "org", "show", "--uscc", HUAWEI])
    assert result.exit_code == 0 and HUAWEI in result.stdout and "华为" in result.stdout


def test_error_details_follow_the_language_codes_do_not(live: Live) -> None:
    op = live.client("op2")
    body = {"name": "x", "role": "sme", "uscc": HUAWEI[:17] + "7"}
    english = op.post("/api/v1/orgs", json=body)
    chinese = op.post("/api/v1/orgs", json=body, headers={"Accept-Language": "zh-CN,zh;q=0.9"})
    assert english.json()["error"] == chinese.json()["error"] == "check_character_mismatch"
    assert "check character (18)" in english.json()["detail"]
    assert "校验码（第 18 位）" in chinese.json()["detail"] and HUAWEI[:17] in chinese.json()["detail"]

    runner = CliRunner(env={"SBX_URL": live.url})
    args = ["--token", live.world.tokens["sme-a"], "--lang", "zh-CN", "org", "show", "--uscc", HUAWEI]
    result = runner.invoke(app, args)
    assert (
        result.exit_code == 1 and "not_found" in result.stderr and "没有统一社会信用代码为" in result.stderr
    )


def test_an_organisation_sets_its_language(live: Live) -> None:
    sme = live.client("sme-a")
    me = sme.get("/api/v1/me").json()["org_id"]
    changed = sme.put(f"/api/v1/orgs/{me}/locale", json={"locale": "zh_CN"})
    assert changed.status_code == 200 and changed.json()["locale"] == "zh_CN"
    other = live.client("sme-b").put(f"/api/v1/orgs/{me}/locale", json={"locale": "en"})
    assert other.status_code in (403, 404)
    assert sme.put(f"/api/v1/orgs/{me}/locale", json={"locale": "fr"}).status_code == 422


def test_cli_issues_a_voucher_in_yuan(live: Live) -> None:
    runner = CliRunner(env={"SBX_URL": live.url})
    args = [
        "--token",
        live.world.tokens["issuer"],
        "--json",
        "voucher",
        "issue",
        "--sme",
        live.world.sme.org_id,
    ]
    result = runner.invoke(app, [*args, "--coverage", "8000", "--yuan", "12.34"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["claims"]["credits"] == 1234  # fen
    result = runner.invoke(app, [*args, "--coverage", "8000"])
    assert result.exit_code != 0 and "--yuan" in result.stderr


def test_cli_refusals_in_chinese(live: Live) -> None:
    runner = CliRunner(env={"SBX_URL": live.url})
    args = ["--token", live.world.tokens["issuer"], "--lang", "zh-CN", "voucher", "issue"]
    result = runner.invoke(
        app, [*args, "--sme", live.world.sme.org_id, "--coverage", "8000", "--yuan", "0.001"]
    )
    assert result.exit_code != 0 and "invalid_number" in result.stderr and "不是整数分" in result.stderr
    result = runner.invoke(app, [*args, "--sme", live.world.sme.org_id, "--coverage", "8000"])
    assert "请给出金额" in result.stderr


def test_cli_writes_xlsx_and_csv_with_bom(live: Live, tmp_path: Path) -> None:
    runner = CliRunner(env={"SBX_URL": live.url})
    live.world.credit(5_000)
    period = datetime.fromtimestamp(live.world.clock.now_ms() / 1000, tz=UTC).strftime("%Y-%m")
    args = [
        "--token",
        live.world.tokens["issuer"],
        "--lang",
        "zh-CN",
        "report",
        "subsidy",
        "--period",
        period,
    ]
    xlsx, csv_file = tmp_path / "r.xlsx", tmp_path / "r.csv"
    assert runner.invoke(app, [*args, "--format", "xlsx", "--out", str(xlsx)]).exit_code == 0
    assert load_workbook(xlsx).active.title == "补贴报告"  # type: ignore[union-attr]
    assert runner.invoke(app, [*args, "--format", "csv", "--out", str(csv_file)]).exit_code == 0
    assert csv_file.read_bytes().startswith(b"\xef\xbb\xbf")
    refused = runner.invoke(app, [*args, "--format", "xlsx"])
    assert refused.exit_code != 0 and "--out" in refused.stderr
