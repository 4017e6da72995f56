"""The JSON backend's in-memory index and its transaction (private).

Why a hand-made index: the JSON file is read once and then every query the
engine makes is answered from memory, so each must be a dict lookup or a bisect,
never a scan of history. The append-only parts are plain lists, which makes
undoing a failed transaction a truncation to the lengths it started from.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from ..errors import StorageError
from ..records import AccountRow, BatchRow, EntryRow, HeadRow
from .base import EntryQuery, Transaction

__all__ = ["HASH_SIZE", "Index", "JSONTransaction", "Mark", "Undo"]

HASH_SIZE = 32
_EMPTY_ROOT = hashlib.sha256(b"").digest()


@dataclass(frozen=True, slots=True)
class Mark:
    """Lengths of the append-only structures: truncating to a mark undoes appends."""

    entries: int
    batches: int
    checkpoints: int
    nodes: tuple[int, ...]


@dataclass(slots=True)
class Index:
    """Everything the engine reads, held in memory; append-only parts are lists
    so that undo is truncation."""

    entries: list[EntryRow] = field(default_factory=list)
    entry_pos: dict[str, int] = field(default_factory=dict)
    by_account: dict[str, list[int]] = field(default_factory=dict)
    by_reference: dict[str, list[int]] = field(default_factory=dict)
    batches: list[BatchRow] = field(default_factory=list)
    batch_pos: dict[str, int] = field(default_factory=dict)
    idempotency: dict[str, int] = field(default_factory=dict)
    reversal: dict[str, str] = field(default_factory=dict)
    nodes: list[bytearray] = field(default_factory=list)
    cp_seqs: list[int] = field(default_factory=list)
    cp_balances: list[dict[str, int]] = field(default_factory=list)
    accounts: dict[str, AccountRow] = field(default_factory=dict)
    account_ids: list[str] = field(default_factory=list)
    assets: dict[str, int] = field(default_factory=dict)
    head: HeadRow = field(default_factory=lambda: HeadRow(0, _EMPTY_ROOT, ""))

    def mark(self) -> Mark:
        return Mark(
            len(self.entries), len(self.batches), len(self.cp_seqs), tuple(len(b) // HASH_SIZE for b in self.nodes)
        )

    def node_count(self, level: int) -> int:
        return len(self.nodes[level]) // HASH_SIZE if level < len(self.nodes) else 0

    def node(self, level: int, index: int) -> bytes | None:
        if level < 0 or index < 0 or level >= len(self.nodes):
            return None
        buf = self.nodes[level]
        end = (index + 1) * HASH_SIZE
        return bytes(buf[end - HASH_SIZE : end]) if end <= len(buf) else None

    # Each add_* checks everything before changing anything, so truncation after a
    # refused insert never removes another row's index entries.

    def add_entry(self, row: EntryRow) -> None:
        if row.seq != len(self.entries):
            raise StorageError(f"entry sequence {row.seq + 1} is not the next one ({len(self.entries) + 1})")
        if row.entry_id in self.entry_pos:
            raise StorageError(f"entry {row.entry_id!r} already exists")
        self.entries.append(row)
        self.entry_pos[row.entry_id] = row.seq
        self.by_account.setdefault(row.account_id, []).append(row.seq)
        if row.reference is not None:
            self.by_reference.setdefault(row.reference, []).append(row.seq)

    def add_batch(self, row: BatchRow) -> None:
        if row.batch_id in self.batch_pos:
            raise StorageError(f"batch {row.batch_id!r} already exists")
        if row.idempotency_key is not None and row.idempotency_key in self.idempotency:
            raise StorageError(f"idempotency key {row.idempotency_key!r} is already used")
        if row.reverses is not None and row.reverses in self.reversal:
            raise StorageError(f"batch {row.reverses!r} is already reversed")
        self.batch_pos[row.batch_id] = len(self.batches)
        self.batches.append(row)
        if row.idempotency_key is not None:
            self.idempotency[row.idempotency_key] = len(self.batches) - 1
        if row.reverses is not None:
            self.reversal[row.reverses] = row.batch_id

    def add_node(self, level: int, index: int, digest: bytes) -> None:
        if len(digest) != HASH_SIZE or level < 0 or level > 64:
            raise StorageError(f"bad Merkle node ({level}, {index})")
        if level > len(self.nodes):
            raise StorageError(f"Merkle node ({level}, {index}) skips a level")
        if level == len(self.nodes):
            self.nodes.append(bytearray())
        if index != len(self.nodes[level]) // HASH_SIZE:
            raise StorageError(f"Merkle node ({level}, {index}) is not the next one at its level")
        self.nodes[level] += digest

    def add_checkpoint(self, seq: int, balances: dict[str, int]) -> None:
        if self.cp_seqs and seq <= self.cp_seqs[-1]:
            raise StorageError(f"checkpoint {seq} is not after checkpoint {self.cp_seqs[-1]}")
        self.cp_seqs.append(seq)
        self.cp_balances.append(balances)

    def put_account(self, row: AccountRow) -> None:
        if row.account_id not in self.accounts:
            bisect.insort(self.account_ids, row.account_id)
        self.accounts[row.account_id] = row

    def drop_account(self, account_id: str) -> None:
        del self.accounts[account_id]
        i = bisect.bisect_left(self.account_ids, account_id)
        del self.account_ids[i]

    def truncate(self, mark: Mark) -> None:
        for row in reversed(self.entries[mark.entries :]):
            del self.entry_pos[row.entry_id]
            _pop(self.by_account, row.account_id)
            if row.reference is not None:
                _pop(self.by_reference, row.reference)
        del self.entries[mark.entries :]
        for b in reversed(self.batches[mark.batches :]):
            del self.batch_pos[b.batch_id]
            if b.idempotency_key is not None:
                del self.idempotency[b.idempotency_key]
            if b.reverses is not None:
                del self.reversal[b.reverses]
        del self.batches[mark.batches :]
        del self.cp_seqs[mark.checkpoints :]
        del self.cp_balances[mark.checkpoints :]
        del self.nodes[len(mark.nodes) :]
        for level, count in enumerate(mark.nodes):
            del self.nodes[level][count * HASH_SIZE :]


def _pop(index: dict[str, list[int]], key: str) -> None:
    seqs = index[key]
    seqs.pop()
    if not seqs:
        del index[key]



class Undo:
    """What a write transaction changed besides appends (those undo by truncation)."""

    __slots__ = ("accounts", "assets", "head", "mark")

    def __init__(self, index: Index) -> None:
        self.mark = index.mark()
        self.accounts: dict[str, AccountRow | None] = {}
        self.assets: dict[str, int] | None = None
        self.head: HeadRow | None = None

    def restore(self, index: Index) -> None:
        index.truncate(self.mark)
        for account_id, old in self.accounts.items():
            if old is None:
                if account_id in index.accounts:
                    index.drop_account(account_id)
            else:
                index.accounts[account_id] = old
        if self.assets is not None:
            index.assets = self.assets
        if self.head is not None:
            index.head = self.head



class JSONTransaction(Transaction):
    """Reads and writes on the shared index; a write transaction records an undo.

    Entry and batch rows are kept as handed in, not copied: they are insert-only
    and the engine never changes a row after inserting it. Account rows are
    replaced, never mutated, so a row a caller holds stays as it was read.
    """

    __slots__ = ("_closed", "_ix", "_undo", "_write")

    def __init__(self, index: Index, write: bool) -> None:
        self._ix = index
        self._write = write
        self._undo = Undo(index) if write else None
        self._closed = False

    def _w(self) -> Undo:
        if self._undo is None or self._closed:
            raise StorageError("this transaction is read-only or finished")
        return self._undo

    # -- reads --------------------------------------------------------------
    def head(self) -> HeadRow:
        h = self._ix.head
        return HeadRow(h.size, h.root, h.updated_at)

    def assets(self) -> dict[str, int]:
        return dict(self._ix.assets)

    def get_accounts(self, account_ids: Sequence[str]) -> dict[str, AccountRow]:
        accounts = self._ix.accounts
        return {a: accounts[a] for a in sorted(set(account_ids)) if a in accounts}

    def list_accounts(self, prefix: str | None, after: str | None, limit: int) -> list[AccountRow]:
        ids = self._ix.account_ids
        i = bisect.bisect_right(ids, after or "")
        if prefix:
            i = max(i, bisect.bisect_left(ids, prefix))
        out: list[AccountRow] = []
        while i < len(ids) and len(out) < limit:
            if prefix and not ids[i].startswith(prefix):
                break
            out.append(self._ix.accounts[ids[i]])
            i += 1
        return out

    def all_balances(self) -> dict[str, int]:
        return {a: r.balance for a, r in self._ix.accounts.items()}

    def get_nodes(self, coords: Iterable[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        out: dict[tuple[int, int], bytes] = {}
        for level, index in coords:
            h = self._ix.node(level, index)
            if h is not None:
                out[(level, index)] = h
        return out

    def get_batch(self, batch_id: str) -> BatchRow | None:
        pos = self._ix.batch_pos.get(batch_id)
        return None if pos is None else self._ix.batches[pos]

    def find_idempotency(self, key: str) -> BatchRow | None:
        pos = self._ix.idempotency.get(key)
        return None if pos is None else self._ix.batches[pos]

    def find_reversal(self, batch_id: str) -> str | None:
        return self._ix.reversal.get(batch_id)

    def entries_by_seq(self, start: int, end: int) -> list[EntryRow]:
        return self._ix.entries[max(start, 0) : max(end, 0)]

    def query_entries(self, query: EntryQuery) -> list[EntryRow]:
        entries = self._ix.entries
        lo = max(query.seq_from, 0)
        hi = len(entries) if query.seq_to is None else min(query.seq_to, len(entries))
        seqs: Sequence[int]
        if query.account_id is not None:
            seqs = self._ix.by_account.get(query.account_id, [])
        elif query.reference is not None:
            seqs = self._ix.by_reference.get(query.reference, [])
        else:
            seqs = range(len(entries))
        i0, i1 = bisect.bisect_left(seqs, lo), bisect.bisect_left(seqs, hi)
        positions = range(i1 - 1, i0 - 1, -1) if query.descending else range(i0, i1)
        out: list[EntryRow] = []
        for i in positions:
            if len(out) >= query.limit:
                break
            row = entries[seqs[i]]
            if query.reference is None or row.reference == query.reference:
                out.append(row)
        return out

    def get_entry(self, entry_id: str) -> EntryRow | None:
        pos = self._ix.entry_pos.get(entry_id)
        return None if pos is None else self._ix.entries[pos]

    def last_entry_before(self, account_id: str, seq_end: int) -> EntryRow | None:
        seqs = self._ix.by_account.get(account_id, [])
        i = bisect.bisect_left(seqs, seq_end)
        return self._ix.entries[seqs[i - 1]] if i else None

    def seq_after_time(self, timestamp: str) -> int:
        return bisect.bisect_right(self._ix.entries, timestamp, key=lambda e: e.created_at)

    def checkpoint_at_or_before(self, seq: int) -> tuple[int, dict[str, int]] | None:
        i = bisect.bisect_right(self._ix.cp_seqs, seq)
        return (self._ix.cp_seqs[i - 1], dict(self._ix.cp_balances[i - 1])) if i else None

    def node_range(self, level: int, idx_from: int, idx_to: int) -> list[tuple[int, bytes]]:
        last = min(idx_to, self._ix.node_count(level) - 1) if level >= 0 else -1
        buf = self._ix.nodes[level] if 0 <= level < len(self._ix.nodes) else bytearray()
        return [(i, bytes(buf[i * HASH_SIZE : (i + 1) * HASH_SIZE])) for i in range(max(idx_from, 0), last + 1)]

    # -- writes -------------------------------------------------------------
    def insert_asset(self, code: str, scale: int) -> None:
        undo = self._w()
        if code in self._ix.assets:
            raise StorageError(f"asset {code!r} already exists")
        if undo.assets is None:
            undo.assets = dict(self._ix.assets)
        self._ix.assets[code] = scale

    def insert_accounts(self, rows: Sequence[AccountRow]) -> None:
        undo = self._w()
        ids = [r.account_id for r in rows]
        if len(set(ids)) != len(ids) or any(a in self._ix.accounts for a in ids):
            raise StorageError("account already exists")
        for r in rows:
            undo.accounts.setdefault(r.account_id, None)
            self._ix.put_account(
                AccountRow(r.account_id, r.asset, r.balance, r.overdraft_limit, r.metadata, r.created_at)
            )

    def update_balances(self, balances: Mapping[str, int]) -> None:
        undo = self._w()
        accounts = self._ix.accounts
        missing = [a for a in balances if a not in accounts]
        if missing:
            raise StorageError(f"cannot update balance of unknown account {missing[0]!r}")
        for account_id, balance in balances.items():
            old = accounts[account_id]
            undo.accounts.setdefault(account_id, old)
            accounts[account_id] = AccountRow(
                old.account_id, old.asset, balance, old.overdraft_limit, old.metadata, old.created_at
            )

    def insert_batch(self, row: BatchRow) -> None:
        self._w()
        self._ix.add_batch(row)

    def insert_entries(self, rows: Sequence[EntryRow]) -> None:
        self._w()
        for r in rows:
            self._ix.add_entry(r)

    def insert_nodes(self, nodes: Sequence[tuple[int, int, bytes]]) -> None:
        self._w()
        for level, index, digest in nodes:
            self._ix.add_node(level, index, bytes(digest))

    def set_head(self, head: HeadRow) -> None:
        undo = self._w()
        if undo.head is None:
            undo.head = self._ix.head
        self._ix.head = HeadRow(head.size, bytes(head.root), head.updated_at)

    def insert_checkpoint(self, seq: int, balances: Mapping[str, int]) -> None:
        self._w()
        self._ix.add_checkpoint(seq, dict(balances))
