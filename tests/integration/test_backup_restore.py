"""Integrity, backup and restore of the embedded database (issue 14, item 5).

* a damaged SQLite file refuses to start, with a message that says how to restore (control: a sound one
  starts); the periodic check exports ``sbx_db_integrity_ok``;
* ``sbx backup`` under load: the online backup holds every write acknowledged before it began, passes
  ``quick_check``, and restores to a sound ledger (control: a plain file copy of the live database misses
  acknowledged writes that sit in the WAL);
* a restore older than the last signed checkpoint is refused (``audit_rollback``) unless ``--accept-loss``,
  which appends a signed "restored at size N" record (control: a newer backup restores with no record).
"""

from __future__ import annotations

import base64
import json
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from typer.testing import CliRunner

from broker.cli.main import app as cli
from broker.container import Container, build_container
from broker.db import subsidy
from broker.db.backup import RESTORE_FILE, audit_size, backup, quick_check, refuse_if_corrupt, serving
from broker.server import run, serve_in_thread
from broker.services.maintenance import integrity_pass
from broker.services.registry import Services, build_services
from broker.settings import Settings
from common.canonical import canonical_json
from common.errors import Conflict
from tests.conftest import World


def _db_file(settings: Settings) -> Path:
    return Path(settings.resolved_database_url.removeprefix("sqlite:///"))


def _corrupt(path: Path) -> None:
    """Overwrite the middle pages of a (checkpointed) SQLite file with garbage."""
    size = path.stat().st_size
    with path.open("r+b") as raw:
        for offset in range(4096 * 2, size - 4096, 4096):
            raw.seek(offset + 16)
            raw.write(b"\xde\xad\xbe\xef" * 256)


def test_a_damaged_database_refuses_to_start(services: Services, world: World) -> None:
    world.credit(10_000)
    settings = services.container.settings
    url = settings.resolved_database_url
    assert integrity_pass(services.container)
    services.container.close()  # the last connection checkpoints the WAL into the file
    refuse_if_corrupt(url)  # control: a sound file starts
    _corrupt(_db_file(settings))
    with pytest.raises(SystemExit) as info:
        refuse_if_corrupt(url)
    message = str(info.value)
    assert "damaged" in message and "sbx restore" in message and "SBX_KEK_FILE" in message
    with pytest.raises(SystemExit):  # `sbx serve` stops before serving anything
        run(settings=settings)


def test_the_periodic_check_exports_the_metric(services: Services, world: World) -> None:
    c = services.container
    assert integrity_pass(c) and c.metrics.db_integrity_ok._value.get() == 1
    c.close()
    _corrupt(_db_file(c.settings))
    assert not integrity_pass(c) and c.metrics.db_integrity_ok._value.get() == 0


class _Traffic:
    """Threads placing holds over HTTP; every acknowledged hold id is recorded with its time."""

    def __init__(self, world: World, url: str) -> None:
        self.acked: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(world, url, n)) for n in range(3)]

    def _run(self, world: World, url: str, n: int) -> None:
        import httpx

        headers = {"Authorization": f"Bearer {world.tokens['sme-a']}"}
        with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
            i = 0
            while not self._stop.is_set():
                i += 1
                r = client.post("/api/v1/holds", json={"amount": 1}, headers={"Idempotency-Key": f"{n}-{i}"})
                assert r.status_code == 201, r.text
                self.acked.append((time.monotonic(), r.json()["id"]))

    def __enter__(self) -> _Traffic:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)


def _holds(path: Path) -> set[str]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        return {row[0] for row in conn.execute("SELECT id FROM holds")}


@pytest.fixture
def served(services: Services, world: World) -> Iterator[str]:
    """The test broker served over HTTP (no loops); yields its URL."""
    world.credit(10_000_000)
    server = serve_in_thread(services, loops=False)
    try:
        yield server.url
    finally:
        server.stop()


def test_backup_under_load_then_restore_round_trip(
    services: Services, world: World, served: str, tmp_path: Path
) -> None:
    settings = services.container.settings
    live = _db_file(settings)
    dest = tmp_path / "backup.db"
    naive = tmp_path / "naive.db"
    with _Traffic(world, served) as traffic:
        time.sleep(1.5)
        began = time.monotonic()
        acked_before = {hold for ts, hold in list(traffic.acked) if ts < began}
        shutil.copyfile(live, naive)  # control: a plain copy of the live file while serving
        info = backup(settings.resolved_database_url, dest)
        time.sleep(0.5)
    assert len(acked_before) > 20
    assert quick_check(dest) == [] and info.audit_size == audit_size(dest)
    assert acked_before <= _holds(dest)  # every write acknowledged before the backup began is in it
    assert not acked_before <= _holds(naive) or quick_check(naive)  # control: a file copy loses some
    with pytest.raises(Conflict):  # never overwrites
        backup(settings.resolved_database_url, dest)
    # Restore (the broker stopped) into the live path, then open it: a sound ledger and roll-up.
    services.container.close()
    result = CliRunner(env=_env(settings)).invoke(cli, ["restore", "--json", str(dest)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["record"] is None
    restored = build_container(settings)
    try:
        restored_services = build_services(restored)
        assert restored_services.ledger.invariants() == []
        assert restored.db.write(subsidy.drift) == []
        assert _holds(live) == _holds(dest)
    finally:
        restored.close()


def _env(settings: Settings) -> dict[str, str]:
    return {
        "SBX_STATE_DIR": str(settings.state_dir),
        "SBX_DATABASE_URL": settings.resolved_database_url,
        "SBX_KEK_FILE": str(settings.kek_file),
    }


def _audited(world: World, n: int) -> None:
    for _ in range(n):
        world.credit(100)  # each redemption is an audit entry


def test_a_restore_older_than_the_last_checkpoint_needs_accept_loss(
    container: Container, services: Services, world: World, tmp_path: Path
) -> None:
    settings = container.settings
    runner = CliRunner(env=_env(settings))
    _audited(world, 3)
    services.audit.checkpoint(None)
    newer = tmp_path / "newer.db"
    older = tmp_path / "older.db"
    assert runner.invoke(cli, ["backup", str(older)]).exit_code == 0
    _audited(world, 3)
    services.audit.checkpoint(None)
    assert runner.invoke(cli, ["backup", str(newer)]).exit_code == 0
    key_pem, kid = container.broker_key_pem, container.broker_kid
    container.close()
    with serving(settings.state_dir):  # a broker serving from the state dir (as `sbx serve` holds it)
        running = runner.invoke(cli, ["restore", str(newer)])
    assert running.exit_code != 0 and "stop it before restoring" in running.output, running.output
    refused = runner.invoke(cli, ["restore", str(older)])
    assert refused.exit_code != 0 and "--accept-loss" in refused.output
    assert not (settings.state_dir / "audit" / RESTORE_FILE).exists()
    ok = runner.invoke(cli, ["restore", "--json", str(newer)])  # control: a backup as new as the checkpoint
    assert ok.exit_code == 0 and json.loads(ok.stdout)["record"] is None, ok.output
    accepted = runner.invoke(cli, ["restore", "--json", "--accept-loss", str(older)])
    assert accepted.exit_code == 0, accepted.output
    record = json.loads(accepted.stdout)["record"]
    assert record["restored_at_size"] == audit_size(older) < record["last_checkpoint_size"]
    assert record["kid"] == kid
    lines = (settings.state_dir / "audit" / RESTORE_FILE).read_text().splitlines()
    assert [json.loads(line) for line in lines] == [record]
    key = load_pem_private_key(key_pem, password=None)
    assert isinstance(key, Ed25519PrivateKey)
    body = {k: v for k, v in record.items() if k != "signature"}
    key.public_key().verify(base64.b64decode(record["signature"]), canonical_json(body))  # signed
    assert audit_size(_db_file(settings)) == record["restored_at_size"]
