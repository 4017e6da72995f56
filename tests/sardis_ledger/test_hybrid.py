"""The hybrid ledger: every entry in the ledger store and the audit store, crashes
between the two writes repaired on restart, and the cross-check between them."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import sys
import textwrap
from decimal import Decimal
from pathlib import Path

import pytest

from sardis_ledger import HybridConfig, Ledger, LedgerEntryType, create_hybrid_ledger
from sardis_ledger.errors import InsufficientBalanceError, ValidationError
from sardis_ledger.hybrid import HybridLedgerSync


def _seed_block(postgres_url: str, tmp_path: Path, audit_url: str | None = None) -> None:
    """The seed's "Hybrid Ledger" block, with the placeholder URL made real."""

    async def block() -> None:
        # --- seed ---
        ledger = create_hybrid_ledger(
            config=HybridConfig(
                postgres_url=postgres_url,
                immudb_host="localhost",
                immudb_port=3322,
                audit_url=audit_url,  # not in the seed: where the audit store is when it is PostgreSQL
                key_dir=str(tmp_path / "keys"),
            )
        )
        entry = await ledger.create_entry(
            account_id="acc_123",
            amount=Decimal("100.00"),
            entry_type=LedgerEntryType.CREDIT,
        )
        print(f"PostgreSQL ID: {entry.receipt.pg_id}")
        print(f"immudb TX: {entry.receipt.immudb_tx}")
        # --- end of seed ---
        assert (entry.receipt.pg_id, entry.receipt.immudb_tx) == (1, 1)
        assert entry.running_balance == Decimal("100.00")
        assert entry.receipt.verify(entry.leaf)
        moved = await ledger.transfer("acc_123", "acc_9", "2.5", reference="job-7")
        assert [e.receipt.immudb_tx for e in moved.entries] == [2, 3]
        again = await ledger.get_entry(moved.entries[1].entry_id)
        assert again.receipt.pg_id == 3
        assert again.receipt.immudb_tx == 3
        assert again.receipt.verify(again.leaf)
        assert (await ledger.cross_check()).ok
        report = await ledger.verify()
        assert report.ok, report.problems
        assert report.audit_store_checked
        await ledger.close()

    asyncio.run(block())


def test_seed_block_on_sqlite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LEDGER_KEY_DIR", raising=False)
    _seed_block(f"sqlite:///{tmp_path / 'ledger.db'}", tmp_path)
    assert (tmp_path / "sardis_audit.db").exists()  # the audit store sits beside a file ledger


def test_seed_block_on_postgresql(pg_url: str, second_pg_url: str, tmp_path: Path) -> None:
    _seed_block(pg_url, tmp_path, audit_url=second_pg_url)


@pytest.fixture
def config(tmp_path: Path) -> HybridConfig:
    return HybridConfig(postgres_url=f"sqlite:///{tmp_path / 'ledger.db'}", audit_url=f"sqlite:///{tmp_path / 'a.db'}",
                        key_dir=str(tmp_path / "keys"), intent_grace_seconds=0)


def test_refused_writes_touch_neither_store(config: HybridConfig) -> None:
    hybrid = HybridLedgerSync(config)
    hybrid.create_entry("alice", 5, "credit")
    with pytest.raises(InsufficientBalanceError):
        hybrid.transfer("alice", "bob", 6)
    assert hybrid.ledger.tree_head().tree_size == 1
    assert hybrid.audit.tree_head().tree_size == 1
    assert hybrid.audit.pending_intents() == []
    hybrid.close()


def test_the_audit_store_must_be_another_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'same.db'}"
    with pytest.raises(ValidationError, match="different database"):
        HybridLedgerSync(HybridConfig(postgres_url=url, audit_url=url, key_dir=str(tmp_path / "keys")))


_CRASH = textwrap.dedent("""
    import os, signal, sys
    from sardis_ledger.hybrid import HybridConfig, HybridLedgerSync

    ledger_url, audit_url, key_dir, where = sys.argv[1:5]
    hybrid = HybridLedgerSync(HybridConfig(postgres_url=ledger_url, audit_url=audit_url, key_dir=key_dir))
    hybrid.create_entry("alice", 10, "credit")

    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    if where == "after-ledger":      # the ledger committed, the audit write never happens
        hybrid._mirror = die
    else:                            # the intent is recorded, the ledger write never happens
        hybrid.ledger.transfer = die
    hybrid.transfer("alice", "bob", 3)
    raise SystemExit("not killed")
""")


def _crash(config: HybridConfig, where: str) -> None:
    assert config.audit_url is not None
    proc = subprocess.run([sys.executable, "-c", _CRASH, config.ledger_url(), config.audit_url, str(config.key_dir),
                           where], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def crash_config(request: pytest.FixtureRequest, tmp_path: Path) -> HybridConfig:
    if request.param == "sqlite":
        ledger, audit = f"sqlite:///{tmp_path / 'ledger.db'}", f"sqlite:///{tmp_path / 'a.db'}"
    else:
        ledger, audit = request.getfixturevalue("pg_url"), request.getfixturevalue("second_pg_url")
    return HybridConfig(postgres_url=ledger, audit_url=audit, key_dir=str(tmp_path / "keys"), intent_grace_seconds=0)


def test_a_crash_after_the_ledger_write_is_repaired_on_restart(crash_config: HybridConfig) -> None:
    _crash(crash_config, "after-ledger")
    with Ledger(crash_config.ledger_url()) as led:
        assert led.tree_head().tree_size == 3  # the transfer committed before the kill
    before = HybridLedgerSync(crash_config, recover=False)
    assert len(before.audit.pending_intents()) == 1
    report = before.cross_check()
    assert report.missing_in_audit == [2, 3]  # the cross-check sees the gap too
    before.close()

    restarted = HybridLedgerSync(crash_config)  # opening it recovers
    assert restarted.last_recovery is not None
    assert len(restarted.last_recovery.completed) == 1
    assert restarted.audit.pending_intents() == []
    assert restarted.cross_check().ok
    assert restarted.verify().ok
    assert restarted.get_entry(restarted.ledger.list_entries(since=3, until=3).items[0].entry_id).receipt.immudb_tx == 3
    restarted.close()


def test_a_crash_before_the_ledger_write_leaves_nothing(crash_config: HybridConfig) -> None:
    _crash(crash_config, "before-ledger")
    restarted = HybridLedgerSync(crash_config)
    assert restarted.last_recovery is not None
    assert len(restarted.last_recovery.abandoned) == 1
    assert restarted.ledger.tree_head().tree_size == 1
    assert restarted.cross_check().ok
    restarted.close()


def test_young_intents_are_left_to_their_writer(tmp_path: Path) -> None:
    config = HybridConfig(postgres_url=f"sqlite:///{tmp_path / 'l.db'}", audit_url=f"sqlite:///{tmp_path / 'a.db'}",
                          key_dir=str(tmp_path / "keys"), intent_grace_seconds=3600)
    hybrid = HybridLedgerSync(config)
    hybrid.audit.add_intent("in-flight", "hybrid:in-flight", "{}")
    report = hybrid.recover()
    assert (report.waiting, report.abandoned) == (1, [])
    hybrid.close()


def test_cross_check_names_every_difference(config: HybridConfig, tmp_path: Path) -> None:
    hybrid = HybridLedgerSync(config)
    hybrid.create_entry("alice", 100, "credit")
    hybrid.transfer("alice", "bob", 10)
    hybrid.transfer("alice", "carol", 20)  # sequences 1..5, all in both stores
    hybrid.ledger.transfer("bob", "carol", 1)  # written around the hybrid: 6, 7 only in the ledger
    ghost = hybrid.ledger.list_entries(since=1, until=1).items[0]
    hybrid.audit.append("ghost", {"leaf": ghost.leaf.decode()}, ref_seq=42)  # names an entry the ledger lacks
    raw = sqlite3.connect(tmp_path / "a.db", isolation_level=None)
    data = json.loads(raw.execute("SELECT data FROM audit_records WHERE tx = 4").fetchone()[0])
    assert '"amount":"20"' in data["leaf"]
    data["leaf"] = data["leaf"].replace('"amount":"20"', '"amount":"2"')
    raw.execute("DROP TRIGGER audit_records_no_update")
    forged = json.dumps(data, sort_keys=True, separators=(",", ":"))
    raw.execute("UPDATE audit_records SET data = ? WHERE tx = 4", (forged,))
    raw.close()

    report = hybrid.cross_check()
    assert not report.ok
    assert report.missing_in_audit == [6, 7]
    assert report.missing_in_ledger == [42]
    assert report.different == [4]
    assert report.first_bad_sequence == 4
    full = hybrid.verify()
    assert not full.ok
    assert full.first_bad_sequence == 4
    assert any("audit store" in p for p in full.problems)

    repaired = hybrid.cross_check(repair=True)
    assert repaired.repaired == 2
    after = hybrid.cross_check()
    assert (after.missing_in_audit, after.missing_in_ledger, after.different) == ([], [42], [4])
    hybrid.close()
