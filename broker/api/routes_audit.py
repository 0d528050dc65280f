"""Audit log routes."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from broker.api.deps import PrincipalDep, ServicesDep
from broker.api.policy import policy
from common.numbers import INT64_MAX

router = APIRouter(prefix="/api/v1/audit")


@router.get("", openapi_extra=policy("any"))
def audit_entries(
    principal: PrincipalDep,
    services: ServicesDep,
    after_seq: int = Query(default=0, ge=0, le=INT64_MAX),
    limit: int = Query(default=200, ge=1, le=1000),
) -> list[dict[str, Any]]:
    """Entries the caller may read (operators: all; others: about themselves or their datasets)."""
    return services.audit.entries(principal, after_seq=after_seq, limit=limit)


@router.post("/verify", openapi_extra=policy("operator"))
def audit_verify(principal: PrincipalDep, services: ServicesDep) -> dict[str, Any]:
    """Verify the chain against the signed checkpoints."""
    return services.audit.verify(principal)


@router.post("/checkpoint", openapi_extra=policy("operator"))
def audit_checkpoint(principal: PrincipalDep, services: ServicesDep) -> dict[str, Any] | None:
    """Sign the current head into the checkpoint file."""
    return services.audit.checkpoint(principal)
