"""Many writers at once: asyncio tasks and threads on one engine (every backend),
and real processes on one database (``durable_url``). Whatever the interleaving:
no overspend, no lost update, conservation, and a log that verifies.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import threading
from decimal import Decimal
from pathlib import Path

import pytest

from sardis_ledger import (
    InsufficientBalanceError,
    Ledger,
    LedgerEngine,
    LockManager,
    LockTimeoutError,
)

WORKERS = Path(__file__).with_name("engine_workers.py")


def _sum(ledger: Ledger, accounts: list[str]) -> Decimal:
    return sum((ledger.get_balance(a) for a in accounts), Decimal(0))


def test_many_tasks_never_overspend(backend_url: str) -> None:
    async def main() -> None:
        async with LedgerEngine(database_url=backend_url) as engine:
            await engine.create_entry("pool", 60, "credit")

            async def spend(i: int) -> bool:
                try:
                    await engine.transfer("pool", f"t{i % 7}", 1)
                    return True
                except InsufficientBalanceError:
                    return False

            results = await asyncio.gather(*(spend(i) for i in range(150)))
            assert (results.count(True), results.count(False)) == (60, 90)
            ledger = engine.sync
            assert ledger.get_balance("pool") == 0
            assert _sum(ledger, [f"t{i}" for i in range(7)]) == 60
            assert ledger.tree_head().tree_size == 1 + 2 * 60
            assert ledger.verify().ok

    asyncio.run(main())


def test_lock_account_makes_check_then_act_atomic(backend_url: str) -> None:
    """The seed's Row-Level Locking pattern, raced by many tasks: every debit that
    was decided under the lock succeeds, and the balance never goes below zero."""

    async def main() -> None:
        async with LedgerEngine(database_url=backend_url, lock_manager=LockManager(timeout=60)) as engine:
            await engine.create_entry("acc_123", 10, "credit")
            amount = Decimal(3)

            async def worker() -> str:
                async with engine.lock_account("acc_123"):
                    balance = await engine.get_balance("acc_123")
                    await asyncio.sleep(0)  # let the others try to get in between
                    if balance >= amount:
                        await engine.create_entry("acc_123", amount, "debit")
                        return "debited"
                    return "declined"

            outcomes = await asyncio.gather(*(worker() for _ in range(12)))
            assert outcomes.count("debited") == 3
            assert outcomes.count("declined") == 9
            assert await engine.get_balance("acc_123") == 1

    asyncio.run(main())


def test_lock_sets_in_opposite_orders_do_not_deadlock_and_waits_time_out() -> None:
    async def main() -> None:
        locks = LockManager(timeout=5)
        engine = LedgerEngine(database_url="memory://", lock_manager=locks)
        order: list[str] = []

        async def hold(first: str, second: str, tag: str) -> None:
            async with engine.lock_account(first, second):
                order.append(f"{tag}+")
                await asyncio.sleep(0.005)
                order.append(f"{tag}-")

        await asyncio.wait_for(
            asyncio.gather(*(hold("a", "b", f"x{i}") if i % 2 else hold("b", "a", f"y{i}") for i in range(20))),
            timeout=60,
        )
        # whole lock sets are granted at once: sections never interleave
        assert len(order) == 40
        assert all(order[i][:-1] == order[i + 1][:-1] for i in range(0, len(order), 2))

        entered, leave = asyncio.Event(), asyncio.Event()

        async def holder() -> None:
            async with engine.lock_account("a"):
                entered.set()
                await leave.wait()

        task = asyncio.create_task(holder())  # its own context: this task does not hold "a"
        await entered.wait()
        with pytest.raises(LockTimeoutError, match=r"could not lock a, c within 0\.05s"):
            async with engine.lock_account("c", "a", timeout=0.05):
                raise AssertionError("lock granted while held elsewhere")
        assert locks.is_locked("a")
        assert not locks.is_locked("c")
        leave.set()
        await task
        assert not locks.is_locked("a")
        await engine.close()

    asyncio.run(main())


def test_a_task_that_outlives_its_section_no_longer_holds_its_locks() -> None:
    async def main() -> None:
        locks = LockManager(timeout=0.05)
        spawned: list[asyncio.Task[None]] = []
        go = asyncio.Event()

        async def child() -> None:
            assert locks.held_here() == {"a"}  # started inside the section: shares it
            await go.wait()
            assert locks.held_here() == frozenset()
            async with locks.hold_async(["a"]):  # must really take the lock now
                assert locks.is_locked("a")

        async with locks.hold_async(["a"]):
            spawned.append(asyncio.create_task(child()))
            await asyncio.sleep(0.01)
        async with locks.hold_async(["a"]):
            go.set()
            with pytest.raises(LockTimeoutError):
                await spawned[0]

    asyncio.run(main())


def test_many_threads_on_one_ledger_lose_no_update(backend_url: str) -> None:
    with Ledger(backend_url) as ledger:
        ledger.create_entry("shared", 40, "credit")
        for g in ("g0", "g1", "g2"):
            ledger.create_entry(g, 100, "credit")
        spent: list[int] = []
        errors: list[BaseException] = []

        def work(n: int) -> None:
            try:
                for i in range(25):
                    ledger.create_entry("hot", 1, "credit")
                    try:
                        ledger.create_entry("shared", 1, "debit")
                        spent.append(1)
                    except InsufficientBalanceError:
                        pass
                    with contextlib.suppress(InsufficientBalanceError):
                        ledger.transfer(f"g{(n + i) % 3}", f"g{(n + i + 1) % 3}", 7)
            except BaseException as exc:  # surfaced below: a thread's failure must fail the test
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert not any(t.is_alive() for t in threads)
        assert not errors, errors
        assert ledger.get_balance("hot") == 150
        assert len(spent) == 40
        assert ledger.get_balance("shared") == 0
        assert _sum(ledger, ["g0", "g1", "g2"]) == 300
        report = ledger.verify()
        assert report.ok, report.problems


@pytest.mark.slow
def test_processes_on_one_database_no_overspend_no_lost_update(durable_url: str) -> None:
    with Ledger(durable_url) as ledger:
        ledger.create_entry("shared", 50, "credit")
        for g in ("g0", "g1", "g2", "g3"):
            ledger.create_entry(g, 100, "credit")
        start = ledger.tree_head().tree_size
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKERS), "contend", durable_url, str(w), "120"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for w in range(4)
    ]
    try:
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    done = [json.loads(out) for out, _ in outs]
    with Ledger(durable_url) as ledger:
        assert sum(d["spent"] for d in done) == 50, done  # 4 x 40 tried, exactly the 50 there were
        assert ledger.get_balance("shared") == 0
        assert ledger.get_balance("hot") == sum(d["credited"] for d in done) == 4 * 40
        assert _sum(ledger, ["g0", "g1", "g2", "g3"]) == 400
        assert ledger.tree_head().tree_size == start + sum(d["entries"] for d in done)
        report = ledger.verify()
        assert report.ok, report.problems
