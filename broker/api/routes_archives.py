"""KubeRay code archives: the one route Ray's nodes call, authorised by the capability in its path alone.

``GET /api/v1/archives/{token}.zip`` sends no bearer token (job pods hold none): the unguessable token is
the capability (see ``broker/services/archives.py``). Every refusal is the same 404 ``not_found``, so an
expired, used-up or ended job's token tells a caller nothing a wrong token would not.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from broker.api.deps import ServicesDep
from broker.api.models import ErrorBody
from broker.api.policy import policy

router = APIRouter(prefix="/api/v1/archives")


@router.get(
    "/{token}.zip",
    openapi_extra=policy("public"),
    response_class=StreamingResponse,
    responses={
        200: {"content": {"application/zip": {}}, "description": "the job's code, one top-level directory"},
        404: {"model": ErrorBody, "description": "unknown, expired, used up, or the job has ended"},
    },
)
def job_archive(token: str, services: ServicesDep) -> StreamingResponse:
    """A KubeRay job's code archive (Ray's ``working_dir``); each call counts against its fetch limit."""
    chunks = services.container.archives.fetch(token)
    return StreamingResponse(chunks, media_type="application/zip", headers={"Cache-Control": "no-store"})
