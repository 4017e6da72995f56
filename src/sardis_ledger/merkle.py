"""RFC 9162 (Certificate Transparency v2) Merkle tree hashing and proofs.

Pure functions over SHA-256; no storage, no I/O. The ledger stores only the
*complete* subtrees of its log (a node at ``(level, index)`` covers leaves
``[index << level, (index + 1) << level)``), which is exactly what appending
produces. Every root and proof for any tree size can be assembled from those
stored nodes in O(log n) reads, so nothing here ever rebuilds a tree.

Why a node getter instead of a list of leaves: the caller decides where nodes
come from (a dict built during a write, a database query), and
:func:`needed_nodes` lets a storage backend fetch everything a proof needs in
one round trip before computing it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

__all__ = [
    "EMPTY_ROOT",
    "Frontier",
    "NodeGetter",
    "ProofError",
    "consistency_proof",
    "created_by",
    "frontier_coords",
    "hash_children",
    "hash_leaf",
    "inclusion_proof",
    "needed_nodes",
    "node_position",
    "root_from_inclusion_proof",
    "subtree_hash",
    "tree_root",
    "verify_consistency",
    "verify_inclusion",
]

EMPTY_ROOT = hashlib.sha256(b"").digest()

NodeGetter = Callable[[int, int], bytes]
"""Returns the stored hash of the complete subtree at ``(level, index)``."""


class ProofError(ValueError):
    """A proof is malformed or does not match the claimed tree."""


def hash_leaf(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def hash_children(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """Largest power of two strictly smaller than ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def subtree_hash(start: int, end: int, node: NodeGetter) -> bytes:
    """Hash of leaves ``[start, end)``, where ``start`` is aligned as RFC 9162 splits are."""
    size = end - start
    if size <= 0:
        raise ValueError("empty range")
    if size & (size - 1) == 0:
        level = size.bit_length() - 1
        return node(level, start >> level)
    k = _split(size)
    return hash_children(subtree_hash(start, start + k, node), subtree_hash(start + k, end, node))


def tree_root(size: int, node: NodeGetter) -> bytes:
    if size == 0:
        return EMPTY_ROOT
    return subtree_hash(0, size, node)


def inclusion_proof(index: int, size: int, node: NodeGetter) -> list[bytes]:
    """Audit path for leaf ``index`` in the tree of ``size`` leaves, leaf upward."""
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is not in a tree of size {size}")
    path: list[bytes] = []
    start, end = 0, size
    # Walk down from the root, remembering the sibling at each split.
    while end - start > 1:
        k = _split(end - start)
        if index < start + k:
            path.append(subtree_hash(start + k, end, node))
            end = start + k
        else:
            path.append(subtree_hash(start, start + k, node))
            start += k
    path.reverse()
    return path


def consistency_proof(old_size: int, new_size: int, node: NodeGetter) -> list[bytes]:
    """RFC 9162 section 2.1.4 proof that ``old_size`` is a prefix of ``new_size``."""
    if not 0 <= old_size <= new_size:
        raise ProofError(f"cannot prove {old_size} -> {new_size}")
    if old_size == 0 or old_size == new_size:
        return []
    out: list[bytes] = []

    def subproof(m: int, start: int, end: int, complete: bool) -> None:
        n = end - start
        if m == n:
            if not complete:
                out.append(subtree_hash(start, end, node))
            return
        k = _split(n)
        if m <= k:
            subproof(m, start, start + k, complete)
            out.append(subtree_hash(start + k, end, node))
        else:
            subproof(m - k, start + k, end, False)
            out.append(subtree_hash(start, start + k, node))

    subproof(old_size, 0, new_size, True)
    return out


def needed_nodes(fn: Callable[[NodeGetter], object]) -> set[tuple[int, int]]:
    """Coordinates of the stored nodes ``fn`` will read; the shape of a proof
    never depends on hash values, so a dry run with dummy hashes finds them."""
    seen: set[tuple[int, int]] = set()

    def record(level: int, index: int) -> bytes:
        seen.add((level, index))
        return b"\x00" * 32

    fn(record)
    return seen


def frontier_coords(size: int) -> list[tuple[int, int]]:
    """The complete subtrees that make up a tree of ``size`` leaves, left to right."""
    coords: list[tuple[int, int]] = []
    start = 0
    for level in range(size.bit_length() - 1, -1, -1):
        if size >> level & 1:
            coords.append((level, start >> level))
            start += 1 << level
    return coords


def created_by(leaf_index: int) -> list[tuple[int, int]]:
    """The complete subtrees that appending leaf ``leaf_index`` creates, bottom up:
    the leaf itself, then one parent for each trailing 1 bit of the index."""
    top = ((leaf_index + 1) & -(leaf_index + 1)).bit_length() - 1
    return [(level, leaf_index >> level) for level in range(top + 1)]


def node_position(level: int, index: int) -> int:
    """Where the node ``(level, index)`` falls in the order appends create nodes
    (0, 1, 2, ...). A tree of ``n`` leaves has ``2n - popcount(n)`` nodes, all
    created by appending leaves ``0..n-1`` in that order, so a store keyed by this
    number only ever appends at its end."""
    last_leaf = ((index + 1) << level) - 1
    return 2 * last_leaf - last_leaf.bit_count() + level


class Frontier:
    """The right edge of the tree: enough state to append in O(log n).

    Appending returns the complete subtrees it created so the caller can store
    them; those are all later proofs will ever need.
    """

    __slots__ = ("size", "stack")

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        coords = frontier_coords(size)
        if len(coords) != len(hashes):
            raise ValueError("frontier hashes do not match the tree size")
        self.size = size
        self.stack: list[tuple[int, int, bytes]] = [
            (level, index, h) for (level, index), h in zip(coords, hashes, strict=True)
        ]

    def copy(self) -> Frontier:
        other = Frontier.__new__(Frontier)
        other.size = self.size
        other.stack = list(self.stack)
        return other

    def append(self, leaf_hash: bytes) -> list[tuple[int, int, bytes]]:
        created = [(0, self.size, leaf_hash)]
        stack = self.stack
        stack.append(created[0])
        while len(stack) >= 2 and stack[-1][0] == stack[-2][0]:
            level, _, right = stack.pop()
            _, left_index, left = stack.pop()
            parent = (level + 1, left_index >> 1, hash_children(left, right))
            stack.append(parent)
            created.append(parent)
        self.size += 1
        return created

    def extend(self, leaf_hashes: Iterable[bytes]) -> list[tuple[int, int, bytes]]:
        created: list[tuple[int, int, bytes]] = []
        for leaf in leaf_hashes:
            created.extend(self.append(leaf))
        return created

    def root(self) -> bytes:
        if not self.stack:
            return EMPTY_ROOT
        acc = self.stack[-1][2]
        for _, _, h in reversed(self.stack[:-1]):
            acc = hash_children(h, acc)
        return acc

    def hashes(self) -> list[bytes]:
        return [h for _, _, h in self.stack]


# --- verification (what a client runs; no storage, no trust in the server) ---


def root_from_inclusion_proof(index: int, size: int, leaf_hash: bytes, proof: Sequence[bytes]) -> bytes:
    """RFC 9162 section 2.1.3.2: recompute the root an inclusion proof implies."""
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is not in a tree of size {size}")
    fn, sn = index, size - 1
    r = leaf_hash
    for p in proof:
        if sn == 0:
            raise ProofError("inclusion proof is too long")
        if fn & 1 or fn == sn:
            r = hash_children(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = hash_children(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("inclusion proof is too short")
    return r


def verify_inclusion(index: int, size: int, leaf_hash: bytes, proof: Sequence[bytes], root: bytes) -> bool:
    try:
        return root_from_inclusion_proof(index, size, leaf_hash, proof) == root
    except ProofError:
        return False


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """RFC 9162 section 2.1.4.2."""
    if not 0 <= old_size <= new_size:
        return False
    if old_size == new_size:
        return old_root == new_root and not proof
    if old_size == 0:
        return not proof
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    if not path:
        return False
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = hash_children(c, fr)
            sr = hash_children(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = hash_children(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root
