"""The RFC 9162 §2.1 Merkle tree (Certificate Transparency v2) over the audit log's leaves: pure, no I/O.

Hashing: ``leaf_hash(d) = SHA-256(0x00 || d)``, ``node_hash(l, r) = SHA-256(0x01 || l || r)``, the empty tree's
root is ``SHA-256("")``. Leaves are numbered from 0.

Storage model (what lets a database serve proofs in a few row reads): a **node** ``(level, index)`` is the
hash of the complete subtree of ``2**level`` leaves that starts at leaf ``index * 2**level``. Every subtree an
RFC 9162 proof or tree head needs is either such a node or splits (at the largest power of two below its
size, exactly as the RFC recurses) into at most ``log2(n)`` of them. So a proof is planned here
(:func:`inclusion_plan`, :func:`consistency_plan`: which nodes), the caller fetches those nodes in one query,
and the proof is assembled here (:func:`assemble`). :class:`Frontier` extends a tree leaf by leaf and reports
every node that becomes complete, for the caller to store.

Verification (:func:`verify_inclusion`, :func:`verify_consistency`) follows RFC 9162 §2.1.3.2 and §2.1.4.2 and
needs nothing but hashes: a custodian runs it without the database.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

NodeId = tuple[int, int]  # (level, index): the complete subtree of 2**level leaves from index * 2**level
Span = tuple[int, int]  # [start, end) leaves: a subtree as RFC 9162 recursion produces it

EMPTY_ROOT = hashlib.sha256(b"").digest()
_LEAF = b"\x00"
_NODE = b"\x01"


def leaf_hash(data: bytes) -> bytes:
    """``SHA-256(0x00 || data)``: the hash of one leaf."""
    return hashlib.sha256(_LEAF + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 || left || right)``: the hash of an interior node."""
    return hashlib.sha256(_NODE + left + right).digest()


def _split(size: int) -> int:
    """The largest power of two strictly below ``size`` (``size >= 2``): where RFC 9162 splits a tree."""
    return 1 << ((size - 1).bit_length() - 1)


def span_nodes(start: int, end: int) -> list[NodeId]:
    """The stored nodes whose hashes make up subtree ``[start, end)``, left to right.

    ``[start, end)`` must be a span RFC 9162 recursion produces (``start`` a multiple of the largest power of
    two not above ``end - start``); its hash is the right fold of these nodes with :func:`node_hash`.
    """
    out: list[NodeId] = []
    while end - start > 0:
        size = end - start
        if size & (size - 1) == 0:
            out.append((size.bit_length() - 1, start // size))
            break
        k = _split(size)
        out.append((k.bit_length() - 1, start // k))
        start += k
    return out


def fold(hashes: Sequence[bytes]) -> bytes:
    """Combine the node hashes of one span (from :func:`span_nodes`) into the span's hash."""
    if not hashes:
        return EMPTY_ROOT
    acc = hashes[-1]
    for h in reversed(hashes[:-1]):
        acc = node_hash(h, acc)
    return acc


def inclusion_spans(index: int, size: int) -> list[Span]:
    """The subtrees whose hashes form the inclusion proof of leaf ``index`` in a tree of ``size`` (RFC 9162
    §2.1.3.1 PATH), in proof order (the sibling nearest the leaf first)."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of {size} leaves")
    spans: list[Span] = []
    start, end = 0, size
    while end - start > 1:
        k = _split(end - start)
        if index < start + k:
            spans.append((start + k, end))
            end = start + k
        else:
            spans.append((start, start + k))
            start += k
    spans.reverse()
    return spans


def consistency_spans(old: int, new: int) -> list[Span]:
    """The subtrees whose hashes form the consistency proof from size ``old`` to ``new`` (RFC 9162 §2.1.4.1
    PROOF/SUBPROOF), in proof order. Empty when ``old`` is 0 or equals ``new``."""
    if not 0 <= old <= new:
        raise ValueError(f"no consistency proof from {old} to {new} leaves")
    if old in (0, new):
        return []
    spans: list[Span] = []
    start, end, complete = 0, new, True  # SUBPROOF(m, D[start:end], complete)
    m = old
    while m != end - start:
        k = _split(end - start)
        if m <= k:
            spans.append((start + k, end))
            end = start + k
        else:
            spans.append((start, start + k))
            m -= k
            start += k
            complete = False
    if not complete:
        spans.append((start, end))
    spans.reverse()
    return spans


def plan(spans: Iterable[Span]) -> set[NodeId]:
    """Every stored node the given spans need (fetch them in one query)."""
    return {node for start, end in spans for node in span_nodes(start, end)}


def inclusion_plan(index: int, size: int) -> set[NodeId]:
    """The nodes an inclusion proof of leaf ``index`` at ``size`` needs."""
    return plan(inclusion_spans(index, size))


def consistency_plan(old: int, new: int) -> set[NodeId]:
    """The nodes a consistency proof from ``old`` to ``new`` needs."""
    return plan(consistency_spans(old, new))


def root_plan(size: int) -> set[NodeId]:
    """The nodes the tree head (root hash) at ``size`` needs."""
    return set(span_nodes(0, size))


def span_hash(span: Span, nodes: Mapping[NodeId, bytes]) -> bytes:
    """The hash of one span from fetched nodes; ``KeyError`` names a node the caller did not supply."""
    return fold([nodes[node] for node in span_nodes(*span)])


def assemble(spans: Iterable[Span], nodes: Mapping[NodeId, bytes]) -> list[bytes]:
    """A proof: the hash of each span, from fetched nodes."""
    return [span_hash(span, nodes) for span in spans]


def root(size: int, nodes: Mapping[NodeId, bytes]) -> bytes:
    """The tree head at ``size`` from fetched nodes (:data:`EMPTY_ROOT` for 0)."""
    return span_hash((0, size), nodes)


NodeReader = Callable[[set[NodeId]], Mapping[NodeId, bytes]]


def inclusion_proof(index: int, size: int, read: NodeReader) -> list[bytes]:
    """Plan, fetch (one ``read`` call) and assemble the inclusion proof of leaf ``index`` at ``size``."""
    spans = inclusion_spans(index, size)
    return assemble(spans, read(plan(spans)))


def consistency_proof(old: int, new: int, read: NodeReader) -> list[bytes]:
    """Plan, fetch (one ``read`` call) and assemble the consistency proof from ``old`` to ``new``."""
    spans = consistency_spans(old, new)
    return assemble(spans, read(plan(spans)))


@dataclass
class Frontier:
    """The right edge of a tree being extended: one pending node per set bit of ``size`` (a compact range).

    :meth:`append` adds one leaf hash and returns every node completed by it, for the caller to store.
    """

    size: int = 0
    pending: list[bytes] = field(default_factory=list)  # complete subtrees, largest (leftmost) first

    @classmethod
    def resume(cls, size: int, nodes: Mapping[NodeId, bytes]) -> Frontier:
        """The frontier of a stored tree of ``size`` leaves from its :func:`root_plan` nodes."""
        return cls(size, [nodes[node] for node in span_nodes(0, size)])

    def append(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        """Add the leaf hash ``leaf``; return ``(level, index, hash)`` of each node that became complete."""
        index = self.size
        completed = [(0, index, leaf)]
        acc, level = leaf, 0
        while index & 1:
            acc = node_hash(self.pending.pop(), acc)
            index >>= 1
            level += 1
            completed.append((level, index, acc))
        self.pending.append(acc)
        self.size += 1
        return completed

    def root(self) -> bytes:
        """The tree head of the leaves so far."""
        return fold(self.pending)


def tree_root(leaf_hashes: Iterable[bytes]) -> bytes:
    """The tree head over ``leaf_hashes`` (already hashed with :func:`leaf_hash`)."""
    frontier = Frontier()
    for leaf in leaf_hashes:
        frontier.append(leaf)
    return frontier.root()


def _shift_while_even(fn: int, sn: int) -> tuple[int, int]:
    while not fn & 1 and fn != 0:
        fn >>= 1
        sn >>= 1
    return fn, sn


def root_from_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes | None:
    """The root an inclusion proof implies (RFC 9162 §2.1.3.2), or ``None`` if the proof is malformed."""
    if not 0 <= index < size or len(leaf) != 32:
        return None
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0 or len(p) != 32:
            return None
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            fn, sn = _shift_while_even(fn, sn)
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return r if sn == 0 else None


def verify_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes], root_hash: bytes) -> bool:
    """Whether ``proof`` shows the leaf hash ``leaf`` at ``index`` in the tree of ``size`` with ``root_hash``."""
    return root_from_inclusion(index, size, leaf, proof) == root_hash


def verify_consistency(old: int, new: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]) -> bool:
    """Whether ``proof`` shows the tree ``(new, new_root)`` extends ``(old, old_root)`` (RFC 9162 §2.1.4.2).

    Equal sizes need an empty proof and equal roots. As in the transparency-dev vectors, ``old`` = 0 is refused
    (every tree extends the empty one, so such a "proof" says nothing: a caller with no earlier tree head has
    nothing to check), and so is a larger ``old`` than ``new``.
    """
    if not 0 < old <= new:
        return False
    if old == new:
        return not proof and old_root == new_root
    if len(old_root) != 32 or len(new_root) != 32:
        return False
    path = list(proof)
    if old & (old - 1) == 0:  # an exact power of two: the old root is itself a node of the new tree
        path.insert(0, old_root)
    if not path or any(len(p) != 32 for p in path):
        return False
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            fn, sn = _shift_while_even(fn, sn)
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root
