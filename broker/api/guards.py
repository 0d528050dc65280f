"""ASGI guards that run before routing: what every request must satisfy whatever route it reaches.

* :class:`SecurityHeaders` (outermost) adds the security headers to every response: on ``/ui`` a strict
  Content-Security-Policy (no inline script or style: the templates load ``/ui/static`` files only),
  ``frame-ancestors 'none'`` and ``X-Frame-Options: DENY``, ``Referrer-Policy: no-referrer``; on every other
  response ``Cache-Control: no-store`` (API answers are per-caller) and on all ``X-Content-Type-Options: nosniff``.
* :class:`InputGuard` refuses a path or query string holding a control character (``%00`` in an id would reach
  PostgreSQL, which refuses NUL with an error, not a refusal) — 422 ``control_character``, before any lookup.
* :class:`AuthFirst` authenticates every ``/api/`` request that carries a body *before a byte of it is read*:
  an anonymous 60 MB POST costs a header lookup, not 60 MB of memory. The principal is handed to the route
  (``broker.api.deps.get_principal`` reuses it), so the token is looked up once.
* :class:`BodyLimit` (innermost) enforces the size limit while the body streams: by ``Content-Length`` up front,
  and by counting chunks as the route reads them (chunked uploads) — nothing is buffered here.

Each guard answers with the one error shape ``{"error", "detail"}`` and, when it answers before the request body
was read, with ``Connection: close`` (the unread body must not be parsed as the next request).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

import anyio.to_thread
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from broker.db.orgs import Principal
from broker.errors import error_body, status_for
from common.errors import DomainError
from common.numbers import check_text

Scope = dict[str, Any]
UI_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
REPORT_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'; base-uri 'none'"
)
"""A printable HTML report from the API is one self-contained file (its style inline, no script)."""
UI_FORM_BYTES = 16 * 1024
"""The dashboard only posts small forms."""
PRINCIPAL_KEY = "sbx_principal"


async def refuse(
    send: Any, status: int, code: str, detail: str, *, close: bool = True, retry_after_s: int | None = None
) -> None:
    """Answer ``status`` with the error body; ``close`` adds ``Connection: close`` (body left unread);
    ``retry_after_s`` a ``Retry-After`` (a 503: the database is down, retry shortly)."""
    headers = {"Connection": "close"} if close else {}
    if retry_after_s is not None:
        headers["Retry-After"] = str(retry_after_s)
    response = JSONResponse(error_body(code, detail), status_code=status, headers=headers)
    await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> dict[str, Any]:
    return {"type": "http.disconnect"}


class InputGuard:
    """Refuse control characters in the decoded path and query string (422 ``control_character``)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        """Check the request line, then pass the request on unchanged."""
        if scope["type"] == "http":
            try:
                check_text(scope.get("path", ""), "path")
                query = scope.get("query_string", b"").decode("latin-1")
                check_text(unquote(query, errors="strict"), "query string")
            except UnicodeDecodeError:
                await refuse(send, 422, "invalid_request", "query string: not UTF-8 after percent-decoding")
                return
            except DomainError as exc:
                await refuse(send, 422, exc.code, exc.detail)
                return
        await self.app(scope, receive, send)


class SecurityHeaders:
    """Add the security headers of the module docstring to every response (the app's own headers win)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        """Pass the request on; decorate ``http.response.start``."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")

        async def decorated(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = _with_security_headers(path, list(message.get("headers", [])))
            await send(message)

        await self.app(scope, receive, decorated)


def _with_security_headers(path: str, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    present = {name.lower() for name, _ in headers}
    html = any(n.lower() == b"content-type" and v.startswith(b"text/html") for n, v in headers)
    wanted: dict[bytes, bytes] = {b"x-content-type-options": b"nosniff"}
    if path == "/ui" or path.startswith("/ui/"):
        wanted |= {
            b"content-security-policy": UI_CSP.encode(),
            b"x-frame-options": b"DENY",
            b"referrer-policy": b"no-referrer",
        }
        if not path.startswith("/ui/static/"):
            wanted[b"cache-control"] = b"no-store"
    else:
        wanted[b"cache-control"] = b"no-store"
        if html:
            wanted |= {b"content-security-policy": REPORT_CSP.encode(), b"referrer-policy": b"no-referrer"}
    return headers + [(name, value) for name, value in wanted.items() if name not in present]


def _carries_body(scope: Scope) -> bool:
    headers = dict(scope.get("headers") or [])
    length = headers.get(b"content-length")
    return (length is not None and length.strip() not in (b"", b"0")) or b"transfer-encoding" in headers


class AuthFirst:
    """Authenticate ``/api/`` requests with a body before reading it (401/503 with ``Connection: close``)."""

    def __init__(self, app: Any, authenticate: Callable[[str], Principal | None]) -> None:
        self.app = app
        self.authenticate = authenticate

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        """Look the bearer token up first; hand the principal on in the request's state."""
        if scope["type"] == "http" and scope.get("path", "").startswith("/api/") and _carries_body(scope):
            bearer = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
            if not bearer.startswith("Bearer "):
                await refuse(send, 401, "unauthorized", "send `Authorization: Bearer <token>` before a body")
                return
            try:
                principal = await anyio.to_thread.run_sync(
                    self.authenticate, bearer.removeprefix("Bearer ").strip()
                )
            except DomainError as exc:  # database_unavailable: 503, never 401
                retry = getattr(exc, "retry_after_s", None)
                await refuse(send, status_for(exc), exc.code, exc.detail, retry_after_s=retry)
                return
            if principal is None:
                await refuse(send, 401, "unauthorized", "the token is unknown, expired or revoked")
                return
            scope.setdefault("state", {})[PRINCIPAL_KEY] = principal
        await self.app(scope, receive, send)


class BodyLimit:
    """Refuse bodies over the limit with 413 (``Connection: close``): by Content-Length before the route runs,
    or while the route reads a chunked body — the counting receive raises, nothing is buffered here."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        """Pass the request on with a counting ``receive``."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        limit = UI_FORM_BYTES if path.startswith("/ui/") else self.max_bytes
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            await refuse(send, 413, "payload_too_large", _too_large(limit))
            return
        seen = 0

        async def counted() -> dict[str, Any]:
            nonlocal seen
            message: dict[str, Any] = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise HTTPException(413, _too_large(limit), headers={"Connection": "close"})
            return message

        await self.app(scope, counted, send)


def _too_large(limit: int) -> str:
    return f"request bodies are limited to {limit} bytes here"
