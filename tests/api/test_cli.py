"""The `sbx` CLI against a live broker: human output, --json, and one-line errors with non-zero exits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from broker.cli.main import app
from tests.api.conftest import Live


@pytest.fixture
def sbx(live: Live) -> CliRunner:
    return CliRunner(env={"SBX_URL": live.url})


def _run(runner: CliRunner, token: str, *args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["--token", token, *args])
    return result.exit_code, result.stdout, result.stderr


def test_issue_redeem_balance_through_the_cli(sbx: CliRunner, live: Live, tmp_path: Path) -> None:
    tokens = live.world.tokens
    out_file = tmp_path / "v.jwt"
    code, out, _ = _run(
        sbx,
        tokens["issuer"],
        "voucher",
        "issue",
        "--sme",
        live.world.sme.org_id,
        "--credits",
        "5000",
        "--coverage",
        "7500",
        "--out",
        str(out_file),
    )
    assert code == 0 and "voucher vch_" in out and out_file.read_text().count(".") == 2
    code, out, _ = _run(sbx, tokens["sme-a"], "voucher", "redeem", "--file", str(out_file))
    assert code == 0 and "5000 credits" in out
    code, out, _ = _run(sbx, tokens["sme-a"], "--json", "balance")
    assert code == 0 and json.loads(out)["available"] == 5000
    code, out, _ = _run(sbx, tokens["sme-a"], "balance")
    assert code == 0 and "available: 5000 credits" in out
    code, out, _ = _run(sbx, tokens["op2"], "ledger", "--json")
    assert code == 0 and {e["kind"] for e in json.loads(out)} >= {"redeem"}


def test_refusals_are_one_line_on_stderr_with_a_nonzero_exit(
    sbx: CliRunner, live: Live, tmp_path: Path
) -> None:
    tokens = live.world.tokens
    out_file = tmp_path / "v.jwt"
    _run(
        sbx,
        tokens["issuer"],
        "voucher",
        "issue",
        "--sme",
        live.world.sme.org_id,
        "--credits",
        "10",
        "--coverage",
        "10000",
        "--out",
        str(out_file),
    )
    code, _, err = _run(sbx, tokens["sme-b"], "voucher", "redeem", "--file", str(out_file))
    assert code == 1 and err.startswith("error: wrong_beneficiary:") and err.count("\n") == 1
    code, _, err = _run(sbx, "sbx_tok_nope_nope", "balance")
    assert code == 1 and "unauthorized" in err
    code, _, err = _run(sbx, tokens["sme-a"], "org", "create", "x", "--role", "sme")
    assert code == 1 and "forbidden" in err


def test_an_unreachable_broker_is_a_clear_error() -> None:
    runner = CliRunner(env={"SBX_URL": "http://127.0.0.1:9"})
    result = runner.invoke(app, ["--token", "t", "balance"])
    assert result.exit_code == 3 and "cannot reach the broker" in result.stderr


def test_init_is_idempotent_and_writes_a_private_key(tmp_path: Path) -> None:
    runner = CliRunner(env={"SBX_KEK_FILE": str(tmp_path / "kek")})
    state = tmp_path / "st"
    first = runner.invoke(app, ["init", "--state-dir", str(state), "--json"])
    assert first.exit_code == 0, first.stdout
    data = json.loads(first.stdout)
    assert data["token"].startswith("sbx_tok_")
    assert (state / "keys" / "broker-keys.json").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "kek").stat().st_mode & 0o777 == 0o600
    assert not (state / "operator.token").exists()  # printed once, not left beside the database
    again = runner.invoke(app, ["init", "--state-dir", str(state)])
    assert again.exit_code == 0 and "already initialised" in again.stdout
