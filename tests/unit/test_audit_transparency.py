"""Tying signed tree heads to a stored tree, and the checkpoint record's rules (missing, short, stale, witnessed)."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.audit import GENESIS_HASH, Checkpoint, leaf_of, merkle, next_record, note, sign_checkpoint
from broker.audit.transparency import RecordState, anchor_checkpoints, check_record
from vouchers.keys import generate_private_pem, jwks, public_jwk

PEM = generate_private_pem()
OTHER = generate_private_pem()
JWK = public_jwk(PEM)
ORIGIN = "sbx.test/audit"
WINDOW = 300_000


def chain(n: int, tag: str = "a") -> list[str]:
    """The entry hashes of a log of ``n`` entries."""
    out, seq, prev = [], 0, GENESIS_HASH
    for i in range(n):
        record = next_record(
            seq,
            prev,
            ts_ms=i,
            actor_org=None,
            actor_role=None,
            action=tag,
            object_type="t",
            object_id=str(i),
            org_id=None,
            dataset_id=None,
            details={},
        )
        out.append(record.entry_hash)
        seq, prev = record.seq, record.entry_hash
    return out


class Tree:
    def __init__(self, hashes: list[str]) -> None:
        self.nodes: dict[merkle.NodeId, bytes] = {}
        frontier = merkle.Frontier()
        for h in hashes:
            for level, idx, value in frontier.append(leaf_of(h)):
                self.nodes[(level, idx)] = value
        self.size = len(hashes)

    def read(self, wanted: set[merkle.NodeId]) -> dict[merkle.NodeId, bytes]:
        return {n: self.nodes[n] for n in wanted if n in self.nodes}

    def root(self, size: int) -> bytes:
        return merkle.root(size, self.read(merkle.root_plan(size)))

    def checkpoint(self, size: int, ts: int = 1, pem: bytes = PEM) -> Checkpoint:
        return sign_checkpoint(ORIGIN, size, self.root(size), ts, pem)


def test_each_checkpoint_anchors_its_last_leaf() -> None:
    hashes = chain(10)
    tree = Tree(hashes)
    anchors, problem = anchor_checkpoints([tree.checkpoint(4), tree.checkpoint(10)], JWK, 10, tree.read)
    assert problem is None
    assert anchors == {4: leaf_of(hashes[3]), 10: leaf_of(hashes[9])}


def test_a_rewritten_tree_a_rollback_a_forgery_and_a_fork_are_refused() -> None:
    tree = Tree(chain(10))
    cps = [tree.checkpoint(4), tree.checkpoint(10)]
    rewritten = Tree(chain(10, tag="b"))
    _, problem = anchor_checkpoints(cps, JWK, 10, rewritten.read)
    assert problem is not None and "rewritten" in problem.reason and problem.seq == 4
    rolled_back = Tree(chain(7))
    _, problem = anchor_checkpoints(cps, JWK, 7, rolled_back.read)
    assert problem is not None and "rollback" in problem.reason and problem.seq == 8
    forged = rewritten.checkpoint(10, pem=OTHER)
    _, problem = anchor_checkpoints([cps[0], forged], JWK, 10, rewritten.read)
    assert problem is not None and "signature" in problem.reason
    fork = rewritten.checkpoint(10)
    _, problem = anchor_checkpoints([*cps, fork], JWK, 10, tree.read)
    assert problem is not None and "disagree" in problem.reason


def test_an_old_key_in_the_key_set_still_anchors_old_checkpoints() -> None:
    tree = Tree(chain(6))
    cps = [tree.checkpoint(3, pem=OTHER), tree.checkpoint(6)]
    anchors, problem = anchor_checkpoints(cps, jwks([public_jwk(OTHER), JWK]), 6, tree.read)
    assert problem is None and set(anchors) == {3, 6}
    _, problem = anchor_checkpoints(cps, JWK, 6, tree.read)
    assert problem is not None


def _state(entries: int, db_latest: Checkpoint | None, now: int, first: int | None = 0) -> RecordState:
    return RecordState(entries, first, db_latest, now, WINDOW)


def test_the_record_must_exist_match_the_database_and_be_fresh() -> None:
    tree = Tree(chain(5))
    cp3, cp5 = tree.checkpoint(3, ts=1_000), tree.checkpoint(5, ts=2_000)
    now = 10_000
    assert check_record([], False, _state(0, None, now)) is None  # an empty log
    assert check_record([], False, _state(5, None, now)) is None  # younger than the window: nothing due yet
    missing = check_record([], False, _state(5, cp5, now))
    assert missing is not None and "missing" in missing.reason
    old_log = check_record([], False, _state(5, None, WINDOW + 10))
    assert old_log is not None and "missing" in old_log.reason
    short = check_record([cp3], True, _state(5, cp5, now))
    assert short is not None and "cut short" in short.reason
    db_behind = check_record([cp3, cp5], True, _state(5, cp3, now))
    assert db_behind is not None and "rolled back" in db_behind.reason
    stale = check_record([cp3, cp5], True, _state(5, cp5, 2_000 + WINDOW + 1))
    assert stale is not None and "window" in stale.reason
    assert check_record([cp3, cp5], True, _state(5, cp5, now)) is None


def test_witnesses_are_required_when_configured() -> None:
    tree = Tree(chain(5))
    cp = tree.checkpoint(5, ts=2_000)
    alice = Ed25519PrivateKey.generate()
    witnesses = {"alice": alice.public_key()}
    state = _state(5, cp, 10_000)
    refused = check_record([cp], True, state, cosigned=[cp], witnesses=witnesses, required=1)
    assert refused is not None and "witness" in refused.reason
    cosigned = cp.with_signatures([note.cosign(cp.note.text, "alice", alice, 3)])
    assert check_record([cp], True, state, cosigned=[cosigned], witnesses=witnesses, required=1) is None
    assert check_record([cp], True, state, cosigned=[cosigned], witnesses=witnesses, required=2) is not None


def test_a_replica_file_one_round_behind_is_not_a_cut() -> None:
    tree = Tree(chain(5))
    cp3, cp5 = tree.checkpoint(3, ts=1_000), tree.checkpoint(5, ts=31_000)
    lagging = RecordState(5, 0, cp5, 40_000, WINDOW, lag_ms=60_000)
    assert check_record([cp3], True, lagging) is None
    cut = RecordState(5, 0, cp5, 40_000, WINDOW, lag_ms=10_000)
    problem = check_record([cp3], True, cut)
    assert problem is not None and "cut short" in problem.reason


def test_a_forged_newest_checkpoint_is_caught_among_repeated_ones() -> None:
    tree = Tree(chain(4))
    repeats = [tree.checkpoint(4, ts=t) for t in range(1, 50)]
    anchors, problem = anchor_checkpoints(repeats, JWK, 4, tree.read)
    assert problem is None and set(anchors) == {4}
    forged_fresh = tree.checkpoint(4, ts=99, pem=OTHER)  # the same statement, a fresher time, no valid key
    _, problem = anchor_checkpoints([*repeats, forged_fresh], JWK, 4, tree.read)
    assert problem is not None and "signature" in problem.reason
