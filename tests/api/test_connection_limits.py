"""Connection limits of `sbx serve` (issue 13, item 5) against a real uvicorn server on 127.0.0.1 built like
`sbx serve` builds it (broker.http_limits): header-read deadline, per-client cap, header size, keep-alive, and
error answers that say ``Connection: close``. Generous socket time-outs, no timing assertions."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from broker.server import RunningServer, serve_in_thread
from tests.api.conftest import Live

GENEROUS_S = 30


@contextmanager
def _server(live: Live, **limits: Any) -> Iterator[RunningServer]:
    container = live.server.services.container
    original = container.settings
    container.settings = original.model_copy(update=limits)
    try:
        server = serve_in_thread(live.server.services, loops=False)
    finally:
        container.settings = original
    try:
        yield server
    finally:
        server.stop()


def _connect(server: RunningServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=GENEROUS_S)


def _read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes the connection (a server that did not close fails the time-out)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def _status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def _headers(response: bytes) -> dict[str, str]:
    head = response.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]
    return {k.lower(): v for k, v in (line.split(": ", 1) for line in head)}


@pytest.mark.parametrize("sent", [b"", b"GET /healthz HTTP/1.1\r\nHost: x\r\n"])
def test_a_request_head_that_never_completes_gets_408_and_is_closed(live: Live, sent: bytes) -> None:
    with _server(live, http_header_timeout_s=0.5) as server, _connect(server) as slow:
        slow.sendall(sent)
        with httpx.Client(base_url=server.url, timeout=GENEROUS_S) as other:  # others are served meanwhile
            assert other.get("/healthz").status_code == 200
        response = _read_all(slow)
    assert _status(response) == 408 and _headers(response)["connection"] == "close"
    assert b'"error": "request_timeout"' in response


def test_a_slow_body_is_not_cut_by_the_header_deadline(live: Live) -> None:
    with _server(live, http_header_timeout_s=0.5) as server, _connect(server) as sock:
        token = live.world.tokens["sme-a"].encode()
        body = b'{"token": "not-a-voucher"}'
        sock.sendall(
            b"POST /api/v1/vouchers/redeem HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nAuthorization: Bearer "
            + token
            + b"\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
        )
        time.sleep(1.0)  # past the 0.5 s head deadline: only the head was bound by it
        with httpx.Client(base_url=server.url, timeout=GENEROUS_S) as other:
            assert other.get("/healthz").status_code == 200
        sock.sendall(body)
        assert _status(_read_all(sock)) == 400  # the route answered (a malformed voucher)


def test_connections_beyond_the_per_client_cap_get_429(live: Live) -> None:
    with _server(live, http_max_connections_per_client=3, http_header_timeout_s=GENEROUS_S * 2) as server:
        held = [_connect(server) for _ in range(3)]
        try:
            with _connect(server) as extra:
                response = _read_all(extra)
            assert _status(response) == 429 and _headers(response)["connection"] == "close"
            held.pop().close()
            with httpx.Client(base_url=server.url, timeout=GENEROUS_S) as client:  # a freed slot serves again
                for _ in range(20):
                    r = client.get("/healthz")
                    if r.status_code == 200:
                        break
                assert r.status_code == 200
        finally:
            for sock in held:
                sock.close()


@pytest.mark.parametrize("size", [4 * 1024, 16 * 1024 * 1024])
def test_an_oversized_head_is_refused_with_connection_close(live: Live, size: int) -> None:
    with _server(live, http_max_header_bytes=2048) as server, _connect(server) as sock:
        # The server may refuse and close while the 16 MB are still on their way.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * size + b"\r\n\r\n")
        try:
            response = _read_all(sock)
        except ConnectionResetError:
            return  # closed with unread data: refused, never answered 200
    assert _status(response) == 431 and _headers(response)["connection"] == "close"


def test_idle_keep_alive_connections_are_closed(live: Live) -> None:
    with _server(live, http_keep_alive_s=1) as server, _connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        response = _read_all(sock)  # answered, then closed when idle: recv returns b"" (no time-out)
    assert _status(response) == 200 and response.count(b"HTTP/1.1") == 1


def test_keep_alive_requests_still_work_within_the_limits(live: Live) -> None:
    with (
        _server(live, http_header_timeout_s=0.5) as server,
        httpx.Client(base_url=server.url, timeout=30) as c,
    ):
        for _ in range(5):
            r = c.get("/healthz")
            assert r.status_code == 200 and r.headers.get("connection") != "close"
