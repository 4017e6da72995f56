"""Immutable records of the ledger: what callers get back, never live views.

Entries are frozen; a correction is a new entry that names what it reverses.
``canonical_bytes`` is the leaf a receipt proves: a stable JSON encoding of every
field that matters, so an independent verifier can rebuild the leaf hash from
the entry alone.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from . import merkle

__all__ = [
    "DEFAULT_ASSET",
    "Account",
    "Asset",
    "BalanceSnapshot",
    "EntrySpec",
    "LazyBatch",
    "LazyReceipt",
    "LedgerBatch",
    "LedgerEntry",
    "LedgerEntryType",
    "Page",
    "Receipt",
    "TreeHead",
    "VerifyReport",
]


class LedgerEntryType(StrEnum):
    """Direction of an entry on its account."""

    CREDIT = "credit"
    DEBIT = "debit"


@dataclass(frozen=True, slots=True)
class Asset:
    code: str
    scale: int


DEFAULT_ASSET = Asset("TOKEN", 6)


@dataclass(frozen=True, slots=True)
class Account:
    account_id: str
    asset: str
    balance: Decimal
    overdraft_limit: Decimal
    metadata: Mapping[str, Any]
    created_at: datetime

    @property
    def floor(self) -> Decimal:
        return -self.overdraft_limit

    def to_dict(self) -> dict[str, Any]:
        return {
            "account_id": self.account_id,
            "asset": self.asset,
            "balance": _plain(self.balance),
            "overdraft_limit": _plain(self.overdraft_limit),
            "metadata": dict(self.metadata),
            "created_at": _iso(self.created_at),
        }


@dataclass(frozen=True, slots=True)
class EntrySpec:
    """One leg of a batch, as a caller describes it (amounts already validated)."""

    account_id: str
    amount: Decimal
    entry_type: LedgerEntryType
    reference: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    asset: str | None = None


@dataclass(frozen=True, slots=True)
class Receipt:
    """Evidence that an entry is leaf ``leaf_index`` of the tree of ``tree_size``
    leaves whose root is ``root``. Check it with :meth:`verify` or with
    :mod:`sardis_ledger.verifier` without trusting the server."""

    leaf_index: int
    tree_size: int
    leaf_hash: str
    root: str
    inclusion_proof: tuple[str, ...]

    def verify(self, leaf_data: bytes | None = None) -> bool:
        leaf = bytes.fromhex(self.leaf_hash)
        if leaf_data is not None and merkle.hash_leaf(leaf_data) != leaf:
            return False
        return merkle.verify_inclusion(
            self.leaf_index,
            self.tree_size,
            leaf,
            [bytes.fromhex(p) for p in self.inclusion_proof],
            bytes.fromhex(self.root),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "leaf_index": self.leaf_index,
            "tree_size": self.tree_size,
            "leaf_hash": self.leaf_hash,
            "root": self.root,
            "inclusion_proof": list(self.inclusion_proof),
        }


_PROOF_SLOT = Receipt.__dict__["inclusion_proof"]
_LEAF_HASH_SLOT = Receipt.__dict__["leaf_hash"]


class LazyReceipt(Receipt):
    """A :class:`Receipt` whose leaf hash text and audit path are produced on first
    read. Bulk writes return thousands of entries per commit and most callers never
    look at their proofs; building each path eagerly cost more than the write.
    It compares, hashes, prints and pickles exactly like the eager receipt with the
    same values (the proof is deterministic: stored nodes never change)."""

    __slots__ = ("_leaf_digest", "_prover")
    _leaf_digest: bytes
    _prover: Callable[[int], tuple[str, ...]]

    def __init__(
        self, leaf_index: int, tree_size: int, root: str, leaf_digest: bytes, prover: Callable[[int], tuple[str, ...]]
    ) -> None:
        object.__setattr__(self, "leaf_index", leaf_index)
        object.__setattr__(self, "tree_size", tree_size)
        object.__setattr__(self, "root", root)
        object.__setattr__(self, "_leaf_digest", leaf_digest)
        object.__setattr__(self, "_prover", prover)

    @property
    def leaf_hash(self) -> str:
        try:
            value: str = _LEAF_HASH_SLOT.__get__(self)
        except AttributeError:
            value = self._leaf_digest.hex()
            _LEAF_HASH_SLOT.__set__(self, value)
        return value

    @property
    def inclusion_proof(self) -> tuple[str, ...]:
        try:
            value: tuple[str, ...] = _PROOF_SLOT.__get__(self)
        except AttributeError:
            value = self._prover(self.leaf_index)
            _PROOF_SLOT.__set__(self, value)
        return value

    def resolved(self) -> Receipt:
        return Receipt(self.leaf_index, self.tree_size, self.leaf_hash, self.root, self.inclusion_proof)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Receipt):
            return _receipt_fields(self) == _receipt_fields(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(_receipt_fields(self))

    def __repr__(self) -> str:
        return repr(self.resolved())

    def __reduce__(self) -> tuple[Any, ...]:
        return (Receipt, _receipt_fields(self))


def _receipt_fields(r: Receipt) -> tuple[int, int, str, str, tuple[str, ...]]:
    return (r.leaf_index, r.tree_size, r.leaf_hash, r.root, r.inclusion_proof)


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    entry_id: str
    sequence: int
    batch_id: str
    account_id: str
    asset: str
    amount: Decimal
    entry_type: LedgerEntryType
    running_balance: Decimal
    created_at: datetime
    reference: str | None
    metadata: Mapping[str, Any]
    reverses: str | None
    leaf: bytes
    receipt: Receipt | None = None

    @property
    def merkle_root(self) -> str | None:
        return self.receipt.root if self.receipt else None

    @property
    def leaf_hash(self) -> str:
        return merkle.hash_leaf(self.leaf).hex()

    def canonical_bytes(self) -> bytes:
        return self.leaf

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "entry_id": self.entry_id,
            "sequence": self.sequence,
            "batch_id": self.batch_id,
            "account_id": self.account_id,
            "asset": self.asset,
            "amount": _plain(self.amount),
            "entry_type": self.entry_type.value,
            "running_balance": _plain(self.running_balance),
            "created_at": _iso(self.created_at),
            "reference": self.reference,
            "metadata": dict(self.metadata),
            "reverses": self.reverses,
            "leaf": self.leaf.decode(),
        }
        if self.receipt is not None:
            out["receipt"] = self.receipt.to_dict()
        return out


@dataclass(frozen=True, slots=True)
class LedgerBatch:
    batch_id: str
    entries: tuple[LedgerEntry, ...]
    created_at: datetime
    reverses: str | None = None
    reason: str | None = None
    idempotency_key: str | None = None
    replayed: bool = False
    """True when this result was returned for a retried idempotency key."""

    @property
    def merkle_root(self) -> str | None:
        return self.entries[-1].merkle_root if self.entries else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch_id": self.batch_id,
            "created_at": _iso(self.created_at),
            "reverses": self.reverses,
            "reason": self.reason,
            "idempotency_key": self.idempotency_key,
            "entries": [e.to_dict() for e in self.entries],
        }


_ENTRIES_SLOT = LedgerBatch.__dict__["entries"]


class LazyBatch(LedgerBatch):
    """A :class:`LedgerBatch` whose entries are built on first read.

    A bulk write (``transfer_many``, ``post_many``) returns one batch per transfer;
    building every entry object up front cost a fifth of the write, and bulk callers
    mostly keep only the batch ids. The entries are made from the committed rows
    the write already holds, so reading them later gives exactly what eager
    construction would have. Compares, hashes, prints and pickles as a LedgerBatch."""

    __slots__ = ("_build",)
    _build: Callable[[], tuple[LedgerEntry, ...]]

    def __init__(
        self,
        batch_id: str,
        build: Callable[[], tuple[LedgerEntry, ...]],
        created_at: datetime,
        reverses: str | None = None,
        reason: str | None = None,
        idempotency_key: str | None = None,
        replayed: bool = False,
    ) -> None:
        object.__setattr__(self, "batch_id", batch_id)
        object.__setattr__(self, "created_at", created_at)
        object.__setattr__(self, "reverses", reverses)
        object.__setattr__(self, "reason", reason)
        object.__setattr__(self, "idempotency_key", idempotency_key)
        object.__setattr__(self, "replayed", replayed)
        object.__setattr__(self, "_build", build)

    @property
    def entries(self) -> tuple[LedgerEntry, ...]:
        try:
            value: tuple[LedgerEntry, ...] = _ENTRIES_SLOT.__get__(self)
        except AttributeError:
            value = self._build()
            _ENTRIES_SLOT.__set__(self, value)
        return value

    def resolved(self) -> LedgerBatch:
        return LedgerBatch(*_batch_fields(self))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, LedgerBatch):
            return _batch_fields(self) == _batch_fields(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(_batch_fields(self))

    def __repr__(self) -> str:
        return repr(self.resolved())

    def __reduce__(self) -> tuple[Any, ...]:
        return (LedgerBatch, _batch_fields(self))


def _batch_fields(b: LedgerBatch) -> tuple[Any, ...]:
    return (b.batch_id, b.entries, b.created_at, b.reverses, b.reason, b.idempotency_key, b.replayed)


@dataclass(frozen=True, slots=True)
class TreeHead:
    tree_size: int
    root: str
    timestamp: datetime

    def to_dict(self) -> dict[str, Any]:
        return {"tree_size": self.tree_size, "root": self.root, "timestamp": _iso(self.timestamp)}


@dataclass(frozen=True, slots=True)
class BalanceSnapshot:
    """All balances as of ``sequence`` (the first ``sequence`` entries of the log)."""

    sequence: int
    balances: Mapping[str, Decimal]
    assets: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a listing; pass ``next_cursor`` back to continue."""

    items: tuple[LedgerEntry, ...]
    next_cursor: int | None


@dataclass(slots=True)
class VerifyReport:
    ok: bool = True
    entries_checked: int = 0
    tree_size: int = 0
    root: str = ""
    first_bad_sequence: int | None = None
    problems: list[str] = field(default_factory=list)

    def fail(self, message: str, sequence: int | None = None) -> None:
        self.ok = False
        if sequence is not None and (self.first_bad_sequence is None or sequence < self.first_bad_sequence):
            self.first_bad_sequence = sequence
        if len(self.problems) < 100:
            self.problems.append(message)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "entries_checked": self.entries_checked,
            "tree_size": self.tree_size,
            "root": self.root,
            "first_bad_sequence": self.first_bad_sequence,
            "problems": list(self.problems),
        }


def _plain(value: Decimal) -> str:
    """Decimal text without exponent notation, as in the entry's leaf (``1E-8`` -> ``0.00000001``)."""
    return format(value, "f")


def _iso(ts: datetime) -> str:
    """The ledger's one timestamp form (as in leaves): UTC, microseconds, ``Z``."""
    if ts.tzinfo is not None:
        ts = ts.astimezone(UTC)
    return ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical_json(value: Any) -> str:
    """Deterministic JSON (sorted keys, no spaces, ASCII, no NaN) used for leaves and hashes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
