"""The standalone verifier: RFC 9162 vectors, rejection of bad proofs, agreement with
the ledger's own Merkle code, signed tree heads, and the client's head tracker."""

from __future__ import annotations

import ast
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rfc9162_vectors import CONSISTENCY, INCLUSION, LEAVES, ROOTS
from sardis_ledger import merkle, verifier
from sardis_ledger.errors import ProofVerificationError
from sardis_ledger.signing import Keyring
from sardis_ledger.verifier import SignedTreeHead, TreeHeadTracker, VerificationError


def h(values: list[str]) -> list[bytes]:
    return [bytes.fromhex(v) for v in values]


def root(n: int) -> bytes:
    return bytes.fromhex(ROOTS[n])


def flip(b: bytes) -> bytes:
    return bytes([b[0] ^ 1]) + b[1:]


# ----------------------------------------------------------------- vectors


@pytest.mark.parametrize(("index", "size"), sorted(INCLUSION))
def test_inclusion_vectors_verify(index: int, size: int) -> None:
    leaf = verifier.leaf_hash(LEAVES[index])
    verifier.verify_inclusion(index, size, leaf, h(INCLUSION[(index, size)]), root(size))


@pytest.mark.parametrize(("index", "size"), [k for k in sorted(INCLUSION) if INCLUSION[k]])
def test_inclusion_rejects_every_corruption(index: int, size: int) -> None:
    leaf = verifier.leaf_hash(LEAVES[index])
    proof = h(INCLUSION[(index, size)])
    for i in range(len(proof)):
        bad = list(proof)
        bad[i] = flip(bad[i])
        with pytest.raises(VerificationError):
            verifier.verify_inclusion(index, size, leaf, bad, root(size))
    with pytest.raises(VerificationError, match="hashes"):
        verifier.verify_inclusion(index, size, leaf, [*proof, proof[0]], root(size))
    with pytest.raises(VerificationError, match="hashes"):
        verifier.verify_inclusion(index, size, leaf, proof[:-1], root(size))
    with pytest.raises(VerificationError, match="outside"):
        verifier.verify_inclusion(size, size, leaf, proof, root(size))
    with pytest.raises(VerificationError):
        verifier.verify_inclusion(index, size, flip(leaf), proof, root(size))
    with pytest.raises(VerificationError):
        verifier.verify_inclusion(index, size, leaf, proof, flip(root(size)))


def test_leaf_hash_vector() -> None:
    assert verifier.leaf_hash(b"L123456").hex() == "395aa064aa4c29f7010acfe3f25db9485bbd4b91897b6ad7ad547639252b4d56"


def test_proof_alone_does_not_pin_the_size() -> None:
    """Leaf 0's path of size 8 also verifies as size 7 against the same root:
    the size must come from the signed head, which the bundle check enforces."""
    leaf = verifier.leaf_hash(LEAVES[0])
    verifier.verify_inclusion(0, 7, leaf, h(INCLUSION[(0, 8)]), root(8))


@pytest.mark.parametrize(("old", "new"), sorted(CONSISTENCY))
def test_consistency_vectors_verify_and_reject(old: int, new: int) -> None:
    proof = h(CONSISTENCY[(old, new)])
    verifier.verify_consistency(old, new, root(old), root(new), proof)
    with pytest.raises(VerificationError):
        verifier.verify_consistency(old, new, root(new), root(old), proof)  # swapped roots
    for i in range(len(proof)):
        bad = list(proof)
        bad[i] = flip(bad[i])
        with pytest.raises(VerificationError):
            verifier.verify_consistency(old, new, root(old), root(new), bad)
    with pytest.raises(VerificationError):
        verifier.verify_consistency(old, new, root(old), root(new), [*proof, proof[0]])
    with pytest.raises(VerificationError):
        verifier.verify_consistency(old, new, root(old), root(new), proof[:-1])
    with pytest.raises(VerificationError, match=r"rollback|size"):
        verifier.verify_consistency(new, old, root(new), root(old), proof)


def test_consistency_edge_cases() -> None:
    verifier.verify_consistency(0, 5, merkle.EMPTY_ROOT, root(5), [])
    verifier.verify_consistency(5, 5, root(5), root(5), [])
    with pytest.raises(VerificationError, match="different roots") as info:
        verifier.verify_consistency(5, 5, root(5), root(6), [])
    assert info.value.reason == "fork"
    with pytest.raises(VerificationError):
        verifier.verify_consistency(5, 5, root(5), root(5), [root(1)])
    with pytest.raises(VerificationError):
        verifier.verify_consistency(0, 5, merkle.EMPTY_ROOT, root(5), [root(1)])
    with pytest.raises(VerificationError, match="empty"):
        verifier.verify_consistency(3, 5, root(3), root(5), [])


# ---------------------------------------------- agreement with the ledger's code


def _tree(n: int, salt: bytes = b"") -> dict[tuple[int, int], bytes]:
    frontier = merkle.Frontier()
    nodes: dict[tuple[int, int], bytes] = {}
    for i in range(n):
        for level, index, value in frontier.append(merkle.hash_leaf(salt + i.to_bytes(4, "big"))):
            nodes[(level, index)] = value
    return nodes


def test_every_proof_the_ledger_makes_verifies_independently() -> None:
    """All inclusion and consistency proofs of trees up to 40 leaves, produced by
    sardis_ledger.merkle, check under this independent implementation."""
    nodes = _tree(40)

    def get(level: int, index: int) -> bytes:
        return nodes[(level, index)]

    for size in range(1, 41):
        r = merkle.tree_root(size, get)
        for index in range(size):
            verifier.verify_inclusion(index, size, nodes[(0, index)], merkle.inclusion_proof(index, size, get), r)
        for old in range(0, size + 1):
            verifier.verify_consistency(old, size, merkle.tree_root(old, get), r,
                                        merkle.consistency_proof(old, size, get))


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 300), st.data())
def test_verifiers_agree_on_random_proofs(size: int, data: st.DataObject) -> None:
    nodes = _tree(size)

    def get(level: int, index: int) -> bytes:
        return nodes[(level, index)]

    index = data.draw(st.integers(0, size - 1))
    proof = merkle.inclusion_proof(index, size, get)
    r = merkle.tree_root(size, get)
    corrupt = data.draw(st.booleans())
    if proof and corrupt:
        i = data.draw(st.integers(0, len(proof) - 1))
        proof[i] = flip(proof[i])
    ours = merkle.verify_inclusion(index, size, nodes[(0, index)], proof, r)
    try:
        verifier.verify_inclusion(index, size, nodes[(0, index)], proof, r)
        theirs = True
    except VerificationError:
        theirs = False
    assert ours == theirs


def test_verifier_does_not_share_code_with_the_ledger() -> None:
    """An independent check: the module imports only the standard library, the
    cryptography package and (optionally) the error tree."""
    tree = ast.parse(Path(verifier.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(("." * node.level) + (node.module or ""))
    assert imported <= {"__future__", "hashlib", "json", "os", "tempfile", "collections.abc", "dataclasses",
                        "datetime", "pathlib", "typing", "cryptography.exceptions",
                        "cryptography.hazmat.primitives.asymmetric.ed25519", ".errors"}, imported


def test_verifier_runs_copied_out_of_the_package(tmp_path: Path) -> None:
    shutil.copy(verifier.__file__, tmp_path / "standalone_verifier.py")
    spec = importlib.util.spec_from_file_location("standalone_verifier", tmp_path / "standalone_verifier.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["standalone_verifier"] = module
    try:
        spec.loader.exec_module(module)
        module.verify_inclusion(5, 8, module.leaf_hash(LEAVES[5]), h(INCLUSION[(5, 8)]), root(8))
        with pytest.raises(module.VerificationError) as info:
            module.verify_consistency(6, 8, root(6), root(7), h(CONSISTENCY[(6, 8)]))
        assert not isinstance(info.value, ProofVerificationError)  # its own fallback base
    finally:
        del sys.modules["standalone_verifier"]


# ------------------------------------------------------------ signed heads


@pytest.fixture
def keyring(tmp_path: Path) -> Keyring:
    return Keyring(tmp_path / "keys")


def test_signed_head_round_trip_and_tampering(keyring: Keyring) -> None:
    sth = keyring.sign_tree_head("sardis-ledger", 8, root(8))
    keys = verifier.load_public_keys(json.loads(json.dumps(keyring.public_keyring())))
    parsed = SignedTreeHead.from_dict(json.loads(sth.to_json()))
    assert verifier.verify_signed_tree_head(parsed, keys, origin="sardis-ledger") == sth
    body = sth.to_dict()
    for name, value in (("tree_size", 7), ("root", ROOTS[7]), ("timestamp", sth.timestamp + 1),
                        ("signature", "00" * 64)):
        with pytest.raises(VerificationError) as info:
            verifier.verify_signed_tree_head({**body, name: value}, keys)
        assert info.value.reason == "signature"
    with pytest.raises(VerificationError, match="log"):
        verifier.verify_signed_tree_head(sth, keys, origin="sardis-audit")
    with pytest.raises(VerificationError) as info:
        verifier.verify_signed_tree_head({**body, "key_id": "ab" * 32}, keys)
    assert info.value.reason == "unknown_key"
    with pytest.raises(VerificationError, match=r"malformed|hex|integer|lacks"):
        verifier.verify_signed_tree_head({**body, "tree_size": "8"}, keys)


def test_keyring_ids_must_match_their_keys(keyring: Keyring) -> None:
    public = keyring.public_keyring()
    public["keys"][0]["key_id"] = "cd" * 32
    with pytest.raises(VerificationError, match="does not match"):
        verifier.load_public_keys(public)


# ------------------------------------------------------------ the client


def _log_heads(keyring: Keyring, sizes: list[int]) -> tuple[dict[tuple[int, int], bytes], list[SignedTreeHead]]:
    nodes = _tree(max(sizes))
    heads = []
    for size in sizes:
        r = merkle.tree_root(size, lambda lv, ix: nodes[(lv, ix)])
        heads.append(keyring.sign_tree_head("sardis-ledger", size, r))
    return nodes, heads


def test_tracker_accepts_consistent_heads_and_remembers_them(keyring: Keyring, tmp_path: Path) -> None:
    nodes, (h3, h9, h20) = _log_heads(keyring, [3, 9, 20])

    def proof(old: int, new: int) -> list[str]:
        return [p.hex() for p in merkle.consistency_proof(old, new, lambda lv, ix: nodes[(lv, ix)])]

    keys = keyring.public_keys()
    state = tmp_path / "client" / "head.json"
    client = TreeHeadTracker(state, keys, origin="sardis-ledger")
    assert client.head is None
    client.update(h3)  # trust on first use
    client.update(h9, proof)
    assert TreeHeadTracker(state, keys).head == h9  # kept across restarts
    again = TreeHeadTracker(state, keys, origin="sardis-ledger")
    again.update(h9)  # same head: no proof needed
    again.update(h20.to_dict(), proof)
    assert TreeHeadTracker(state, keys).head == h20


def test_tracker_refuses_rollback_fork_and_bad_proofs(keyring: Keyring, tmp_path: Path) -> None:
    nodes, (h5, h8) = _log_heads(keyring, [5, 8])
    other_nodes = _tree(9, salt=b"other history")
    fork = keyring.sign_tree_head("sardis-ledger", 8, merkle.tree_root(8, lambda lv, ix: other_nodes[(lv, ix)]))
    client = TreeHeadTracker(tmp_path / "h.json", keyring.public_keys())
    client.update(h8)
    with pytest.raises(VerificationError) as info:
        client.update(h5)
    assert info.value.reason == "rollback"
    with pytest.raises(VerificationError) as info:
        client.update(fork)
    assert info.value.reason == "fork"
    bigger = keyring.sign_tree_head("sardis-ledger", 9, merkle.tree_root(9, lambda lv, ix: other_nodes[(lv, ix)]))
    for history, top in ((nodes, 8), (other_nodes, 9)):  # neither history links the held head to the new one

        def proof(old: int, new: int, hist: dict[tuple[int, int], bytes] = history, top: int = top) -> list[str]:
            return [p.hex() for p in merkle.consistency_proof(old, min(new, top), lambda lv, ix: hist[(lv, ix)])]

        with pytest.raises(VerificationError) as info:
            client.update(bigger, proof)
        assert info.value.reason in ("fork", "proof_length")
    with pytest.raises(VerificationError, match="consistency proof is needed"):
        client.update(bigger)
    assert TreeHeadTracker(tmp_path / "h.json", keyring.public_keys()).head == h8
    forged = {**h8.to_dict(), "root": h5.root}
    with pytest.raises(VerificationError, match="signature"):
        client.update(forged)


def test_tracker_refuses_a_tampered_state_file(keyring: Keyring, tmp_path: Path) -> None:
    _, (h4,) = _log_heads(keyring, [4])
    path = tmp_path / "h.json"
    TreeHeadTracker(path, keyring.public_keys()).update(h4)
    body = json.loads(path.read_text())
    body["tree_size"] = 3
    path.write_text(json.dumps(body))
    with pytest.raises(VerificationError, match="signature"):
        TreeHeadTracker(path, keyring.public_keys())
