"""Run the broker under uvicorn with its background loops; shut down cleanly on SIGTERM/SIGINT."""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import socket
import threading
import time
from collections.abc import Iterator

import uvicorn

from broker.app import create_app
from broker.container import build_container
from broker.db.backup import refuse_if_corrupt, serving
from broker.http_limits import uvicorn_limits
from broker.loops import BackgroundLoops
from broker.services.registry import Services, build_services
from broker.settings import Settings


def run(*, host: str | None = None, port: int | None = None, settings: Settings | None = None) -> None:
    """Serve until stopped: in-flight requests finish, loops stop, then the database closes."""
    settings = settings or Settings()
    configure_logging(settings.log_format)
    problems = settings.production_problems()
    if problems:
        raise SystemExit("refusing to start in production:\n  - " + "\n  - ".join(problems))
    refuse_if_corrupt(settings.resolved_database_url)  # PRAGMA quick_check: never serve a damaged file
    container = build_container(settings)
    services = build_services(container)
    loops = BackgroundLoops(services, interval_ms=settings.loop_interval_ms)
    try:
        app = create_app(services)
        if settings.background_loops:
            loops.start()
        config = uvicorn.Config(
            app,
            host=host or settings.host,
            port=port or settings.port,
            log_level="warning",
            timeout_graceful_shutdown=20,
            access_log=False,
            **uvicorn_limits(settings),
        )
        with serving(settings.state_dir):  # `sbx restore` refuses to run under a serving broker
            BrokerServer(config).run()
    finally:
        loops.stop()
        container.close()


class BrokerServer(uvicorn.Server):
    """uvicorn, minus one behaviour: after a graceful shutdown on SIGTERM/SIGINT uvicorn re-raises the signal,
    whose default action kills the process before the broker's own shutdown (loops, database, local Ray)
    runs. Here the signal only asks the server to stop; ``run``'s caller finishes the cleanup and returns."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Route SIGTERM/SIGINT to a graceful stop and restore the handlers afterwards, without re-raising."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


class JsonFormatter(logging.Formatter):
    """One JSON object per log line (production log collectors parse it)."""

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as a JSON line."""
        payload = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload)


def configure_logging(log_format: str) -> None:
    """Plain text for people, JSON lines for production."""
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


class RunningServer:
    """A broker served from a background thread on 127.0.0.1 (demo, tests, benchmarks)."""

    def __init__(self, services: Services, *, port: int, loops: BackgroundLoops | None) -> None:
        self.services = services
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self._loops = loops
        config = uvicorn.Config(
            create_app(services),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=10,
            **uvicorn_limits(services.container.settings),  # the same connection limits as `sbx serve`
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="sbx-uvicorn", daemon=True)

    def start(self) -> RunningServer:
        """Start serving and wait until the port accepts requests."""
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the broker did not start serving within 30 s")
            time.sleep(0.02)
        if self._loops is not None:
            self._loops.start()
        return self

    def stop(self) -> None:
        """Stop serving (in-flight requests finish) and stop the loops; the caller closes the container."""
        if self._loops is not None:
            self._loops.stop()
        self._server.should_exit = True
        self._thread.join(timeout=30)


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve_in_thread(services: Services, *, port: int | None = None, loops: bool = True) -> RunningServer:
    """Serve ``services`` from a thread; background loops run when ``loops`` is true."""
    interval = services.container.settings.loop_interval_ms
    background = BackgroundLoops(services, interval_ms=interval) if loops else None
    return RunningServer(services, port=port or free_port(), loops=background).start()
