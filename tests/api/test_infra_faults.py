"""The broker says what is wrong (issue 14, item 4): a full disk and an unreachable or restarting database
answer 503 with a stable code and ``Retry-After``, ``/readyz`` names the failed check, writes are refused
before anything partial happens, and service resumes with every acknowledged write kept.

* a state dir on a small tmpfs, filled: mutating calls 503 ``storage_full`` before the route runs, reads go
  on, ``/readyz`` 503 ``storage``; a write past the guard that meets the full disk itself is 503 too; the
  SQLite file passes ``PRAGMA integrity_check`` and every acknowledged write is there once space is freed;
* PostgreSQL restarted under traffic (the one restart of this suite, kept short): 503
  ``database_unavailable`` during the outage, never 500, then every write acknowledged exactly once;
* negative controls: with the translation switched off the same outage is a 500.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sqlite3
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.exc import OperationalError

import broker.db.database as database_module
from broker.bootstrap import initialise
from broker.container import build_container
from broker.db.engine import make_engine
from broker.errors import DatabaseUnavailable, StorageFull, status_for
from broker.server import free_port, serve_in_thread
from broker.services.registry import build_services
from broker.settings import Settings
from common.clock import FakeClock
from tests.api.conftest import Live
from tests.conftest import make_world

TMPFS_MIB = 48


def _client(live: Live, name: str) -> httpx.Client:
    return live.client(name)


def _hold(client: httpx.Client, key: str) -> httpx.Response:
    return client.post("/api/v1/holds", json={"amount": 1}, headers={"Idempotency-Key": key})


@pytest.fixture
def small_state(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of TMPFS_MIB MiB mounted for the state dir (root only), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MIB}m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(directory: Path) -> Path:
    """Write zeros until the file system is full; the filler file is returned for removal."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 20, 4096, 512):
            chunk = b"\0" * size
            try:
                while True:
                    os.write(fd, chunk)
            except OSError:
                continue
    finally:
        os.close(fd)
    return filler


def test_a_full_state_dir_answers_503_and_recovers_intact(small_state: Path, tmp_path: Path) -> None:
    state = small_state / "state"
    settings = Settings(
        state_dir=state, database_url=None, compute="fake", background_loops=False, kek_file=tmp_path / "kek"
    )
    initialise(state, settings=settings)
    container = build_container(settings, clock=FakeClock(start_ms=int(time.time()) * 1000))
    services = build_services(container)
    world = make_world(services, container.clock)  # type: ignore[arg-type]
    world.credit(1_000_000)
    server = serve_in_thread(services, loops=False)
    live = Live(server, world)
    acknowledged: list[str] = []
    filler: Path | None = None
    try:
        with _client(live, "sme-a") as sme, httpx.Client(base_url=live.url) as anon:
            for i in range(5):
                r = _hold(sme, f"before-{i}")
                assert r.status_code == 201, r.text
                acknowledged.append(r.json()["id"])
            assert anon.get("/readyz").status_code == 200
            filler = _fill(small_state)
            time.sleep(1.1)  # the free-space measurement is cached for a second
            refused = _hold(sme, "while-full")
            assert refused.status_code == 503 and refused.json()["error"] == "storage_full", refused.text
            assert int(refused.headers["Retry-After"]) > 0
            assert sme.get("/api/v1/balance").status_code == 200  # reads go on
            ready = anon.get("/readyz")
            assert ready.status_code == 503 and ready.json()["checks"]["storage"] == "storage_full"
            assert ready.json()["error"] == "storage_full" and "Retry-After" in ready.headers
            # Past the guard (a background write), the full disk itself is a StorageFull, not a crash.
            with pytest.raises(StorageFull):
                for i in range(20_000):
                    services.ledger.place_hold(world.sme, amount=1, idempotency_key=f"inner-{i}" + "x" * 150)
            filler.unlink()
            filler = None
            time.sleep(1.1)
            assert anon.get("/readyz").status_code == 200
            again = _hold(sme, "while-full")  # its retry, now accepted
            assert again.status_code == 201, again.text
            acknowledged.append(again.json()["id"])
        db_file = state / "broker.db"
        with sqlite3.connect(db_file) as raw:
            assert raw.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            held = {row[0] for row in raw.execute("SELECT id FROM holds")}
        assert set(acknowledged) <= held
        assert services.ledger.invariants() == []
    finally:
        if filler is not None:
            filler.unlink(missing_ok=True)
        server.stop()
        container.close()


class PrivateCluster:
    """A PostgreSQL cluster of this test's own (initdb as the ``postgres`` user, a free port): restarting it
    under traffic disturbs no other test, unlike the shared server on 5432."""

    def __init__(self, root: Path) -> None:
        self.bin = Path(sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1])
        self.data = root / "pgdata"
        self.port = free_port()
        root.mkdir(parents=True, exist_ok=True)
        shutil.chown(root, "postgres")
        self._as_postgres(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres")

    @property
    def url(self) -> str:
        """The URL of its ``postgres`` database."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, *argv: str) -> None:
        command = " ".join(shlex.quote(a) for a in argv)
        subprocess.run(["su", "postgres", "-c", command], check=True, capture_output=True, timeout=120)

    def _ctl(self, action: str) -> None:
        options = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=on"
        log = str(self.data / "server.log")
        self._as_postgres(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", log, "-o", options, "-w", action
        )

    def start(self) -> None:
        """Start it and wait until it accepts connections."""
        self._ctl("start")

    def restart(self) -> None:
        """A fast restart (connections are cut, as on a real restart)."""
        self._ctl("restart")

    def stop(self) -> None:
        """Stop it immediately."""
        self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")


@pytest.fixture
def private_pg() -> Iterator[PrivateCluster]:
    """A private PostgreSQL cluster (root only: initdb runs as ``postgres``, in a directory it may enter),
    removed afterwards."""
    if os.geteuid() != 0 or not Path("/usr/lib/postgresql").is_dir():
        pytest.skip("a private PostgreSQL cluster needs root and the PostgreSQL server binaries")
    root = Path(tempfile.mkdtemp(prefix="sbx-pg-"))
    try:
        cluster = PrivateCluster(root)
        cluster.start()
        try:
            yield cluster
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _traffic(live: Live, stop: threading.Event, seen: dict[int, int], acked: dict[str, str]) -> None:
    """Place holds with fresh keys; a 503 is retried with the same key until it is acknowledged."""
    with _client(live, "sme-a") as sme:
        while not stop.is_set():
            key = uuid.uuid4().hex
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    r = _hold(sme, key)
                except httpx.TransportError:
                    time.sleep(0.05)
                    continue
                seen[r.status_code] = seen.get(r.status_code, 0) + 1
                if r.status_code == 503:
                    assert r.json()["error"] == "database_unavailable" and "Retry-After" in r.headers
                    time.sleep(0.05)
                    continue
                assert r.status_code == 201, r.text
                acked[key] = r.json()["id"]
                break


@pytest.mark.postgres
def test_postgresql_restarted_under_traffic(private_pg: PrivateCluster, tmp_path: Path) -> None:
    settings = Settings(
        state_dir=tmp_path / "state",
        database_url=private_pg.url,
        compute="fake",
        background_loops=False,
        kek_file=tmp_path / "kek",
    )
    initialise(settings.state_dir, settings=settings)
    container = build_container(settings, clock=FakeClock(start_ms=int(time.time()) * 1000))
    services = build_services(container)
    world = make_world(services, container.clock)  # type: ignore[arg-type]
    world.credit(1_000_000)
    server = serve_in_thread(services, loops=False)
    try:
        _restart_under_traffic(Live(server, world), private_pg)
    finally:
        server.stop()
        container.close()


def _restart_under_traffic(live: Live, cluster: PrivateCluster) -> None:
    stop = threading.Event()
    seen: dict[int, int] = {}
    acked: dict[str, str] = {}
    workers = [threading.Thread(target=_traffic, args=(live, stop, seen, acked)) for _ in range(3)]
    for w in workers:
        w.start()
    try:
        time.sleep(1.0)
        cluster.restart()
        time.sleep(2.0)
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=90)
    assert seen.get(500, 0) == 0, seen
    assert seen.get(503, 0) > 0, seen  # the outage was seen, and said so
    assert seen.get(201, 0) >= len(acked) > 0
    with httpx.Client(base_url=live.url) as anon:
        assert anon.get("/readyz").status_code == 200
    ids = live.world.services.container.db.read(
        lambda conn: {row[0] for row in conn.exec_driver_sql("SELECT id FROM holds")}
    )
    assert set(acked.values()) <= ids  # no acknowledged write lost
    assert len(ids) == len(set(acked.values())) == len(acked)  # each key held exactly once
    assert live.world.services.ledger.invariants() == []
    print(f"status codes during the restart: {seen}")


def _balance_while_unreachable(live: Live, monkeypatch: pytest.MonkeyPatch, *, translate: bool) -> Any:
    """Ask for a balance while the database refuses connections (its engine pointed at a closed port)."""
    c = live.world.services.container
    broken = make_engine("postgresql://postgres@127.0.0.1:9/none")
    try:
        with monkeypatch.context() as patch:
            if not translate:
                patch.setattr(database_module, "translate", lambda _exc: None)
            patch.setattr(c.db, "engine", broken)
            with httpx.Client(base_url=live.url) as anon:
                ready = anon.get("/readyz")
                assert (
                    ready.status_code == 503 and ready.json()["checks"]["database"] == "database_unavailable"
                )
            with pytest.raises(Exception) as info:
                live.world.services.ledger.balance(live.world.sme)
            return info.value
    finally:
        broken.dispose()


def test_an_unreachable_database_is_a_503_and_without_the_translation_it_is_not(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    failure = _balance_while_unreachable(live, monkeypatch, translate=True)
    assert isinstance(failure, DatabaseUnavailable) and status_for(failure) == 503
    control = _balance_while_unreachable(live, monkeypatch, translate=False)  # negative control
    assert isinstance(control, OperationalError)  # what the app answered 500 internal_error before


def test_readyz_names_a_backend_that_is_down(live: Live, monkeypatch: pytest.MonkeyPatch) -> None:
    with httpx.Client(base_url=live.url) as anon:
        assert anon.get("/readyz").status_code == 200  # control: the fake backend is up
        monkeypatch.setattr(live.world.services.jobs, "_backend_up", False)  # what the watch saw
        r = anon.get("/readyz")
    assert r.status_code == 503 and r.json()["error"] == "backend_unavailable", r.text
    assert r.json()["checks"] == {"database": "ok", "storage": "ok", "backend": "backend_unavailable"}
    assert int(r.headers["Retry-After"]) > 0
