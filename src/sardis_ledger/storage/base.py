"""The storage contract every backend implements.

The engine owns all ledger semantics (validation, floors, Merkle appends,
idempotency, checkpoints); a backend only stores rows and provides one thing the
engine cannot: a transaction that serialises conflicting writers, across threads
and processes, and is all-or-nothing across crashes. ``Transaction`` lists the
reads and writes the engine needs; rows are plain :mod:`sardis_ledger.records`.

Rules a backend must keep (the conformance suite checks them):

* ``write=True`` transactions that touch the tree head are serialised: two never
  both read the same head and commit (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL:
  the head row ``FOR UPDATE``).
* Entries, batches, nodes and checkpoints are insert-only.
* Leaving the context without an exception commits durably; an exception rolls
  everything back.
* Library errors are translated at the boundary: a transient failure (deadlock,
  serialization failure, busy database, lost connection) is
  :class:`~sardis_ledger.errors.RetryableStorageError`, which the engine retries
  (batch ids are fixed before the first attempt, so a retry after an unknown
  commit outcome finds its batch instead of writing it twice); anything else is
  :class:`~sardis_ledger.errors.StorageError`.

``insert_batches`` and ``nodes_created_by`` have defaults built on the abstract
methods; a backend overrides them when it can do the same in one statement.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

from ..errors import StorageError
from ..merkle import node_position
from ..records import AccountRow, BatchRow, EntryRow, HeadRow

__all__ = ["EntryQuery", "Storage", "Transaction", "first_node_position"]


@dataclass(frozen=True, slots=True)
class EntryQuery:
    account_id: str | None = None
    reference: str | None = None
    seq_from: int = 0
    seq_to: int | None = None
    """Exclusive upper bound."""
    limit: int = 100
    descending: bool = False


class Transaction(ABC):
    # -- reads --------------------------------------------------------------
    @abstractmethod
    def head(self) -> HeadRow: ...

    @abstractmethod
    def assets(self) -> dict[str, int]: ...

    @abstractmethod
    def get_accounts(self, account_ids: Sequence[str]) -> dict[str, AccountRow]:
        """In a write transaction this also locks the rows (sorted order)."""

    @abstractmethod
    def list_accounts(self, prefix: str | None, after: str | None, limit: int) -> list[AccountRow]: ...

    @abstractmethod
    def all_balances(self) -> dict[str, int]: ...

    @abstractmethod
    def get_nodes(self, coords: Iterable[tuple[int, int]]) -> dict[tuple[int, int], bytes]: ...

    @abstractmethod
    def get_batch(self, batch_id: str) -> BatchRow | None: ...

    @abstractmethod
    def find_idempotency(self, key: str) -> BatchRow | None: ...

    @abstractmethod
    def find_reversal(self, batch_id: str) -> str | None:
        """The id of the batch that reverses ``batch_id``, if any."""

    @abstractmethod
    def entries_by_seq(self, start: int, end: int) -> list[EntryRow]:
        """Entries with ``start <= seq < end`` in order."""

    @abstractmethod
    def query_entries(self, query: EntryQuery) -> list[EntryRow]: ...

    @abstractmethod
    def get_entry(self, entry_id: str) -> EntryRow | None: ...

    @abstractmethod
    def last_entry_before(self, account_id: str, seq_end: int) -> EntryRow | None:
        """The account's latest entry with ``seq < seq_end``."""

    @abstractmethod
    def seq_after_time(self, timestamp: str) -> int:
        """Number of leading entries with ``created_at <= timestamp`` (timestamps are
        non-decreasing in sequence order)."""

    @abstractmethod
    def checkpoint_at_or_before(self, seq: int) -> tuple[int, dict[str, int]] | None: ...

    # -- writes -------------------------------------------------------------
    @abstractmethod
    def insert_asset(self, code: str, scale: int) -> None: ...

    @abstractmethod
    def insert_accounts(self, rows: Sequence[AccountRow]) -> None: ...

    @abstractmethod
    def update_balances(self, balances: Mapping[str, int]) -> None: ...

    @abstractmethod
    def insert_batch(self, row: BatchRow) -> None: ...

    @abstractmethod
    def insert_entries(self, rows: Sequence[EntryRow]) -> None: ...

    @abstractmethod
    def insert_nodes(self, nodes: Sequence[tuple[int, int, bytes]]) -> None:
        """``(level, index, hash)`` of new complete subtrees, in the order appends
        created them (as :meth:`sardis_ledger.merkle.Frontier.append` returns them)."""

    @abstractmethod
    def set_head(self, head: HeadRow) -> None: ...

    @abstractmethod
    def insert_checkpoint(self, seq: int, balances: Mapping[str, int]) -> None: ...

    @abstractmethod
    def node_range(self, level: int, idx_from: int, idx_to: int) -> list[tuple[int, bytes]]:
        """Stored nodes of ``level`` with ``idx_from <= idx <= idx_to``, in order."""

    # -- optional: defaults built on the methods above; override when a backend can do better

    def insert_batches(self, rows: Sequence[BatchRow]) -> None:
        """Several batch rows at once (a bulk write appends one per transfer)."""
        for row in rows:
            self.insert_batch(row)

    def send_writes(self) -> None:  # noqa: B027 - optional hook
        """The writes so far may go to the server now, while the caller computes more.

        A bulk write calls this between chunks so a client/server backend can
        insert one chunk while the engine builds the next; the writes stay in
        the same transaction, and an error in them still surfaces at the next
        read or at commit. Embedded backends write as they are called."""

    def nodes_created_by(self, start: int, end: int) -> dict[tuple[int, int], bytes]:
        """Stored nodes that appending leaves ``start..end-1`` created (what ``verify``
        compares a chunk of entries against), keyed by ``(level, index)``."""
        out: dict[tuple[int, int], bytes] = {}
        for level in range(0, max(1, end.bit_length()) + 1):
            lo = max(((start + (1 << level)) >> level) - 1, 0)
            hi = (end >> level) - 1
            if hi >= lo:
                out.update({(level, i): h for i, h in self.node_range(level, lo, hi)})
        return out


def first_node_position(nodes: Sequence[tuple[int, int, bytes]]) -> int:
    """Where a write's new nodes start in creation order. They come as appends
    created them (the ``insert_nodes`` contract), one run of consecutive places,
    which is what lets a backend store them without per-node arithmetic."""
    first = node_position(nodes[0][0], nodes[0][1])
    if node_position(nodes[-1][0], nodes[-1][1]) != first + len(nodes) - 1:
        raise StorageError("Merkle nodes must be inserted in the order appends create them")
    return first


class Storage(ABC):
    """A place to keep one ledger. Chosen by URL; see :func:`open_storage`."""

    url: str

    @abstractmethod
    def transaction(self, *, write: bool) -> AbstractContextManager[Transaction]: ...

    def iter_entries(self, start: int = 0, chunk: int = 10_000) -> Iterator[EntryRow]:
        """Every entry from ``start`` in sequence order, read in chunks."""
        while True:
            with self.transaction(write=False) as tx:
                rows = tx.entries_by_seq(start, start + chunk)
            if not rows:
                return
            yield from rows
            start = rows[-1].seq + 1

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and files."""
