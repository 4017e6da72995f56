"""Bad input gets a clear error of the one tree and writes nothing, on every backend.

Each case is checked the same way: the call raises the named error (a
:class:`ValidationError` unless stated), the message says what was wrong, and the
Merkle log, balances and account list are exactly as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest

from sardis_ledger import Ledger, LedgerEngine, LedgerError, LockManager, ValidationError

BAD_AMOUNTS: list[Any] = [
    -1, 0, Decimal("-0"), Decimal("-5"), Decimal("NaN"), Decimal("sNaN"), Decimal("Infinity"), Decimal("-Infinity"),
    1.5, 0.1 + 0.2, float("nan"), float("inf"), Decimal(0.1 + 0.2), "0.30000000000000004", "1.0000001",
    10**30, "1e30", Decimal("1E+1000000"), Decimal("1e-30"), "9" * 100, "1" + "0" * 19,
    True, False, None, "", " ", "abc", "1,000", "1_000", "0x10", "--1", [1], {"amount": 1}, b"1", object(),
    Decimal("1." + "0" * 70 + "1"),
]
BAD_ACCOUNTS: list[Any] = [
    "", " ", "x" * 129, "x" * 1_000_000, "../etc/passwd", "..", "a/b", "a\\b", "a\x00b", "a\nb", "a\tb", "\x1b[31m",
    "a'; DROP TABLE accounts; --", 'a"b', "ü", "名前", "acc\u202e", " a", "a ", ".hidden", "-x", "_x",
    None, 123, b"acc", ["acc"], {"acc": 1},
]


@pytest.fixture
def ledger(backend_url: str) -> Iterator[Ledger]:
    with Ledger(backend_url) as led:
        led.create_entry("alice", 100, "credit")
        led.create_account("bob")
        yield led


def _state(ledger: Ledger) -> tuple[object, ...]:
    return (
        ledger.tree_head(),
        [(a.account_id, a.balance) for a in ledger.list_accounts()],
        ledger.get_asset("TOKEN"),
    )


def refused(ledger: Ledger, call: Callable[[], object], error: type[LedgerError] = ValidationError) -> str:
    before = _state(ledger)
    with pytest.raises(error) as info:
        call()
    assert _state(ledger) == before, "a refused call changed the ledger"
    message = str(info.value)
    assert message
    assert "Traceback" not in message
    return message


def test_bad_amounts_are_refused(ledger: Ledger) -> None:
    for amount in BAD_AMOUNTS:
        refused(ledger, lambda a=amount: ledger.create_entry("alice", a, "credit"))
        refused(ledger, lambda a=amount: ledger.create_entry("alice", a, "debit"))
        refused(ledger, lambda a=amount: ledger.transfer("alice", "bob", a))
        for kind in ("credit", "debit"):
            leg = {"account_id": "bob", "amount": amount, "entry_type": kind}
            refused(ledger, lambda leg=leg: ledger.create_batch([leg]))
        refused(ledger, lambda a=amount: ledger.transfer_many([("alice", "bob", 1), ("alice", "bob", a)]))
    assert "float" in refused(ledger, lambda: ledger.create_entry("alice", 0.1 + 0.2, "credit"))
    assert "decimal places" in refused(ledger, lambda: ledger.create_entry("alice", Decimal(0.1 + 0.2), "credit"))
    assert "positive" in refused(ledger, lambda: ledger.create_entry("alice", -1, "credit"))
    assert "finite" in refused(ledger, lambda: ledger.create_entry("alice", Decimal("NaN"), "credit"))


def test_balances_cannot_overflow(ledger: Ledger) -> None:
    big = Decimal(10**12)  # the largest amount of a 6-decimal asset: 10**18 minor units
    ledger.create_entry("whale", big, "credit")
    refused(ledger, lambda: ledger.create_entry("whale", 1, "credit"))
    refused(ledger, lambda: ledger.create_entry("alice", big + 1, "credit"))


def test_bad_account_ids_are_refused(ledger: Ledger) -> None:
    for account in BAD_ACCOUNTS:
        refused(ledger, lambda a=account: ledger.create_entry(a, 1, "credit"))
        refused(ledger, lambda a=account: ledger.create_account(a))
        refused(ledger, lambda a=account: ledger.transfer("alice", a, 1))
        refused(ledger, lambda a=account: ledger.transfer(a, "bob", 1))
        refused(ledger, lambda a=account: ledger.create_batch([{"account_id": a, "amount": 1, "entry_type": "credit"}]))
        refused(ledger, lambda a=account: ledger.get_balance(a))
        if account is not None:  # None is "no filter" here
            refused(ledger, lambda a=account: ledger.list_entries(account_id=a))
    assert "account_id" in refused(ledger, lambda: ledger.create_entry("../etc/passwd", 1, "credit"))
    refused(ledger, lambda: ledger.transfer("alice", "alice", 1))


def test_bad_batch_specs_are_refused(ledger: Ledger) -> None:
    ok = {"account_id": "bob", "amount": "1", "entry_type": "credit"}
    specs: list[Any] = [
        [], {}, "credit bob 1", b"x", None, 42, [ok, "not a mapping"], [ok, None],
        [{**ok, "amout": "1"}], [{**ok, "__class__": "x"}], [{**ok, "sequence": 7}], [{**ok, 1: 2}],
        [{"account_id": "bob", "amount": "1"}], [{"amount": "1", "entry_type": "credit"}],
        [{**ok, "entry_type": "withdraw"}], [{**ok, "entry_type": None}], [{**ok, "asset": "usd"}],
        [{**ok, "asset": "NOPE"}], [{**ok, "metadata": "x"}], [{**ok, "metadata": {"x": float("nan")}}],
        [{**ok, "metadata": {"x": Decimal(1)}}], [{**ok, "metadata": {"x": "y" * 20_000}}],
        [{**ok, "reference": "r" * 257}], [{**ok, "reference": "a\x00b"}], [{**ok, "reference": "\ud800"}],
        [{**ok, "reference": 5}], [ok] * 10_001,
    ]
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(5_000):
        node["x"] = {}
        node = node["x"]
    specs.append([{**ok, "metadata": deep}])
    for spec in specs:
        refused(ledger, lambda s=spec: ledger.create_batch(s))
        refused(ledger, lambda s=spec: ledger.post_many([[ok], s]))
    assert "amout" in refused(ledger, lambda: ledger.create_batch([{**ok, "amout": "1"}]))
    new_in_nope = [{**ok, "account_id": "new", "asset": "NOPE"}]
    assert "unknown asset" in refused(ledger, lambda: ledger.create_batch(new_in_nope))


def test_other_bad_arguments_are_refused(ledger: Ledger) -> None:
    cases: list[Callable[[], object]] = [
        lambda: ledger.create_entry("alice", 1, "credit", idempotency_key=""),
        lambda: ledger.create_entry("alice", 1, "credit", idempotency_key="k" * 257),
        lambda: ledger.create_entry("alice", 1, "credit", idempotency_key=7),  # type: ignore[arg-type]
        lambda: ledger.create_entry("alice", 1, "credit", metadata=[1]),  # type: ignore[arg-type]
        lambda: ledger.rollback_batch("", "x"),
        lambda: ledger.rollback_batch(None, "x"),  # type: ignore[arg-type]
        lambda: ledger.rollback_batch("b" * 1000, "x"),
        lambda: ledger.rollback_batch("x", "r" * 300),
        lambda: ledger.create_account("carol", overdraft_limit=-1),
        lambda: ledger.create_account("carol", overdraft_limit=1.5),  # type: ignore[arg-type]
        lambda: ledger.create_account("carol", overdraft_limit="0.0000001"),
        lambda: ledger.create_account("carol", asset="tok"),
        lambda: ledger.register_asset("usd", 2),
        lambda: ledger.register_asset("A" * 17, 2),
        lambda: ledger.register_asset("USD", 19),
        lambda: ledger.register_asset("USD", -1),
        lambda: ledger.register_asset("USD", True),  # type: ignore[arg-type]
        lambda: ledger.get_balance("alice", at="yesterday"),  # type: ignore[arg-type]
        lambda: ledger.get_balance("alice", at=1.5),  # type: ignore[arg-type]
        lambda: ledger.get_balance("alice", at=datetime(2024, 1, 1)),
        lambda: ledger.list_entries(limit=0),
        lambda: ledger.list_entries(limit=10_001),
        lambda: ledger.list_entries(limit="5"),  # type: ignore[arg-type]
        lambda: ledger.list_entries(cursor=0),
        lambda: ledger.list_entries(cursor=True),  # type: ignore[arg-type]
        lambda: ledger.list_entries(since=datetime(2024, 1, 1)),
        lambda: ledger.list_entries(since=0),
        lambda: ledger.list_entries(batch_id=""),
        lambda: ledger.list_accounts(limit=-1),
        lambda: ledger.snapshot(at="now"),  # type: ignore[arg-type]
        lambda: ledger.get_entry(""),
        lambda: ledger.verify(chunk=0),
    ]
    for call in cases:
        refused(ledger, call)


def test_hostile_text_that_is_valid_is_stored_verbatim(ledger: Ledger) -> None:
    """Quotes, SQL and unicode are data, not syntax, wherever free text is allowed."""
    reference = "O'Brien\"; DROP TABLE entries; -- ü 名前 \U0001f600"
    meta = {"note": "'); DELETE FROM accounts; --", "ü": ["\u202e", 1, None, True]}
    entry = ledger.create_entry("alice", 1, "credit", reference=reference, metadata=meta)
    assert (entry.reference, dict(entry.metadata)) == (reference, meta)
    assert [e.entry_id for e in ledger.list_entries(reference=reference).items] == [entry.entry_id]
    assert ledger.get_entry(entry.entry_id).metadata == meta
    assert entry.receipt is not None
    assert entry.receipt.verify(entry.leaf)
    assert ledger.verify().ok


def test_the_async_engine_refuses_alike(backend_url: str) -> None:
    asyncio.run(_async_engine_refuses(backend_url))


async def _async_engine_refuses(backend_url: str) -> None:
    engine = LedgerEngine(database_url=backend_url)
    try:
        await engine.create_entry("alice", 5, "credit")
        size = (await engine.tree_head()).tree_size
        for call in (
            lambda: engine.create_entry(["not", "hashable"], 1, "credit"),  # type: ignore[arg-type]
            lambda: engine.create_entry("alice", 0.5, "credit"),  # type: ignore[arg-type]
            lambda: engine.create_batch("nope"),  # type: ignore[arg-type]
            lambda: engine.create_batch([{"account_id": {"x": 1}, "amount": 1, "entry_type": "credit"}]),
            lambda: engine.transfer("alice", None, 1),  # type: ignore[arg-type]
            lambda: engine.rollback_batch("", "x"),
        ):
            with pytest.raises(ValidationError):
                await call()
        assert (await engine.tree_head()).tree_size == size
    finally:
        await engine.close()


@pytest.mark.parametrize("timeout", [-1, float("nan"), float("inf"), "5", True, None])
def test_bad_lock_timeouts_are_refused(timeout: Any) -> None:
    if timeout is not None:
        with pytest.raises(ValidationError, match="timeout"):
            LockManager(timeout=timeout)

    async def lock() -> None:
        engine = LedgerEngine(database_url="memory://")
        try:
            async with engine.lock_account("a", timeout=timeout):
                pass
        finally:
            await engine.close()

    if timeout is None:  # None means "the manager's default"
        asyncio.run(lock())
    else:
        with pytest.raises(ValidationError, match="timeout"):
            asyncio.run(lock())
