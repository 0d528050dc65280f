"""Routes of the foundation: organisations, tokens, programmes, issuer keys, vouchers, balance, holds."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from broker.api import models as m
from broker.api.deps import IdempotencyKey, PrincipalDep, ServicesDep, rate_limited
from broker.api.policy import policy
from broker.db.orgs import Identity
from broker.services.orgs import settings_for
from common.numbers import INT64_MAX
from quotas.ledger import HoldState

router = APIRouter(prefix="/api/v1")


@router.get("/me", openapi_extra=policy("any"))
def whoami(principal: PrincipalDep) -> dict[str, Any]:
    """Who the token belongs to."""
    return {"org_id": principal.org_id, "role": principal.role, "token_id": principal.token_id}


@router.post("/orgs", status_code=201, openapi_extra=policy("operator"))
def create_org(body: m.OrgCreate, principal: PrincipalDep, services: ServicesDep) -> dict[str, Any]:
    """Create an organisation (operators)."""
    return services.orgs.create(
        principal,
        name=body.name,
        role=body.role,
        year_budget=body.year_budget,
        sme_cap=body.sme_cap,
        copay_limit=body.copay_limit,
        identity=Identity(body.uscc, body.name_zh, body.name_en, body.locale),
        settings=settings_for(body.currency, body.time_zone, body.locale),
    )


@router.get("/orgs", openapi_extra=policy("any"))
def list_orgs(principal: PrincipalDep, services: ServicesDep) -> list[dict[str, Any]]:
    """Organisations visible to the caller."""
    return services.orgs.list(principal)


@router.put("/orgs/{org_id}/locale", openapi_extra=policy("operator", "own"))
def set_org_locale(
    org_id: str, body: m.LocaleSet, principal: PrincipalDep, services: ServicesDep
) -> dict[str, Any]:
    """Set an organisation's language, zh_CN or en (operators: any; others: their own)."""
    return services.orgs.set_locale(principal, org_id=org_id, locale=body.locale)


@router.get("/orgs/by-uscc/{uscc}", openapi_extra=policy("operator", "own"))
def org_by_uscc(uscc: str, principal: PrincipalDep, services: ServicesDep) -> dict[str, Any]:
    """The organisation with a unified social credit code (operators: any; others: their own)."""
    return services.orgs.by_uscc(principal, uscc)


@router.post("/orgs/{org_id}/tokens", status_code=201, openapi_extra=policy("operator", "own"))
def create_token(
    org_id: str, body: m.TokenCreate, principal: PrincipalDep, services: ServicesDep
) -> dict[str, Any]:
    """Issue a bearer token for an organisation (operators: any; others: their own)."""
    return services.orgs.create_token(principal, org_id=org_id, label=body.label, ttl_s=body.ttl_s)


@router.get("/orgs/{org_id}/tokens", openapi_extra=policy("operator", "own"))
def list_tokens(org_id: str, principal: PrincipalDep, services: ServicesDep) -> list[dict[str, Any]]:
    """An organisation's tokens, without secrets (operators: any; others: their own)."""
    return services.tokens.list(principal, org_id=org_id)


@router.get("/tokens", openapi_extra=policy("any"))
def list_visible_tokens(principal: PrincipalDep, services: ServicesDep) -> list[dict[str, Any]]:
    """Tokens the caller may see: its organisation's (operators: every organisation's)."""
    return services.tokens.list(principal)


@router.post("/tokens/{token_id}/revoke", openapi_extra=policy("any"))
def revoke_token(token_id: str, principal: PrincipalDep, services: ServicesDep) -> dict[str, Any]:
    """Revoke a token (operators: any; others: their organisation's); refused on the next request."""
    return services.tokens.revoke(principal, token_id=token_id)


@router.put("/orgs/{org_id}/programme", openapi_extra=policy("operator"))
def set_programme(
    org_id: str, body: m.ProgrammeSet, principal: PrincipalDep, services: ServicesDep
) -> dict[str, Any]:
    """Set an issuer's yearly budget and per-SME cap (operators)."""
    return services.orgs.set_programme(
        principal, org_id=org_id, year_budget=body.year_budget, sme_cap=body.sme_cap
    )


@router.put("/orgs/{org_id}/copay-limit", openapi_extra=policy("operator"))
def set_copay_limit(
    org_id: str, body: m.CopayLimitSet, principal: PrincipalDep, services: ServicesDep
) -> dict[str, Any]:
    """Set an SME's co-payment limit (operators)."""
    return services.ledger.set_copay_limit(principal, org_id=org_id, limit=body.copay_limit)


@router.post("/issuer/keys", status_code=201, openapi_extra=policy("issuer"))
def create_key(principal: PrincipalDep, services: ServicesDep) -> dict[str, Any]:
    """Generate a new signing key for the calling issuer (rotation: older active keys retire)."""
    return services.vouchers.create_key(principal)


@router.post("/issuer/keys/register", status_code=201, openapi_extra=policy("issuer"))
def register_key(body: m.KeyRegister, principal: PrincipalDep, services: ServicesDep) -> dict[str, Any]:
    """Register the calling issuer's own public key (it keeps the private key; rotation as for create)."""
    return services.vouchers.register_key(principal, jwk=body.public_jwk)


@router.get("/issuer/keys", openapi_extra=policy("issuer", "operator"))
def list_keys(principal: PrincipalDep, services: ServicesDep) -> list[dict[str, Any]]:
    """The caller's keys with their status."""
    return services.vouchers.list_keys(principal)


@router.patch("/issuer/keys/{kid}", openapi_extra=policy("issuer", "operator"))
def set_key_status(
    kid: str, body: m.KeyStatusSet, principal: PrincipalDep, services: ServicesDep
) -> dict[str, Any]:
    """Retire or revoke a key."""
    return services.vouchers.set_key_status(principal, kid=kid, status=body.status)


@router.post("/vouchers", status_code=201, openapi_extra=policy("issuer"))
def issue_voucher(body: m.VoucherIssue, principal: PrincipalDep, services: ServicesDep) -> dict[str, Any]:
    """Issue (sign) a voucher for an SME within the programme's budget and per-SME cap."""
    return services.vouchers.issue(
        principal,
        sme_org=body.sme_org,
        credits=body.credits,
        coverage_bps=body.coverage_bps,
        resources=tuple(body.resources),
        valid_from_s=body.valid_from_s,
        valid_until_s=body.valid_until_s,
        credit_expires_s=body.credit_expires_s,
    )


@router.post("/vouchers/register", status_code=201, openapi_extra=policy("issuer"))
def register_voucher(
    body: m.VoucherRegister, principal: PrincipalDep, services: ServicesDep
) -> dict[str, Any]:
    """Record a voucher the issuer signed offline (`sbx voucher sign`); only then can it be redeemed."""
    return services.vouchers.register(principal, token=body.token)


@router.get("/vouchers", openapi_extra=policy("issuer", "sme", "operator"))
def list_vouchers(principal: PrincipalDep, services: ServicesDep) -> list[dict[str, Any]]:
    """Vouchers issued by (issuer) or to (SME) the caller."""
    return services.vouchers.list(principal)


@router.post(
    "/vouchers/redeem", status_code=201, openapi_extra=policy("sme"), dependencies=[rate_limited("redeem")]
)
def redeem_voucher(
    body: m.VoucherRedeem,
    principal: PrincipalDep,
    services: ServicesDep,
    idempotency_key: IdempotencyKey = None,
) -> dict[str, Any]:
    """Redeem a voucher into a credit grant for the calling SME."""
    return services.vouchers.redeem(principal, token=body.token, idempotency_key=idempotency_key)


@router.get("/vouchers/{jti}", openapi_extra=policy("issuer", "sme", "operator"))
def show_voucher(jti: str, principal: PrincipalDep, services: ServicesDep) -> dict[str, Any]:
    """A voucher (its issuer, its beneficiary, operators)."""
    return services.vouchers.show(principal, jti=jti)


@router.post("/vouchers/{jti}/revoke", openapi_extra=policy("issuer", "operator"))
def revoke_voucher(jti: str, principal: PrincipalDep, services: ServicesDep) -> dict[str, Any]:
    """Revoke an unredeemed voucher."""
    return services.vouchers.revoke(principal, jti=jti)


@router.get("/balance", openapi_extra=policy("sme", "operator"))
def balance(
    principal: PrincipalDep, services: ServicesDep, org_id: str | None = Query(default=None, max_length=40)
) -> dict[str, Any]:
    """An SME's balance and grants."""
    return services.ledger.balance(principal, org_id=org_id)


@router.get("/ledger/entries", openapi_extra=policy("sme", "issuer", "operator"))
def ledger_entries(
    principal: PrincipalDep,
    services: ServicesDep,
    org_id: str | None = Query(default=None, max_length=40),
    after_id: int = Query(default=0, ge=0, le=INT64_MAX),
    limit: int = Query(default=200, ge=1, le=1000),
) -> list[dict[str, Any]]:
    """Ledger entries touching the caller's organisation (operators: any or all)."""
    return services.ledger.entries(principal, org_id=org_id, after_id=after_id, limit=limit)


@router.post("/holds", status_code=201, openapi_extra=policy("sme", "operator"))
def place_hold(
    body: m.HoldPlace, principal: PrincipalDep, services: ServicesDep, idempotency_key: IdempotencyKey = None
) -> dict[str, Any]:
    """Hold credits (an SME for itself, or an operator for an SME)."""
    return services.ledger.place_hold(
        principal,
        amount=body.amount,
        resources=tuple(body.resources),
        org_id=body.org_id,
        idempotency_key=idempotency_key,
        ttl_s=body.ttl_s,
    )


@router.get("/holds/{hold_id}", openapi_extra=policy("sme", "operator"))
def get_hold(hold_id: str, principal: PrincipalDep, services: ServicesDep) -> dict[str, Any]:
    """A hold."""
    return services.ledger.get_hold(principal, hold_id=hold_id)


@router.post("/holds/{hold_id}/settle", openapi_extra=policy("operator"))
def settle_hold(
    hold_id: str,
    body: m.HoldSettle,
    principal: PrincipalDep,
    services: ServicesDep,
    idempotency_key: IdempotencyKey = None,
) -> dict[str, Any]:
    """Settle a hold for its cost and release the rest (operators; jobs settle themselves)."""
    return services.ledger.close_hold(
        principal, hold_id=hold_id, target=HoldState.SETTLED, cost=body.cost, idempotency_key=idempotency_key
    )


@router.post("/holds/{hold_id}/release", openapi_extra=policy("sme", "operator"))
def release_hold(
    hold_id: str, principal: PrincipalDep, services: ServicesDep, idempotency_key: IdempotencyKey = None
) -> dict[str, Any]:
    """Release a hold in full."""
    return services.ledger.close_hold(
        principal, hold_id=hold_id, target=HoldState.RELEASED, idempotency_key=idempotency_key
    )
