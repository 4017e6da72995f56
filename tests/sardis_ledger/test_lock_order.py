"""Writes lock every account they touch before the tree head, rollbacks included.

On PostgreSQL an account locked after the head can deadlock against a writer
that holds that account and waits for the head; the order is what prevents it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, cast

from sardis_ledger import Ledger
from sardis_ledger.records import AccountRow, HeadRow
from sardis_ledger.storage import Storage, Transaction
from sardis_ledger.storage.sqlite import SQLiteStorage


class Recording:
    """Delegates to a real transaction and notes the order of locking calls."""

    def __init__(self, inner: Transaction, log: list[tuple[str, tuple[str, ...]]]) -> None:
        self._inner = inner
        self._log = log

    def get_accounts(self, account_ids: Sequence[str]) -> dict[str, AccountRow]:
        self._log.append(("accounts", tuple(account_ids)))
        return self._inner.get_accounts(account_ids)

    def head(self) -> HeadRow:
        self._log.append(("head", ()))
        return self._inner.head()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class RecordingStorage(Storage):
    def __init__(self, inner: SQLiteStorage) -> None:
        self.inner = inner
        self.url = inner.url
        self.writes: list[list[tuple[str, tuple[str, ...]]]] = []

    def transaction(self, *, write: bool) -> AbstractContextManager[Transaction]:
        @contextmanager
        def wrapped() -> Iterator[Transaction]:
            with self.inner.transaction(write=write) as tx:
                if not write:
                    yield tx
                    return
                log: list[tuple[str, tuple[str, ...]]] = []
                self.writes.append(log)
                yield cast(Transaction, Recording(tx, log))

        return wrapped()


def test_rollback_locks_its_accounts_before_the_head(tmp_path: Path) -> None:
    storage = RecordingStorage(SQLiteStorage(tmp_path / "l.db"))
    ledger = Ledger(storage=storage)
    ledger.create_entry("a", 10, "credit")
    batch = ledger.transfer("a", "b", 4)
    storage.writes.clear()
    reversal = ledger.rollback_batch(batch.batch_id, "test")
    assert {e.account_id for e in reversal.entries} == {"a", "b"}
    (log,) = storage.writes
    head_at = log.index(("head", ()))
    locked_before = {acct for kind, ids in log[:head_at] if kind == "accounts" for acct in ids}
    assert {"a", "b"} <= locked_before
    assert all(kind != "accounts" for kind, _ in log[head_at + 1 :])
    assert ledger.verify().ok
