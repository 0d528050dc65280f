"""Issuer commands that run without a broker: make a key, sign a voucher with it, export its public JWK.

An issuer that holds its own key signs vouchers here, on its own machine; the broker only ever sees the
public key (``sbx issuer key register``) and the signed token (``sbx voucher register``). The token is the
same compact JWS the broker's own issuance produces (``vouchers.sign_voucher``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from broker.cli.client import fail
from common.canonical import loads_strict
from common.errors import DomainError
from common.ids import new_id
from vouchers import (
    VoucherClaims,
    generate_private_pem,
    key_id,
    public_jwk,
    public_key_from_jwk,
    sign_voucher,
)

DAY_S = 24 * 3600


def generate_key(out: Path) -> dict[str, Any]:
    """Write a new Ed25519 private key to ``out`` (0600, never overwritten); return its public JWK."""
    pem = generate_private_pem()
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        fail(f"{out} exists; refusing to overwrite a key")
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    return public_jwk(pem)


def public_jwk_of(path: Path) -> dict[str, Any]:
    """The public JWK in ``path``: a JWK (JSON, public only) or a PEM (private or public; only its public
    part is returned, so a private key never leaves the machine)."""
    raw = path.read_bytes()
    try:
        if raw.lstrip().startswith(b"{"):
            jwk = loads_strict(raw)
            public_key_from_jwk(jwk)
            return dict(jwk)
        return public_jwk(raw)
    except (ValueError, DomainError) as exc:
        fail(f"{path} is not an Ed25519 public JWK or PEM: {exc}")


def sign_offline(
    key: Path,
    *,
    issuer: str,
    sme: str,
    credits: int,
    coverage_bps: int,
    valid_days: int,
    credit_days: int,
    resources: list[str],
) -> dict[str, Any]:
    """Sign a new voucher with the private key in ``key``; returns ``{"jti", "kid", "token", "claims"}``."""
    now = int(time.time())
    try:
        pem = key.read_bytes()
        claims = VoucherClaims(
            jti=new_id("vch"),
            iss=issuer,
            sub=sme,
            nbf=now,
            exp=now + valid_days * DAY_S,
            credits=credits,
            coverage_bps=coverage_bps,
            resources=tuple(resources),
            credit_exp=now + credit_days * DAY_S,
            iat=now,
        )
        kid = key_id(pem)
        token = sign_voucher(claims, pem, kid)
    except (OSError, DomainError) as exc:
        fail(f"cannot sign: {exc}")
    return {"jti": claims.jti, "kid": kid, "token": token, "claims": claims.to_json_dict()}
