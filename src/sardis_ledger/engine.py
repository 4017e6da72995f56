"""``LedgerEngine``: the seed's asyncio API over the one synchronous core.

Each call runs :class:`~sardis_ledger.core.Ledger` in a worker thread
(``asyncio.to_thread``), so the event loop never blocks on storage and there is
no second copy of the ledger logic. Writes take the in-process account locks of
the :class:`~sardis_ledger.locks.LockManager`, so ``lock_account`` sections
exclude other writers of the same accounts in this process; storage
transactions keep the invariants across processes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from decimal import Decimal
from typing import Any, ParamSpec, TypeVar

from .core import Ledger
from .locks import LockManager
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
from .storage import Storage

__all__ = ["LedgerEngine"]

P = ParamSpec("P")
T = TypeVar("T")


def _accounts_of(entries: object) -> list[str]:
    """Account ids named by a batch, for locking; malformed input is left for the
    core to refuse with a clear error (it never reaches storage)."""
    if isinstance(entries, (str, bytes, Mapping)) or not isinstance(entries, Iterable):
        return []
    out = []
    for e in entries:
        acct = e.account_id if isinstance(e, EntrySpec) else e.get("account_id") if isinstance(e, Mapping) else None
        if isinstance(acct, str):
            out.append(acct)
    return out


def _strings(*values: object) -> list[str]:
    return [v for v in values if isinstance(v, str)]


class LedgerEngine:
    """Async ledger engine. ``database_url`` picks storage (see :class:`Ledger`):
    without one, ``LEDGER_DATABASE_URL``, else an embedded SQLite file ``ledger.db``.
    The synchronous :class:`Ledger` underneath is ``engine.sync``."""

    def __init__(
        self,
        database_url: str | None = None,
        *,
        lock_manager: LockManager | None = None,
        storage: Storage | None = None,
        default_asset: Asset = DEFAULT_ASSET,
        checkpoint_interval: int = 4096,
    ) -> None:
        self.sync = Ledger(
            database_url, storage=storage, default_asset=default_asset, checkpoint_interval=checkpoint_interval
        )
        self.lock_manager = lock_manager or LockManager()

    @property
    def database_url(self) -> str:
        return self.sync.database_url

    async def _call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await asyncio.to_thread(fn, *args, **kwargs)

    @asynccontextmanager
    async def lock_account(self, *account_ids: str, timeout: float | None = None) -> AsyncIterator[None]:
        """Hold these accounts' locks for a check-then-act section. All are granted
        together (in sorted order, so callers naming the same accounts in any order
        never deadlock); writes inside the section re-enter them; a wait beyond
        ``timeout`` seconds (default: the lock manager's) raises LockTimeoutError."""
        async with self.lock_manager.hold_async(_strings(*account_ids), timeout):
            yield

    async def close(self) -> None:
        await self._call(self.sync.close)

    async def __aenter__(self) -> LedgerEngine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # writes ------------------------------------------------------------------

    async def create_entry(
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
        async with self.lock_account(*_strings(account_id)):
            return await self._call(
                self.sync.create_entry, account_id, amount, entry_type, reference, metadata,
                asset=asset, idempotency_key=idempotency_key,
            )

    async def create_batch(
        self, entries: Sequence[Mapping[str, Any] | EntrySpec], *, idempotency_key: str | None = None
    ) -> LedgerBatch:
        async with self.lock_account(*_accounts_of(entries)):
            return await self._call(self.sync.create_batch, entries, idempotency_key=idempotency_key)

    async def transfer(
        self,
        from_account: str,
        to_account: str,
        amount: Decimal | int | str,
        *,
        reference: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> LedgerBatch:
        async with self.lock_account(*_strings(from_account, to_account)):
            return await self._call(
                self.sync.transfer, from_account, to_account, amount,
                reference=reference, metadata=metadata, idempotency_key=idempotency_key,
            )

    async def transfer_many(
        self, transfers: Iterable[tuple[str, str, Decimal | int | str]], *, reference: str | None = None
    ) -> list[LedgerBatch]:
        items = list(transfers)
        ids = _strings(*(a for t in items if isinstance(t, (tuple, list)) for a in t[:2]))
        async with self.lock_account(*ids):
            return await self._call(self.sync.transfer_many, items, reference=reference)

    async def post_many(self, batches: Iterable[Sequence[Mapping[str, Any] | EntrySpec]]) -> list[LedgerBatch]:
        items = list(batches)
        async with self.lock_account(*(a for b in items for a in _accounts_of(b))):
            return await self._call(self.sync.post_many, items)

    async def rollback_batch(self, batch_id: str, reason: str, *, idempotency_key: str | None = None) -> LedgerBatch:
        accounts = await self._call(self.sync.batch_accounts, batch_id)
        async with self.lock_account(*accounts):
            return await self._call(self.sync.rollback_batch, batch_id, reason, idempotency_key=idempotency_key)

    async def create_account(
        self,
        account_id: str,
        *,
        asset: str | None = None,
        overdraft_limit: Decimal | int | str = 0,
        metadata: Mapping[str, Any] | None = None,
        exist_ok: bool = False,
    ) -> Account:
        return await self._call(
            self.sync.create_account, account_id, asset=asset, overdraft_limit=overdraft_limit,
            metadata=metadata, exist_ok=exist_ok,
        )

    async def register_asset(self, code: str, scale: int) -> Asset:
        return await self._call(self.sync.register_asset, code, scale)

    # reads -------------------------------------------------------------------

    async def get_balance(self, account_id: str, at: datetime | int | None = None) -> Decimal:
        return await self._call(self.sync.get_balance, account_id, at)

    async def get_account(self, account_id: str) -> Account:
        return await self._call(self.sync.get_account, account_id)

    async def account_exists(self, account_id: str) -> bool:
        return await self._call(self.sync.account_exists, account_id)

    async def get_asset(self, code: str) -> Asset:
        return await self._call(self.sync.get_asset, code)

    async def list_accounts(
        self, *, prefix: str | None = None, after: str | None = None, limit: int = 100
    ) -> list[Account]:
        return await self._call(self.sync.list_accounts, prefix=prefix, after=after, limit=limit)

    async def get_batch(self, batch_id: str) -> LedgerBatch:
        return await self._call(self.sync.get_batch, batch_id)

    async def reversal_of(self, batch_id: str) -> str | None:
        return await self._call(self.sync.reversal_of, batch_id)

    async def get_entry(self, entry_id: str) -> LedgerEntry:
        return await self._call(self.sync.get_entry, entry_id)

    async def list_entries(self, **filters: Any) -> Page:
        """Same filters as :meth:`Ledger.list_entries`."""
        return await self._call(self.sync.list_entries, **filters)

    async def snapshot(self, at: datetime | int | None = None) -> BalanceSnapshot:
        return await self._call(self.sync.snapshot, at)

    async def tree_head(self) -> TreeHead:
        return await self._call(self.sync.tree_head)

    async def receipt(self, sequence: int, tree_size: int | None = None) -> Receipt:
        return await self._call(self.sync.receipt, sequence, tree_size)

    async def root_at(self, tree_size: int) -> str:
        return await self._call(self.sync.root_at, tree_size)

    async def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[str]:
        return await self._call(self.sync.consistency_proof, old_size, new_size)

    async def verify_receipt(self, entry: LedgerEntry) -> bool:
        return await self._call(self.sync.verify_receipt, entry)

    async def verify(self) -> VerifyReport:
        return await self._call(self.sync.verify)
