"""Connection limits uvicorn lacks, for ``sbx serve``: head size, a head-read deadline, a per-client cap.

uvicorn bounds the keep-alive idle time and the overall concurrency (``limit_concurrency``: 503 beyond it). It
bounds a request head only partly (h11's ``max_incomplete_event_size`` counts a head that arrives in pieces; a
16 MB head in one read is parsed and answered), has no deadline for *reading* a head (a client that dribbles a
byte a second, or connects and sends nothing, holds a connection forever: slowloris) and no cap per client.
:func:`limited_h11` wraps uvicorn's h11 protocol with all three:

* **head size**: a head's bytes are counted as they arrive (at most ``limit + 4`` kept to find its end); beyond
  ``max_header_bytes`` the client gets ``431`` with ``Connection: close``;
* **head deadline**: armed when a connection opens and whenever a new request begins on a kept-alive one,
  disarmed once h11 has parsed the head; when it fires the client gets ``408`` with ``Connection: close``. A slow
  *body* is not cut: the route reads it as it streams (``broker.api.guards.BodyLimit`` bounds its size);
* **per-client cap**: connections are counted by peer address; one beyond ``max_per_client`` is answered ``429``
  with ``Connection: close`` before anything is read. ``0`` turns the cap off — behind an ingress every
  connection comes from the ingress, which then enforces the per-client limit itself (docs/deploy.md).

Every refusal carries the service's error body ``{"error", "detail"}``.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from broker.settings import Settings


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """The limits :func:`limited_h11` enforces (from ``Settings``)."""

    header_timeout_s: float
    max_per_client: int
    max_header_bytes: int


def _raw_error(status: int, reason: str, code: str, detail: str) -> bytes:
    """A complete HTTP/1.1 error response that closes the connection (written before h11 saw a request)."""
    body = json.dumps({"error": code, "detail": detail}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        "connection: close\r\ncache-control: no-store\r\nx-content-type-options: nosniff\r\n\r\n"
    )
    return head.encode("latin-1") + body


def limited_h11(limits: ConnectionLimits) -> type[H11Protocol]:
    """A subclass of uvicorn's h11 protocol enforcing ``limits``; its per-client counts are shared by every
    connection of the server built with it (one event loop: no lock needed)."""
    counts: dict[str, int] = {}

    class LimitedH11Protocol(H11Protocol):
        """uvicorn's h11 protocol with a header-read deadline and a per-client connection cap."""

        _header_timer: asyncio.TimerHandle | None = None
        _peer: str | None = None
        _head: bytes = b""

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            """Count the peer; refuse it over the cap, else start the header deadline."""
            super().connection_made(transport)
            self._peer = self.client[0] if self.client else "unknown"
            counts[self._peer] = counts.get(self._peer, 0) + 1
            if limits.max_per_client and counts[self._peer] > limits.max_per_client:
                detail = f"more than {limits.max_per_client} open connections from your address; reuse one"
                self._refuse(_raw_error(429, "Too Many Requests", "too_many_connections", detail))
                return
            self._arm_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            """Uncount the peer and drop the deadline."""
            self._disarm_header_timer()
            if self._peer is not None:
                left = counts.get(self._peer, 1) - 1
                if left > 0:
                    counts[self._peer] = left
                else:
                    counts.pop(self._peer, None)
                self._peer = None
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            """Start the deadline when a new request begins and bound its head; stop once the head is parsed."""
            if self.conn.their_state is h11.IDLE:
                self._arm_header_timer()
                if self._head_too_large(data):
                    detail = f"the request head is limited to {limits.max_header_bytes} bytes"
                    self._refuse(
                        _raw_error(431, "Request Header Fields Too Large", "header_too_large", detail)
                    )
                    return
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:
                self._disarm_header_timer()
                self._head = b""

        def _head_too_large(self, data: bytes) -> bool:
            """True when the head being received exceeds the limit (h11's own limit only counts a head that
            arrives in pieces); at most ``limit + 4`` bytes are kept to find its end."""
            self._head = (self._head + data)[: limits.max_header_bytes + 4]
            end = self._head.find(b"\r\n\r\n")
            return end > limits.max_header_bytes or (end == -1 and len(self._head) > limits.max_header_bytes)

        def _arm_header_timer(self) -> None:
            if self._header_timer is None and limits.header_timeout_s > 0:
                self._header_timer = self.loop.call_later(limits.header_timeout_s, self._header_timed_out)

        def _disarm_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_timed_out(self) -> None:
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                detail = f"the request head was not received within {limits.header_timeout_s:g} s"
                self._refuse(_raw_error(408, "Request Timeout", "request_timeout", detail))

        def _refuse(self, response: bytes) -> None:
            self._disarm_header_timer()
            self._unset_keepalive_if_required()
            self.transport.write(response)
            self.transport.close()

    return LimitedH11Protocol


def uvicorn_limits(settings: Settings) -> dict[str, Any]:
    """uvicorn ``Config`` keyword arguments for the broker's connection limits (``broker.settings.Settings``)."""
    limits = ConnectionLimits(
        settings.http_header_timeout_s,
        settings.http_max_connections_per_client,
        settings.http_max_header_bytes,
    )
    return {
        "http": limited_h11(limits),
        "h11_max_incomplete_event_size": settings.http_max_header_bytes,
        "timeout_keep_alive": settings.http_keep_alive_s,
        "limit_concurrency": settings.http_max_concurrency or None,
    }
