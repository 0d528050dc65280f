"""Migration 0008 upgrades existing rows: clear issuer keys are wrapped under the KEK, vouchers get claims."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from broker.db.migrate import upgrade
from broker.keys import Kek, issuer_key_label, read_kek_file
from tests.conftest import psycopg_url
from vouchers import VoucherClaims, claims_record, generate_private_pem, key_id, public_jwk


def test_clear_keys_are_wrapped_and_old_vouchers_get_their_claims(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _check_upgrade(f"sqlite:///{tmp_path / 'old.db'}", tmp_path, monkeypatch)


@pytest.mark.postgres
def test_the_same_on_postgresql(
    empty_pg_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _check_upgrade(psycopg_url(empty_pg_database), tmp_path, monkeypatch)


def _check_upgrade(url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    upgrade(url, "0007")
    pem = generate_private_pem()
    kid = key_id(pem)
    engine = create_engine(url)
    with engine.begin() as conn:
        for org, role in (("org_i", "issuer"), ("org_s", "sme")):
            conn.execute(
                text("INSERT INTO organisations VALUES (:id, :id, :role, 0)"), {"id": org, "role": role}
            )
        conn.execute(
            text("INSERT INTO issuer_keys VALUES (:kid, 'org_i', :jwk, :pem, 'active', 0, 0)"),
            {"kid": kid, "jwk": json.dumps(public_jwk(pem)), "pem": pem},
        )
        conn.execute(
            text(
                "INSERT INTO vouchers (jti, issuer_org, sme_org, kid, credits, coverage_bps, resources, nbf, exp,"
                " credit_exp, year, issued_ms, status, changed_ms) VALUES ('vch_old', 'org_i', 'org_s', :kid,"
                " 1000, 5000, 'memory,cpu', 100, 200, 300, 1970, 100999, 'issued', 100999)"
            ),
            {"kid": kid},
        )
    monkeypatch.setenv("SBX_KEK_FILE", str(tmp_path / "kek"))
    monkeypatch.setenv("SBX_STATE_DIR", str(tmp_path / "state"))
    upgrade(url, "0008")  # this migration alone (later ones are tested by their own authors)
    with engine.connect() as conn:
        columns = {c["name"] for c in inspect(conn).get_columns("issuer_keys")}
        wrapped = bytes(conn.execute(text("SELECT private_wrapped FROM issuer_keys")).scalar_one())
        claims, digest = conn.execute(text("SELECT claims, token_sha256 FROM vouchers")).one()
    engine.dispose()
    assert "private_pem" not in columns and b"PRIVATE KEY" not in wrapped
    assert Kek(read_kek_file(tmp_path / "kek")).unwrap(wrapped, label=issuer_key_label(kid)) == pem
    expected = VoucherClaims(
        jti="vch_old",
        iss="org_i",
        sub="org_s",
        nbf=100,
        exp=200,
        credits=1000,
        coverage_bps=5000,
        resources=("cpu", "memory"),
        credit_exp=300,
        iat=100,
    )
    assert claims == claims_record(expected) and digest is None
