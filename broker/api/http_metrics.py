"""``sbx_http_requests_total{route, status}``: every HTTP request counted by route template and status class.

A pure ASGI middleware, outermost, so it also counts what the guards answer before routing (a 401 from
``AuthFirst``, a 413 from ``BodyLimit``). Labels stay bounded: ``route`` is the matched route's *template*
(``/api/v1/jobs/{job_id}``, never the id), ``unmatched`` for a path no route serves (a scanner's guesses
would otherwise grow the series without bound); ``status`` is the class (``2xx`` … ``5xx``). A request the
server never answered (the client went away, the app raised past every handler) is counted as ``5xx``.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from fastapi.routing import iter_route_contexts
from prometheus_client import Counter
from starlette.routing import BaseRoute, compile_path

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
UNMATCHED = "unmatched"


def status_class(status: int) -> str:
    """``200`` → ``2xx``; anything outside 100–599 is ``5xx`` (the server misbehaved)."""
    return f"{status // 100}xx" if 100 <= status <= 599 else "5xx"


@dataclass(frozen=True, slots=True)
class Template:
    """One route's template, its compiled pattern and methods (``None``: a mount, matched by prefix)."""

    path: str
    pattern: re.Pattern[str]
    methods: frozenset[str] | None

    def matches(self, path: str, method: str) -> tuple[bool, bool]:
        """Whether ``path`` is this route's, and whether ``method`` is one it serves."""
        if self.methods is None:
            hit = path == self.path or path.startswith(self.path.rstrip("/") + "/")
            return hit, hit
        if self.pattern.match(path) is None:
            return False, False
        return True, method in self.methods


def templates(routes: Sequence[BaseRoute]) -> list[Template]:
    """Every route of the app (included routers flattened) as a :class:`Template`, in routing order."""
    out: list[Template] = []
    for ctx in iter_route_contexts(list(routes)):
        path = getattr(ctx, "path", None)
        if not isinstance(path, str):
            continue
        methods = getattr(ctx, "methods", None)
        out.append(Template(path, compile_path(path)[0], frozenset(methods) if methods else None))
    return out


def route_template(scope: Scope, known: Sequence[Template]) -> str:
    """The template of the route serving ``scope``: the one the router matched, else the first route that
    would serve it (a guard answered before routing), else :data:`UNMATCHED`."""
    path = getattr(scope.get("route"), "path", None)
    if isinstance(path, str):
        return path
    partial: str | None = None
    for template in known:
        hit, method_ok = template.matches(str(scope.get("path", "")), str(scope.get("method", "")))
        if hit and method_ok:
            return template.path
        if hit and partial is None:
            partial = template.path  # the path is served, but not with this method (a 405)
    return partial or UNMATCHED


class HttpMetrics:
    """Counts each HTTP request once its response starts (or fails to)."""

    def __init__(self, app: ASGIApp, *, counter: Counter, routes: Callable[[], list[BaseRoute]]) -> None:
        self.app = app
        self.counter = counter
        self.routes = routes  # read on first use: routers are included after the middleware is added

    @cached_property
    def known(self) -> list[Template]:
        """The app's route templates (computed once, on the first request a guard answers)."""
        return templates(self.routes())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on; count its route template and status class."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            route = route_template(scope, self.known if "route" not in scope else ())
            self.counter.labels(route=route, status=status_class(status)).inc()
