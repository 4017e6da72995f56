"""Account locks for critical sections that span several ledger calls.

Every write is already atomic in storage (a transaction that serialises
conflicting writers across processes), so these locks are not what keeps
balances right; they let a caller make check-then-act sequences (read a
balance, decide, write) atomic with respect to other callers in this process,
as the seed's ``lock_account`` example does.

A lock set is granted all at once, in sorted account order, so two callers that
lock the same accounts in opposite orders never deadlock; a holder may re-enter
(ledger writes inside ``lock_account`` do not block on their own lock); a wait
past its timeout raises :class:`~sardis_ledger.errors.LockTimeoutError`.
Works from threads and from any number of event loops.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar

from .errors import LockTimeoutError

__all__ = ["LockManager"]

_HELD: ContextVar[dict[int, frozenset[str]] | None] = ContextVar("sardis_ledger_held_locks", default=None)


class LockManager:
    def __init__(self, timeout: float = 10.0) -> None:
        self.timeout = timeout
        self._held: set[str] = set()
        self._cond = threading.Condition()

    def held_here(self) -> frozenset[str]:
        held = _HELD.get()
        return held.get(id(self), frozenset()) if held else frozenset()

    def is_locked(self, account_id: str) -> bool:
        with self._cond:
            return account_id in self._held

    def _try(self, wanted: list[str]) -> bool:
        with self._cond:
            if any(a in self._held for a in wanted):
                return False
            self._held.update(wanted)
            return True

    def _release(self, wanted: list[str]) -> None:
        with self._cond:
            self._held.difference_update(wanted)
            self._cond.notify_all()

    def _enter(self, wanted: list[str]) -> object:
        held = dict(_HELD.get() or {})
        held[id(self)] = self.held_here() | frozenset(wanted)
        return _HELD.set(held)

    def _wanted(self, account_ids: Iterable[str]) -> list[str]:
        return sorted(set(account_ids) - self.held_here())

    @contextmanager
    def hold(self, account_ids: Iterable[str], timeout: float | None = None) -> Iterator[None]:
        """Blocking form, for threads."""
        wanted = self._wanted(account_ids)
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        with self._cond:
            while any(a in self._held for a in wanted):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise LockTimeoutError(
                        f"could not lock {', '.join(wanted)} within {limit:g}s", accounts=wanted
                    )
                self._cond.wait(left)
            self._held.update(wanted)
        token = self._enter(wanted)
        try:
            yield
        finally:
            _HELD.reset(token)  # type: ignore[arg-type]
            self._release(wanted)

    @asynccontextmanager
    async def hold_async(self, account_ids: Iterable[str], timeout: float | None = None) -> AsyncIterator[None]:
        """Awaiting form: never blocks the event loop."""
        wanted = self._wanted(account_ids)
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        pause = 0.0005
        while not self._try(wanted):
            if time.monotonic() >= deadline:
                raise LockTimeoutError(f"could not lock {', '.join(wanted)} within {limit:g}s", accounts=wanted)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.01)
        token = self._enter(wanted)
        try:
            yield
        finally:
            _HELD.reset(token)  # type: ignore[arg-type]
            self._release(wanted)
