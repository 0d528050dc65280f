"""``sbx audit witness``: a witness party run from the command line, and small helpers of the audit commands.

The witness talks to the broker only over its REST API, with its own bearer token and its own Ed25519 key
(never the broker's); its state file is its memory of the last tree head it co-signed.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import typer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.audit.note import SIG_COSIGNATURE_V1, vkey
from broker.audit.witness import Witness, WitnessRefusal
from broker.cli.client import EXIT_UNAVAILABLE, EXIT_VERIFY_FAILED, BrokerClient, CliError, fail


def write_json(path: Path, data: Any) -> None:
    """Write a proof (or any API answer) as a JSON file for the offline checker."""
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def init_key(path: Path, name: str) -> str:
    """Create the witness's Ed25519 key (0600; refused if it exists) and return its verifier key."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    return vkey(name, key.public_key(), SIG_COSIGNATURE_V1)


def load_key(path: Path) -> Ed25519PrivateKey:
    """The witness's private key from its PEM file."""
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        fail(f"{path} is not an Ed25519 private key")
    return key


class HttpLog:
    """The log as a witness sees it through the broker's REST API."""

    def __init__(self, client: BrokerClient) -> None:
        self.client = client

    def latest(self) -> Mapping[str, Any]:
        """The newest checkpoint with its cosignatures."""
        data: Mapping[str, Any] = self.client.call("GET", "/api/v1/audit/checkpoints/latest")
        return data

    def consistency(self, old: int, new: int) -> Mapping[str, Any]:
        """A consistency proof between two tree sizes."""
        data: Mapping[str, Any] = self.client.call(
            "GET", "/api/v1/audit/proofs/consistency", params={"old": old, "new": new}
        )
        return data

    def cosign(self, checkpoint_seq: int, line: str) -> Mapping[str, Any]:
        """Send one cosignature line."""
        data: Mapping[str, Any] = self.client.call(
            "POST", "/api/v1/audit/cosignatures", body={"checkpoint_seq": checkpoint_seq, "cosignature": line}
        )
        return data


def run_witness(
    key: Path,
    name: str,
    state: Path,
    broker_key: Path,
    origin: str,
    *,
    url: str,
    token: str | None,
    once: bool,
    interval_s: int,
) -> None:
    """Poll the broker, co-signing each checkpoint that extends the last one; exit 3 on a refusal."""
    witness = Witness(
        name=name,
        key=load_key(key),
        origin=origin,
        log_keys=json.loads(broker_key.read_text()),
        state_path=state,
    )
    log = HttpLog(BrokerClient(url, token))
    while True:
        try:
            outcome = witness.step(log)
            typer.echo(f"co-signed the tree of {outcome.size} entries")
        except WitnessRefusal as exc:
            typer.echo(f"REFUSED: {exc.detail}", err=True)
            raise typer.Exit(EXIT_VERIFY_FAILED) from exc
        except CliError as exc:
            typer.echo(f"broker unavailable: {exc}", err=True)
            if once:
                raise typer.Exit(EXIT_UNAVAILABLE) from exc
        if once:
            return
        time.sleep(interval_s)
