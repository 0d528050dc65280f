"""Issuers that hold their own key: register the public JWK, sign offline, register each voucher.

The broker never sees the private key; a voucher it has no record of is ``unknown_voucher`` until the issuer
registers it, and registration checks the signature with the registered key, the budget and the cap.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from broker.cli.main import app
from common.errors import DomainError
from tests.conftest import World, make_world
from vouchers import VoucherClaims, generate_private_pem, public_jwk, sign_voucher


def _refused(fn: Callable[[], Any]) -> DomainError:
    with pytest.raises(DomainError) as info:
        fn()
    return info.value


def _claims(world: World, *, jti: str, credits: int = 1000, sub: str | None = None) -> VoucherClaims:
    now = world.clock.now_ms() // 1000
    return VoucherClaims(
        jti=jti,
        iss=world.issuer.org_id,
        sub=sub or world.sme.org_id,
        nbf=now,
        exp=now + 86_400,
        credits=credits,
        coverage_bps=5000,
        resources=("cpu",),
        credit_exp=now + 30 * 86_400,
        iat=now,
    )


def _own_key(world: World) -> tuple[str, bytes]:
    pem = generate_private_pem()
    jwk = public_jwk(pem)
    registered = world.services.vouchers.register_key(
        world.issuer, jwk={k: jwk[k] for k in ("kty", "crv", "x")}
    )
    assert registered["kid"] == jwk["kid"]
    return jwk["kid"], pem


def test_offline_voucher_must_be_registered_before_redemption(world: World) -> None:
    kid, pem = _own_key(world)
    token = sign_voucher(_claims(world, jti="vch_offline_1"), pem, kid)
    svc = world.services.vouchers
    assert (
        _refused(lambda: svc.redeem(world.sme, token=token, idempotency_key=None)).code == "unknown_voucher"
    )
    registered = svc.register(world.issuer, token=token)
    assert registered["registered"] and svc.register(world.issuer, token=token)["registered"] is False
    assert svc.show(world.issuer, jti="vch_offline_1")["origin"] == "issuer"
    grant = svc.redeem(world.sme, token=token, idempotency_key=None)["grant"]
    assert (grant["amount"], grant["coverage_bps"]) == (1000, 5000)
    keys = {k["kid"]: k for k in svc.list_keys(world.issuer)}
    assert keys[kid]["held_by"] == "issuer" and keys[kid]["status"] == "active"


def test_registration_checks_signature_budget_and_cap(services, clock) -> None:  # type: ignore[no-untyped-def]
    w = make_world(services, clock, year_budget=10**9, sme_cap=1000)
    kid, pem = _own_key(w)
    svc = w.services.vouchers
    over = sign_voucher(_claims(w, jti="vch_over", credits=1001), pem, kid)
    assert _refused(lambda: svc.register(w.issuer, token=over)).code == "sme_cap_exceeded"
    stranger = generate_private_pem()
    unknown = sign_voucher(_claims(w, jti="vch_stranger"), stranger, public_jwk(stranger)["kid"])
    assert _refused(lambda: svc.register(w.issuer, token=unknown)).code == "unknown_key"
    svc.register(w.issuer, token=sign_voucher(_claims(w, jti="vch_a"), pem, kid))
    resigned = sign_voucher(_claims(w, jti="vch_a", credits=900), pem, kid)
    assert _refused(lambda: svc.register(w.issuer, token=resigned)).code == "voucher_mismatch"
    with pytest.raises(DomainError, match="is the issuer's own"):
        w.voucher(credits=10, sme=w.sme_b)  # the broker cannot sign with a key it does not hold


def test_a_private_jwk_is_refused(world: World) -> None:
    jwk = public_jwk(generate_private_pem()) | {"d": "AAAA"}
    assert _refused(lambda: world.services.vouchers.register_key(world.issuer, jwk=jwk)).code == "invalid_key"


def test_cli_signs_offline_the_same_compact_jws(world: World, tmp_path: Path) -> None:
    runner = CliRunner()
    key_file = tmp_path / "issuer.pem"
    made = runner.invoke(app, ["issuer", "key", "generate", "--out", str(key_file), "--json"])
    assert made.exit_code == 0, made.output
    assert key_file.stat().st_mode & 0o777 == 0o600
    jwk = json.loads(made.stdout)
    world.services.vouchers.register_key(world.issuer, jwk=jwk)
    args = [
        "voucher",
        "sign",
        "--key",
        str(key_file),
        "--issuer",
        world.issuer.org_id,
        "--sme",
        world.sme.org_id,
    ]
    signed = runner.invoke(app, [*args, "--credits", "700", "--coverage", "10000", "--json"])
    assert signed.exit_code == 0, signed.output
    token = json.loads(signed.stdout)["token"]
    assert world.services.vouchers.register(world.issuer, token=token)["claims"]["credits"] == 700
    world.clock.advance(5_000)  # the CLI signed with the real clock, a moment after the test's fake one
    assert (
        world.services.vouchers.redeem(world.sme, token=token, idempotency_key=None)["grant"]["amount"] == 700
    )
