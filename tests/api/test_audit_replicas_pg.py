"""Two broker replicas on one PostgreSQL database: one checkpoint sequence, one witness, over HTTP.

Both replicas checkpoint at the same moments; the advisory lock lets exactly one sign each round, both copy
the same sequence into their own checkpoint files, a witness co-signs through one replica and the other serves
the cosignature, and each replica's `audit verify` (demanding that cosignature) passes.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import text

from broker.audit.note import SIG_COSIGNATURE_V1, vkey
from broker.audit.witness import Witness
from broker.cli.client import BrokerClient
from broker.cli.witness import HttpLog
from broker.container import build_container
from broker.server import RunningServer, serve_in_thread
from broker.services.registry import Services, build_services
from broker.settings import Settings
from tests.conftest import World

pytestmark = [pytest.mark.postgres, pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)]
WITNESS = "custodian.example/witness"


@pytest.fixture
def second(services: Services, settings: Settings, tmp_path: Path) -> Iterator[Services]:
    """A second replica: its own state dir (the same broker key, as from one Secret), the same database."""
    state = tmp_path / "replica-b"
    shutil.copytree(settings.state_dir / "keys", state / "keys")
    other = settings.model_copy(update={"state_dir": state})
    container = build_container(other, clock=services.container.clock)
    try:
        yield build_services(container)
    finally:
        container.close()


def _configure(replicas: list[Services], witness_vkey: str, required: int) -> None:
    for replica in replicas:
        replica.container.settings.audit_witnesses = [witness_vkey]
        replica.container.settings.audit_witnesses_required = required
        replica.audit.__dict__.pop("config", None)


def _checkpoint_together(replicas: list[Services]) -> None:
    """Both replicas run their checkpoint round at once (as their loops would)."""
    errors: list[BaseException] = []

    def run(replica: Services) -> None:
        try:
            replica.audit.checkpoint(None)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(r,)) for r in replicas]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for replica in replicas:  # the loser of the lock copies what the winner signed on its next round
        replica.audit.checkpoint(None)


def test_one_sequence_one_witness_two_replicas(
    world: World, services: Services, second: Services, tmp_path: Path
) -> None:
    replicas = [services, second]
    key = Ed25519PrivateKey.generate()
    _configure(replicas, vkey(WITNESS, key.public_key(), SIG_COSIGNATURE_V1), 0)
    servers: list[RunningServer] = [serve_in_thread(r, loops=False) for r in replicas]
    try:
        witness = Witness(
            name=WITNESS,
            key=key,
            origin=services.audit.config.origin,
            log_keys=services.container.broker_keys.jwks(),
            state_path=tmp_path / "witness.json",
        )
        via_b = HttpLog(BrokerClient(servers[1].url, world.tokens["issuer"]))
        for round_ in range(3):
            world.credit(100 + round_)
            world.clock.advance(31_000)
            _checkpoint_together(replicas)
            assert witness.step(via_b).cosigned

        seqs = services.container.db.read(
            lambda conn: [
                tuple(r) for r in conn.execute(text("SELECT seq, size FROM audit_checkpoints ORDER BY seq"))
            ]
        )
        assert [s for s, _ in seqs] == list(range(1, len(seqs) + 1))  # one gapless sequence
        assert [n for _, n in seqs] == sorted(n for _, n in seqs)
        files = [r.container.audit.checkpoint_file.read_all() for r in replicas]
        assert [cp.render() for cp in files[0]] == [cp.render() for cp in files[1]] and len(files[0]) == len(
            seqs
        )
    finally:
        for server in servers:
            server.stop()
    latest_a = services.audit.latest_checkpoint(world.operator)["checkpoint"]
    assert f"\u2014 {WITNESS} " in latest_a  # co-signed through B, served by A
    _configure(replicas, vkey(WITNESS, key.public_key(), SIG_COSIGNATURE_V1), 1)
    world.credit(500)
    world.clock.advance(31_000)
    services.audit.checkpoint(None)  # A signs; B has not copied it yet (its next round would)
    for replica in replicas:
        verdict = replica.audit.verify(world.operator)
        assert verdict["ok"] is True, verdict
