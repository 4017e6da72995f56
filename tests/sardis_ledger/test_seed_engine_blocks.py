"""The engine blocks of the sardis seed (Quick Start, Ledger Operations, Batch
Processing, Row-Level Locking), run as written on embedded storage, one after the
other as a reader would in one session, then checked for what they did.

The only change to a block is the placeholder URL ``"postgresql://..."``, which
becomes the test's ``sqlite:///…`` or ``memory://`` URL. The locking block makes
its engine without a URL, so ``LEDGER_DATABASE_URL`` names the same store, and it
uses ``amount`` without defining it (the session defines it). The blocks are
copied here; when the seed is beside the repository they must equal its text.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from sardis_ledger import Ledger

SEED = Path(__file__).resolve().parents[2].parent / "shared" / "seeds" / "sardis_ledger.md"

BLOCKS: dict[str, str] = {
    "Quick Start": '''from sardis_ledger import LedgerEngine, LedgerEntryType
from decimal import Decimal

# Initialize the ledger
engine = LedgerEngine(database_url="postgresql://...")

# Create a ledger entry
entry = await engine.create_entry(
    account_id="acc_123",
    amount=Decimal("100.50"),
    entry_type=LedgerEntryType.CREDIT,
    reference="payment_456",
)

print(f"Entry ID: {entry.entry_id}")
print(f"Balance: {entry.running_balance}")
print(f"Merkle Root: {entry.merkle_root}")
''',
    "Ledger Operations": '''from sardis_ledger import LedgerEngine, LedgerEntryType
from decimal import Decimal

engine = LedgerEngine(database_url="postgresql://...")

# Credit an account
credit = await engine.create_entry(
    account_id="acc_123",
    amount=Decimal("500.00"),
    entry_type=LedgerEntryType.CREDIT,
    reference="deposit_789",
    metadata={"source": "bank_transfer"},
)

# Debit an account
debit = await engine.create_entry(
    account_id="acc_123",
    amount=Decimal("100.00"),
    entry_type=LedgerEntryType.DEBIT,
    reference="withdrawal_012",
)

# Get current balance
balance = await engine.get_balance("acc_123")
print(f"Current balance: {balance}")
''',
    "Batch Processing": '''from sardis_ledger import LedgerEngine

engine = LedgerEngine(database_url="postgresql://...")

# Create a batch of entries (atomic commit)
batch = await engine.create_batch([
    {
        "account_id": "acc_sender",
        "amount": "500.00",
        "entry_type": "debit",
        "reference": "transfer_123",
    },
    {
        "account_id": "acc_receiver",
        "amount": "500.00",
        "entry_type": "credit",
        "reference": "transfer_123",
    },
])

print(f"Batch ID: {batch.batch_id}")
print(f"Entries: {len(batch.entries)}")

# Rollback if needed
await engine.rollback_batch(
    batch_id=batch.batch_id,
    reason="Customer requested refund",
)
''',
    "Row-Level Locking": '''from sardis_ledger import LedgerEngine, LockManager

lock_manager = LockManager()
engine = LedgerEngine(lock_manager=lock_manager)

# Acquire lock for concurrent safety
async with engine.lock_account("acc_123"):
    balance = await engine.get_balance("acc_123")
    if balance >= amount:
        await engine.create_entry(
            account_id="acc_123",
            amount=amount,
            entry_type=LedgerEntryType.DEBIT,
        )
''',
}


def _seed_blocks(text: str) -> dict[str, str]:
    out = {}
    for title in BLOCKS:
        m = re.search(rf"^#+ {re.escape(title)}\n.*?```python\n(.*?)```", text, re.S | re.M)
        assert m, f"the seed has no python block under {title!r}"
        out[title] = m.group(1)
    return out


def test_the_copied_blocks_are_the_seeds() -> None:
    if not SEED.exists():
        pytest.skip(f"the seed is not beside the repository ({SEED})")
    assert _seed_blocks(SEED.read_text()) == BLOCKS


async def _run(title: str, url: str, namespace: dict[str, Any]) -> None:
    source = BLOCKS[title].replace('"postgresql://..."', repr(url))
    code = compile(source, f"<seed: {title}>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    result = eval(code, namespace)
    if inspect.iscoroutine(result):
        await result


def test_blocks_run_in_one_session_on_sqlite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    monkeypatch.setenv("LEDGER_DATABASE_URL", url)
    monkeypatch.chdir(tmp_path)
    with Ledger(url) as ledger:  # what the batch block's sender had before the reader ran it
        ledger.create_entry("acc_sender", Decimal("750.00"), "credit")
    ns: dict[str, Any] = {"amount": Decimal("50.25")}

    async def session() -> None:
        for title in BLOCKS:
            await _run(title, url, ns)
        await ns["engine"].close()

    asyncio.run(session())
    out = capsys.readouterr().out
    assert re.search(r"^Entry ID: [0-9a-f]{32}$", out, re.M)
    assert "Balance: 100.5\n" in out
    assert re.search(r"^Merkle Root: [0-9a-f]{64}$", out, re.M)
    assert "Current balance: 500.5\n" in out
    assert re.search(r"^Batch ID: [0-9a-f]{32}$", out, re.M)
    assert "Entries: 2\n" in out
    with Ledger(url) as ledger:
        assert ledger.get_balance("acc_123") == Decimal("450.25")  # the locked debit happened
        assert ledger.get_balance("acc_sender") == Decimal(750)  # the batch was rolled back
        assert ledger.get_balance("acc_receiver") == 0
        batch_id = ns["batch"].batch_id
        assert ledger.reversal_of(batch_id) is not None
        assert ledger.tree_head().tree_size == 1 + 1 + 2 + 2 + 2 + 1
        assert ledger.verify().ok


@pytest.mark.parametrize("title", ["Quick Start", "Ledger Operations", "Row-Level Locking"])
def test_self_contained_blocks_run_on_memory(title: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each ``memory://`` engine has its own store, so only blocks that need no earlier
    state run alone there (the batch block debits an account a reader funded first)."""
    monkeypatch.setenv("LEDGER_DATABASE_URL", "memory://")
    ns: dict[str, Any] = {"amount": Decimal(1), "LedgerEntryType": __import__("sardis_ledger").LedgerEntryType}

    async def run() -> None:
        await _run(title, "memory://", ns)
        engine = ns["engine"]
        assert engine.database_url == "memory://"
        assert (await engine.verify()).ok
        await engine.close()

    asyncio.run(run())
    if title == "Ledger Operations":
        assert ns["balance"] == Decimal(400)


def test_without_a_url_the_engine_uses_the_environment_else_an_embedded_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sardis_ledger import LedgerEngine

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LEDGER_DATABASE_URL", f"sqlite:///{tmp_path / 'from_env.db'}")
    from_env = LedgerEngine()
    assert from_env.database_url.endswith("from_env.db")
    assert (tmp_path / "from_env.db").exists()
    asyncio.run(from_env.close())
    monkeypatch.delenv("LEDGER_DATABASE_URL")
    engine = LedgerEngine()
    assert engine.database_url == "sqlite:///ledger.db"
    asyncio.run(engine.create_entry("a", 1, "credit"))
    asyncio.run(engine.close())
    with Ledger(f"sqlite:///{tmp_path / 'ledger.db'}") as ledger:
        assert ledger.get_balance("a") == 1
