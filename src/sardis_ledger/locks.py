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

Re-entry follows the context (``contextvars``): work the section starts (the
worker thread of an engine call, a task it spawns) shares its locks while the
section is open, and only then. Each section has its own owner token, so a task
that outlives the section it was spawned in locks like anyone else afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar, Token

from .errors import LockTimeoutError, ValidationError

__all__ = ["LockManager"]

_Section = tuple["LockManager", object, frozenset[str]]
_HELD: ContextVar[tuple[_Section, ...]] = ContextVar("sardis_ledger_held_locks", default=())


def _seconds(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
        raise ValidationError("a lock timeout is a non-negative, finite number of seconds", field="timeout")
    return float(value)


class LockManager:
    """In-process account locks. ``timeout`` (seconds) is the default wait."""

    def __init__(self, timeout: float = 10.0) -> None:
        self.timeout = _seconds(timeout)
        self._owner: dict[str, object] = {}  # account -> token of the open section holding it
        self._cond = threading.Condition()

    def held_here(self) -> frozenset[str]:
        """Accounts that open sections of this context hold."""
        out: set[str] = set()
        for manager, token, accounts in _HELD.get():
            if manager is self:
                out.update(a for a in accounts if self._owner.get(a) is token)
        return frozenset(out)

    def is_locked(self, account_id: str) -> bool:
        with self._cond:
            return account_id in self._owner

    def _try(self, wanted: list[str], token: object) -> bool:
        with self._cond:
            if any(a in self._owner for a in wanted):
                return False
            self._owner.update(dict.fromkeys(wanted, token))
            return True

    def _release(self, wanted: list[str], token: object) -> None:
        with self._cond:
            for a in wanted:
                if self._owner.get(a) is token:
                    del self._owner[a]
            self._cond.notify_all()

    def _wanted(self, account_ids: Iterable[str]) -> list[str]:
        return sorted(set(account_ids) - self.held_here())

    def _limit(self, timeout: float | None) -> float:
        return self.timeout if timeout is None else _seconds(timeout)

    @staticmethod
    def _timeout_error(wanted: list[str], limit: float) -> LockTimeoutError:
        held = ", ".join(wanted[:10]) + (" …" if len(wanted) > 10 else "")
        return LockTimeoutError(
            f"could not lock {held} within {limit:g}s: another caller holds them", accounts=wanted[:100]
        )

    @contextmanager
    def _section(self, wanted: list[str], token: object) -> Iterator[None]:
        ctx_token: Token[tuple[_Section, ...]] = _HELD.set((*_HELD.get(), (self, token, frozenset(wanted))))
        try:
            yield
        finally:
            with contextlib.suppress(ValueError):  # exited in another context: nothing to restore
                _HELD.reset(ctx_token)
            self._release(wanted, token)

    @contextmanager
    def hold(self, account_ids: Iterable[str], timeout: float | None = None) -> Iterator[None]:
        """Blocking form, for threads."""
        wanted = self._wanted(account_ids)
        limit = self._limit(timeout)
        deadline = time.monotonic() + limit
        token = object()
        with self._cond:
            while any(a in self._owner for a in wanted):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._timeout_error(wanted, limit)
                self._cond.wait(left)
            self._owner.update(dict.fromkeys(wanted, token))
        with self._section(wanted, token):
            yield

    @asynccontextmanager
    async def hold_async(self, account_ids: Iterable[str], timeout: float | None = None) -> AsyncIterator[None]:
        """Awaiting form: never blocks the event loop."""
        wanted = self._wanted(account_ids)
        limit = self._limit(timeout)
        deadline = time.monotonic() + limit
        token = object()
        pause = 0.0005
        for _ in range(1 << 40):  # bounded by the deadline
            if self._try(wanted, token):
                break
            if time.monotonic() >= deadline:
                raise self._timeout_error(wanted, limit)
            await asyncio.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, 0.01)
        with self._section(wanted, token):
            yield
