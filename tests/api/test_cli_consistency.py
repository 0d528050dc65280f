"""The CLI's failures are one clear line (or one JSON object) with a stable exit code (issue 17.2):
1 refused, 2 usage, 3 unreachable or unavailable, 4 verification failed; never a traceback. And the
commands the issue found missing: ``whoami``, ``access request --delta``, ``query run --dry-run``,
``query list``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from broker.cli.main import app
from tests import training_data as td
from tests.api.conftest import Live
from tests.integration.test_datasets_service import add_custodian, csv_bytes, energy_frame, energy_policy


def _invoke(live: Live | None, who: str | None, *args: str) -> Result:
    url = live.url if live is not None else "http://127.0.0.1:9"
    token = live.world.tokens[who] if live is not None and who else "sbx_tok_x"
    return CliRunner().invoke(app, ["--url", url, "--token", token, *args])


def _no_traceback(result: Result) -> None:
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception


def _json_error(result: Result) -> dict[str, Any]:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    error: dict[str, Any] = json.loads(lines[0])
    assert set(error) == {"error", "detail"} and result.stdout == ""
    return error


def test_exit_codes_are_documented_in_help() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    for words in ("1 refused", "2 usage", "3 broker unreachable or unavailable", "4 verification failed"):
        assert words in text, text


def test_unreadable_inputs_are_usage_errors(live: Live, tmp_path: Path) -> None:
    missing = _invoke(live, "sme-a", "voucher", "redeem", "--file", str(tmp_path / "missing.jwt"))
    _no_traceback(missing)
    assert missing.exit_code == 2 and "cannot read the voucher file" in missing.stderr
    as_json = _invoke(live, "sme-a", "--json", "voucher", "redeem", "--file", str(tmp_path / "missing.jwt"))
    assert as_json.exit_code == 2 and _json_error(as_json)["error"] == "usage"
    bad = tmp_path / "bad.json"
    bad.write_text("[{not json")
    broken = _invoke(live, "sme-a", "query", "run", "ds_x", "--batch", str(bad))
    _no_traceback(broken)
    assert broken.exit_code == 2 and "is not valid JSON" in broken.stderr
    bad.write_text('{"kind": "count"}')
    shaped = _invoke(live, "sme-a", "query", "run", "ds_x", "--batch", str(bad), "--json")
    assert shaped.exit_code == 2 and "JSON list of query objects" in _json_error(shaped)["detail"]
    delta = _invoke(
        live, "sme-a", "access", "request", "ds_x", "--purpose", "p", "--epsilon", "1", "--delta", "x"
    )
    assert delta.exit_code == 2 and "--delta" in delta.stderr


def test_refusals_and_outages(live: Live) -> None:
    refused = _invoke(live, "sme-a", "job", "status", "job_nosuch", "--json")
    assert refused.exit_code == 1
    assert _json_error(refused)["error"] == "not_found"
    plain = _invoke(live, "sme-a", "job", "status", "job_nosuch")
    assert (
        plain.exit_code == 1
        and plain.stderr.startswith("error: not_found: ")
        and plain.stderr.count("\n") == 1
    )
    down = _invoke(None, None, "--json", "balance")
    _no_traceback(down)
    assert down.exit_code == 3 and _json_error(down)["error"] == "unreachable"


def test_whoami_delta_dry_run_and_history(live: Live) -> None:
    world = live.world
    add_custodian(world, "custodian")
    world.credit(1_000_000)
    me = json.loads(_invoke(live, "sme-a", "whoami", "--json").stdout)
    assert me["org_id"] == world.sme.org_id and me["role"] == "sme"
    assert world.sme.org_id in _invoke(live, "sme-a", "whoami").stdout
    services = world.services
    cust = world.services.orgs.authenticate(world.tokens["custodian"])
    assert cust is not None
    people = services.datasets.register(
        cust,
        name="people",
        description="",
        policy=td.policy(),
        fmt="parquet",
        content=td.parquet_bytes(td.make_frame(400)),
        object_key=None,
    )
    asked = _invoke(
        live,
        "sme-a",
        "--json",
        "access",
        "request",
        people["id"],
        "--purpose",
        "churn",
        "--epsilon",
        "5",
        "--delta",
        "1e-5",
        "--kind",
        "training",
    )
    assert asked.exit_code == 0, asked.output
    assert json.loads(asked.stdout)["asked"]["delta_e12"] == 10_000_000
    energy = services.datasets.register(
        cust,
        name="energy",
        description="",
        policy=energy_policy(),
        fmt="csv",
        content=csv_bytes(energy_frame()),
        object_key=None,
    )
    req = json.loads(
        _invoke(
            live, "sme-a", "--json", "access", "request", energy["id"], "--purpose", "p", "--epsilon", "0.5"
        ).stdout
    )
    assert _invoke(live, "custodian", "access", "approve", req["id"], "--epsilon", "0.4").exit_code == 0
    query = ("query", "run", energy["id"], "--kind", "count", "--epsilon", "0.1")
    priced = _invoke(live, "sme-a", *query, "--dry-run")
    assert (
        priced.exit_code == 0
        and "would charge ε=0.1" in priced.stdout
        and "nothing was spent" in priced.stdout
    )
    assert json.loads(_invoke(live, "sme-a", "query", "list", "--json").stdout) == []
    ran = json.loads(_invoke(live, "sme-a", "--json", *query).stdout)
    listed = json.loads(_invoke(live, "sme-a", "query", "list", "--json").stdout)
    assert [(h["id"], h["status"]) for h in listed] == [(ran["query_id"], "answered")]
    assert ran["query_id"] in _invoke(live, "sme-a", "query", "list").stdout


def test_new_commands_and_the_org_convention(live: Live) -> None:
    """``quota set --org`` (the positional form still works, both at once is a usage error), ``quota
    copay``, ``hold show`` and ``audit checkpoints``."""
    world = live.world
    sme = world.sme.org_id
    world.credit(10_000)
    for form in (["--org", sme], [sme]):
        done = _invoke(live, "op2", "--json", "quota", "set", *form, "--cpus", "2")
        assert done.exit_code == 0 and json.loads(done.stdout)["milli_cpu"] == 2000, done.output
    both = _invoke(live, "op2", "quota", "set", sme, "--org", sme, "--cpus", "2")
    assert both.exit_code == 2 and "once" in both.stderr
    copay = _invoke(live, "op2", "--json", "quota", "copay", "--org", sme, "--yuan", "12.5")
    assert copay.exit_code == 0 and json.loads(copay.stdout)["copay_limit"] == 1250, copay.output
    hold = world.services.ledger.place_hold(world.operator, amount=100, org_id=sme)
    shown = json.loads(_invoke(live, "sme-a", "--json", "hold", "show", hold["id"]).stdout)
    assert shown["id"] == hold["id"] and shown["state"] == "HELD"
    world.services.audit.checkpoint(None)
    checkpoints = _invoke(live, "op2", "--json", "audit", "checkpoints")
    assert checkpoints.exit_code == 0 and json.loads(checkpoints.stdout), checkpoints.output


def test_wait_and_follow_stream_the_job(live: Live, monkeypatch: pytest.MonkeyPatch) -> None:
    """``job submit --wait`` shows the elapsed time and the job's log lines as they arrive; ``job logs
    --follow`` prints them until the job has finished. The broker's passes run where the CLI sleeps."""
    from broker.compute import launch_name
    from broker.compute.fake import FakeBackend, FakeScript
    from common.resources import Resources

    world = live.world
    world.credit(100_000)
    fake = FakeBackend(world.clock, capacity=Resources(milli_cpu=4000, gpus=0, memory_mib=8192))
    world.services.container.use_compute(fake)
    scripted: set[str] = set()

    def tick(_seconds: float) -> None:
        for job in world.services.jobs.list_jobs(world.operator):
            if job["id"] not in scripted:
                fake.script(launch_name(job["id"]), FakeScript(run_ms=3_000, output="epoch 1\nepoch 2\n"))
                scripted.add(job["id"])
        world.services.jobs.admission_pass()
        world.clock.advance(1_000)
        world.services.jobs.reconcile_pass()

    monkeypatch.setattr("broker.cli.jobs.time.sleep", tick)
    submit = ("job", "submit", "python x.py", "--max-runtime", "60")
    waited = _invoke(live, "sme-a", *submit, "--wait")
    assert waited.exit_code == 0, waited.output
    assert "s] job_" in waited.stdout and "succeeded" in waited.stdout
    assert waited.stdout.count("epoch 1") == 1 and "epoch 2" in waited.stdout
    job = json.loads(_invoke(live, "sme-a", "--json", *submit).stdout)
    followed = _invoke(live, "sme-a", "job", "logs", job["id"], "--follow")
    assert followed.exit_code == 0 and followed.stdout.count("epoch 2") == 1, followed.output


def test_serve_says_where_it_listens(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr("broker.server.run", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setenv("SBX_STATE_DIR", str(tmp_path))
    result = CliRunner().invoke(app, ["serve", "--port", "8799"])
    assert result.exit_code == 0, result.output
    assert "serving on http://127.0.0.1:8799" in result.stderr and calls[0]["port"] == 8799


def test_json_everywhere_and_no_progress_bar_in_logs(
    live: Live, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``migrate``, ``serve``, ``train download``, ``report verify`` take --json; the report's progress bar
    is drawn only on a terminal."""
    from broker.cli import reports

    monkeypatch.setenv("SBX_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("SBX_KEK_FILE", str(tmp_path / "kek"))
    migrated = CliRunner().invoke(app, ["migrate", "--json"])
    assert migrated.exit_code == 0 and json.loads(migrated.stdout) == {"schema": "latest"}, migrated.output
    monkeypatch.setattr("broker.server.run", lambda **_kwargs: None)
    served = CliRunner().invoke(app, ["serve", "--json"])
    assert json.loads(served.stderr)["listening"].startswith("http://")
    missing = _invoke(
        live, "sme-a", "--json", "train", "download", "job_nosuch", "--out", str(tmp_path / "w")
    )
    assert missing.exit_code == 1 and _json_error(missing)["error"] == "not_found"
    bad = tmp_path / "report.json"
    bad.write_text("{}")
    refused = _invoke(live, "op2", "--json", "report", "verify", str(bad), "--jwks", str(bad))
    _no_traceback(refused)
    assert refused.exit_code != 0 and set(_json_error(refused)) == {"error", "detail"}
    reports._progress({"done": 1, "total": 2, "what": "2026-01"})  # capsys' stderr is no terminal
    assert capsys.readouterr().err == ""


def test_reports_fail_like_every_other_command(live: Live) -> None:
    """The report commands stream over their own HTTP client: the same exit codes and JSON errors."""
    down = _invoke(None, None, "--json", "report", "access", "--period", "2026-01")
    assert down.exit_code == 3 and _json_error(down)["error"] == "unreachable"
    refused = _invoke(live, "sme-a", "--json", "report", "subsidy", "--period", "2026-01")
    assert refused.exit_code == 1 and _json_error(refused)["error"] == "forbidden"


@pytest.mark.parametrize(
    "args",
    [
        ("train", "submit", "--dataset", "ds_x", "--spec", "{missing}"),
        ("dataset", "register", "x", "--policy", "{missing}", "--file", "{missing}"),
        ("dataset", "register", "x", "--policy", "{bad}", "--file", "{bad}"),
    ],
)
def test_every_input_file_is_a_usage_error(live: Live, tmp_path: Path, args: tuple[str, ...]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    paths = {"{missing}": str(tmp_path / "missing.json"), "{bad}": str(bad)}
    result = _invoke(live, "sme-a", *(paths.get(a, a) for a in args))
    _no_traceback(result)
    # rich wraps a long path inside its error box: compare without the box's frame and line breaks
    flat = "".join(ch for ch in result.stderr if ch not in "│╭╮╰╯─\n ")
    assert result.exit_code == 2 and ("missing.json" in flat or "bad.json" in flat), result.output


def test_a_bug_is_one_line_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The console entry point turns an unexpected exception into one line and exit 1."""
    from broker.cli import main as cli_main

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(cli_main, "call", broken)
    monkeypatch.setattr("sys.argv", ["sbx", "--token", "t", "whoami"])
    monkeypatch.delenv("SBX_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exited:
        cli_main.main()
    err = capsys.readouterr().err
    assert exited.value.code == 1 and "Traceback" not in err
    assert err.startswith("error: sbx failed unexpectedly (RuntimeError: boom)") and err.count("\n") == 1
