"""A live broker on a real local port for API tests (real HTTP through uvicorn)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from broker.server import RunningServer, serve_in_thread
from broker.services.registry import Services
from tests.conftest import World


@dataclass
class Live:
    """The served broker, its world, and an HTTP client per organisation."""

    server: RunningServer
    world: World

    @property
    def url(self) -> str:
        """Base URL."""
        return self.server.url

    def client(self, name: str | None) -> httpx.Client:
        """A client authenticated as the named organisation (None: anonymous)."""
        headers = {"Authorization": f"Bearer {self.world.tokens[name]}"} if name else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


@pytest.fixture
def live(services: Services, world: World) -> Iterator[Live]:
    """Serve the test services on a free port (no background loops)."""
    server = serve_in_thread(services, loops=False)
    try:
        yield Live(server, world)
    finally:
        server.stop()
