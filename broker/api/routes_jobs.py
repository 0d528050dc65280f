"""Compute routes: rate card, quotas, quotes, jobs, metering check."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, BinaryIO

from fastapi import APIRouter, Query, Response
from fastapi.responses import StreamingResponse

from broker.api import models as m
from broker.api import views as v
from broker.api.deps import IdempotencyKey, PrincipalDep, ServicesDep, rate_limited
from broker.api.policy import policy
from broker.services.jobs import JobRequest
from common.numbers import INT64_MAX
from common.resources import Resources

router = APIRouter(prefix="/api/v1")


@router.get("/rate-card", openapi_extra=policy("any"), response_model=v.RateCardView)
def get_rate_card(_principal: PrincipalDep, services: ServicesDep) -> dict[str, Any]:
    """The current rate card."""
    return services.jobs.rate_card()


@router.put("/rate-card", openapi_extra=policy("operator"), response_model=v.RateCardView)
def set_rate_card(body: m.RateCardSet, principal: PrincipalDep, services: ServicesDep) -> dict[str, Any]:
    """Publish a new rate-card version (operators)."""
    return services.jobs.set_rate_card(
        principal,
        cpu=body.credits_per_cpu_second,
        gpu=body.credits_per_gpu_second,
        gib=body.credits_per_gib_second,
    )


@router.get("/quota", openapi_extra=policy("sme", "operator"), response_model=v.QuotaView)
def get_quota(
    principal: PrincipalDep, services: ServicesDep, org_id: str | None = Query(default=None, max_length=40)
) -> dict[str, Any]:
    """An SME's quota."""
    return services.jobs.quota(principal, org_id=org_id)


@router.put("/orgs/{org_id}/quota", openapi_extra=policy("operator"), response_model=v.QuotaView)
def set_quota(
    org_id: str, body: m.QuotaSet, principal: PrincipalDep, services: ServicesDep
) -> dict[str, Any]:
    """Set an SME's quota (operators)."""
    return services.jobs.set_quota(principal, org_id=org_id, values=body.model_dump())


@router.post("/jobs/quote", openapi_extra=policy("sme", "operator"), response_model=v.QuoteView)
def quote_job(body: m.JobResources, principal: PrincipalDep, services: ServicesDep) -> dict[str, Any]:
    """Price a job before submitting it."""
    resources = Resources(body.milli_cpu, body.gpus, body.memory_mib)
    return services.jobs.quote(principal, resources=resources, max_runtime_s=body.max_runtime_s)


@router.post(
    "/jobs",
    status_code=201,
    openapi_extra=policy("sme"),
    dependencies=[rate_limited("submit")],
    response_model=v.JobView,
)
def submit_job(
    body: m.JobSubmit, principal: PrincipalDep, services: ServicesDep, idempotency_key: IdempotencyKey = None
) -> dict[str, Any]:
    """Queue a job paid with the SME's credit."""
    request = JobRequest(
        entrypoint=body.entrypoint,
        resources=Resources(body.milli_cpu, body.gpus, body.memory_mib),
        max_runtime_s=body.max_runtime_s,
        priority=body.priority,
        requirements=tuple(body.requirements),
        working_dir_zip_b64=body.working_dir_zip_b64,
    )
    return services.jobs.submit(principal, request, idempotency_key=idempotency_key)


@router.get("/jobs", openapi_extra=policy("sme", "operator"), response_model=list[v.JobView])
def list_jobs(
    principal: PrincipalDep,
    services: ServicesDep,
    org_id: str | None = Query(default=None, max_length=40),
    limit: int = Query(default=200, ge=1, le=1000),
) -> list[dict[str, Any]]:
    """Jobs of the caller (operators: all or one SME)."""
    return services.jobs.list_jobs(principal, org_id=org_id, limit=limit)


@router.get("/jobs/{job_id}", openapi_extra=policy("sme", "operator"), response_model=v.JobView)
def get_job(job_id: str, principal: PrincipalDep, services: ServicesDep) -> dict[str, Any]:
    """A job with its state and bill."""
    return services.jobs.get(principal, job_id=job_id)


@router.get("/jobs/{job_id}/logs", openapi_extra=policy("sme", "operator"), response_model=v.JobLogsView)
def job_logs(job_id: str, principal: PrincipalDep, services: ServicesDep) -> dict[str, Any]:
    """The tail of a job's output."""
    return {"job_id": job_id, "logs": services.jobs.logs(principal, job_id=job_id)}


@router.get(
    "/jobs/{job_id}/output",
    openapi_extra=policy("sme", "operator"),
    response_class=Response,
    responses={200: {"content": {"application/zip": {}}, "description": "the job's $SBX_OUTPUT as a zip"}},
)
def job_output(job_id: str, principal: PrincipalDep, services: ServicesDep) -> Response:
    """What a finished job wrote to ``$SBX_OUTPUT``, as a zip with one top-level directory (the job id)."""
    archive = services.jobs.output(principal, job_id=job_id)
    headers = {"Content-Disposition": f'attachment; filename="{job_id}-output.zip"'}
    return StreamingResponse(_chunks(archive), media_type="application/zip", headers=headers)


def _chunks(archive: BinaryIO, size: int = 1 << 16) -> Iterator[bytes]:
    """Stream a temporary file and close (so delete) it when done, however the download ends."""
    with archive:
        while chunk := archive.read(size):
            yield chunk


@router.post(
    "/jobs/{job_id}/stop",
    openapi_extra=policy("sme", "operator"),
    responses={202: {"description": "the stop is recorded; the backend is unreachable and applies it later"}},
    response_model=v.JobView,
)
def stop_job(
    job_id: str, principal: PrincipalDep, services: ServicesDep, response: Response
) -> dict[str, Any]:
    """Stop a job (settled for what it used). 202 when the backend cannot be reached: the stop is recorded
    durably and applied as soon as the backend answers again."""
    outcome = services.jobs.request_stop(principal, job_id=job_id)
    if outcome.pending:
        response.status_code = 202
    return outcome.job


@router.get("/meter/check", openapi_extra=policy("operator"))
def meter_check(
    principal: PrincipalDep,
    services: ServicesDep,
    start_ms: int = Query(ge=0, le=INT64_MAX),
    end_ms: int = Query(ge=0, le=INT64_MAX),
) -> dict[str, Any]:
    """Conservation check of metering over a window (operators)."""
    return services.jobs.meter_check(principal, start_ms=start_ms, end_ms=end_ms)
