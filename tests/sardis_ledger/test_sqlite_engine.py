"""What only the embedded SQLite store can show: the audit naming the first bad
entry when rows are changed behind the engine's back, query plans that stay
indexed on a large ledger, append-only triggers, error translation and retries,
and several ledger instances sharing one file.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from sardis_ledger import Ledger, RetryableStorageError, StorageError
from sardis_ledger.merkle import node_position
from sardis_ledger.storage.base import Transaction
from sardis_ledger.storage.sqlite import SQLiteStorage, _translate


@pytest.fixture
def path(tmp_path: Path) -> Path:
    p = tmp_path / "ledger.db"
    with Ledger(f"sqlite:///{p}", checkpoint_interval=8) as ledger:
        ledger.create_entry("bank", 1000, "credit")
        ledger.transfer_many([("bank", f"u{i % 4}", i + 1) for i in range(15)])
    return p


def _raw(path: Path) -> sqlite3.Connection:
    """A connection that can change history: the append-only triggers dropped."""
    conn = sqlite3.connect(path, isolation_level=None)
    for name, in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        conn.execute(f"DROP TRIGGER {name}")
    return conn


def _verify(path: Path) -> tuple[bool, int | None, list[str]]:
    with Ledger(f"sqlite:///{path}") as ledger:
        report = ledger.verify(chunk=5)
    return report.ok, report.first_bad_sequence, report.problems


def test_healthy_file_verifies(path: Path) -> None:
    assert _verify(path) == (True, None, [])


@pytest.mark.parametrize(
    ("sql", "first_bad"),
    [
        ("UPDATE entries SET metadata = '{\"x\":1}' WHERE seq = 6", 7),
        ("UPDATE entries SET reference = 'edited' WHERE seq = 12", 13),
        ("UPDATE entries SET created_at = '2000-01-01T00:00:00.000000Z' WHERE seq = 3", 4),
        ("UPDATE entries SET amount = amount + 1, running_balance = running_balance + 1 WHERE seq = 2", 3),
        ("UPDATE entries SET metadata = '{ }' WHERE seq = 9", 10),
        ("UPDATE entries SET account_id = 'u1\",\"x' WHERE seq = 4", 5),
        ("DELETE FROM entries WHERE seq = 30", 31),
    ],
)
def test_verify_names_the_first_changed_entry(path: Path, sql: str, first_bad: int) -> None:
    conn = _raw(path)
    conn.execute(sql)
    conn.close()
    ok, bad, problems = _verify(path)
    assert not ok
    assert bad == first_bad, problems


def test_verify_detects_changed_nodes_heads_balances_and_checkpoints(path: Path) -> None:
    cases = [
        f"UPDATE nodes SET hash = zeroblob(32) WHERE pos = {node_position(0, 20)}",
        f"UPDATE nodes SET hash = zeroblob(32) WHERE pos = {node_position(3, 1)}",
        "UPDATE tree_head SET root = zeroblob(32)",
        "UPDATE accounts SET balance = balance + 1 WHERE account_id = 'u2'",
        "UPDATE checkpoints SET balances = '{\"bank\":1}'",
        "UPDATE accounts SET asset = 'OTHER' WHERE account_id = 'u3'",
    ]
    for sql in cases:
        backup = path.read_bytes()
        conn = _raw(path)
        conn.execute(sql)
        conn.close()
        ok, _, problems = _verify(path)
        assert not ok, sql
        assert problems
        path.write_bytes(backup)
        for suffix in ("-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    assert _verify(path)[0]


def test_history_is_append_only_in_the_file(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    for sql in ("UPDATE entries SET amount = 1", "DELETE FROM entries", "DELETE FROM nodes",
                "UPDATE batches SET count = 0", "DELETE FROM checkpoints", "UPDATE assets SET scale = 2"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute(sql)
    conn.close()


def _plan(conn: sqlite3.Connection, sql: str, args: tuple[object, ...]) -> str:
    return " | ".join(row[-1] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", args))


def test_reads_are_indexed_lookups_not_scans(path: Path) -> None:
    """Listing, balance-at and proofs stay fast on a large ledger because each is an
    index range scan or key lookup; a full scan of entries or nodes would not."""
    from sardis_ledger.storage.base import EntryQuery

    storage = SQLiteStorage(path)
    conn = storage._conn()
    seen: list[str] = []
    conn.set_trace_callback(seen.append)
    with storage.transaction(write=False) as tx:
        tx.query_entries(EntryQuery(account_id="u1", seq_from=0, seq_to=10**9, limit=5))
        tx.query_entries(EntryQuery(reference="r", seq_from=3, seq_to=10, limit=5, descending=True))
        tx.query_entries(EntryQuery(seq_from=3, seq_to=10, limit=5))
        tx.last_entry_before("u1", 20)
        tx.get_nodes([(0, 3), (2, 1), (1, 7)])
        tx.get_batch("x")
        tx.find_idempotency("k")
        tx.find_reversal("x")
        tx.get_entry("e")
        tx.seq_after_time("2030-01-01T00:00:00.000000Z")
        tx.checkpoint_at_or_before(20)
        tx.nodes_created_by(3, 9)
    conn.set_trace_callback(None)
    selects = [s for s in seen if s.startswith("SELECT")]
    assert len(selects) >= 12
    for sql in selects:
        plan = _plan(conn, sql, ())
        for table in ("entries", "nodes", "batches"):
            assert f"SCAN {table}" not in plan, (sql, plan)
    storage.close()


def test_busy_and_locked_are_retryable_other_errors_are_storage_errors() -> None:
    assert isinstance(_translate(sqlite3.OperationalError("database is locked"), "x"), RetryableStorageError)
    assert isinstance(_translate(sqlite3.OperationalError("database is busy"), "x"), RetryableStorageError)
    other = _translate(sqlite3.IntegrityError("UNIQUE constraint failed"), "x")
    assert isinstance(other, StorageError)
    assert not isinstance(other, RetryableStorageError)


def test_a_write_is_retried_after_a_transient_failure(tmp_path: Path) -> None:
    class Flaky(SQLiteStorage):
        failures = 2

        def transaction(self, *, write: bool) -> AbstractContextManager[Transaction]:
            if write and self.failures:
                self.failures -= 1
                raise RetryableStorageError("simulated deadlock")
            return super().transaction(write=write)

    storage = Flaky(tmp_path / "f.db")
    with Ledger(storage=storage) as ledger:
        entry = ledger.create_entry("a", 1, "credit")
        assert entry.sequence == 1
        assert storage.failures == 0
        assert ledger.tree_head().tree_size == 1


def test_a_retry_after_an_unknown_commit_outcome_does_not_write_twice(tmp_path: Path) -> None:
    """The commit succeeded but the caller saw an error (connection lost in COMMIT):
    the retry finds the batch it already wrote and returns it."""

    class LostAck(SQLiteStorage):
        lose = True

        def transaction(self, *, write: bool) -> Iterator[Transaction]:  # type: ignore[override]
            return self._tx(write)

        def _tx(self, write: bool) -> Iterator[Transaction]:
            from contextlib import contextmanager

            @contextmanager
            def cm() -> Iterator[Transaction]:
                with SQLiteStorage.transaction(self, write=write) as tx:
                    yield tx
                if write and self.lose:
                    self.lose = False
                    raise RetryableStorageError("connection lost during COMMIT")

            return cm()  # type: ignore[return-value]

    storage = LostAck(tmp_path / "l.db")
    with Ledger(storage=storage) as ledger:
        batch = ledger.create_batch([{"account_id": "a", "amount": 1, "entry_type": "credit"}] * 3)
        assert ledger.tree_head().tree_size == 3
        assert [e.sequence for e in batch.entries] == [1, 2, 3]
        assert ledger.verify().ok


def test_instances_sharing_a_file_see_each_others_appends(path: Path) -> None:
    url = f"sqlite:///{path}"
    with Ledger(url) as a, Ledger(url) as b:
        for i in range(10):
            (a if i % 3 else b).transfer("bank", "u0", 1)
        assert a.tree_head() == b.tree_head()
        assert a.verify().ok


def test_a_newer_schema_is_refused(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("INSERT INTO schema_version (version) VALUES (99)")
    conn.close()
    with pytest.raises(StorageError, match="schema version 99"):
        SQLiteStorage(path)


def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StorageError):
        Ledger(f"sqlite:///{bad}")


def test_a_forked_child_uses_its_own_connection(path: Path) -> None:
    """A Ledger opened before a fork keeps working in the child (multiprocessing's
    default start method): the child never touches the parent's SQLite handles."""
    import os

    with Ledger(f"sqlite:///{path}") as ledger:
        size = ledger.tree_head().tree_size
        storage = ledger.storage
        assert isinstance(storage, SQLiteStorage)
        parents = storage._conn()
        pid = os.fork()
        if pid == 0:  # child: write through the inherited object, report by exit code
            code = 1
            try:
                ledger.transfer("bank", "u0", 1)
                code = 0 if storage._conn() is not parents else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        ledger.transfer("bank", "u0", 1)  # the parent's connection still works
        assert ledger.tree_head().tree_size == size + 4
        assert ledger.verify().ok
