"""Offline verifier for the ledger's evidence: every client is an auditor.

This module checks what a ledger server hands out (signed tree heads, inclusion
proofs for entries and transfers, consistency proofs between tree sizes) using
nothing but :mod:`hashlib`, :mod:`json` and the ``cryptography`` Ed25519 code.
It does not import :mod:`sardis_ledger.merkle`: RFC 9162 verification is
re-implemented here in a different shape (the proof decomposition of
transparency-dev/merkle rather than the RFC's bit-walking loop), so a bug in the
server's proof code cannot be mirrored by the same bug in the check. Copy this
file next to a client and it still works: the only package-relative import is
optional.

A :class:`TreeHeadTracker` keeps the last tree head a client verified in a small
JSON file and refuses any newer head that is not an append-only extension of it.
That is what turns a signature into tamper-evidence: a server that rewrites or
rolls back history cannot produce a consistency proof to a head the client
already holds.

Wire formats (all hashes are lowercase hex):

* signed tree head: ``{"origin", "tree_size", "root", "timestamp" (ms since the
  epoch), "key_id", "signature"}``; the signature covers :func:`tree_head_message`.
* public keyring: ``{"keys": [{"key_id", "public_key", "algorithm": "ed25519",
  "created_at", "retired_at"}], "current": key_id}``; ``key_id`` is the SHA-256
  of the raw 32-byte public key, so a key cannot be swapped under its id.
* inclusion bundle: ``{"tree_size", "root", "entries": [{"sequence",
  "leaf_index", "leaf", "leaf_hash", "inclusion_proof"}], "signed_tree_head",
  "consistency_proof"}``: entries proven in the tree of ``tree_size`` and that
  tree proven a prefix of the signed head.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

try:  # inside the package: one exception tree
    from .errors import ProofVerificationError as _ErrorBase
except ImportError:  # pragma: no cover - this file copied out of the package

    class _ErrorBase(ValueError):  # type: ignore[no-redef]
        def __init__(self, message: str, **details: Any) -> None:
            super().__init__(message)
            self.message = message
            self.details = details


__all__ = [
    "STH_CONTEXT",
    "PublicKeys",
    "SignedTreeHead",
    "TreeHeadTracker",
    "VerificationError",
    "VerifiedEntry",
    "key_id_of",
    "leaf_hash",
    "load_public_keys",
    "root_from_inclusion_proof",
    "tree_head_message",
    "verify_consistency",
    "verify_inclusion",
    "verify_inclusion_bundle",
    "verify_signed_tree_head",
]

STH_CONTEXT = b"sardis-ledger/sth/v1\n"
"""Domain separation: these signatures can never be mistaken for another message."""

PublicKeys = Mapping[str, Ed25519PublicKey]


class VerificationError(_ErrorBase):
    """A proof, signature or tree head does not verify. ``reason`` says which check."""

    def __init__(self, message: str, reason: str = "invalid", **details: Any) -> None:
        super().__init__(message, reason=reason, **details)
        self.reason = reason


# ------------------------------------------------------------------ hashing


def leaf_hash(data: bytes) -> bytes:
    """RFC 9162 leaf hash: SHA-256(0x00 || data)."""
    return hashlib.sha256(b"\x00" + data).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _unhex(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise VerificationError(f"{what} must be a hex string", "malformed")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise VerificationError(f"{what} is not valid hex", "malformed") from None
    if len(raw) != 32:
        raise VerificationError(f"{what} must be 32 bytes, got {len(raw)}", "malformed")
    return raw


def _hashes(values: object, what: str) -> list[bytes]:
    if not isinstance(values, (list, tuple)):
        raise VerificationError(f"{what} must be a list of hex hashes", "malformed")
    return [_unhex(v, what) for v in values]


def _int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise VerificationError(f"{what} must be a non-negative integer", "malformed")
    return value


# ------------------------------------------------ RFC 9162 proof verification
# The decomposition view: a proof for leaf ``index`` in a tree of ``size`` is an
# "inner" part (siblings below the level where the paths to ``index`` and to the
# last leaf part) followed by a "border" part (left siblings along the right
# border of the tree). Each part is a plain fold; no loop state is shared.


def _decompose(index: int, size: int) -> tuple[int, int]:
    inner = (index ^ (size - 1)).bit_length()
    border = bin(index >> inner).count("1")
    return inner, border


def _fold_inner(seed: bytes, proof: Sequence[bytes], index: int) -> bytes:
    for i, sibling in enumerate(proof):
        seed = _node(sibling, seed) if (index >> i) & 1 else _node(seed, sibling)
    return seed


def _fold_inner_right(seed: bytes, proof: Sequence[bytes], index: int) -> bytes:
    for i, sibling in enumerate(proof):
        if (index >> i) & 1:
            seed = _node(sibling, seed)
    return seed


def _fold_border(seed: bytes, proof: Sequence[bytes]) -> bytes:
    for sibling in proof:
        seed = _node(sibling, seed)
    return seed


def root_from_inclusion_proof(index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """The root that ``proof`` implies for leaf hash ``leaf`` at ``index`` of ``size``."""
    if not 0 <= index < size:
        raise VerificationError(f"leaf index {index} is outside a tree of size {size}", "index")
    inner, border = _decompose(index, size)
    if len(proof) != inner + border:
        raise VerificationError(
            f"inclusion proof has {len(proof)} hashes, a tree of {size} needs {inner + border}", "proof_length"
        )
    return _fold_border(_fold_inner(leaf, proof[:inner], index), proof[inner:])


def verify_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes) -> None:
    """Raise :class:`VerificationError` unless ``leaf`` is leaf ``index`` of the tree with ``root``."""
    if root_from_inclusion_proof(index, size, leaf, proof) != root:
        raise VerificationError(f"inclusion proof for leaf {index} does not reach the root of size {size}", "root")


def verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]) -> None:
    """Raise unless the tree (``old_size``, ``old_root``) is a prefix of (``new_size``, ``new_root``)."""
    if not 0 <= old_size <= new_size:
        raise VerificationError(f"tree size went from {old_size} to {new_size}", "rollback")
    if old_size == new_size:
        if proof:
            raise VerificationError("a proof between equal sizes must be empty", "proof_length")
        if old_root != new_root:
            raise VerificationError(f"two different roots for tree size {old_size}", "fork")
        return
    if old_size == 0:
        if proof:
            raise VerificationError("a proof from the empty tree must be empty", "proof_length")
        return
    if not proof:
        raise VerificationError("consistency proof is empty", "proof_length")
    inner, border = _decompose(old_size - 1, new_size)
    shift = (old_size & -old_size).bit_length() - 1  # trailing zero bits of old_size
    inner -= shift
    if old_size == 1 << shift:  # the old tree is a complete subtree: its root is the seed
        seed, rest = old_root, list(proof)
    else:
        seed, rest = proof[0], list(proof[1:])
    if len(rest) != inner + border:
        raise VerificationError("consistency proof has the wrong number of hashes", "proof_length")
    mask = (old_size - 1) >> shift
    rebuilt_old = _fold_border(_fold_inner_right(seed, rest[:inner], mask), rest[inner:])
    if rebuilt_old != old_root:
        raise VerificationError(f"consistency proof does not reproduce the root of size {old_size}", "fork")
    rebuilt_new = _fold_border(_fold_inner(seed, rest[:inner], mask), rest[inner:])
    if rebuilt_new != new_root:
        raise VerificationError(f"consistency proof does not reproduce the root of size {new_size}", "fork")


# --------------------------------------------------------- signed tree heads


def key_id_of(public_key: bytes) -> str:
    """Key id: SHA-256 of the raw 32-byte Ed25519 public key, hex."""
    return hashlib.sha256(public_key).hexdigest()


def tree_head_message(origin: str, tree_size: int, root: bytes, timestamp_ms: int) -> bytes:
    """The exact bytes an Ed25519 tree-head signature covers.

    ``context || len(origin) (2 bytes) || origin || tree_size (8) || root (32) ||
    timestamp_ms (8)``, integers big-endian. ``origin`` names the log (the
    ledger, or its audit store) so a head of one log is never valid for another.
    """
    o = origin.encode("utf-8")
    if len(o) > 0xFFFF or len(root) != 32:
        raise VerificationError("origin too long or root not 32 bytes", "malformed")
    return (
        STH_CONTEXT + len(o).to_bytes(2, "big") + o + tree_size.to_bytes(8, "big") + root
        + timestamp_ms.to_bytes(8, "big")
    )


@dataclass(frozen=True, slots=True)
class SignedTreeHead:
    """A log's size and root at a moment, signed by one of its keys."""

    origin: str
    tree_size: int
    root: str
    timestamp: int
    """Milliseconds since the Unix epoch (UTC) when the head was signed."""
    key_id: str
    signature: str

    @property
    def issued_at(self) -> datetime:
        return datetime.fromtimestamp(self.timestamp / 1000, UTC)

    def message(self) -> bytes:
        return tree_head_message(self.origin, self.tree_size, _unhex(self.root, "root"), self.timestamp)

    def to_dict(self) -> dict[str, Any]:
        return {
            "origin": self.origin,
            "tree_size": self.tree_size,
            "root": self.root,
            "timestamp": self.timestamp,
            "issued_at": self.issued_at.isoformat().replace("+00:00", "Z"),
            "key_id": self.key_id,
            "signature": self.signature,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, body: Mapping[str, Any]) -> SignedTreeHead:
        if not isinstance(body, Mapping):
            raise VerificationError("a signed tree head is a JSON object", "malformed")
        origin, key_id, sig = body.get("origin"), body.get("key_id"), body.get("signature")
        if not isinstance(origin, str) or not isinstance(key_id, str) or not isinstance(sig, str):
            raise VerificationError("signed tree head lacks origin, key_id or signature", "malformed")
        root = body.get("root")
        _unhex(root, "root")
        assert isinstance(root, str)
        return cls(origin, _int(body.get("tree_size"), "tree_size"), root.lower(),
                   _int(body.get("timestamp"), "timestamp"), key_id.lower(), sig.lower())


def load_public_keys(keyring: Mapping[str, Any]) -> dict[str, Ed25519PublicKey]:
    """Public keys by id from a published keyring; each id must match its key."""
    keys = keyring.get("keys") if isinstance(keyring, Mapping) else None
    if not isinstance(keys, list):
        raise VerificationError("a public keyring has a 'keys' list", "malformed")
    out: dict[str, Ed25519PublicKey] = {}
    for item in keys:
        if not isinstance(item, Mapping) or item.get("algorithm", "ed25519") != "ed25519":
            raise VerificationError("keyring entries must be Ed25519 keys", "malformed")
        raw = item.get("public_key")
        try:
            pub = bytes.fromhex(raw) if isinstance(raw, str) else b""
        except ValueError:
            pub = b""
        if len(pub) != 32:
            raise VerificationError("an Ed25519 public key is 32 bytes of hex", "malformed")
        kid = key_id_of(pub)
        if item.get("key_id") != kid:
            raise VerificationError(f"key id {item.get('key_id')!r} does not match its public key", "key_id")
        out[kid] = Ed25519PublicKey.from_public_bytes(pub)
    return out


def verify_signed_tree_head(sth: SignedTreeHead | Mapping[str, Any], keys: PublicKeys,
                            *, origin: str | None = None) -> SignedTreeHead:
    """Check a head's signature against the keyring (and its origin, if given); return it parsed."""
    head = sth if isinstance(sth, SignedTreeHead) else SignedTreeHead.from_dict(sth)
    if origin is not None and head.origin != origin:
        raise VerificationError(f"tree head is for log {head.origin!r}, expected {origin!r}", "origin")
    key = keys.get(head.key_id)
    if key is None:
        raise VerificationError(f"tree head is signed by unknown key {head.key_id[:16]}…", "unknown_key")
    try:
        signature = bytes.fromhex(head.signature)
    except ValueError:
        raise VerificationError("signature is not hex", "malformed") from None
    try:
        key.verify(signature, head.message())
    except InvalidSignature:
        raise VerificationError(f"bad signature on the tree head of size {head.tree_size}", "signature") from None
    return head


# --------------------------------------------------------- inclusion bundles


@dataclass(frozen=True, slots=True)
class VerifiedEntry:
    """An entry proven to be in a signed log: its sequence and canonical fields."""

    sequence: int
    leaf_index: int
    fields: Mapping[str, Any]
    tree_size: int
    signed_tree_head: SignedTreeHead


def verify_inclusion_bundle(bundle: Mapping[str, Any], keys: PublicKeys, *, origin: str | None = None,
                            tracker: TreeHeadTracker | None = None,
                            fetch_proof: Callable[[int, int], Sequence[str]] | None = None) -> list[VerifiedEntry]:
    """Verify an inclusion bundle end to end and return the proven entries.

    Checks: the head's signature; the consistency proof from ``tree_size`` to the
    signed head; each entry's leaf bytes against its hash, its sequence against
    its position, and its inclusion proof against the root of ``tree_size``.
    With a ``tracker``, the signed head must also extend the head it holds (a
    larger head needs ``fetch_proof``, as in :meth:`TreeHeadTracker.update`), and
    the tracker moves on to it once everything else checks.
    """
    if not isinstance(bundle, Mapping):
        raise VerificationError("an inclusion bundle is a JSON object", "malformed")
    sth = verify_signed_tree_head(bundle.get("signed_tree_head") or {}, keys, origin=origin)
    size = _int(bundle.get("tree_size"), "tree_size")
    root = _unhex(bundle.get("root"), "root")
    if size > sth.tree_size:
        raise VerificationError(f"proof is for size {size}, beyond the signed head {sth.tree_size}", "tree_size")
    verify_consistency(size, sth.tree_size, root, _unhex(sth.root, "signed root"),
                       _hashes(bundle.get("consistency_proof", []), "consistency proof"))
    entries = bundle.get("entries")
    if not isinstance(entries, list) or not entries:
        raise VerificationError("bundle has no entries", "malformed")
    out = []
    for item in entries:
        if not isinstance(item, Mapping):
            raise VerificationError("bundle entries are JSON objects", "malformed")
        index = _int(item.get("leaf_index"), "leaf_index")
        text = item.get("leaf")
        if not isinstance(text, str):
            raise VerificationError("entry has no leaf text", "malformed")
        data = text.encode("utf-8")
        lh = leaf_hash(data)
        if "leaf_hash" in item and _unhex(item.get("leaf_hash"), "leaf_hash") != lh:
            raise VerificationError(f"leaf {index}: bytes do not hash to the stated leaf hash", "leaf")
        try:
            fields = json.loads(text)
        except ValueError:
            raise VerificationError(f"leaf {index} is not JSON", "leaf") from None
        seq = fields.get("sequence") if isinstance(fields, dict) else None
        if seq != index + 1 or item.get("sequence", seq) != seq:
            raise VerificationError(f"leaf {index} claims sequence {seq!r}; its position is {index + 1}", "leaf")
        verify_inclusion(index, size, lh, _hashes(item.get("inclusion_proof"), "inclusion proof"), root)
        out.append(VerifiedEntry(seq, index, fields, size, sth))
    if tracker is not None:
        tracker.update(sth, fetch_proof)
    return out


# ------------------------------------------------------------ the auditor


class TreeHeadTracker:
    """The last tree head this client verified, kept in a JSON file (or memory).

    :meth:`update` accepts a new head only if its signature checks and the log
    it describes extends the held one: same size means the same root; larger
    means a consistency proof from the held head verifies; smaller is a rollback
    and is refused. The first head is trusted on first use, as with SSH host keys.
    """

    def __init__(self, path: str | os.PathLike[str] | None, keys: PublicKeys, *, origin: str | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.keys = keys
        self.origin = origin
        self._head: SignedTreeHead | None = None
        if self.path is not None and self.path.exists():
            try:
                body = json.loads(self.path.read_text())
            except (OSError, ValueError) as exc:
                raise VerificationError(f"cannot read the held tree head {self.path}: {exc}", "state") from None
            self._head = verify_signed_tree_head(body, keys, origin=origin)

    @property
    def head(self) -> SignedTreeHead | None:
        return self._head

    def check(self, new: SignedTreeHead | Mapping[str, Any],
              fetch_proof: Callable[[int, int], Sequence[str]] | None = None) -> SignedTreeHead:
        """Verify ``new`` against the held head without storing it."""
        head = verify_signed_tree_head(new, self.keys, origin=self.origin)
        held = self._head
        if held is None:
            return head
        if head.tree_size < held.tree_size:
            raise VerificationError(
                f"server presents tree size {head.tree_size}, but this client already verified size "
                f"{held.tree_size}: the log was rolled back", "rollback",
                held_size=held.tree_size, new_size=head.tree_size,
            )
        if head.tree_size == held.tree_size:
            if head.root != held.root:
                raise VerificationError(f"two different roots for tree size {head.tree_size}: history was rewritten",
                                        "fork", held_size=held.tree_size)
            return head
        if fetch_proof is None:
            raise VerificationError("a consistency proof is needed to move to a larger tree", "proof_length")
        proof = _hashes(list(fetch_proof(held.tree_size, head.tree_size)), "consistency proof")
        verify_consistency(held.tree_size, head.tree_size, _unhex(held.root, "held root"),
                           _unhex(head.root, "new root"), proof)
        return head

    def update(self, new: SignedTreeHead | Mapping[str, Any],
               fetch_proof: Callable[[int, int], Sequence[str]] | None = None) -> SignedTreeHead:
        """Verify ``new`` (see :meth:`check`) and hold it from now on."""
        head = self.check(new, fetch_proof)
        if self._head is None or head.tree_size > self._head.tree_size:
            self._head = head
            self._save(head)
        return head

    def _save(self, head: SignedTreeHead) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".sth-", suffix=".json")
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(head.to_json())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
