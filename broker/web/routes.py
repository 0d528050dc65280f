"""Dashboard pages under ``/ui``: login with the bearer token, one page per role, live numbers by polling.

The token is posted once from a login form and kept in a cookie (``HttpOnly``, ``SameSite=Strict``, path
``/ui``, ``Secure`` over HTTPS) — never in a URL. Each request re-authenticates the cookie's token exactly like
the API's ``Authorization`` header does, so a revoked or expired token logs the page out. State-changing
forms are POSTs; ``SameSite=Strict`` keeps the cookie off cross-site requests and a foreign ``Origin`` is
refused on top.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse

from broker.api.deps import ServicesDep
from broker.api.policy import policy
from broker.db.orgs import Principal
from broker.errors import Forbidden, Unauthorized
from broker.i18n import _
from broker.services.registry import Services
from broker.web.lang import ROLE_LABELS, live_display, page_locale, page_money, remember
from broker.web.render import STATIC, render, subsidy_html
from broker.web.views import current_period, dashboard, programme_zone
from common.errors import DomainError, InvalidInput
from common.numbers import check_text, parse_exact
from privacy.queries import MAX_EPSILON_MICRO

router = APIRouter(prefix="/ui", include_in_schema=False)
COOKIE = "sbx_session"
_MAX_FORM_BYTES = 16 * 1024
_STATIC_FILES = {"style.css": "text/css", "dashboard.js": "text/javascript"}


def _principal(request: Request, services: Services) -> Principal | None:
    token = request.cookies.get(COOKIE)
    return services.orgs.authenticate(token) if token else None


def _to_login() -> RedirectResponse:
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(COOKIE, path="/ui")
    return response


async def _form(request: Request) -> dict[str, str]:
    """A small urlencoded form body (the only kind our pages post)."""
    origin = request.headers.get("origin")
    if origin is not None and origin != "null" and urlsplit(origin).netloc != request.url.netloc:
        raise Forbidden("cross-site form posts are refused")
    body = await request.body()
    if len(body) > _MAX_FORM_BYTES:
        raise Forbidden("form too large")
    parsed = parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True, max_num_fields=20)
    return {check_text(k, "form"): check_text(v[0], k) for k, v in parsed.items()}


@router.get("", openapi_extra=policy("any"))
@router.get("/", openapi_extra=policy("any"))
def index(request: Request, services: ServicesDep) -> Response:
    """The caller's dashboard (the login page when there is no valid session)."""
    principal = _principal(request, services)
    if principal is None:
        return _to_login()
    notice = request.query_params.get("notice", "")[:200]
    money = services.container.db.read(page_money)
    locale = page_locale(request, services, principal, money)
    context = dashboard(services, principal) | {"currency": money.currency, "zone": money.zone}
    page = render("dashboard.html", locale, notice=notice, role_label=ROLE_LABELS[principal.role], **context)
    return remember(request, HTMLResponse(page))


@router.get("/login", openapi_extra=policy("public"))
def login_page(request: Request, services: ServicesDep) -> Response:
    """The login form: paste the bearer token ``sbx init`` or an operator gave you."""
    locale = page_locale(request, services, None, services.container.db.read(page_money))
    return remember(request, HTMLResponse(render("login.html", locale, error="")))


@router.post("/login", openapi_extra=policy("public"))
async def login(request: Request, services: ServicesDep) -> Response:
    """Check the posted token; on success keep it in an HttpOnly, SameSite=Strict cookie."""
    form = await _form(request)
    token = form.get("token", "").strip()
    if not token or services.orgs.authenticate(token) is None:
        locale = page_locale(request, services, None)
        page = render("login.html", locale, error=_("That token is unknown, expired or revoked."))
        return HTMLResponse(page, status_code=401)
    response = RedirectResponse("/ui", status_code=303)
    response.set_cookie(
        COOKIE,
        token,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/ui",
        max_age=12 * 3600,
    )
    return response


@router.post("/logout", openapi_extra=policy("public"))
def logout() -> Response:
    """Forget the session cookie."""
    return _to_login()


@router.get("/data.json", openapi_extra=policy("any"))
def live_data(request: Request, services: ServicesDep) -> JSONResponse:
    """The numbers the page refreshes (polled every few seconds), scoped like the page."""
    principal = _principal(request, services)
    if principal is None:
        raise Unauthorized("log in at /ui/login")
    ctx = dashboard(services, principal)
    money = services.container.db.read(page_money)
    locale = page_locale(request, services, principal, money)
    return JSONResponse({"now_ms": ctx["now_ms"], **ctx["live"], "display": live_display(ctx, money, locale)})


@router.get("/report", openapi_extra=policy("issuer", "operator"))
def report_page(request: Request, services: ServicesDep) -> Response:
    """The printable subsidy report of the current (or a named) month."""
    principal = _principal(request, services)
    if principal is None:
        return _to_login()
    issuer = request.query_params.get("issuer_org") or None
    owner = principal.org_id if principal.role == "issuer" else issuer
    zone = programme_zone(services, owner) if owner else services.container.db.read(page_money).zone
    period = request.query_params.get("period") or current_period(services.container.clock.now_ms(), zone)
    document = services.reports.subsidy(principal, period=period[:20], issuer_org=issuer)
    locale = page_locale(request, services, principal, services.container.db.read(page_money))
    return remember(request, HTMLResponse(subsidy_html(document, locale, linked_style=True)))


@router.post("/requests/{request_id}/{decision}", openapi_extra=policy("custodian"))
async def decide(request_id: str, decision: str, request: Request, services: ServicesDep) -> Response:
    """A custodian approves (with an ε cap and validity) or refuses (with a reason) an access request."""
    principal = _principal(request, services)
    if principal is None:
        return _to_login()
    form = await _form(request)
    try:
        notice = _apply_decision(services, principal, request_id, decision, form)
    except DomainError as exc:
        notice = f"Not done: {exc.detail}"
    return RedirectResponse(f"/ui?{urlencode({'notice': notice})}", status_code=303)


@router.post("/tokens/{token_id}/revoke", openapi_extra=policy("any"))
async def revoke_token(token_id: str, request: Request, services: ServicesDep) -> Response:
    """Revoke a token from the dashboard (operators: any; others: their organisation's)."""
    principal = _principal(request, services)
    if principal is None:
        return _to_login()
    await _form(request)  # the same-origin check of every form post
    try:
        services.tokens.revoke(principal, token_id=token_id)
        notice = f"Token {token_id} revoked."
    except DomainError as exc:
        notice = f"Not done: {exc.detail}"
    if token_id == principal.token_id:
        return _to_login()
    return RedirectResponse(f"/ui?{urlencode({'notice': notice})}", status_code=303)


def _apply_decision(
    services: Services, principal: Principal, request_id: str, decision: str, form: dict[str, str]
) -> str:
    if decision == "approve":
        epsilon = form.get("epsilon", "").strip()
        days_text = form.get("valid_days", "30").strip() or "30"
        if not days_text.isdigit() or not 1 <= int(days_text) <= 1825:
            raise InvalidInput("valid for: a whole number of days from 1 to 1825")
        days = int(days_text)
        cap: Any = _micro(epsilon) if epsilon else None
        services.datasets.approve(
            principal, request_id=request_id, valid_for_s=days * 86_400, epsilon_micro=cap
        )
        return "Request approved."
    if decision == "refuse":
        services.datasets.refuse(principal, request_id=request_id, reason=form.get("reason", ""))
        return "Request refused."
    raise Forbidden(f"unknown decision {decision!r}")


def _micro(text: str) -> int:
    """``"0.5"`` ε → 500000 micro-ε, exactly (decimal text, no float)."""
    value = parse_exact(text, "epsilon", lo=0, lo_open=True, hi=MAX_EPSILON_MICRO // 1_000_000, ratios=False)
    micro = value * 1_000_000
    if micro.denominator != 1:
        raise InvalidInput("epsilon: at most 6 decimals")
    return int(micro)


@router.get("/static/{name}", openapi_extra=policy("public"))
def static(name: str) -> Response:
    """The dashboard's own stylesheet and script (vendored; no CDN)."""
    media = _STATIC_FILES.get(name)
    if media is None:
        return Response(status_code=404)
    return FileResponse(STATIC / name, media_type=media)
