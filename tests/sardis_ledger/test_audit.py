"""The immutable audit trail: the seed's API, its store selection, and each
verification status on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from sardis_ledger import (
    AuditTrail,
    ImmutableConfig,
    LedgerEngine,
    LedgerEntryType,
    VerificationStatus,
    create_audit_trail,
    verifier,
)
from sardis_ledger.errors import IdempotencyConflictError, IntegrityError, ValidationError
from sardis_ledger.immutable import AuditLog
from sardis_ledger.signing import Keyring


def test_seed_block_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The seed's "Immutable Audit Trail" block, verbatim apart from the entry it audits."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LEDGER_AUDIT_DIR", raising=False)
    monkeypatch.delenv("LEDGER_KEY_DIR", raising=False)

    async def block() -> None:
        engine = LedgerEngine(database_url=f"sqlite:///{tmp_path / 'ledger.db'}")
        entry = await engine.create_entry(account_id="acc_123", amount=Decimal("100.50"),
                                          entry_type=LedgerEntryType.CREDIT, reference="payment_456")
        # --- seed ---
        audit = create_audit_trail(
            config=ImmutableConfig(
                host="localhost",
                port=3322,
                database="sardis_audit",
            )
        )
        receipt = await audit.write(
            entry_id=entry.entry_id,
            data=entry.to_dict(),
        )
        print(f"Verified at: {receipt.timestamp}")
        print(f"Merkle proof: {receipt.merkle_proof}")
        verification = await audit.verify(entry.entry_id)
        assert verification.status == VerificationStatus.VERIFIED
        # --- end of seed ---
        assert receipt.verify()
        assert receipt.tx_id == 1
        assert json.loads(receipt.leaf)["data"]["entry_id"] == entry.entry_id
        await audit.close()
        await engine.close()

    asyncio.run(block())
    assert (tmp_path / "sardis_audit.db").exists()  # the config's database names the store
    assert (tmp_path / "keys" / "keyring.json").exists()


def test_config_selects_the_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEDGER_AUDIT_DIR", str(tmp_path))
    assert ImmutableConfig().store_url() == f"sqlite:///{tmp_path / 'sardis_audit.db'}"
    assert ImmutableConfig(database="a.db", directory="/srv").store_url() == "sqlite:////srv/a.db"
    assert ImmutableConfig(url="postgresql://h/db").store_url() == "postgresql://h/db"
    assert ImmutableConfig(host="db", port=5433, database="audit", backend="postgresql", username="u",
                           password="p@ss").store_url() == "postgresql://u:p%40ss@db:5433/audit"
    with pytest.raises(ValidationError, match="no immudb adapter"):
        ImmutableConfig(backend="immudb").store_url()
    with pytest.raises(ValidationError):
        ImmutableConfig(database="../escape").store_url()
    with pytest.raises(ValidationError, match="in-memory"):
        AuditLog("memory://")


@pytest.fixture
def log(tmp_path: Path) -> Iterator[AuditLog]:
    audit = AuditLog(f"sqlite:///{tmp_path / 'audit.db'}", keyring=Keyring(tmp_path / "keys"))
    for i in range(6):
        audit.append(f"e{i}", {"i": i, "amount": Decimal("1.50")}, ref_seq=i + 1)
    yield audit
    audit.close()


def test_writes_are_idempotent_and_conflicts_refused(log: AuditLog) -> None:
    again = log.append("e2", {"amount": Decimal("1.50"), "i": 2}, ref_seq=3)
    assert again.tx_id == 3
    assert log.tree_head().tree_size == 6
    with pytest.raises(IdempotencyConflictError):
        log.append("e2", {"i": 99}, ref_seq=3)
    with pytest.raises(ValidationError):
        log.append("", {"i": 1})
    with pytest.raises(ValidationError):
        log.append("x", {"f": object()})
    with pytest.raises(ValidationError):
        log.append("x", [1, 2])  # type: ignore[arg-type]
    assert log.tree_head().tree_size == 6  # refused writes wrote nothing


def test_receipts_and_proofs_verify_independently(log: AuditLog) -> None:
    receipt = log.append("e6", {"i": 6})
    p = receipt.merkle_proof
    verifier.verify_inclusion(p.leaf_index, p.tree_size, verifier.leaf_hash(receipt.leaf),
                              [bytes.fromhex(x) for x in p.inclusion_proof], bytes.fromhex(p.root))
    assert receipt.signed_tree_head is not None
    keys = verifier.load_public_keys(log.keyring.public_keyring())
    sth = verifier.verify_signed_tree_head(receipt.signed_tree_head, keys, origin="sardis-audit")
    assert (sth.tree_size, sth.root) == (7, p.root)
    old_root = log.root_at(3)
    verifier.verify_consistency(3, 7, bytes.fromhex(old_root), bytes.fromhex(p.root),
                                [bytes.fromhex(x) for x in log.consistency_proof(3, 7)])


def _raw(path: Path, sql: str, args: tuple[object, ...] = ()) -> None:
    """Change the store behind the audit log's back: drop its append-only triggers first."""
    conn = sqlite3.connect(path, isolation_level=None)
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        conn.execute(f"DROP TRIGGER {name}")
    conn.execute(sql, args)
    conn.close()


def _status(log: AuditLog, entry_id: str) -> VerificationStatus:
    return log.verify_entry(entry_id).status


def test_statuses_on_sqlite(log: AuditLog, tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    assert _status(log, "e1") is VerificationStatus.VERIFIED
    assert _status(log, "nope") is VerificationStatus.MISSING
    _raw(db, "UPDATE audit_records SET data = ? WHERE entry_id = 'e1'", ('{"amount":"9.50","i":1}',))
    assert _status(log, "e1") is VerificationStatus.TAMPERED
    _raw(db, "DELETE FROM audit_records WHERE entry_id = 'e4'")
    assert _status(log, "e4") is VerificationStatus.MISSING
    _raw(db, "DELETE FROM audit_nodes WHERE level = 0 AND idx = 3")  # e2's sibling leaf
    assert _status(log, "e2") is VerificationStatus.UNVERIFIABLE
    report = log.verify_all()
    assert not report.ok
    assert report.first_bad_sequence == 2
    assert any("tx 5 is missing" in p for p in report.problems)


def test_a_rewritten_store_is_caught_by_its_signed_head(log: AuditLog, tmp_path: Path) -> None:
    """Rewrite a record and every hash above it consistently: only the signed head
    (kept outside the store) can tell, and it does."""
    db = tmp_path / "audit.db"
    assert _status(log, "e0") is VerificationStatus.VERIFIED  # signs the head of size 6
    copy = AuditLog(f"sqlite:///{tmp_path / 'forged.db'}", keyring=Keyring(tmp_path / "other-keys"))
    for i in range(6):
        copy.append(f"e{i}", {"i": i if i else 1000, "amount": Decimal("1.50")}, ref_seq=i + 1)
    copy.close()
    log.close()
    shutil.copy(tmp_path / "forged.db", db)
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"audit.db{suffix}").unlink(missing_ok=True)
    reopened = AuditLog(f"sqlite:///{db}", keyring=Keyring(tmp_path / "keys"))
    result = reopened.verify_entry("e3")
    assert result.status is VerificationStatus.TAMPERED
    assert "rewritten" in result.message
    assert not reopened.verify_all().ok
    with pytest.raises(IntegrityError):
        reopened.signed_tree_head()
    reopened.close()


def test_a_rolled_back_store_is_caught(log: AuditLog, tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    log.close()
    shutil.copy(db, tmp_path / "old.db")
    log = AuditLog(f"sqlite:///{db}", keyring=Keyring(tmp_path / "keys"))
    log.append("e6", {"i": 6})  # signed at size 7
    log.close()
    shutil.copy(tmp_path / "old.db", db)
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"audit.db{suffix}").unlink(missing_ok=True)
    back = AuditLog(f"sqlite:///{db}", keyring=Keyring(tmp_path / "keys"))
    result = back.verify_entry("e1")
    assert result.status is VerificationStatus.TAMPERED
    assert "rolled back" in result.message
    report = back.verify_all()
    assert not report.ok
    assert report.first_bad_sequence == 7
    back.close()


def test_unknown_signing_key_is_unverifiable(log: AuditLog, tmp_path: Path) -> None:
    log.signed_tree_head()
    ring = tmp_path / "keys" / "keyring.json"
    body = json.loads(ring.read_text())
    other = Keyring(tmp_path / "elsewhere").public_keyring()
    ring.write_text(json.dumps(other))
    assert body["current"] != other["current"]
    fresh = AuditLog(log.url, keyring=Keyring(tmp_path / "keys"))
    assert _status(fresh, "e1") is VerificationStatus.UNVERIFIABLE
    fresh.close()


def test_audit_trail_on_postgresql(pg_url: str, tmp_path: Path) -> None:
    import psycopg

    async def scenario() -> None:
        audit = AuditTrail(ImmutableConfig(url=pg_url, key_dir=str(tmp_path / "keys")))
        receipts = [await audit.write(entry_id=f"e{i}", data={"i": i}) for i in range(5)]
        assert [r.tx_id for r in receipts] == [1, 2, 3, 4, 5]
        assert all(r.verify() for r in receipts)
        assert (await audit.verify("e3")).status is VerificationStatus.VERIFIED
        assert (await audit.verify("zz")).status is VerificationStatus.MISSING
        with psycopg.connect(pg_url, autocommit=True) as conn:
            with pytest.raises(psycopg.Error, match="append-only"):
                conn.execute("UPDATE audit_records SET data = '{}' WHERE entry_id = 'e3'")
            conn.execute("SET session_replication_role = replica")  # superuser: triggers off
            conn.execute("""UPDATE audit_records SET data = '{"i":33}' WHERE entry_id = 'e3'""")
        assert (await audit.verify("e3")).status is VerificationStatus.TAMPERED
        report = await audit.verify_all()
        assert not report.ok
        assert report.first_bad_sequence == 4
        await audit.close()

    asyncio.run(scenario())
