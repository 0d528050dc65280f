"""HTTP hardening (issue 13, items 4 and 7): security headers on /ui and the API, a dashboard whose HTML needs no
inline script or style (checked without a browser), authentication before a body is read, 503 (never 401) when
the database is down, and ``Connection: close`` on a 500."""

from __future__ import annotations

import contextlib
import re
import socket
from collections.abc import Iterator
from html.parser import HTMLParser
from urllib.parse import urlsplit

import httpx
import pytest
from sqlalchemy.exc import OperationalError

from broker.api.guards import UI_CSP
from tests.api.conftest import Live


def _csp(headers: httpx.Headers) -> dict[str, str]:
    parts = (p.strip().split(" ", 1) for p in headers["content-security-policy"].split(";") if p.strip())
    return {p[0]: p[1] if len(p) > 1 else "" for p in parts}


@contextlib.contextmanager
def _ui_session(live: Live, name: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.url, timeout=30, follow_redirects=False) as c:
        r = c.post("/ui/login", data={"token": live.world.tokens[name]})
        assert r.status_code == 303, r.text
        yield c


def test_every_ui_response_carries_a_strict_csp(live: Live) -> None:
    with _ui_session(live, "op2") as c:
        for path in ("/ui", "/ui/login", "/ui/data.json", "/ui/static/style.css", "/ui/nope"):
            r = c.get(path)
            csp = _csp(r.headers)
            assert csp["frame-ancestors"] == "'none'" and csp["default-src"] == "'none'", path
            assert "unsafe-inline" not in r.headers["content-security-policy"], path
            assert csp["script-src"] == "'self'" and csp["style-src"] == "'self'", path
            assert r.headers["x-frame-options"] == "DENY" and r.headers["referrer-policy"] == "no-referrer"
            assert r.headers["x-content-type-options"] == "nosniff", path
        assert c.get("/ui").headers["cache-control"] == "no-store"
    assert UI_CSP.count("frame-ancestors 'none'") == 1


@pytest.mark.parametrize(
    ("method", "path", "who"),
    [
        ("GET", "/api/v1/me", "sme-a"),
        ("GET", "/api/v1/me", None),
        ("GET", "/healthz", None),
        ("POST", "/api/v1/vouchers/redeem", "sme-a"),
        ("GET", "/api/v1/nope", "sme-a"),
    ],
)
def test_api_responses_are_not_cached_or_sniffed(live: Live, method: str, path: str, who: str | None) -> None:
    with live.client(who) as c:
        r = c.request(method, path, json={"token": "x"} if method == "POST" else None)
    assert r.headers["cache-control"] == "no-store" and r.headers["x-content-type-options"] == "nosniff"


class _Inline(HTMLParser):
    """Collects what a strict CSP would block: inline scripts and styles, style and on* attributes, and any
    script or stylesheet from another origin."""

    def __init__(self) -> None:
        super().__init__()
        self.blocked: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        for attr in named:
            if attr == "style" or attr.startswith("on"):
                self.blocked.append(f"<{tag} {attr}=...>")
        if tag == "style":
            self.blocked.append("<style> element")
        if tag == "script":
            src = named.get("src")
            if not src:
                self.blocked.append("inline <script>")
            elif urlsplit(src).netloc or not src.startswith("/ui/static/"):
                self.blocked.append(f"script from {src}")
        if (
            tag == "link"
            and named.get("rel") == "stylesheet"
            and not (named.get("href") or "").startswith("/ui/static/")
        ):
            self.blocked.append(f"stylesheet {named.get('href')}")
        for attr in ("href", "action", "src"):
            value = named.get(attr) or ""
            if value.lower().startswith("javascript:"):
                self.blocked.append(f"{attr}=javascript:")


def _blocked(html: str) -> list[str]:
    parser = _Inline()
    parser.feed(html)
    return parser.blocked


@pytest.mark.parametrize("who", ["op2", "sme-a", "issuer"])
def test_the_dashboard_needs_nothing_its_csp_blocks(live: Live, who: str) -> None:
    with _ui_session(live, who) as c:
        pages = [c.get("/ui"), c.get("/ui/login")]
        if who in ("op2", "issuer"):
            pages.append(c.get("/ui/report"))
        for r in pages:
            assert r.status_code == 200, r.text
            assert _blocked(r.text) == [], r.url
        assert 'src="/ui/static/dashboard.js"' in pages[0].text


def test_an_operator_revokes_a_token_from_the_dashboard(live: Live) -> None:
    world = live.world
    minted = world.services.orgs.create_token(world.operator, org_id=world.sme_b.org_id, label="leaked")
    token_id = "tok_" + minted["token"].split("_")[2]
    with _ui_session(live, "op2") as c:
        page = c.get("/ui").text
        assert token_id in page and "leaked" in page and minted["token"] not in page
        r = c.post(f"/ui/tokens/{token_id}/revoke", headers={"origin": live.url})
        assert r.status_code == 303 and "revoked" in r.headers["location"]
    assert world.services.orgs.authenticate(minted["token"]) is None


def _raw_exchange(live: Live, request: bytes) -> tuple[str, dict[str, str]]:
    """Send raw bytes, read one response head (generous time-out: a server that waited for the body would
    fail this, not slow it)."""
    host, port = urlsplit(live.url).hostname or "", urlsplit(live.url).port or 0
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in head[1:] if ": " in line)
    return head[0], {k.lower(): v for k, v in headers.items()}


@pytest.mark.parametrize("auth", [b"", b"Authorization: Bearer sbx_tok_nope_nope\r\n"])
def test_an_unauthenticated_body_is_refused_before_it_is_read(live: Live, auth: bytes) -> None:
    """60 MB announced, none sent: the answer comes from the headers alone."""
    request = (
        b"POST /api/v1/vouchers/redeem HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + auth
        + b"Content-Length: 60000000\r\n\r\n"
    )
    status, headers = _raw_exchange(live, request)
    assert status.startswith("HTTP/1.1 401") and headers["connection"] == "close"


def test_an_oversized_authenticated_body_is_refused_before_it_is_read(live: Live) -> None:
    token = live.world.tokens["sme-a"].encode()
    request = (
        b"POST /api/v1/vouchers/redeem HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + token + b"\r\nContent-Length: 600000000\r\n\r\n"
    )
    status, headers = _raw_exchange(live, request)
    assert status.startswith("HTTP/1.1 413") and headers["connection"] == "close"


def test_a_database_outage_is_503_never_401(live: Live, monkeypatch: pytest.MonkeyPatch) -> None:
    def down(*_args: object, **_kwargs: object) -> object:
        raise OperationalError("SELECT 1", {}, Exception("connection refused"))

    monkeypatch.setattr(live.server.services.container.db, "read", down)
    with live.client("sme-a") as c:
        for r in (c.get("/api/v1/me"), c.post("/api/v1/vouchers/redeem", json={"token": "x"})):
            assert r.status_code == 503 and r.json()["error"] == "database_unavailable", r.text


def test_a_500_says_connection_close(live: Live, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_args: object, **_kwargs: object) -> object:
        raise RuntimeError("boom")

    monkeypatch.setattr(live.server.services.orgs, "list", broken)
    with live.client("sme-a") as c:
        r = c.get("/api/v1/orgs")
    assert r.status_code == 500 and r.headers["connection"] == "close"
    assert r.json()["error"] == "internal_error" and re.search("boom", r.text) is None
