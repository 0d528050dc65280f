"""A witness: a party outside the broker (a custodian, the funder) that co-signs each checkpoint it has seen to
be an append-only extension of the last one it co-signed.

For each new checkpoint the witness checks the broker's signature, that the origin is the log it follows, and
a consistency proof from the tree head it last saw (kept in its own state file, never the broker's). Only
then does it co-sign (C2SP tlog-cosignature v1, timestamped), send the cosignature back, and record the new
head. A broker that rewrote its log — even one holding its own signing key and re-signing every checkpoint —
cannot produce that proof, so the witness refuses, and verifiers that demand k cosignatures stop accepting
the log's new checkpoints. Pure apart from the state file; the transport is the :class:`LogClient` given.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.audit import merkle
from broker.audit.checkpoints import Checkpoint, verify_checkpoint
from broker.audit.note import cosign
from common.errors import Conflict


class WitnessRefusal(Conflict):
    """The witness will not co-sign: the checkpoint is forged, for another log, or not an extension."""

    code = "witness_refused"


class LogClient(Protocol):
    """What a witness needs of the log (the broker's REST API, or a test double)."""

    def latest(self) -> Mapping[str, Any]:
        """The newest checkpoint as served: ``{"seq": …, "checkpoint": note}``."""
        ...

    def consistency(self, old: int, new: int) -> Mapping[str, Any]:
        """A consistency proof: ``{"proof": [base64, …]}``."""
        ...

    def cosign(self, checkpoint_seq: int, line: str) -> Mapping[str, Any]:
        """Send a cosignature line for checkpoint ``checkpoint_seq``."""
        ...


@dataclass(frozen=True, slots=True)
class Seen:
    """The tree head a witness last co-signed: the log's origin, its size and root."""

    origin: str
    size: int
    root: bytes


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one witness step did: the size it co-signed (or was already at)."""

    size: int
    cosigned: bool


class Witness:
    """One witness identity (name + Ed25519 key) following one log (origin + the broker's public keys)."""

    def __init__(
        self,
        *,
        name: str,
        key: Ed25519PrivateKey,
        origin: str,
        log_keys: Mapping[str, Any],
        state_path: Path,
    ) -> None:
        self.name, self.key, self.origin, self.log_keys = name, key, origin, log_keys
        self.state_path = state_path

    def seen(self) -> Seen | None:
        """The last co-signed tree head from the witness's own state file (``None`` before the first)."""
        try:
            data = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return None
        return Seen(data["origin"], int(data["size"]), base64.b64decode(data["root"]))

    def _remember(self, cp: Checkpoint) -> None:
        """Record the new head atomically (write, fsync, rename), and keep a copy of the checkpoint."""
        data = {"origin": cp.head.origin, "size": cp.size, "root": base64.b64encode(cp.root).decode()}
        tmp = self.state_path.with_suffix(".tmp")
        with tmp.open("w") as fh:
            fh.write(json.dumps(data))
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(self.state_path)
        with self.state_path.with_suffix(".checkpoints.jsonl").open("a") as fh:
            fh.write(json.dumps({"note": cp.render()}) + "\n")

    def check(self, cp: Checkpoint, client: LogClient) -> None:
        """Refuse (``WitnessRefusal``) a checkpoint that is not a valid extension of the last one seen."""
        if cp.head.origin != self.origin:
            raise WitnessRefusal(f"the checkpoint is for log {cp.head.origin!r}, not {self.origin!r}")
        if not verify_checkpoint(cp, self.log_keys):
            raise WitnessRefusal("the checkpoint does not carry a valid signature by the log's key")
        seen = self.seen()
        if seen is None:
            return
        if cp.size < seen.size:
            raise WitnessRefusal(f"the log shrank from {seen.size} to {cp.size} entries: a rollback")
        if cp.size == seen.size:
            if cp.root != seen.root:
                raise WitnessRefusal(f"two different trees of {cp.size} entries: the log forked")
            return
        proof = [base64.b64decode(p) for p in client.consistency(seen.size, cp.size)["proof"]]
        if not merkle.verify_consistency(seen.size, cp.size, seen.root, cp.root, proof):
            raise WitnessRefusal(
                f"the tree of {cp.size} entries is not an extension of the one of {seen.size} this witness "
                "co-signed: the log was rewritten"
            )

    def step(self, client: LogClient, *, now_s: int | None = None) -> Outcome:
        """Fetch the newest checkpoint, check it, co-sign it and send the cosignature back."""
        served = client.latest()
        cp = Checkpoint.parse(str(served["checkpoint"]))
        self.check(cp, client)
        stamp = int(time.time()) if now_s is None else now_s
        line = cosign(cp.note.text, self.name, self.key, stamp)
        client.cosign(int(served["seq"]), line.render().rstrip("\n"))
        self._remember(cp)
        return Outcome(cp.size, True)
