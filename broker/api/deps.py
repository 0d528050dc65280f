"""FastAPI dependencies: the container, the services and the authenticated principal."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request, params

from broker.api.guards import PRINCIPAL_KEY
from broker.api.policy import POLICY_KEY
from broker.db.orgs import Principal
from broker.errors import Forbidden, RateLimited, Unauthorized
from broker.services.registry import Services


async def get_services(request: Request) -> Services:
    """The services built for this app (kept on ``app.state``).

    ``async`` because it does no I/O: FastAPI runs a plain ``def`` dependency in a worker thread, and that
    hand-off would cost every request more CPU than the lookup itself."""
    services: Services = request.app.state.services
    return services


def get_principal(
    request: Request,
    services: Annotated[Services, Depends(get_services)],
    authorization: Annotated[str | None, Header()] = None,
) -> Principal:
    """The caller, from ``Authorization: Bearer <token>``; 401 when missing, unknown, expired or revoked,
    403 when the route's declared policy does not admit the caller's role (before any object is looked up)."""
    principal: Principal | None = request.scope.get("state", {}).get(PRINCIPAL_KEY)  # AuthFirst found it
    if principal is None:
        if not authorization or not authorization.startswith("Bearer "):
            raise Unauthorized("send `Authorization: Bearer <token>`; `sbx token create` makes one")
        principal = services.orgs.authenticate(authorization.removeprefix("Bearer ").strip())
    if principal is None:
        raise Unauthorized("the token is unknown, expired or revoked")
    enforce_policy(request, principal)
    return principal


def enforce_policy(request: Request, principal: Principal) -> None:
    """Refuse (403) a role the route's ``x-sbx-policy`` does not list (``any``/``own`` admit every role)."""
    route = request.scope.get("route")
    declared = set((getattr(route, "openapi_extra", None) or {}).get(POLICY_KEY, ()))
    if not declared or declared & {"any", "own", "public"}:
        return
    if principal.role not in declared:
        raise Forbidden(
            f"this needs the role {' or '.join(sorted(declared))}; your token is for a {principal.role}"
        )


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

    async def check(principal: PrincipalDep, services: ServicesDep) -> Principal:  # in memory: no thread
        wait_s = services.container.limiter.take(principal.org_id, category)
        if wait_s:
            raise RateLimited(
                f"too many {category} requests from your organisation; retry in {wait_s} s",
                retry_after_s=wait_s,
            )
        return principal

    return params.Depends(check)
