"""Data foundation routes: datasets, access requests, DP queries, budgets and per-dataset audit."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import Field

from broker.api.deps import IdempotencyKey, PrincipalDep, ServicesDep, rate_limited
from broker.api.formats import normalise_policy
from broker.api.models import JsonObject, Strict, Text
from broker.api.policy import policy
from broker.services import query_desk
from broker.services.datasets import MAX_QUERIES_PER_BATCH, decode_content
from common.numbers import INT64_MAX

router = APIRouter(prefix="/api/v1")

ReleaseKindName = Literal["query", "training"]
_MAX_B64 = 512 * 1024 * 1024  # the app's body limit applies first


def _query_kinds() -> list[ReleaseKindName]:
    return ["query"]


class DatasetUpload(Strict):
    """A table and its policy: either the file as base64 or the key of an object under ``incoming/<org>/``."""

    format: Literal["parquet", "csv"]
    policy: JsonObject
    content_b64: str | None = Field(default=None, max_length=_MAX_B64)
    object_key: Text | None = Field(default=None, max_length=1024)


class DatasetRegister(DatasetUpload):
    """Register a new dataset."""

    name: Text = Field(min_length=1, max_length=200)
    description: Text = Field(default="", max_length=4000)


class AccessAsk(Strict):
    """An SME's access request."""

    purpose: Text = Field(min_length=1, max_length=2000)
    epsilon_micro: int = Field(gt=0, le=10**12)
    delta_e12: int = Field(default=0, ge=0, lt=10**12)
    kinds: list[ReleaseKindName] = Field(default_factory=_query_kinds, min_length=1)
    version: int | None = Field(default=None, ge=1, le=INT64_MAX)


class AccessApprove(Strict):
    """A custodian's approval, possibly granting less than asked."""

    valid_for_s: int = Field(gt=0, le=5 * 365 * 24 * 3600)
    epsilon_micro: int | None = Field(default=None, gt=0, le=10**12)
    delta_e12: int | None = Field(default=None, ge=0, lt=10**12)
    kinds: list[ReleaseKindName] | None = Field(default=None, min_length=1)


class AccessClose(Strict):
    """A refusal or revocation, with the reason the SME will read."""

    reason: Text = Field(min_length=1, max_length=2000)


class QueryBatch(Strict):
    """DP queries on one dataset (see ``privacy.queries.QuerySpec.from_dict`` for one query's fields)."""

    queries: list[JsonObject] = Field(min_length=1, max_length=MAX_QUERIES_PER_BATCH)
    version: int | None = Field(default=None, ge=1, le=INT64_MAX)


def _content(body: DatasetUpload) -> bytes | None:
    return None if body.content_b64 is None else decode_content(body.content_b64)


@router.post("/datasets", status_code=201, openapi_extra=policy("custodian"))
def register_dataset(body: DatasetRegister, principal: PrincipalDep, services: ServicesDep) -> dict[str, Any]:
    """Register a dataset: the broker bounds contributions per privacy unit and stores that version."""
    return services.datasets.register(
        principal,
        name=body.name,
        description=body.description,
        policy=normalise_policy(body.policy),
        fmt=body.format,
        content=_content(body),
        object_key=body.object_key,
    )


@router.get("/datasets", openapi_extra=policy("custodian", "sme", "operator"))
def list_datasets(principal: PrincipalDep, services: ServicesDep) -> list[dict[str, Any]]:
    """Datasets the caller may see (custodians: their own)."""
    return services.datasets.list_datasets(principal)


@router.get("/datasets/{dataset_id}", openapi_extra=policy("custodian", "sme", "operator"))
def describe_dataset(dataset_id: str, principal: PrincipalDep, services: ServicesDep) -> dict[str, Any]:
    """Schema, policy and versions (never values)."""
    return services.datasets.describe(principal, dataset_id=dataset_id)


@router.post("/datasets/{dataset_id}/versions", status_code=201, openapi_extra=policy("custodian"))
def add_dataset_version(
    dataset_id: str, body: DatasetUpload, principal: PrincipalDep, services: ServicesDep
) -> dict[str, Any]:
    """Register a new version of one's dataset (what was spent of the budget carries over)."""
    return services.datasets.add_version(
        principal,
        dataset_id=dataset_id,
        policy=normalise_policy(body.policy),
        fmt=body.format,
        content=_content(body),
        object_key=body.object_key,
    )


@router.get("/datasets/{dataset_id}/budget", openapi_extra=policy("custodian", "sme", "operator"))
def dataset_budget(dataset_id: str, principal: PrincipalDep, services: ServicesDep) -> dict[str, Any]:
    """The privacy-budget ledger of a dataset as the caller may see it."""
    return services.datasets.budget(principal, dataset_id=dataset_id)


@router.get("/datasets/{dataset_id}/audit", openapi_extra=policy("custodian", "operator"))
def dataset_audit(
    dataset_id: str,
    principal: PrincipalDep,
    services: ServicesDep,
    after_seq: int = Query(default=0, ge=0, le=INT64_MAX),
    limit: int = Query(default=200, ge=1, le=1000),
) -> list[dict[str, Any]]:
    """Audit entries of one of the caller's datasets (operators: any)."""
    return services.datasets.audit_entries(principal, dataset_id=dataset_id, after_seq=after_seq, limit=limit)


@router.post("/datasets/{dataset_id}/access-requests", status_code=201, openapi_extra=policy("sme"))
def request_access(
    dataset_id: str, body: AccessAsk, principal: PrincipalDep, services: ServicesDep
) -> dict[str, Any]:
    """Ask for access with a purpose and an ε (bound to the latest version unless one is named)."""
    return services.datasets.request_access(
        principal,
        dataset_id=dataset_id,
        purpose=body.purpose,
        epsilon_micro=body.epsilon_micro,
        delta_e12=body.delta_e12,
        kinds=body.kinds,
        version=body.version,
    )


@router.post(
    "/datasets/{dataset_id}/queries", openapi_extra=policy("sme"), dependencies=[rate_limited("query")]
)
def run_queries(
    dataset_id: str,
    body: QueryBatch,
    principal: PrincipalDep,
    services: ServicesDep,
    idempotency_key: IdempotencyKey = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Run DP queries within the caller's grant: the cost is reserved before any data is read. A retry
    with the same ``Idempotency-Key`` and body gets the first answer (same values, charged once).
    ``?dry_run=true`` validates and prices the batch exactly as a real run (its ε, δ and credit hold, or
    the same refusal) and reserves, holds and reads nothing."""
    if dry_run:
        return query_desk.dry_run(
            services.datasets, principal, dataset_id=dataset_id, queries=body.queries, version=body.version
        )
    return services.datasets.query(
        principal,
        dataset_id=dataset_id,
        queries=body.queries,
        version=body.version,
        idempotency_key=idempotency_key,
    )


@router.get("/queries", openapi_extra=policy("sme"))
def query_history(
    principal: PrincipalDep,
    services: ServicesDep,
    dataset_id: Annotated[str | None, Query(max_length=40)] = None,
    limit: Annotated[int, Query(ge=1, le=query_desk.HISTORY_LIMIT)] = 200,
) -> list[dict[str, Any]]:
    """The caller's past DP queries and training runs (newest first): ε and δ charged, credits, status;
    never a released value."""
    return query_desk.history(services.datasets, principal, dataset_id=dataset_id, limit=limit)


@router.get("/access-requests", openapi_extra=policy("custodian", "sme", "operator"))
def list_access_requests(
    principal: PrincipalDep,
    services: ServicesDep,
    dataset_id: str | None = Query(default=None, max_length=40),
    status: Literal["pending", "approved", "refused", "revoked", "expired"] | None = Query(default=None),
) -> list[dict[str, Any]]:
    """Requests the caller may see (SME: its own; custodian: on its datasets)."""
    return services.datasets.list_requests(principal, dataset_id=dataset_id, status=status)


@router.get("/access-requests/{request_id}", openapi_extra=policy("custodian", "sme", "operator"))
def show_access_request(request_id: str, principal: PrincipalDep, services: ServicesDep) -> dict[str, Any]:
    """One access request with its grant and what is left of it."""
    return services.datasets.get_request(principal, request_id=request_id)


@router.post("/access-requests/{request_id}/approve", openapi_extra=policy("custodian"))
def approve_access(
    request_id: str, body: AccessApprove, principal: PrincipalDep, services: ServicesDep
) -> dict[str, Any]:
    """Approve a pending request on one's dataset (possibly with less ε or fewer kinds)."""
    return services.datasets.approve(
        principal,
        request_id=request_id,
        valid_for_s=body.valid_for_s,
        epsilon_micro=body.epsilon_micro,
        delta_e12=body.delta_e12,
        kinds=body.kinds,
    )


@router.post("/access-requests/{request_id}/refuse", openapi_extra=policy("custodian"))
def refuse_access(
    request_id: str, body: AccessClose, principal: PrincipalDep, services: ServicesDep
) -> dict[str, Any]:
    """Refuse a pending request with a reason."""
    return services.datasets.refuse(principal, request_id=request_id, reason=body.reason)


@router.post("/access-requests/{request_id}/revoke", openapi_extra=policy("custodian"))
def revoke_access(
    request_id: str, body: AccessClose, principal: PrincipalDep, services: ServicesDep
) -> dict[str, Any]:
    """Revoke an approval: nothing more runs on it."""
    return services.datasets.revoke(principal, request_id=request_id, reason=body.reason)
