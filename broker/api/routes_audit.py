"""Audit log routes."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from broker.api.deps import PrincipalDep, ServicesDep
from broker.api.models import Strict
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
    """Extend the Merkle tree and sign the next checkpoint (also copied into the checkpoint file)."""
    return services.audit.checkpoint(principal)


class CheckpointOut(BaseModel):
    """A signed checkpoint (C2SP signed note) with every witness cosignature received for it."""

    seq: int
    tree_size: int
    time_ms: int
    checkpoint: str


class EntryOut(BaseModel):
    """An audit entry as readers see it: its fields, its hash and the exact signed body."""

    seq: int
    ts_ms: int
    actor_org: str | None
    actor_role: str | None
    action: str
    object_type: str
    object_id: str
    org_id: str | None
    dataset_id: str | None
    details: dict[str, Any]
    entry_hash: str
    body: str


class InclusionProofOut(BaseModel):
    """RFC 9162 inclusion proof of one entry (leaf = its entry hash) in a signed tree."""

    seq: int
    leaf_index: int
    tree_size: int
    entry: EntryOut
    proof: list[str] = Field(description="Base64 node hashes, nearest the leaf first.")
    checkpoint_seq: int
    checkpoint: str


class ConsistencyProofOut(BaseModel):
    """RFC 9162 consistency proof between two tree sizes, with the newer signed checkpoint."""

    old_size: int
    new_size: int
    proof: list[str]
    checkpoint_seq: int
    checkpoint: str
    old_checkpoint: str | None


class CosignatureIn(Strict):
    """A witness's C2SP tlog-cosignature line over checkpoint ``checkpoint_seq``."""

    checkpoint_seq: int = Field(ge=1, le=INT64_MAX)
    cosignature: str = Field(min_length=8, max_length=1024)


class CosignatureOut(BaseModel):
    """The stored cosignature's checkpoint and timestamp (unix seconds)."""

    checkpoint_seq: int
    timestamp: int


class LedgerVerifyOut(BaseModel):
    """The ledger check: recorded transfers vs entries vs balances, and what was found."""

    ok: bool
    transfers: int
    unfolded: int
    problems: list[str]


@router.get("/checkpoints", openapi_extra=policy("any"), response_model=list[CheckpointOut])
def audit_checkpoints(
    principal: PrincipalDep,
    services: ServicesDep,
    after_seq: int = Query(default=0, ge=0, le=INT64_MAX),
    limit: int = Query(default=100, ge=1, le=1000),
) -> list[dict[str, Any]]:
    """The checkpoint sequence, oldest first, each with its cosignatures."""
    return services.audit.checkpoints(principal, after_seq=after_seq, limit=limit)


@router.get("/checkpoints/latest", openapi_extra=policy("any"), response_model=CheckpointOut)
def audit_latest_checkpoint(principal: PrincipalDep, services: ServicesDep) -> dict[str, Any]:
    """The newest signed checkpoint with its cosignatures."""
    return services.audit.latest_checkpoint(principal)


@router.get("/proofs/inclusion/{seq}", openapi_extra=policy("any"), response_model=InclusionProofOut)
def audit_inclusion_proof(
    seq: int,
    principal: PrincipalDep,
    services: ServicesDep,
    tree_size: int | None = Query(default=None, ge=1, le=INT64_MAX),
) -> dict[str, Any]:
    """Entry ``seq``'s inclusion proof (for entries the caller may read; operators: all)."""
    return services.audit.prove(principal, seq=seq, size=tree_size)


@router.get("/proofs/consistency", openapi_extra=policy("any"), response_model=ConsistencyProofOut)
def audit_consistency_proof(
    principal: PrincipalDep,
    services: ServicesDep,
    old: int = Query(ge=1, le=INT64_MAX),
    new: int = Query(ge=1, le=INT64_MAX),
) -> dict[str, Any]:
    """The consistency proof from tree size ``old`` to ``new``."""
    return services.audit.consistency(principal, old=old, new=new)


@router.post("/cosignatures", openapi_extra=policy("any"), response_model=CosignatureOut)
def audit_cosign(body: CosignatureIn, principal: PrincipalDep, services: ServicesDep) -> dict[str, Any]:
    """Store a configured witness's cosignature (refused for unknown witnesses or bad signatures)."""
    return services.audit.add_cosignature(
        principal, checkpoint_seq=body.checkpoint_seq, cosignature=body.cosignature
    )


@router.post("/ledger", openapi_extra=policy("operator"), response_model=LedgerVerifyOut)
def audit_ledger_verify(principal: PrincipalDep, services: ServicesDep) -> dict[str, Any]:
    """Verify the ledger against its recorded transfers and invariants (sets sbx_ledger_consistent)."""
    return services.audit.verify_ledger(principal)
