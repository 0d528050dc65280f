"""FastAPI dependencies: the container, the services and the authenticated principal."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request, params

from broker.db.orgs import Principal
from broker.errors import RateLimited, Unauthorized
from broker.services.registry import Services


def get_services(request: Request) -> Services:
    """The services built for this app (kept on ``app.state``)."""
    services: Services = request.app.state.services
    return services


def get_principal(
    services: Annotated[Services, Depends(get_services)],
    authorization: Annotated[str | None, Header()] = None,
) -> Principal:
    """The caller, from ``Authorization: Bearer <token>``; 401 when missing, unknown, expired or revoked."""
    if not authorization or not authorization.startswith("Bearer "):
        raise Unauthorized("send `Authorization: Bearer <token>`; `sbx token create` makes one")
    principal = services.orgs.authenticate(authorization.removeprefix("Bearer ").strip())
    if principal is None:
        raise Unauthorized("the token is unknown, expired or revoked")
    return principal


ServicesDep = Annotated[Services, Depends(get_services)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key", max_length=200, description="Retry-safe key: same key and body, same result."
    ),
]


def rate_limited(category: str) -> params.Depends:
    """A dependency that spends one of the caller's ``category`` tokens or answers 429 with Retry-After."""

    def check(principal: PrincipalDep, services: ServicesDep) -> Principal:
        wait_s = services.container.limiter.take(principal.org_id, category)
        if wait_s:
            raise RateLimited(
                f"too many {category} requests from your organisation; retry in {wait_s} s",
                retry_after_s=wait_s,
            )
        return principal

    return params.Depends(check)
