"""ASGI guards that run before routing: what every request must satisfy whatever route it reaches.

* :class:`InputGuard` refuses a path or query string holding a control character (``%00`` in an id would reach
  PostgreSQL, which refuses NUL with an error, not a refusal) — 422 ``control_character``, before any lookup.

Each guard answers with the one error shape ``{"error", "detail"}`` and, when it answers before the request body
was read, with ``Connection: close`` (the unread body must not be parsed as the next request).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from fastapi.responses import JSONResponse

from broker.errors import error_body
from common.errors import DomainError
from common.numbers import check_text

Scope = dict[str, Any]


async def refuse(send: Any, status: int, code: str, detail: str, *, close: bool = True) -> None:
    """Answer ``status`` with the error body; ``close`` adds ``Connection: close`` (body left unread)."""
    headers = {"Connection": "close"} if close else {}
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
