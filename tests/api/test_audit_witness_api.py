"""Witnesses and proofs end to end over HTTP, through the `sbx` CLI a custodian or funder would run.

A witness with its own key co-signs each checkpoint after checking a consistency proof from the last one it
saw; the broker serves checkpoints with every cosignature; a custodian checks its entry's inclusion proof
offline against the broker's published key and the witness's key; a verifier demanding a cosignature
accepts the witnessed log; and after a rewrite re-signed with the broker's own key the witness refuses.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from broker.cli.main import app
from tests.api.conftest import Live
from tests.integration.test_audit_transparency import _rewrite_and_resign

WITNESS = "funder.example/witness"


@pytest.fixture
def sbx(live: Live) -> CliRunner:
    return CliRunner(env={"SBX_URL": live.url})


def _run(runner: CliRunner, token: str | None, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, [*(["--token", token] if token else []), *args])
    return result.exit_code, result.stdout + result.stderr


def _checkpoint(live: Live) -> dict:  # type: ignore[type-arg]
    with live.client("op2") as op:
        response = op.post("/api/v1/audit/checkpoint")
        assert response.status_code == 200, response.text
        return dict(response.json())


def _witness(sbx: CliRunner, live: Live, tmp_path: Path) -> tuple[int, str]:
    return _run(
        sbx,
        live.world.tokens["issuer"],
        "audit",
        "witness",
        "--key",
        str(tmp_path / "witness.pem"),
        "--name",
        WITNESS,
        "--state",
        str(tmp_path / "witness-state.json"),
        "--broker-key",
        str(tmp_path / "jwks.json"),
        "--once",
    )


def test_witness_cosigns_custodian_checks_offline_and_a_rewrite_is_refused(
    sbx: CliRunner, live: Live, tmp_path: Path
) -> None:
    world, settings = live.world, live.world.services.container.settings
    code, vkey = _run(
        sbx, None, "audit", "witness", "--key", str(tmp_path / "witness.pem"), "--name", WITNESS, "--init"
    )
    assert code == 0, vkey
    vkey = vkey.strip()
    settings.audit_witnesses = [vkey]  # the operator names the witness
    world.services.audit.__dict__.pop("config", None)
    with live.client(None) as anyone:
        (tmp_path / "jwks.json").write_text(anyone.get("/.well-known/jwks.json").text)

    world.credit(100)
    _checkpoint(live)
    code, out = _witness(sbx, live, tmp_path)
    assert code == 0 and "co-signed" in out, out
    world.credit(200)
    world.clock.advance(1_000)
    second = _checkpoint(live)
    code, out = _witness(sbx, live, tmp_path)  # checks the consistency proof from the first
    assert code == 0, out
    with live.client("sme-a") as sme:
        latest = sme.get("/api/v1/audit/checkpoints/latest").json()
        assert f"\u2014 {WITNESS} " in latest["checkpoint"] and latest["tree_size"] == second["tree_size"]
        own = [
            e
            for e in sme.get("/api/v1/audit", params={"limit": 1000}).json()
            if e["seq"] <= latest["tree_size"]
        ]
        assert sme.get("/api/v1/audit/cosignatures").status_code == 405

    proof_file = tmp_path / "proof.json"
    code, out = _run(
        sbx, world.tokens["sme-a"], "audit", "prove", str(own[-1]["seq"]), "--out", str(proof_file)
    )
    assert code == 0, out
    code, out = _run(sbx, world.tokens["sme-b"], "audit", "prove", str(own[-1]["seq"]))
    assert code != 0 and "not_found" in out  # another SME may not read it
    check = ["audit", "check-proof", str(proof_file), "--broker-key", str(tmp_path / "jwks.json")]
    code, out = _run(sbx, None, *check, "--witness", vkey, "--witnesses-required", "1")
    assert code == 0 and "VALID" in out, out
    code, out = _run(sbx, None, *check, "--witnesses-required", "1")  # no witness key given: refused
    assert code == 4, out  # verification failed
    code, out = _run(
        sbx, world.tokens["sme-a"], "audit", "consistency", "1", str(second["tree_size"]), "--json"
    )
    assert code == 0 and json.loads(out)["new_size"] == second["tree_size"]

    settings.audit_witnesses_required = 1
    world.services.audit.__dict__.pop("config", None)
    code, out = _run(sbx, world.tokens["op2"], "audit", "verify")
    assert code == 0, out
    code, out = _run(sbx, world.tokens["op2"], "ledger", "verify")
    assert code == 0 and "ledger consistent" in out, out

    _rewrite_and_resign(world, seq=2)  # the attacker holds the database, the state dir and the broker key
    world.credit(300)
    world.clock.advance(1_000)
    _checkpoint(live)
    code, out = _witness(sbx, live, tmp_path)
    assert code == 4 and "REFUSED" in out and "rewritten" in out, out
    world.clock.advance(400_000)
    _checkpoint(live)
    code, out = _run(sbx, world.tokens["op2"], "audit", "verify")
    assert code == 4 and "witness" in out, out
