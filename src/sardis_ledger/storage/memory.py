"""In-memory storage: a private SQLite ``:memory:`` database behind one lock.

Nothing survives the process; useful for tests and examples. It reuses the
SQLite row code rather than a second hand-written store, so it behaves exactly
like the embedded default except for durability.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from .base import Transaction
from .sqlite import SQLiteStorage

__all__ = ["MemoryStorage"]


class MemoryStorage(SQLiteStorage):
    def __init__(self) -> None:
        self._shared = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        self._lock = threading.RLock()
        super().__init__(":memory:", url="memory://")

    def _connect(self) -> sqlite3.Connection:
        return self._shared

    @contextmanager
    def transaction(self, *, write: bool) -> Iterator[Transaction]:
        with self._lock, super().transaction(write=write) as tx:
            yield tx
