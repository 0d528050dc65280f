"""The FastAPI application: routes, the error table, body limits, JWKS, health and metrics."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from broker.api.deps import PrincipalDep
from broker.api.formats import publish as publish_formats
from broker.api.guards import AuthFirst, BodyLimit, InputGuard, SecurityHeaders
from broker.api.health import (
    RefuseWritesWhenFull,
    StorageWatch,
    backend_check,
    check_database,
    readiness,
    unavailable_response,
)
from broker.api.http_metrics import HttpMetrics
from broker.api.models import ErrorBody
from broker.api.policy import policy
from broker.api.routes_core import router as core_router
from broker.errors import RateLimited, ServiceUnavailable, error_body, status_for, validation_code
from broker.i18n import negotiate
from broker.messages import translate_detail
from broker.services.access import require_role
from broker.services.registry import Services
from common.errors import DomainError

log = logging.getLogger("sbx.api")


def create_app(services: Services) -> FastAPI:
    """Build the app over already-built services (the caller owns the container's lifetime)."""
    errors: dict[int | str, dict[str, Any]] = {
        status: {"model": ErrorBody, "description": text}
        for status, text in {
            400: "Malformed request",
            401: "No valid token",
            402: "Not enough credit",
            403: "Role not allowed",
            404: "Missing, or someone else's",
            409: "Conflicts with the current state",
            413: "Body too large",
            422: "Values break a rule",
            429: "Too many requests (see Retry-After)",
            503: "Database, disk or backend unavailable (see Retry-After)",
        }.items()
    }
    app = FastAPI(
        title="sandbox-broker",
        version="0.1.0",
        description="Voucher-paid compute and differentially private data access for SMEs.",
        responses=errors,
    )
    app.state.services = services
    _install_error_handlers(app)
    # Outermost last: security headers on every answer; the request line checked; a body's sender
    # authenticated before it is read; its size counted while it streams.
    settings = services.container.settings
    storage = StorageWatch(
        settings.state_dir, min_bytes=settings.min_free_bytes, min_percent=settings.min_free_percent
    )
    app.add_middleware(RefuseWritesWhenFull, watch=storage)  # inside AuthFirst: a stranger learns nothing
    app.add_middleware(BodyLimit, max_bytes=services.container.settings.max_body_bytes)
    app.add_middleware(AuthFirst, authenticate=services.orgs.authenticate)
    app.add_middleware(InputGuard)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(  # outermost: counts what the guards answer too
        HttpMetrics, counter=services.container.metrics.http_requests, routes=lambda: app.router.routes
    )
    app.include_router(core_router)
    for router in _feature_routers():
        app.include_router(router)
    publish_formats(app)  # the policy and training-spec schemas as OpenAPI components

    @app.get("/.well-known/jwks.json", openapi_extra=policy("public"))
    def jwks_endpoint() -> dict[str, Any]:
        """Public keys: issuers' voucher keys (active and retired) and the broker's report/audit key."""
        return services.vouchers.jwks()

    @app.get("/healthz", openapi_extra=policy("public"))
    def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", openapi_extra=policy("public"), responses={503: errors[503]})
    def readyz() -> Response:
        """Readiness: the database answers a real statement, the state dir has free space, the backend is
        up (else 503: the first failure's error body, ``checks`` naming each outcome); ``sme_code`` says
        whether the backend runs SME code isolated (``available``) or refuses it (see ``sbx doctor``)."""
        checks, failed = readiness(
            {
                "database": lambda: check_database(services.container.db),
                "storage": storage.check,
                "backend": lambda: backend_check(services.jobs.backend_up),
            }
        )
        if failed is not None:
            return unavailable_response(failed, 503, {"status": "unready", "checks": checks})
        isolation = services.jobs.isolation()
        sme_code = "available" if isolation.sme_code else "refused"
        return JSONResponse({"status": "ready", "sme_code": sme_code})

    @app.get("/metrics", openapi_extra=policy("operator"), include_in_schema=False)
    def metrics(principal: PrincipalDep) -> Response:
        """Prometheus exposition of this broker's registry (operators: it names tenants and their numbers;
        give Prometheus an operator token as its bearer token)."""
        require_role(principal, "operator")
        return Response(generate_latest(services.container.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _feature_routers() -> list[Any]:
    """Routers of later features (jobs, datasets, reports, dashboard), added as they land."""
    from broker.api.routes_archives import router as archives_router
    from broker.api.routes_audit import router as audit_router
    from broker.api.routes_datasets import router as datasets_router
    from broker.api.routes_jobs import router as jobs_router
    from broker.api.routes_reports import router as reports_router
    from broker.api.routes_training import router as training_router
    from broker.web.routes import router as web_router

    return [
        audit_router,
        jobs_router,
        training_router,
        datasets_router,
        reports_router,
        archives_router,
        web_router,
    ]


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(DomainError)
    async def domain_error(request: Request, exc: DomainError) -> JSONResponse:
        headers = {}
        if isinstance(exc, RateLimited | ServiceUnavailable):
            headers["Retry-After"] = str(exc.retry_after_s)
        elif status_for(exc) == 503:  # another adapter's 503 (backend_unavailable): retrying is right
            headers["Retry-After"] = str(ServiceUnavailable.retry_after_s)
        locale = negotiate(accept_language=request.headers.get("accept-language"))
        detail = translate_detail(exc.detail, locale)
        return JSONResponse(error_body(exc.code, detail), status_code=status_for(exc), headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()[:10]
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err.get('loc', ()) if p != 'body') or 'body'}: {err.get('msg', 'invalid')}"
            for err in errors
        )
        return JSONResponse(error_body(validation_code(errors), problems), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(
            exc.status_code, "http_error"
        )
        return JSONResponse(
            error_body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse(
            error_body("internal_error", "the broker failed to handle this request; nothing was changed"),
            status_code=500,
            headers={"Connection": "close"},  # uvicorn drops the connection after an error: say so
        )
