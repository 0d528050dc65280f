"""DP-SGD training routes."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from broker.api import models as m
from broker.api.deps import IdempotencyKey, PrincipalDep, ServicesDep, rate_limited
from broker.api.policy import policy
from common.resources import Resources

router = APIRouter(prefix="/api/v1/training")


@router.post("", status_code=201, openapi_extra=policy("sme"), dependencies=[rate_limited("submit")])
def submit_training(
    body: m.TrainingSubmit,
    principal: PrincipalDep,
    services: ServicesDep,
    idempotency_key: IdempotencyKey = None,
) -> dict[str, Any]:
    """Reserve the run's privacy cost and queue it as a billed job."""
    return services.training.submit(
        principal,
        dataset_id=body.dataset_id,
        spec=body.spec,
        version=body.version,
        resources=Resources(body.milli_cpu, 0, body.memory_mib),
        max_runtime_s=body.max_runtime_s,
        idempotency_key=idempotency_key,
    )


@router.get("", openapi_extra=policy("sme", "operator"))
def list_training(principal: PrincipalDep, services: ServicesDep) -> list[dict[str, Any]]:
    """The caller's training runs."""
    return services.training.list_runs(principal)


@router.get("/{job_id}", openapi_extra=policy("sme", "operator"))
def training_status(job_id: str, principal: PrincipalDep, services: ServicesDep) -> dict[str, Any]:
    """A run's state, bill and (when finished) its DP summary."""
    return services.training.status(principal, job_id=job_id)


@router.get("/{job_id}/weights", openapi_extra=policy("sme", "operator"), response_class=Response)
def training_weights(job_id: str, principal: PrincipalDep, services: ServicesDep) -> Response:
    """The DP model weights as a safetensors file."""
    data = services.training.weights(principal, job_id=job_id)
    return Response(
        data,
        media_type="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="{job_id}.safetensors"'},
    )
