"""The RFC 9162 Merkle tree against published vectors, and a property test that tampering fails the proofs.

Vectors (``data/merkle_vectors.json``) are the facts of the transparency-dev ``merkle`` project: the RFC 6962
reference tree's leaf inputs, node hashes and roots at every size 0..8, and its inclusion and consistency
probes (happy paths and the mutated ones that must fail).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from broker.audit import merkle

VECTORS: dict[str, Any] = json.loads((Path(__file__).parent / "data" / "merkle_vectors.json").read_text())
LEAVES = [bytes.fromhex(h) for h in VECTORS["leaf_inputs_hex"]]
ROOTS = [bytes.fromhex(h) for h in VECTORS["roots_hex"]]


def _b64(values: list[str] | None) -> list[bytes]:
    return [base64.b64decode(v) for v in values or []]


def _one(value: str | None) -> bytes:
    return base64.b64decode(value) if value else b""


class MemoryTree:
    """A tree whose complete nodes live in a dict: what the database table holds."""

    def __init__(self, leaves: list[bytes]) -> None:
        self.nodes: dict[merkle.NodeId, bytes] = {}
        self.frontier = merkle.Frontier()
        for leaf in leaves:
            for level, index, value in self.frontier.append(merkle.leaf_hash(leaf)):
                self.nodes[(level, index)] = value

    def read(self, wanted: set[merkle.NodeId]) -> dict[merkle.NodeId, bytes]:
        return {node: self.nodes[node] for node in wanted}

    def root(self, size: int) -> bytes:
        return merkle.root(size, self.read(merkle.root_plan(size)))


def test_reference_roots_at_every_size() -> None:
    assert ROOTS[0] == merkle.EMPTY_ROOT
    tree = MemoryTree(LEAVES)
    for size in range(len(LEAVES) + 1):
        assert merkle.tree_root(merkle.leaf_hash(x) for x in LEAVES[:size]) == ROOTS[size]
        assert tree.root(size) == ROOTS[size]


def test_reference_node_hashes_are_the_stored_nodes() -> None:
    tree = MemoryTree(LEAVES)
    for level, row in enumerate(VECTORS["node_hashes_hex"]):
        for index, value in enumerate(row):
            assert tree.nodes[(level, index)] == bytes.fromhex(value)
    assert len(tree.nodes) == sum(len(row) for row in VECTORS["node_hashes_hex"])


@pytest.mark.parametrize("probe", VECTORS["inclusion"], ids=lambda p: p["file"])
def test_inclusion_probes(probe: dict[str, Any]) -> None:
    ok = merkle.verify_inclusion(
        probe["leafIdx"],
        probe["treeSize"],
        _one(probe["leafHash"]),
        _b64(probe["proof"]),
        _one(probe["root"]),
    )
    assert ok is not probe["wantErr"], probe["desc"]


@pytest.mark.parametrize("probe", VECTORS["consistency"], ids=lambda p: p["file"])
def test_consistency_probes(probe: dict[str, Any]) -> None:
    ok = merkle.verify_consistency(
        probe["size1"], probe["size2"], _one(probe["root1"]), _one(probe["root2"]), _b64(probe["proof"])
    )
    assert ok is not probe["wantErr"], probe["desc"]


def test_generated_proofs_equal_the_published_happy_paths() -> None:
    tree = MemoryTree(LEAVES)
    checked = 0
    for probe in VECTORS["inclusion"]:
        if probe["desc"] == "happy path" and _one(probe["root"]) == ROOTS[probe["treeSize"]]:
            assert merkle.inclusion_proof(probe["leafIdx"], probe["treeSize"], tree.read) == _b64(
                probe["proof"]
            )
            checked += 1
    for probe in VECTORS["consistency"]:
        if probe["desc"] == "happy path" and _one(probe["root2"]) == ROOTS[probe["size2"]]:
            assert merkle.consistency_proof(probe["size1"], probe["size2"], tree.read) == _b64(probe["proof"])
            checked += 1
    assert checked >= 8


def test_every_proof_of_the_reference_tree_verifies() -> None:
    tree = MemoryTree(LEAVES)
    for size in range(1, len(LEAVES) + 1):
        for index in range(size):
            proof = merkle.inclusion_proof(index, size, tree.read)
            assert merkle.verify_inclusion(index, size, merkle.leaf_hash(LEAVES[index]), proof, ROOTS[size])
        for old in range(1, size + 1):
            proof = merkle.consistency_proof(old, size, tree.read)
            assert merkle.verify_consistency(old, size, ROOTS[old], ROOTS[size], proof)


def test_out_of_range_requests_are_refused() -> None:
    with pytest.raises(ValueError):
        merkle.inclusion_spans(3, 3)
    with pytest.raises(ValueError):
        merkle.consistency_spans(4, 3)
    assert not merkle.verify_consistency(4, 3, ROOTS[4], ROOTS[3], [])
    assert not merkle.verify_inclusion(0, 0, ROOTS[1], [], ROOTS[0])


def test_a_proof_reads_logarithmically_many_nodes() -> None:
    size = 1_000_003
    assert len(merkle.inclusion_plan(size // 2, size)) <= 2 * size.bit_length()
    assert len(merkle.consistency_plan(size // 3, size)) <= 2 * size.bit_length()


entries = st.lists(st.binary(min_size=0, max_size=8), min_size=1, max_size=40)


def _tampered(draw: st.DrawFn, original: list[bytes]) -> list[bytes]:
    """One change, removal, insertion or reordering of ``original`` (always a different sequence)."""
    out = list(original)
    kind = draw(st.sampled_from(["change", "remove", "insert", "swap"]))
    i = draw(st.integers(0, len(out) - 1))
    if kind == "change":
        out[i] = draw(st.binary(max_size=8).filter(lambda b: b != original[i]))
    elif kind == "remove":
        del out[i]
    elif kind == "insert":
        out.insert(i, draw(st.binary(max_size=8)))
    else:
        j = draw(st.integers(0, len(out) - 1).filter(lambda j: original[j] != original[i]))
        out[i], out[j] = out[j], out[i]
    return out


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[bytes], list[bytes]]:
    original = draw(entries.filter(lambda xs: len(set(xs)) > 1))
    forged = _tampered(draw, original)
    assume(forged[: len(original)] != original)  # inserting a copy can amount to an honest append
    return original, forged


@settings(max_examples=300, deadline=None)
@given(histories())
def test_any_tampering_fails_inclusion_or_consistency(pair: tuple[list[bytes], list[bytes]]) -> None:
    """A verifier holding the honest tree head (size, root) rejects a tampered log: either the tampered tree
    does not extend the honest one (consistency), or an honest entry is not included where it was."""
    original, forged = pair
    honest = MemoryTree(original)
    size, honest_root = len(original), honest.root(len(original))
    tree = MemoryTree(forged)
    new = len(forged)
    if new >= size:
        proof = merkle.consistency_proof(size, new, tree.read)
        consistent = merkle.verify_consistency(size, new, honest_root, tree.root(new), proof)
    else:
        consistent = False  # a shorter log can never extend the honest tree head
    assert not consistent
    included = all(
        index < new
        and merkle.verify_inclusion(
            index, size, merkle.leaf_hash(entry), merkle.inclusion_proof(index, size, tree.read), honest_root
        )
        for index, entry in enumerate(original)
        if new >= size
    )
    assert not (new >= size and included)


@settings(max_examples=200, deadline=None)
@given(entries, st.data())
def test_honest_extension_always_verifies(leaves: list[bytes], data: st.DataObject) -> None:
    tree = MemoryTree(leaves)
    size = len(leaves)
    old = data.draw(st.integers(1, size))
    index = data.draw(st.integers(0, size - 1))
    assert merkle.verify_consistency(
        old, size, tree.root(old), tree.root(size), merkle.consistency_proof(old, size, tree.read)
    )
    assert merkle.verify_inclusion(
        index,
        size,
        merkle.leaf_hash(leaves[index]),
        merkle.inclusion_proof(index, size, tree.read),
        tree.root(size),
    )
