"""RFC 9162 tree hash and proofs against the standard vectors, and tampering."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rfc9162_vectors import CONSISTENCY, INCLUSION, LEAVES, ROOTS
from sardis_ledger import merkle


def build(leaves: list[bytes]) -> tuple[merkle.Frontier, dict[tuple[int, int], bytes]]:
    frontier = merkle.Frontier()
    nodes: dict[tuple[int, int], bytes] = {}
    for leaf in leaves:
        for level, index, h in frontier.append(merkle.hash_leaf(leaf)):
            nodes[(level, index)] = h
    return frontier, nodes


FRONTIER, NODES = build(LEAVES)


def get(level: int, index: int) -> bytes:
    return NODES[(level, index)]


def root(n: int) -> bytes:
    return bytes.fromhex(ROOTS[n])


def test_hasher_vector() -> None:
    assert merkle.hash_leaf(b"L123456").hex() == "395aa064aa4c29f7010acfe3f25db9485bbd4b91897b6ad7ad547639252b4d56"
    assert hashlib.sha256(b"").digest() == merkle.EMPTY_ROOT


@pytest.mark.parametrize("n", range(9))
def test_roots(n: int) -> None:
    assert merkle.tree_root(n, get).hex() == ROOTS[n]
    frontier, _ = build(LEAVES[:n])
    assert frontier.root().hex() == ROOTS[n]


@pytest.mark.parametrize(("index", "size"), sorted(INCLUSION))
def test_inclusion_vectors(index: int, size: int) -> None:
    proof = merkle.inclusion_proof(index, size, get)
    assert [p.hex() for p in proof] == INCLUSION[(index, size)]
    assert merkle.verify_inclusion(index, size, merkle.hash_leaf(LEAVES[index]), proof, root(size))


@pytest.mark.parametrize(("old", "new"), sorted(CONSISTENCY))
def test_consistency_vectors(old: int, new: int) -> None:
    proof = merkle.consistency_proof(old, new, get)
    assert [p.hex() for p in proof] == CONSISTENCY[(old, new)]
    assert merkle.verify_consistency(old, new, root(old), root(new), proof)


@pytest.mark.parametrize(("index", "size"), [k for k in sorted(INCLUSION) if INCLUSION[k]])
def test_inclusion_rejects_tampering(index: int, size: int) -> None:
    leaf = merkle.hash_leaf(LEAVES[index])
    proof = [bytes.fromhex(h) for h in INCLUSION[(index, size)]]
    assert not merkle.verify_inclusion(size, size, leaf, proof, root(size))  # index >= size
    assert not merkle.verify_inclusion(index, size, leaf, [*proof, proof[0]], root(size))  # one too long
    assert not merkle.verify_inclusion(index, size, leaf, proof[:-1], root(size))  # one too short
    for i in range(len(proof)):
        for bit in (0, 7, 255):
            bad = list(proof)
            flipped = bytearray(bad[i])
            flipped[bit // 8] ^= 1 << (bit % 8)
            bad[i] = bytes(flipped)
            assert not merkle.verify_inclusion(index, size, leaf, bad, root(size))
    assert not merkle.verify_inclusion(index, size, merkle.hash_leaf(b"other"), proof, root(size))


@pytest.mark.parametrize(("old", "new"), sorted(CONSISTENCY))
def test_consistency_rejects_tampering(old: int, new: int) -> None:
    proof = [bytes.fromhex(h) for h in CONSISTENCY[(old, new)]]
    assert not merkle.verify_consistency(old, new, root(new), root(old), proof)  # swapped roots
    assert not merkle.verify_consistency(old, new, root(old), root(new), proof[:-1])
    assert not merkle.verify_consistency(old, new, root(old), root(new), [*proof, proof[0]])
    for i in range(len(proof)):
        bad = list(proof)
        bad[i] = bytes([bad[i][0] ^ 1]) + bad[i][1:]
        assert not merkle.verify_consistency(old, new, root(old), root(new), bad)


def test_proof_alone_does_not_pin_size() -> None:
    # Documented in merkle_vectors.md: leaf 0's path in a tree of 8 also verifies as size 7.
    proof = merkle.inclusion_proof(0, 8, get)
    assert merkle.verify_inclusion(0, 7, merkle.hash_leaf(LEAVES[0]), proof, root(8))


def test_out_of_range_requests_raise() -> None:
    with pytest.raises(merkle.ProofError):
        merkle.inclusion_proof(8, 8, get)
    with pytest.raises(merkle.ProofError):
        merkle.consistency_proof(5, 3, get)


def reference_root(leaves: list[bytes]) -> bytes:
    """Direct recursive definition from RFC 9162, for cross-checking."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return merkle.hash_leaf(leaves[0])
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return merkle.hash_children(reference_root(leaves[:k]), reference_root(leaves[k:]))


@given(st.lists(st.binary(max_size=8), min_size=1, max_size=70), st.data())
def test_random_trees(leaves: list[bytes], data: st.DataObject) -> None:
    frontier, nodes = build(leaves)
    n = len(leaves)
    assert frontier.root() == reference_root(leaves)
    size = data.draw(st.integers(1, n))
    index = data.draw(st.integers(0, size - 1))
    getter = lambda lv, ix: nodes[(lv, ix)]  # noqa: E731
    r = reference_root(leaves[:size])
    path = merkle.inclusion_proof(index, size, getter)
    assert merkle.verify_inclusion(index, size, merkle.hash_leaf(leaves[index]), path, r)
    old = data.draw(st.integers(0, size))
    proof = merkle.consistency_proof(old, size, getter)
    assert merkle.verify_consistency(old, size, reference_root(leaves[:old]), r, proof)
    # a frontier rebuilt from stored nodes continues identically
    resumed = merkle.Frontier(size, [nodes[c] for c in merkle.frontier_coords(size)])
    resumed.extend(merkle.hash_leaf(x) for x in leaves[size:])
    assert resumed.root() == frontier.root()
