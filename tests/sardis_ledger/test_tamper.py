"""Tampering with stored history, on SQLite and PostgreSQL: every change is caught
by the full audit (``Evidence.verify``) or by a client holding a signed head, and
the report names what was changed.

Tampering goes around the append-only guards the way an attacker with database
access would: SQLite triggers dropped on a raw connection (and put back), and in
PostgreSQL ``session_replication_role = replica`` as superuser (triggers off).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sardis_ledger import Ledger, merkle, verifier
from sardis_ledger.errors import IntegrityError
from sardis_ledger.evidence import AuditReport, Evidence
from sardis_ledger.signing import HeadLog, Keyring
from sardis_ledger.verifier import TreeHeadTracker, VerificationError

TABLES = ("assets", "accounts", "batches", "entries", "nodes", "node_blocks", "tree_head", "checkpoints")  # PostgreSQL


@dataclass
class Store:
    """Raw access to a ledger's database, bypassing its guards."""

    url: str

    @property
    def pg(self) -> bool:
        return self.url.startswith("postgresql")

    @property
    def path(self) -> str:
        return self.url.removeprefix("sqlite:///")

    def execute(self, *statements: tuple[str, Sequence[Any]] | str) -> None:
        items = [(s, ()) if isinstance(s, str) else s for s in statements]
        if self.pg:
            import psycopg

            with psycopg.connect(self.url, autocommit=True) as conn, conn.transaction():
                conn.execute("SET LOCAL session_replication_role = replica")
                for sql, args in items:
                    conn.execute(sql.replace("?", "%s"), list(args) or None)
            return
        raw = sqlite3.connect(self.path, isolation_level=None)
        try:
            triggers = raw.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'").fetchall()
            raw.execute("BEGIN IMMEDIATE")
            for name, _ in triggers:
                raw.execute(f"DROP TRIGGER {name}")
            for sql, args in items:
                raw.execute(sql, tuple(args))
            for _, sql in triggers:
                raw.execute(sql)
            raw.execute("COMMIT")
        finally:
            raw.close()

    def set_node(self, level: int, index: int, digest: bytes) -> None:
        """Overwrite one stored Merkle node, however this schema stores nodes: one
        row per node keyed by creation-order place (SQLite), or blocks of places,
        one per write (PostgreSQL)."""
        pos = merkle.node_position(level, index)
        if self.pg:
            self.execute((
                "UPDATE node_blocks SET hashes = overlay(hashes placing ? from (? - first_pos)::int * 32 + 1 for 32)"
                " WHERE first_pos = (SELECT max(first_pos) FROM node_blocks WHERE first_pos <= ?)",
                [digest, pos, pos],
            ))
        else:
            self.execute(("UPDATE nodes SET hash = ? WHERE pos = ?", [digest, pos]))

    def delete_node(self, level: int, index: int) -> None:
        """Remove one stored Merkle node; its neighbours stay."""
        pos = merkle.node_position(level, index)
        if not self.pg:
            self.execute(("DELETE FROM nodes WHERE pos = ?", [pos]))
            return
        first = self.one("SELECT max(first_pos) FROM node_blocks WHERE first_pos <= ?", [pos])
        blob = bytes(self.one("SELECT hashes FROM node_blocks WHERE first_pos = ?", [first]))
        k = pos - first
        before, after = blob[: 32 * k], blob[32 * k + 32 :]
        statements: list[tuple[str, Sequence[Any]]] = [("DELETE FROM node_blocks WHERE first_pos = ?", [first])]
        if before:
            statements.append(("INSERT INTO node_blocks VALUES (?, ?)", [first, before]))
        if after:
            statements.append(("INSERT INTO node_blocks VALUES (?, ?)", [pos + 1, after]))
        self.execute(*statements)

    def one(self, sql: str, args: Sequence[Any] = ()) -> Any:
        if self.pg:
            import psycopg

            with psycopg.connect(self.url) as conn:
                row = conn.execute(sql.replace("?", "%s"), list(args) or None).fetchone()
        else:
            raw = sqlite3.connect(self.path)
            row = raw.execute(sql, tuple(args)).fetchone()
            raw.close()
        assert row is not None
        return row[0]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    pg: str = request.getfixturevalue("pg_url")
    return pg


def build(url: str) -> None:
    """12 entries: credits, transfers with references and metadata, a reversal."""
    with Ledger(url) as led:
        led.create_entry("alice", 1000, "credit", reference="seed", metadata={"source": "bank"})
        led.create_entry("bob", 50, "credit")
        first = led.transfer("alice", "bob", 100, reference="job-1", metadata={"note": "gpu"})
        led.transfer("bob", "carol", 30, reference="job-2")
        led.transfer("alice", "carol", 7)
        led.rollback_batch(first.batch_id, "refund")
        led.transfer("carol", "dave", 12, metadata={"k": [1, 2]})
        assert led.tree_head().tree_size == 12


@pytest.fixture
def ledger_url(url: str, tmp_path: Path) -> str:
    build(url)
    with Ledger(url) as led:
        Evidence(led, Keyring(tmp_path / "keys")).signed_tree_head()  # the server has signed size 12
    return url


def audit(url: str, tmp_path: Path) -> AuditReport:
    with Ledger(url) as led:
        return Evidence(led, Keyring(tmp_path / "keys")).verify(sign=False)


def assert_caught(report: AuditReport, sequence: int | None, words: str) -> None:
    assert not report.ok
    assert report.first_bad_sequence == sequence, report.problems
    assert any(words in p for p in report.problems), report.problems


# -------------------------------------------------------- single fields


def _changed(column: str, value: Any) -> Any:
    if column == "direction":
        return "debit" if value == "credit" else "credit"
    if column == "metadata":
        return '{"forged":true}'
    if isinstance(value, int):
        return value + 1
    return "x" if value is None else value + "x"


ENTRY_COLUMNS = ("entry_id", "batch_id", "account_id", "asset", "amount", "direction", "running_balance",
                 "created_at", "reference", "metadata", "reverses")


def test_any_single_field_of_any_entry(ledger_url: str, tmp_path: Path) -> None:
    """Each stored field of the first, a middle and the last entry, changed alone,
    is caught and the entry named; put back, the ledger verifies again."""
    store = Store(ledger_url)
    for seq in (1, 7, 12):
        for column in ENTRY_COLUMNS:
            original = store.one(f"SELECT {column} FROM entries WHERE seq = ?", [seq - 1])
            store.execute((f"UPDATE entries SET {column} = ? WHERE seq = ?", [_changed(column, original), seq - 1]))
            report = audit(ledger_url, tmp_path)
            assert not report.ok, (seq, column)
            assert report.first_bad_sequence == seq, (seq, column, report.problems)
            assert any(f"entry {seq}" in p for p in report.problems), (seq, column, report.problems)
            store.execute((f"UPDATE entries SET {column} = ? WHERE seq = ?", [original, seq - 1]))
        assert audit(ledger_url, tmp_path).ok


def test_account_balance(ledger_url: str, tmp_path: Path) -> None:
    Store(ledger_url).execute("UPDATE accounts SET balance = balance + 5 WHERE account_id = 'carol'")
    assert_caught(audit(ledger_url, tmp_path), None, "'carol': balance")


# ------------------------------------------------------------ Merkle nodes


def test_a_leaf_node(ledger_url: str, tmp_path: Path) -> None:
    store = Store(ledger_url)
    store.set_node(0, 8, b"\x01" * 32)
    assert_caught(audit(ledger_url, tmp_path), 9, "entry 9: stored leaf hash")


def test_an_interior_node(ledger_url: str, tmp_path: Path) -> None:
    store = Store(ledger_url)
    store.set_node(2, 1, b"\x02" * 32)
    # the node covers entries 5-8; no entry's own fields changed, so the range's first is named
    assert_caught(audit(ledger_url, tmp_path), 5, "Merkle node (2, 1)")


def test_a_deleted_node(ledger_url: str, tmp_path: Path) -> None:
    store = Store(ledger_url)
    store.delete_node(1, 2)
    assert_caught(audit(ledger_url, tmp_path), 5, "Merkle node (1, 2)")


# --------------------------------------------------------------- tree head


def test_the_stored_tree_head_root(ledger_url: str, tmp_path: Path) -> None:
    Store(ledger_url).execute(("UPDATE tree_head SET root = ?", [b"\x03" * 32]))
    report = audit(ledger_url, tmp_path)
    assert not report.ok
    assert any("tree head root" in p for p in report.problems), report.problems


def test_a_tree_head_truncated_consistently(ledger_url: str, tmp_path: Path) -> None:
    """Head moved back to 11 entries with the right root for 11: the walk up to the
    head sees nothing, but the row beyond it and the signed head of 12 do."""
    with Ledger(ledger_url) as led:
        root11 = bytes.fromhex(led.root_at(11))
    Store(ledger_url).execute(("UPDATE tree_head SET size = 11, root = ?", [root11]))
    report = audit(ledger_url, tmp_path)
    assert_caught(report, 12, "entry 12 is stored beyond the tree head")
    assert any("rolled back" in p for p in report.problems)


def test_a_signed_head_in_the_heads_log(ledger_url: str, tmp_path: Path) -> None:
    with Ledger(ledger_url) as led:
        log = HeadLog.for_store(Keyring(tmp_path / "keys"), "sardis-ledger", led.database_url)
    assert log.path is not None
    body = json.loads(log.path.read_text().splitlines()[-1])
    body["root"] = "00" * 32
    log.path.write_text(json.dumps(body) + "\n")
    assert_caught(audit(ledger_url, tmp_path), None, "bad signature")


# -------------------------------------------------------------------- rows


def test_a_deleted_entry(ledger_url: str, tmp_path: Path) -> None:
    Store(ledger_url).execute("DELETE FROM entries WHERE seq = 5")
    assert_caught(audit(ledger_url, tmp_path), 6, "entry sequence 6 is missing")


def test_the_last_entry_deleted(ledger_url: str, tmp_path: Path) -> None:
    Store(ledger_url).execute("DELETE FROM entries WHERE seq = 11")
    assert_caught(audit(ledger_url, tmp_path), 12, "claims 12 entries")


def test_an_inserted_entry(ledger_url: str, tmp_path: Path) -> None:
    store = Store(ledger_url)
    store.execute(
        "INSERT INTO entries (seq, entry_id, batch_id, account_id, asset, amount, direction, running_balance,"
        " created_at, reference, metadata, reverses) SELECT 12, 'forged', batch_id, account_id, asset, amount,"
        " direction, running_balance + amount, created_at, reference, metadata, reverses FROM entries WHERE seq = 11"
    )
    assert_caught(audit(ledger_url, tmp_path), 13, "entry 13 is stored beyond the tree head")


def test_two_entries_reordered(ledger_url: str, tmp_path: Path) -> None:
    Store(ledger_url).execute(
        "UPDATE entries SET seq = 1000000 WHERE seq = 3",
        "UPDATE entries SET seq = 3 WHERE seq = 8",
        "UPDATE entries SET seq = 8 WHERE seq = 1000000",
    )
    assert_caught(audit(ledger_url, tmp_path), 4, "entry 4")


# ------------------------------------------------------------------ rollback


def _snapshot(url: str, tmp_path: Path) -> None:
    if url.startswith("postgresql"):
        Store(url).execute(*(f"CREATE TABLE snap_{t} AS SELECT * FROM {t}" for t in TABLES))
    else:
        shutil.copy(url.removeprefix("sqlite:///"), tmp_path / "snapshot.db")


def _restore(url: str, tmp_path: Path) -> None:
    if url.startswith("postgresql"):
        Store(url).execute(*(s for t in TABLES
                             for s in (f"DELETE FROM {t}", f"INSERT INTO {t} SELECT * FROM snap_{t}")))
    else:
        path = Path(url.removeprefix("sqlite:///"))
        for suffix in ("-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        shutil.copy(tmp_path / "snapshot.db", path)


def test_rolled_back_to_an_older_copy(ledger_url: str, tmp_path: Path) -> None:
    """The store is replaced by its copy of 12 entries after a client verified 14."""
    _snapshot(ledger_url, tmp_path)
    keys_dir = tmp_path / "keys"
    client = tmp_path / "client.json"
    with Ledger(ledger_url) as led:
        ev = Evidence(led, Keyring(keys_dir))
        keys = ev.keyring.public_keys()
        TreeHeadTracker(client, keys).update(ev.signed_tree_head())
        led.transfer("alice", "erin", 5)
        TreeHeadTracker(client, keys).update(ev.signed_tree_head(),
                                             lambda o, n: ev.consistency_proof(o, n)["proof"])
    _restore(ledger_url, tmp_path)

    # the server's own audit: its heads log (outside the store) is ahead of the store
    report = audit(ledger_url, tmp_path)
    assert_caught(report, 13, "rolled back or truncated")
    with Ledger(ledger_url) as led, pytest.raises(IntegrityError, match="rolled back"):
        Evidence(led, Keyring(keys_dir)).signed_tree_head()

    # a server that lost its heads log too signs the old head: the client refuses it
    shutil.rmtree(keys_dir / "heads")
    with Ledger(ledger_url) as led:
        ev = Evidence(led, Keyring(keys_dir))
        old = ev.signed_tree_head()
        assert old.tree_size == 12
        with pytest.raises(VerificationError) as info:
            TreeHeadTracker(client, keys).update(old)
        assert info.value.reason == "rollback"
        # ... and once the rolled-back store grows past the client's head, no proof links the two
        led.create_entry("mallory", 1, "credit")
        led.create_entry("mallory", 1, "credit")
        led.create_entry("mallory", 1, "credit")
        forked = ev.signed_tree_head()
        assert forked.tree_size == 15
        with pytest.raises(VerificationError) as info:
            TreeHeadTracker(client, keys).update(forked, lambda o, n: ev.consistency_proof(o, n)["proof"])
        assert info.value.reason == "fork"


# ------------------------------------------------ proofs, independently checked


def test_emitted_proofs_verify_under_the_independent_verifier(ledger_url: str, tmp_path: Path) -> None:
    with Ledger(ledger_url) as led:
        ev = Evidence(led, Keyring(tmp_path / "keys"))
        keys = verifier.load_public_keys(ev.public_keyring())
        size = led.tree_head().tree_size
        for seq in range(1, size + 1):
            for tree_size in (seq, size):
                bundle = json.loads(json.dumps(ev.inclusion_proof(seq, tree_size)))
                assert verifier.verify_inclusion_bundle(bundle, keys)[0].sequence == seq
                receipt = led.receipt(seq, tree_size)
                verifier.verify_inclusion(receipt.leaf_index, receipt.tree_size, bytes.fromhex(receipt.leaf_hash),
                                          [bytes.fromhex(p) for p in receipt.inclusion_proof],
                                          bytes.fromhex(receipt.root))
        for old in range(0, size + 1):
            body = ev.consistency_proof(old)
            verifier.verify_consistency(old, size, bytes.fromhex(body["old_root"]), bytes.fromhex(body["new_root"]),
                                        [bytes.fromhex(p) for p in body["proof"]])
