"""Keys and signatures as an attacker with a copy of the state sees them (issue 12 items 2 and 6).

Each test is a negative control for one attack that worked before: plaintext private keys in the database
and state dir, a broker that started in production with no KEK, a report re-signed with an issuer key, a
report with a duplicated member, a rotated broker key that orphaned old reports.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from broker.bootstrap import initialise, rotate_keys
from broker.cli.main import app
from broker.container import Container, build_container
from broker.db import vouchers as vouchers_db
from broker.keys import Kek, KekUnavailable, broker_keyset, issuer_key_label, read_kek_file, rotate_broker_key
from broker.services.registry import build_services
from broker.services.report_signing import (
    ReportSignatureInvalid,
    load_report,
    sign_report,
    verify_report,
)
from broker.settings import Settings
from common.canonical import canonical_json
from common.clock import FakeClock
from tests.conftest import World
from vouchers.keys import b64url_encode, sign_bytes

PEM_HEADER = b"PRIVATE KEY-----"


def _files_of(settings: Settings) -> list[Path]:
    """Every file of the state dir and the SQLite database (with its WAL), as a stolen disk holds them."""
    db = Path(settings.resolved_database_url.removeprefix("sqlite:///"))
    files = [p for p in settings.state_dir.rglob("*") if p.is_file()]
    return files + [p for p in db.parent.glob(db.name + "*") if p.is_file()]


def _issuer_pem(world: World) -> tuple[str, bytes]:
    svc = world.services.vouchers
    return svc.c.db.read(lambda conn: svc.signing_key_of(conn, world.issuer.org_id))


def _period(world: World) -> str:
    return dt.datetime.fromtimestamp(world.clock.now_ms() / 1000, tz=dt.UTC).strftime("%Y-%m")


def test_no_private_key_or_operator_token_in_plaintext_on_disk(world: World, settings: Settings) -> None:
    world.voucher(credits=10)  # the broker used the issuer's key
    _, issuer_pem = _issuer_pem(world)
    body = b"".join(issuer_pem.splitlines()[1:-1])  # the key's base64, without PEM armour
    container = world.services.vouchers.c
    broker_body = b"".join(container.broker_key_pem.splitlines()[1:-1])
    files = _files_of(settings)
    assert any(p.name.endswith(".db") for p in files) and any(p.suffix == ".json" for p in files)
    for path in files:
        data = path.read_bytes()
        assert PEM_HEADER not in data, path
        assert body not in data and broker_body not in data, path
    assert not (settings.state_dir / "operator.token").exists()


def test_init_prints_the_token_once_and_writes_it_only_when_asked(tmp_path: Path) -> None:
    state = tmp_path / "state"
    settings = Settings(state_dir=state, compute="fake", background_loops=False, kek_file=tmp_path / "kek")
    token = initialise(state, settings=settings)["token"]
    assert token and all(token.encode() not in p.read_bytes() for p in state.rglob("*") if p.is_file())
    other = tmp_path / "other"
    result = initialise(other, settings=settings, token_file=tmp_path / "op.token")
    assert (tmp_path / "op.token").read_text().strip() == result["token"]
    assert (tmp_path / "op.token").stat().st_mode & 0o777 == 0o600


def test_production_without_a_kek_refuses_to_start(settings: Settings, container: Container) -> None:
    production = settings.model_copy(update={"environment": "production", "kek_file": None})
    assert any("SBX_KEK_FILE" in p for p in production.production_problems())
    with pytest.raises(KekUnavailable, match="SBX_KEK_FILE"):
        build_container(production)
    assert settings.kek_file is not None
    settings.kek_file.unlink()  # embedded: a state dir without its KEK cannot be read either
    with pytest.raises(KekUnavailable, match="no key-encryption key"):
        build_container(settings)


def test_keys_rotate_rewraps_under_a_new_kek(world: World, settings: Settings, clock: FakeClock) -> None:
    assert settings.kek_file is not None
    old = Kek(read_kek_file(settings.kek_file))
    kid, pem = _issuer_pem(world)
    result = rotate_keys(settings)
    assert result["rewrapped"] == 2  # the broker key and the issuer's key
    assert len(read_kek_file(settings.kek_file)) == 1 and result["kek_id"] != old.current_id
    c = world.services.vouchers.c
    _, wrapped = c.db.read(lambda conn: vouchers_db.signing_key(conn, world.issuer.org_id))
    with pytest.raises(KekUnavailable):
        old.unwrap(wrapped, label=issuer_key_label(kid))  # a copy of the old KEK opens nothing now
    assert world.voucher(credits=5)["token"]  # the running broker re-reads the KEK file
    fresh = build_container(settings, clock=clock)
    try:
        assert (
            fresh.db.read(
                lambda conn: build_services(fresh).vouchers.signing_key_of(conn, world.issuer.org_id)
            )[1]
            == pem
        )
    finally:
        fresh.close()


def test_a_report_signed_with_an_issuer_key_is_refused(world: World) -> None:
    doc = world.services.reports.subsidy(world.operator, period=_period(world))
    jwks = world.services.vouchers.jwks()
    assert verify_report(doc, jwks)["ok"]
    kid, pem = _issuer_pem(world)
    assert any(k["kid"] == kid for k in jwks["keys"])  # the issuer key is in the JWKS ...
    forged = sign_report(doc["report"], key_pem=pem, kid=kid)
    with pytest.raises(ReportSignatureInvalid, match="not the broker's report key"):
        verify_report(forged, jwks)  # ... and still cannot sign a report


def test_a_signature_made_for_another_purpose_is_refused(world: World) -> None:
    doc = world.services.reports.subsidy(world.operator, period=_period(world))
    c = world.services.vouchers.c
    header = {"alg": "EdDSA", "kid": c.broker_kid, "typ": "sbx-data-access-report+jws"}
    protected = b64url_encode(canonical_json(header))
    signing_input = f"{protected}.{b64url_encode(canonical_json(doc['report']))}".encode()
    other = {
        "report": doc["report"],
        "signature": {"protected": protected, "signature": sign_bytes(c.broker_key_pem, signing_input)},
    }
    with pytest.raises(ReportSignatureInvalid, match="typ"):
        verify_report(other, world.services.vouchers.jwks())
    legacy = {"report": doc["report"], "signature": {"alg": "Ed25519", "kid": c.broker_kid, "value": "x"}}
    with pytest.raises(ReportSignatureInvalid, match="detached JWS"):
        verify_report(legacy, world.services.vouchers.jwks())


def test_duplicate_members_are_refused(world: World, tmp_path: Path) -> None:
    doc = world.services.reports.subsidy(world.operator, period=_period(world))
    text = json.dumps(doc)
    forged_totals = json.dumps({**doc["report"]["totals"], "voucher_share": 10**9})
    duplicated = text.replace('"totals": ', f'"totals": {forged_totals}, "totals": ', 1)
    assert json.loads(duplicated) == doc  # last-wins readers see the signed totals ...
    with pytest.raises(ReportSignatureInvalid, match="twice"):
        load_report(duplicated)  # ... so the verifier refuses what a first-wins reader would show
    (tmp_path / "r.json").write_text(duplicated)
    (tmp_path / "jwks.json").write_text(json.dumps(world.services.vouchers.jwks()))
    runner = CliRunner()
    args = ["report", "verify", str(tmp_path / "r.json"), "--jwks", str(tmp_path / "jwks.json")]
    result = runner.invoke(app, args)
    assert result.exit_code == 4 and "twice" in result.stderr  # verification failed
    (tmp_path / "r.json").write_text(text)
    assert runner.invoke(app, args).exit_code == 0


def test_rotating_the_broker_key_keeps_old_reports_verifiable(
    world: World, settings: Settings, clock: FakeClock
) -> None:
    old_doc = world.services.reports.subsidy(world.operator, period=_period(world))
    old_kid = world.services.vouchers.c.broker_kid
    new_kid = rotate_broker_key(settings.keys_dir, world.services.vouchers.c.kek, now_ms=clock.now_ms())
    rotated = build_container(settings, clock=clock)
    try:
        services = build_services(rotated)
        new_doc = services.reports.subsidy(world.operator, period=_period(world))
        jwks = services.vouchers.jwks()
        assert verify_report(new_doc, jwks)["kid"] == new_kid != old_kid
        assert verify_report(old_doc, jwks)["kid"] == old_kid  # the retired key still verifies
        assert verify_report(old_doc, services.reports.jwks())["ok"]
        with pytest.raises(ReportSignatureInvalid, match="pinned"):
            verify_report(old_doc, jwks, pinned_kids={new_kid})
    finally:
        rotated.close()


def test_token_creation_and_quota_changes_are_audit_entries(world: World) -> None:
    services = world.services
    token = services.orgs.create_token(world.operator, org_id=world.sme.org_id, label="ci")["token"]
    services.jobs.set_quota(
        world.operator,
        org_id=world.sme.org_id,
        values={
            "max_milli_cpu": 4000,
            "max_gpus": 0,
            "max_memory_mib": 8192,
            "max_running_jobs": 2,
            "max_queued_jobs": 10,
        },
    )
    entries = services.audit.entries(world.operator, limit=1000)
    created = [e for e in entries if e["action"] == "token.create" and e["details"].get("label") == "ci"]
    assert len(created) == 1 and created[0]["object_type"] == "token"
    assert token.startswith(f"sbx_{created[0]['object_id']}_")  # the id, matched by token.revoke
    assert all(token.split("_")[3] not in json.dumps(e) for e in entries)  # never the secret
    quota = [e for e in entries if e["action"] == "quota.set" and e["object_id"] == world.sme.org_id]
    assert quota and quota[-1]["details"]["max_running_jobs"] == 2


def test_cli_init_and_keys_rotate(tmp_path: Path) -> None:
    env = {"SBX_STATE_DIR": str(tmp_path / "state"), "SBX_KEK_FILE": str(tmp_path / "cfg" / "kek")}
    runner = CliRunner(env=env)
    init = runner.invoke(app, ["init", "--state-dir", str(tmp_path / "state"), "--json"])
    assert init.exit_code == 0, init.output
    assert json.loads(init.stdout)["kek_file"] == str((tmp_path / "cfg" / "kek").resolve())
    before = broker_keyset(tmp_path / "state" / "keys")
    rotated = runner.invoke(app, ["keys", "rotate", "--broker-key", "--json"])
    assert rotated.exit_code == 0, rotated.output
    data = json.loads(rotated.stdout)
    after = broker_keyset(tmp_path / "state" / "keys")
    assert data["rewrapped"] == 1 and set(before) < set(after) and data["broker_kid"] in after
