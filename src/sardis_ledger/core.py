"""The ledger: the one implementation of its semantics, synchronous.

Everything else is a face on this class: :class:`~sardis_ledger.engine.LedgerEngine`
runs these methods in a worker thread for asyncio callers, and
``mesh_fake_ledger`` calls them directly. Storage backends only keep rows; every
rule (floors, atomic batches, idempotency, Merkle appends, checkpoints) is here.

Sequences are 1-based: entry ``n`` is leaf ``n - 1`` of the Merkle log, and the
state "at sequence n" is the state after the first ``n`` entries, which is also
what a tree head of size ``n`` commits to.

The write path (one storage transaction per write, inside a retry loop) lives
in :mod:`sardis_ledger._write_path` and the evidence (receipts, proofs, the
full audit) in :mod:`sardis_ledger._proofs`; both are this class's logic, kept
in their own modules for size. Nothing is relaxed for speed: every entry is
hashed into the log and every node stored in the same transaction as the
entry. ``bench/bench_engine.py`` measures it; ``docs/benchmarks.md`` says where
the time goes.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

from . import _write_path, merkle
from ._proofs import all_accounts, receipts_for, stored_node_getter, verify_ledger
from ._requests import (
    MAX_BATCH_LEGS,
    MAX_METADATA_BYTES,
    MAX_TEXT,
    Request,
    batch_request,
    check_metadata,
    check_text,
    iso,
    leg,
    now_iso,
    transfer_request,
)
from .amounts import from_minor, minor_units, parse_amount, validate_account_id, validate_asset_code
from .errors import (
    AccountExistsError,
    AccountNotFoundError,
    BatchNotFoundError,
    EntryNotFoundError,
    IntegrityError,
    ProofVerificationError,
    RetryableStorageError,
    ValidationError,
)
from .models import (
    DEFAULT_ASSET,
    Account,
    Asset,
    BalanceSnapshot,
    EntrySpec,
    LedgerBatch,
    LedgerEntry,
    LedgerEntryType,
    Page,
    Receipt,
    TreeHead,
    VerifyReport,
)
from .records import AccountRow, BatchRow, EntryRow, leaf_bytes, parse_metadata, parse_ts
from .storage import Storage, open_storage
from .storage.base import EntryQuery, Transaction

__all__ = ["MAX_BATCH_LEGS", "MAX_METADATA_BYTES", "MAX_TEXT", "Ledger", "default_database_url"]

T = TypeVar("T")

_sha256 = hashlib.sha256
_TYPES = {"credit": LedgerEntryType.CREDIT, "debit": LedgerEntryType.DEBIT}


def default_database_url() -> str:
    """``LEDGER_DATABASE_URL`` if set, else an embedded SQLite file in the working directory."""
    return os.environ.get("LEDGER_DATABASE_URL") or "sqlite:///ledger.db"




def _check_limit(limit: object) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 10_000:
        raise ValidationError("limit must be an integer from 1 to 10000", field="limit")
    return limit


def _check_id(value: object, name: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_TEXT:
        raise ValidationError(f"{name} must be a non-empty string of at most {MAX_TEXT} characters", field=name)
    return value


class Ledger:
    """A ledger on one storage backend. Thread-safe; many processes may share a
    SQLite file or a PostgreSQL database.

    ``database_url`` chooses the backend (``memory://``, ``sqlite:///path.db``,
    ``postgresql://…``, ``path.json``); without one, ``LEDGER_DATABASE_URL`` or
    ``sqlite:///ledger.db``.
    """

    max_attempts = 20
    """Attempts of a write that meets transient storage errors (deadlock, busy, lost connection)."""

    def __init__(
        self,
        database_url: str | None = None,
        *,
        storage: Storage | None = None,
        default_asset: Asset = DEFAULT_ASSET,
        checkpoint_interval: int = 4096,
    ) -> None:
        if isinstance(checkpoint_interval, bool) or not isinstance(checkpoint_interval, int) or checkpoint_interval < 1:
            raise ValidationError("checkpoint_interval must be a positive integer", field="checkpoint_interval")
        self.storage = storage if storage is not None else open_storage(database_url or default_database_url())
        self.default_asset = default_asset
        self.checkpoint_interval = checkpoint_interval
        # Scales of assets known to be committed. Never holds what an open
        # transaction inserted: that transaction may still roll back.
        self._scales: dict[str, int] = {}
        self._frontier: tuple[int, bytes, merkle.Frontier] | None = None
        self._frontier_lock = threading.Lock()

    @property
    def database_url(self) -> str:
        return self.storage.url

    def close(self) -> None:
        self.storage.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ assets

    def _write_scale(self, tx: Transaction, code: str, seen: dict[str, int]) -> int:
        """The scale of ``code`` inside a write transaction; the default asset is
        registered on first use. ``seen`` collects what this transaction learned,
        for the committed cache once it commits."""
        scale = self._scales.get(code)
        if scale is None:
            scale = seen.get(code)
        if scale is None:
            seen.update(tx.assets())
            scale = seen.get(code)
            if scale is None:
                if code != self.default_asset.code:
                    raise ValidationError(f"unknown asset {code!r}; register it first", field="asset")
                scale = self.default_asset.scale
                tx.insert_asset(code, scale)
                seen[code] = scale
        return scale

    def _read_scale(self, tx: Transaction, code: str) -> int:
        scale = self._scales.get(code)
        if scale is None:
            committed = tx.assets()  # a read transaction sees committed rows only
            self._scales.update(committed)
            scale = committed.get(code)
            if scale is None:
                if code != self.default_asset.code:
                    raise IntegrityError(f"asset {code!r} is used but not registered")
                scale = self.default_asset.scale
        return scale

    def register_asset(self, code: str, scale: int) -> Asset:
        """Declare an asset and its decimal scale (0-18). Idempotent for the same
        scale; an asset's scale never changes once registered."""
        validate_asset_code(code)
        if isinstance(scale, bool) or not isinstance(scale, int) or not 0 <= scale <= 18:
            raise ValidationError("scale must be an integer from 0 to 18", field="scale")
        def attempt(_retry: bool) -> None:
            with self.storage.transaction(write=True) as tx:
                existing = tx.assets()
                if code in existing:
                    if existing[code] != scale:
                        raise ValidationError(f"asset {code} already has scale {existing[code]}", field="scale")
                else:
                    tx.insert_asset(code, scale)

        self._retrying(attempt)
        self._scales[code] = scale
        return Asset(code, scale)

    def get_asset(self, code: str) -> Asset:
        validate_asset_code(code)
        with self.storage.transaction(write=False) as tx:
            scales = tx.assets()
        if code not in scales:
            if code == self.default_asset.code:
                return self.default_asset
            raise ValidationError(f"unknown asset {code!r}", field="asset")
        return Asset(code, scales[code])

    # ---------------------------------------------------------------- accounts

    def _account(self, row: AccountRow, scale: int) -> Account:
        return Account(
            account_id=row.account_id,
            asset=row.asset,
            balance=from_minor(row.balance, scale),
            overdraft_limit=from_minor(row.overdraft_limit, scale),
            metadata=parse_metadata(row.metadata),
            created_at=parse_ts(row.created_at),
        )

    def create_account(
        self,
        account_id: str,
        *,
        asset: str | None = None,
        overdraft_limit: Decimal | int | str = 0,
        metadata: Mapping[str, Any] | None = None,
        exist_ok: bool = False,
    ) -> Account:
        """Create an account explicitly (credits create default-asset accounts implicitly).

        ``overdraft_limit`` lets the balance go down to ``-overdraft_limit``. With
        ``exist_ok`` an existing account is returned unchanged when its asset and
        overdraft limit match what was asked, and refused otherwise.
        """
        validate_account_id(account_id)
        code = validate_asset_code(asset) if asset is not None else self.default_asset.code
        limit = parse_amount(overdraft_limit, None, field="overdraft_limit", allow_zero=True)
        meta = check_metadata(metadata)
        created_at = now_iso()

        def attempt(retry: bool) -> Account:
            seen: dict[str, int] = {}
            with self.storage.transaction(write=True) as tx:
                scale = self._write_scale(tx, code, seen)
                limit_minor = minor_units(limit, scale, "overdraft_limit")
                existing = tx.get_accounts([account_id]).get(account_id)
                if existing is not None:
                    mine = retry and existing.created_at == created_at and existing.metadata == meta
                    if not exist_ok and not mine:
                        raise AccountExistsError(f"account {account_id!r} already exists", account_id=account_id)
                    if existing.asset != code or existing.overdraft_limit != limit_minor:
                        raise AccountExistsError(
                            f"account {account_id!r} exists with different asset or overdraft limit",
                            account_id=account_id,
                        )
                    return self._account(existing, scale)
                row = AccountRow(account_id, code, 0, limit_minor, meta, created_at)
                tx.insert_accounts([row])
            self._scales.update(seen)
            return self._account(row, scale)

        return self._retrying(attempt)

    def get_account(self, account_id: str) -> Account:
        validate_account_id(account_id)
        with self.storage.transaction(write=False) as tx:
            row = tx.get_accounts([account_id]).get(account_id)
            if row is None:
                raise AccountNotFoundError(account_id)
            return self._account(row, self._read_scale(tx, row.asset))

    def account_exists(self, account_id: str) -> bool:
        validate_account_id(account_id)
        with self.storage.transaction(write=False) as tx:
            return account_id in tx.get_accounts([account_id])

    def list_accounts(self, *, prefix: str | None = None, after: str | None = None, limit: int = 100) -> list[Account]:
        """Accounts in id order; pass the last id back as ``after`` for the next page."""
        limit = _check_limit(limit)
        for value, name in ((prefix, "prefix"), (after, "after")):
            if value is not None and (not isinstance(value, str) or len(value) > 128):
                raise ValidationError(f"{name} must be a string of at most 128 characters", field=name)
        with self.storage.transaction(write=False) as tx:
            rows = tx.list_accounts(prefix, after, limit)
            return [self._account(r, self._read_scale(tx, r.asset)) for r in rows]

    # ---------------------------------------------------------------- balances

    def get_balance(self, account_id: str, at: datetime | int | None = None) -> Decimal:
        """Current balance, or the balance as of ``at`` (a timezone-aware datetime,
        or a sequence number: the state after that entry). Accounts that never
        had an entry have balance 0. One indexed lookup, however long the log."""
        validate_account_id(account_id)
        with self.storage.transaction(write=False) as tx:
            row = tx.get_accounts([account_id]).get(account_id)
            if at is not None:
                size = self._size_at(tx, at)
            if row is None:
                return Decimal(0)
            scale = self._read_scale(tx, row.asset)
            if at is None:
                return from_minor(row.balance, scale)
            last = tx.last_entry_before(account_id, size)
            return from_minor(last.running_balance if last else 0, scale)

    def _size_at(self, tx: Transaction, at: datetime | int) -> int:
        """Number of entries in the state as of ``at`` (inclusive)."""
        if isinstance(at, bool) or not isinstance(at, (int, datetime)):
            raise ValidationError("at must be a timezone-aware datetime or a sequence number", field="at")
        if isinstance(at, int):
            if at < 0:
                raise ValidationError("sequence must not be negative", field="at")
            return min(at, tx.head().size)
        return tx.seq_after_time(iso(at))

    def snapshot(self, at: datetime | int | None = None) -> BalanceSnapshot:
        """Every balance as of ``at``: the nearest stored checkpoint, then the entries
        after it replayed on top (at most about one checkpoint interval)."""
        with self.storage.transaction(write=False) as tx:
            size = tx.head().size if at is None else self._size_at(tx, at)
            cp = tx.checkpoint_at_or_before(size)
            start, balances = cp if cp else (0, {})
            for row in tx.entries_by_seq(start, size):
                delta = row.amount if row.direction == "credit" else -row.amount
                balances[row.account_id] = balances.get(row.account_id, 0) + delta
            assets = {r.account_id: r.asset for r in all_accounts(tx) if r.account_id in balances}
            out = {
                a: from_minor(b, self._read_scale(tx, assets.get(a, self.default_asset.code)))
                for a, b in balances.items()
            }
        return BalanceSnapshot(size, out, assets)

    # ------------------------------------------------------------------ writes

    def create_entry(
        self,
        account_id: str,
        amount: Decimal | int | str,
        entry_type: LedgerEntryType | str,
        reference: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        *,
        asset: str | None = None,
        idempotency_key: str | None = None,
    ) -> LedgerEntry:
        """Append one credit or debit. A credit to an unknown account creates it
        (in ``asset``, default the ledger's default asset); a debit of an unknown
        account raises :class:`AccountNotFoundError`."""
        req = Request([leg(account_id, amount, entry_type, reference, metadata, asset)]).keyed(idempotency_key)
        return self._post([req])[0].entries[0]

    def create_batch(
        self, entries: Sequence[Mapping[str, Any] | EntrySpec], *, idempotency_key: str | None = None
    ) -> LedgerBatch:
        """Append several legs atomically: all are written, or none is. Legs apply
        in order (a debit sees the credits before it in the same batch)."""
        return self._post([batch_request(entries).keyed(idempotency_key)])[0]

    def transfer(
        self,
        from_account: str,
        to_account: str,
        amount: Decimal | int | str,
        *,
        reference: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> LedgerBatch:
        """A two-leg batch: debit ``from_account``, credit ``to_account``, in one asset
        (a receiver that does not exist yet is created in the sender's asset)."""
        req = transfer_request(from_account, to_account, amount, reference, metadata).keyed(idempotency_key)
        return self._post([req])[0]

    def post_many(self, batches: Iterable[Sequence[Mapping[str, Any] | EntrySpec]]) -> list[LedgerBatch]:
        """Several batches in one storage transaction (bulk loads): all commit or none."""
        return self._post([batch_request(b) for b in batches])

    def transfer_many(
        self, transfers: Iterable[tuple[str, str, Decimal | int | str]], *, reference: str | None = None
    ) -> list[LedgerBatch]:
        """Many transfers in one storage transaction: all commit or none."""
        return self._post([transfer_request(f, t, a, reference, None) for f, t, a in transfers])

    def rollback_batch(self, batch_id: str, reason: str, *, idempotency_key: str | None = None) -> LedgerBatch:
        """Append the compensating batch of ``batch_id``. The original stays; a batch
        can be reversed once; a reversal that would overdraw an account is refused."""
        _check_id(batch_id, "batch_id")
        req = Request([], reverses=batch_id, reason=check_text(reason, "reason"))
        return self._post([req.keyed(idempotency_key)])[0]

    def _retrying(self, attempt_once: Callable[[bool], T]) -> T:
        """Run a write, retrying transient storage failures (deadlock, serialization
        failure, lost connection). ``attempt_once(retry)`` must be safe to repeat
        after an unknown commit outcome: it is told when it is a retry."""
        for attempt in range(self.max_attempts):
            try:
                return attempt_once(attempt > 0)
            except RetryableStorageError:
                if attempt == self.max_attempts - 1:
                    raise
                time.sleep(min(0.2, 0.002 * 2**attempt) * random.random())
        raise AssertionError("unreachable")

    def _post(self, requests: list[Request]) -> list[LedgerBatch]:
        """Run a write with retries. Batch ids are fixed before the first attempt,
        so when a commit's outcome was unknown (the connection died during COMMIT)
        the retry finds the batch and returns it instead of writing it twice."""
        reversed_accounts = _write_path.accounts_of_reversed(self, requests)
        return self._retrying(
            lambda retry: _write_path.post_once(self, requests, retry=retry, extra_ids=reversed_accounts)
        )

    # ------------------------------------------------------------------- reads

    def _entry(self, row: EntryRow, scale: int, leaf: bytes, receipt: Receipt | None) -> LedgerEntry:
        return LedgerEntry(
            entry_id=row.entry_id,
            sequence=row.seq + 1,
            batch_id=row.batch_id,
            account_id=row.account_id,
            asset=row.asset,
            amount=from_minor(row.amount, scale),
            entry_type=_TYPES[row.direction],
            running_balance=from_minor(row.running_balance, scale),
            created_at=parse_ts(row.created_at),
            reference=row.reference,
            metadata=parse_metadata(row.metadata),
            reverses=row.reverses,
            leaf=leaf,
            receipt=receipt,
        )

    def _rows_to_entries(self, tx: Transaction, rows: Sequence[EntryRow], with_receipts: bool) -> list[LedgerEntry]:
        if not rows:
            return []
        scales = [self._read_scale(tx, row.asset) for row in rows]
        leaves = [leaf_bytes(row, scale) for row, scale in zip(rows, scales, strict=True)]
        receipts: Sequence[Receipt | None] = [None] * len(rows)
        if with_receipts:
            head = tx.head()
            receipts = receipts_for(tx, rows, head.size, head.root, leaves)
        return [
            self._entry(row, scale, leaf, receipt)
            for row, scale, leaf, receipt in zip(rows, scales, leaves, receipts, strict=True)
        ]

    def _batch_from_row(self, tx: Transaction, batch: BatchRow, *, replayed: bool = False) -> LedgerBatch:
        rows = tx.entries_by_seq(batch.first_seq, batch.first_seq + batch.count)
        return LedgerBatch(
            batch.batch_id, tuple(self._rows_to_entries(tx, rows, True)), parse_ts(batch.created_at),
            batch.reverses, batch.reason, batch.idempotency_key, replayed,
        )

    def get_batch(self, batch_id: str) -> LedgerBatch:
        _check_id(batch_id, "batch_id")
        with self.storage.transaction(write=False) as tx:
            batch = tx.get_batch(batch_id)
            if batch is None:
                raise BatchNotFoundError(f"batch {batch_id!r} does not exist", batch_id=batch_id)
            return self._batch_from_row(tx, batch)

    def batch_accounts(self, batch_id: str) -> list[str]:
        """The accounts ``batch_id`` touches, sorted (what a rollback must lock)."""
        _check_id(batch_id, "batch_id")
        with self.storage.transaction(write=False) as tx:
            batch = tx.get_batch(batch_id)
            if batch is None:
                raise BatchNotFoundError(f"batch {batch_id!r} does not exist", batch_id=batch_id)
            rows = tx.entries_by_seq(batch.first_seq, batch.first_seq + batch.count)
        return sorted({r.account_id for r in rows})

    def reversal_of(self, batch_id: str) -> str | None:
        """The id of the batch that reversed ``batch_id``, if any."""
        _check_id(batch_id, "batch_id")
        with self.storage.transaction(write=False) as tx:
            return tx.find_reversal(batch_id)

    def get_entry(self, entry_id: str) -> LedgerEntry:
        _check_id(entry_id, "entry_id")
        with self.storage.transaction(write=False) as tx:
            row = tx.get_entry(entry_id)
            if row is None:
                raise EntryNotFoundError(f"entry {entry_id!r} does not exist", entry_id=entry_id)
            return self._rows_to_entries(tx, [row], True)[0]

    def list_entries(
        self,
        *,
        account_id: str | None = None,
        batch_id: str | None = None,
        reference: str | None = None,
        since: datetime | int | None = None,
        until: datetime | int | None = None,
        cursor: int | None = None,
        limit: int = 100,
        descending: bool = False,
        with_receipts: bool = False,
    ) -> Page:
        """Entries matching every given filter, in sequence order. ``since``/``until``
        are datetimes (inclusive) or sequence numbers (inclusive); pass the page's
        ``next_cursor`` back as ``cursor`` for the next page. Each page is one
        indexed range scan, however large the ledger."""
        limit = _check_limit(limit)
        if account_id is not None:
            validate_account_id(account_id)
        if batch_id is not None:
            _check_id(batch_id, "batch_id")
        if reference is not None:
            _check_id(reference, "reference")
        if cursor is not None and (isinstance(cursor, bool) or not isinstance(cursor, int) or cursor < 1):
            raise ValidationError("cursor must be a positive sequence number", field="cursor")
        with self.storage.transaction(write=False) as tx:
            lo, hi = 0, tx.head().size
            if batch_id is not None:
                batch = tx.get_batch(batch_id)
                if batch is None:
                    return Page((), None)
                lo, hi = batch.first_seq, batch.first_seq + batch.count
            if since is not None:
                lo = max(lo, self._since(tx, since))
            if until is not None:
                hi = min(hi, self._size_at(tx, until))
            if cursor is not None:
                if descending:
                    hi = min(hi, cursor - 1)
                else:
                    lo = max(lo, cursor - 1)
            if hi <= lo:
                return Page((), None)
            rows = tx.query_entries(EntryQuery(account_id, reference, lo, hi, limit + 1, bool(descending)))
            more = len(rows) > limit
            rows = rows[:limit]
            items = self._rows_to_entries(tx, rows, with_receipts)
        next_cursor = None
        if more and rows:
            next_cursor = rows[-1].seq + 2 if not descending else rows[-1].seq + 1
        return Page(tuple(items), next_cursor)

    def _since(self, tx: Transaction, since: datetime | int) -> int:
        """Index of the first entry at or after ``since``."""
        if isinstance(since, int) and not isinstance(since, bool):
            if since < 1:
                raise ValidationError("sequence numbers start at 1", field="since")
            return since - 1
        if not isinstance(since, datetime):
            raise ValidationError("since must be a timezone-aware datetime or a sequence number", field="since")
        # entries strictly before `since` = entries at or before one microsecond earlier
        return tx.seq_after_time(iso(since - timedelta(microseconds=1), "since"))

    # ---------------------------------------------------------------- evidence

    def tree_head(self) -> TreeHead:
        with self.storage.transaction(write=False) as tx:
            head = tx.head()
        stamp = parse_ts(head.updated_at) if head.updated_at else datetime.fromtimestamp(0, UTC)
        return TreeHead(head.size, head.root.hex(), stamp)

    def receipt(self, sequence: int, tree_size: int | None = None) -> Receipt:
        """Inclusion proof for entry ``sequence`` in the tree of ``tree_size`` (default: now).
        O(log n) stored nodes, read in one query."""
        with self.storage.transaction(write=False) as tx:
            head = tx.head()
            size = head.size if tree_size is None else tree_size
            if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= head.size:
                raise ValidationError(f"tree size must be within 1..{head.size}", field="tree_size")
            if isinstance(sequence, bool) or not isinstance(sequence, int) or not 1 <= sequence <= size:
                raise ValidationError(f"sequence must be within 1..{size}", field="sequence")
            rows = tx.entries_by_seq(sequence - 1, sequence)
            if not rows:
                raise IntegrityError(f"entry {sequence} is missing")
            row = rows[0]
            scale = self._read_scale(tx, row.asset)
            index = row.seq
            getter = stored_node_getter(tx, [
                lambda node: merkle.inclusion_proof(index, size, node),
                lambda node: merkle.tree_root(size, node),
            ])
            proof = merkle.inclusion_proof(index, size, getter)
            root = merkle.tree_root(size, getter)
            if size == head.size and root != head.root:
                raise IntegrityError("stored tree head does not match its Merkle nodes; run verify()")
        return Receipt(
            index, size, merkle.hash_leaf(leaf_bytes(row, scale)).hex(), root.hex(), tuple(p.hex() for p in proof)
        )

    def root_at(self, tree_size: int) -> str:
        with self.storage.transaction(write=False) as tx:
            head = tx.head()
            if isinstance(tree_size, bool) or not isinstance(tree_size, int) or not 0 <= tree_size <= head.size:
                raise ValidationError(f"tree size must be within 0..{head.size}", field="tree_size")
            getter = stored_node_getter(tx, [lambda node: merkle.tree_root(tree_size, node)])
            return merkle.tree_root(tree_size, getter).hex()

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[str]:
        with self.storage.transaction(write=False) as tx:
            head = tx.head()
            new = head.size if new_size is None else new_size
            for v in (old_size, new):
                if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= head.size:
                    raise ValidationError(f"tree sizes must be within 0..{head.size}", field="tree_size")
            if old_size > new:
                raise ValidationError("old size must not exceed new size", field="tree_size")
            getter = stored_node_getter(tx, [lambda node: merkle.consistency_proof(old_size, new, node)])
            return [p.hex() for p in merkle.consistency_proof(old_size, new, getter)]

    def verify_receipt(self, entry: LedgerEntry) -> bool:
        """Check an entry's receipt against its own bytes and the current log."""
        if entry.receipt is None:
            raise ProofVerificationError("entry has no receipt")
        if not entry.receipt.verify(entry.leaf):
            return False
        return self.root_at(entry.receipt.tree_size) == entry.receipt.root

    def verify(self, progress: Callable[[int, int], None] | None = None, *, chunk: int = 20_000) -> VerifyReport:
        """Audit the whole store: every leaf hash and stored Merkle node, the root,
        running balances and floors, account balances and assets, checkpoints, and
        conservation per asset. Names the first bad entry it finds. Reads the log in
        chunks, so memory stays flat on a large ledger."""
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise ValidationError("chunk must be a positive integer", field="chunk")
        return verify_ledger(self, progress, chunk)

    def require_valid(self) -> VerifyReport:
        report = self.verify()
        if not report.ok:
            raise IntegrityError("ledger does not verify: " + "; ".join(report.problems[:3]),
                                 first_bad_sequence=report.first_bad_sequence)
        return report
