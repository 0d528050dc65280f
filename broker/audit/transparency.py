"""Tying signed tree heads to the stored log, and the rules a checkpoint record must satisfy. Pure.

- :func:`anchor_checkpoints`: check every checkpoint's log signature, that no two disagree about one size,
  that none is larger than the stored tree (a rollback), and that the stored leaf at ``size - 1`` is included
  under its root (an RFC 9162 proof from the stored nodes). Each passing checkpoint becomes an *anchor*:
  "entry ``size`` has this leaf hash", which the chain walk then checks (``chain.verify_chain_bodies``).
  Because a leaf is an entry's chain hash, one anchored leaf vouches for every entry before it.
- :func:`check_record`: the checkpoint record itself — present once the log has entries (a missing file is
  a failure, not "nothing to check"), no shorter than the database's record of the latest checkpoint, not
  older than the window, and (when witnesses are required) co-signed by enough of them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from broker.audit import merkle
from broker.audit.checkpoints import Checkpoint, cosigners, verify_checkpoint


@dataclass(frozen=True, slots=True)
class Problem:
    """Why the log or its checkpoint record cannot be trusted, and the first entry concerned."""

    seq: int
    reason: str


@dataclass(frozen=True, slots=True)
class RecordState:
    """What the database and the clock say about checkpoints, for :func:`check_record`."""

    entries: int  # the audit head's seq
    first_entry_ms: int | None  # when the log began (None when empty)
    db_latest: Checkpoint | None  # the database's record of the latest checkpoint
    now_ms: int
    window_ms: int
    lag_ms: int = 0  # how far a replica's file may trail the database (its copy is made once per loop round)


def _distinct(checkpoints: Sequence[Checkpoint]) -> list[Checkpoint]:
    """One checkpoint per (size, root) statement, plus the newest (whose signed time is what freshness rests on).

    The loop re-signs an unchanged tree every interval to stay fresh, so most checkpoints repeat a statement;
    a repeated statement needs no second signature check (a forged copy would claim nothing new).
    """
    if not checkpoints:
        return []
    newest = max(checkpoints, key=lambda cp: cp.ts_ms)
    firsts: dict[tuple[int, bytes], Checkpoint] = {}
    for cp in checkpoints:
        firsts.setdefault((cp.size, cp.root), cp)
    return [*firsts.values(), newest]


def _signatures(checkpoints: Sequence[Checkpoint], keys: Mapping[str, Any]) -> Problem | None:
    roots: dict[int, bytes] = {}
    for cp in _distinct(checkpoints):
        if not verify_checkpoint(cp, keys):
            return Problem(
                max(cp.size, 1),
                f"the checkpoint of {cp.size} entries does not carry a valid signature by a known audit key: "
                "the checkpoint record was forged or edited",
            )
        seen = roots.setdefault(cp.size, cp.root)
        if seen != cp.root:
            return Problem(
                max(cp.size, 1),
                f"two validly signed checkpoints disagree about the tree of {cp.size} entries: "
                "the audit key was misused (a forked log)",
            )
    return None


def anchor_checkpoints(
    checkpoints: Sequence[Checkpoint],
    keys: Mapping[str, Any],
    tree_size: int,
    read: merkle.NodeReader,
) -> tuple[dict[int, bytes], Problem | None]:
    """Anchors (entry seq → proven leaf hash) from signed checkpoints and the stored tree, or a problem."""
    problem = _signatures(checkpoints, keys)
    if problem is not None:
        return {}, problem
    roots = {cp.size: cp.root for cp in checkpoints if cp.size > 0}
    beyond = [size for size in roots if size > tree_size]
    if beyond:
        return {}, Problem(
            tree_size + 1,
            f"a signed checkpoint covers {max(beyond)} entries but the stored tree has {tree_size}: "
            "entries were removed from the end and the head rewound (a rollback)",
        )
    wanted: set[merkle.NodeId] = set()
    for size in roots:
        wanted |= merkle.inclusion_plan(size - 1, size) | {(0, size - 1)}
    nodes = read(wanted)
    anchors: dict[int, bytes] = {}
    for size in sorted(roots):
        leaf = nodes.get((0, size - 1))
        try:
            proof = merkle.assemble(merkle.inclusion_spans(size - 1, size), nodes)
        except KeyError:
            proof = []
        if leaf is None or not merkle.verify_inclusion(size - 1, size, leaf, proof, roots[size]):
            return {}, Problem(
                size,
                f"the stored Merkle tree does not match the signed checkpoint of {size} entries: "
                "the log (and its tree) was rewritten",
            )
        anchors[size] = leaf
    return anchors, None


def _presence(file_cps: Sequence[Checkpoint], file_exists: bool, state: RecordState) -> Problem | None:
    young = state.first_entry_ms is not None and state.now_ms - state.first_entry_ms <= state.window_ms
    if state.db_latest is None and not file_cps:
        if state.entries == 0 or young:
            return None  # nothing is due yet: an empty log, or one younger than the window
        if not file_exists:
            return Problem(
                1, "the checkpoint file is missing and no checkpoint is recorded: both were deleted"
            )
        return Problem(1, "no checkpoint is recorded although the log is older than the window: removed")
    if not file_exists:
        return Problem(1, "the checkpoint file is missing: it was deleted (restore it from a copy)")
    if not file_cps:
        return Problem(1, "the checkpoint file holds no checkpoint although the database records one")
    if state.db_latest is None:
        return Problem(1, "the database holds no record of the latest checkpoint: it was removed")
    return None


def check_record(
    file_cps: Sequence[Checkpoint],
    file_exists: bool,
    state: RecordState,
    *,
    cosigned: Sequence[Checkpoint] = (),
    witnesses: Mapping[str, Ed25519PublicKey] | None = None,
    required: int = 0,
) -> Problem | None:
    """The checkpoint record's own rules (see the module docstring); ``None`` when it may be trusted.

    ``cosigned`` are the checkpoints of the window as served, with the cosignatures witnesses sent back.
    """
    problem = _presence(file_cps, file_exists, state)
    if problem is not None or not file_cps or state.db_latest is None:
        return problem
    last, db = file_cps[-1], state.db_latest
    behind = last.size < db.size or last.ts_ms < db.ts_ms
    if behind and db.ts_ms - last.ts_ms > state.lag_ms:
        return Problem(
            last.size + 1,
            f"the checkpoint file ends at {last.size} entries but the database records a later checkpoint "
            f"of {db.size}: the file was cut short",
        )
    if last.size > db.size or last.ts_ms > db.ts_ms:
        return Problem(
            db.size + 1,
            f"the database records the checkpoint of {db.size} entries but the file holds a later one of "
            f"{last.size}: the database was rolled back",
        )
    if state.now_ms - last.ts_ms > state.window_ms:
        age_s = (state.now_ms - last.ts_ms) // 1000
        return Problem(
            last.size + 1,
            f"the latest checkpoint is {age_s} s old, beyond the {state.window_ms // 1000} s window: "
            "checkpointing stopped, or newer checkpoints were removed",
        )
    return _witnessed(cosigned, last, state, witnesses or {}, required)


def _witnessed(
    cosigned: Sequence[Checkpoint],
    last: Checkpoint,
    state: RecordState,
    witnesses: Mapping[str, Ed25519PublicKey],
    required: int,
) -> Problem | None:
    """With ``required`` witnesses, some checkpoint within the window must carry that many cosignatures."""
    if required <= 0:
        return None
    for cp in reversed(cosigned):
        if state.now_ms - cp.ts_ms <= state.window_ms and len(cosigners(cp, witnesses)) >= required:
            return None
    return Problem(
        last.size + 1,
        f"no checkpoint within the window carries {required} witness cosignature(s): the witnesses have not "
        "seen this log (or refused to co-sign it)",
    )
