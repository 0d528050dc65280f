"""The standalone proof verifier a custodian runs without the database: ``python -m broker.audit.verify_proof``.

Input: a proof file written by ``sbx audit prove SEQ --json`` (or ``sbx audit consistency OLD NEW --json``),
the broker's public key (its JWK or JWK Set, from ``/.well-known/jwks.json``), and optionally the witnesses'
verifier keys with how many cosignatures to demand. Checks, for an inclusion proof: the checkpoint's broker
signature, the witness cosignatures, that the entry's body hashes to its entry hash (``SHA-256(prev_hash ||
body)``, ``prev_hash`` read from the body), and the RFC 9162 inclusion of that hash at ``seq - 1`` under the
checkpoint's root. For a consistency proof: the newer checkpoint as above, and (given the older one, from
the custodian's own records) the RFC 9162 consistency of the two trees.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker.audit import merkle
from broker.audit.chain import leaf_of
from broker.audit.checkpoints import Checkpoint, cosigners, verify_checkpoint
from broker.audit.note import NoteError, parse_vkey


@dataclass(frozen=True, slots=True)
class Trust:
    """What the verifier trusts: the broker's keys, the witnesses' keys, how many cosignatures it needs."""

    log_keys: Mapping[str, Any]
    witnesses: Mapping[str, Any]
    required: int = 0


def _checkpoint(text: str, trust: Trust) -> tuple[Checkpoint | None, str]:
    try:
        cp = Checkpoint.parse(text)
    except NoteError as exc:
        return None, f"not a checkpoint: {exc.detail}"
    if not verify_checkpoint(cp, trust.log_keys):
        return None, "the checkpoint does not carry a valid broker signature"
    signed = cosigners(cp, trust.witnesses)
    if len(signed) < trust.required:
        return None, f"the checkpoint has {len(signed)} of the {trust.required} witness cosignatures required"
    return cp, "ok"


def check_inclusion(proof: Mapping[str, Any], trust: Trust) -> tuple[bool, str]:
    """Whether an inclusion proof shows its entry in a trusted checkpoint; and why not."""
    cp, why = _checkpoint(str(proof["checkpoint"]), trust)
    if cp is None:
        return False, why
    entry, seq = proof["entry"], int(proof["seq"])
    body = str(entry["body"]).encode()
    fields = json.loads(body)
    if fields.get("seq") != seq:
        return False, f"the entry body is not entry {seq}"
    entry_hash = hashlib.sha256(str(fields["prev_hash"]).encode("ascii") + body).hexdigest()
    if entry_hash != entry["entry_hash"]:
        return False, "the entry body does not hash to its entry hash"
    path = [base64.b64decode(p) for p in proof["proof"]]
    if int(proof["tree_size"]) != cp.size:
        return False, "the proof is for another tree size than its checkpoint"
    if not merkle.verify_inclusion(seq - 1, cp.size, leaf_of(entry_hash), path, cp.root):
        return False, f"entry {seq} is NOT in the signed tree of {cp.size} entries"
    return True, f"entry {seq} is in the signed tree of {cp.size} entries ({len(path)} hashes)"


def check_consistency(proof: Mapping[str, Any], trust: Trust, old_checkpoint: str | None) -> tuple[bool, str]:
    """Whether a consistency proof shows the trusted newer tree extends the older one; and why not."""
    new, why = _checkpoint(str(proof["checkpoint"]), trust)
    if new is None:
        return False, why
    old_text = old_checkpoint or proof.get("old_checkpoint")
    if not old_text:
        return False, "no older checkpoint to compare with (give --old-checkpoint)"
    old, why = _checkpoint(str(old_text), Trust(trust.log_keys, {}, 0))
    if old is None:
        return False, f"the older checkpoint: {why}"
    path = [base64.b64decode(p) for p in proof["proof"]]
    if not merkle.verify_consistency(old.size, new.size, old.root, new.root, path):
        return (
            False,
            f"the tree of {new.size} entries does NOT extend the one of {old.size}: the log was rewritten",
        )
    return True, f"the tree of {new.size} entries extends the one of {old.size}"


def check_file(data: Mapping[str, Any], trust: Trust, old_checkpoint: str | None = None) -> tuple[bool, str]:
    """Check a proof file of either kind."""
    if "entry" in data:
        return check_inclusion(data, trust)
    return check_consistency(data, trust, old_checkpoint)


def load_trust(jwk_path: Path, witness_keys: Sequence[str], required: int) -> Trust:
    """The broker key (a JWK or JWK Set file) and the witnesses' verifier keys."""
    witnesses = {}
    for text in witness_keys:
        name, public, _kind = parse_vkey(text)
        witnesses[name] = public
    return Trust(json.loads(jwk_path.read_text()), witnesses, required)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: exit 0 when the proof holds, 3 when it does not."""
    parser = argparse.ArgumentParser(
        prog="python -m broker.audit.verify_proof", description=__doc__.split("\n")[0]
    )
    parser.add_argument("proof", type=Path, help="a proof file from `sbx audit prove|consistency --json`")
    parser.add_argument(
        "--broker-key", type=Path, required=True, help="the broker's JWK or JWK Set (JSON file)"
    )
    parser.add_argument("--witness", action="append", default=[], help="a witness verifier key (repeatable)")
    parser.add_argument("--witnesses-required", type=int, default=0, help="cosignatures to demand")
    parser.add_argument("--old-checkpoint", type=Path, help="your own copy of the older checkpoint")
    args = parser.parse_args(argv)
    trust = load_trust(args.broker_key, args.witness, args.witnesses_required)
    old = args.old_checkpoint.read_text() if args.old_checkpoint else None
    ok, why = check_file(json.loads(args.proof.read_text()), trust, old)
    sys.stdout.write(("VALID: " if ok else "INVALID: ") + why + "\n")
    return 0 if ok else 3


if __name__ == "__main__":
    raise SystemExit(main())
