"""What only the PostgreSQL backend promises, against the real server.

Behaviour every backend shares is in the conformance suite (``-k postgresql``);
the bank tests (many writer processes, SIGKILL) are in ``test_bank.py``. Here:
migrations on first use, concurrently and from an older schema; history that the
database itself refuses to rewrite; driver errors mapped to the one error tree;
a backend killed mid-batch or a commit whose answer is lost; opposite transfers
in several processes without deadlocks; and byte-for-byte agreement with SQLite
where PostgreSQL's text rules differ (collation, NUL).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from sardis_ledger import Ledger, merkle
from sardis_ledger._requests import transfer_request
from sardis_ledger.errors import (
    AccountExistsError,
    IdempotencyConflictError,
    RetryableStorageError,
    StorageError,
    ValidationError,
)
from sardis_ledger.storage.pg_migrations import MIGRATIONS, VERSION_TABLE
from sardis_ledger.storage.postgresql import (
    SCHEMA_VERSION,
    PostgresStorage,
    PostgresTransaction,
    _translate,
    migrate,
)

pytestmark = pytest.mark.postgres

SPAWN = mp.get_context("spawn")
PROCESS_TIMEOUT = 120.0


def _sql(url: str, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


def _join_all(procs: list[Any], timeout: float = PROCESS_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    try:
        for p in procs:
            p.join(max(0.1, deadline - time.monotonic()))
        stuck = [p.pid for p in procs if p.is_alive()]
        assert not stuck, f"processes {stuck} did not finish in {timeout}s"
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(5)


# ------------------------------------------------------------------ migrations


def test_first_use_creates_the_schema_at_the_newest_version(pg_url: str) -> None:
    with Ledger(pg_url) as ledger:
        ledger.create_entry("alice", 5, "credit")
        assert ledger.get_balance("alice") == 5
    versions = _sql(pg_url, f"SELECT version, name FROM {VERSION_TABLE} ORDER BY version")
    assert versions == [(i + 1, name) for i, (name, _) in enumerate(MIGRATIONS)]
    assert len(MIGRATIONS) == SCHEMA_VERSION
    # Opening again finds nothing to do and keeps the data.
    with Ledger(pg_url) as ledger:
        assert ledger.get_balance("alice") == 5
    assert len(_sql(pg_url, f"SELECT * FROM {VERSION_TABLE}")) == SCHEMA_VERSION


def _open_and_credit(url: str, n: int, start: Any, out: Any) -> None:
    start.wait(30)
    try:
        with Ledger(url) as ledger:
            ledger.create_entry(f"acct-{n}", 10 + n, "credit")
        out.put((n, "ok"))
    except Exception as exc:
        out.put((n, f"{type(exc).__name__}: {exc}"))


def test_concurrent_first_use_migrates_exactly_once(pg_url: str) -> None:
    start, out = SPAWN.Event(), SPAWN.Queue()
    procs = [SPAWN.Process(target=_open_and_credit, args=(pg_url, n, start, out)) for n in range(6)]
    for p in procs:
        p.start()
    time.sleep(1.0)  # let every process import and reach the barrier
    start.set()
    _join_all(procs)
    results = dict(out.get(timeout=5) for _ in procs)
    assert results == {n: "ok" for n in range(6)}
    assert _sql(pg_url, f"SELECT version FROM {VERSION_TABLE} ORDER BY version") == [
        (v,) for v in range(1, SCHEMA_VERSION + 1)
    ]
    with Ledger(pg_url) as ledger:
        assert ledger.verify().ok
        assert [ledger.get_balance(f"acct-{n}") for n in range(6)] == [Decimal(10 + n) for n in range(6)]


def test_a_newer_schema_is_refused_not_damaged(pg_url: str) -> None:
    Ledger(pg_url).close()
    _sql(pg_url, f"INSERT INTO {VERSION_TABLE} (version, name) VALUES (%s, 'from the future')", (SCHEMA_VERSION + 1,))
    with pytest.raises(StorageError, match="newer"):
        PostgresStorage(pg_url)
    assert _sql(pg_url, f"SELECT count(*) FROM {VERSION_TABLE}") == [(SCHEMA_VERSION + 1,)]


def _rows_of(ledger: Ledger) -> dict[str, Any]:
    """Every stored row, read through the storage contract (layout-independent)."""
    with ledger.storage.transaction(write=False) as tx:
        head = tx.head()
        entries = tx.entries_by_seq(0, head.size)
        batch_ids = list(dict.fromkeys(e.batch_id for e in entries))
        batches = [tx.get_batch(b) for b in batch_ids]
        nodes = {
            (level, i): h
            for level in range(head.size.bit_length() + 1)
            for i, h in tx.node_range(level, 0, head.size >> level)
        }
        checkpoints = []
        seq = head.size
        while (cp := tx.checkpoint_at_or_before(seq)) is not None:
            checkpoints.append(cp)
            seq = cp[0] - 1
        return {
            "head": head,
            "assets": tx.assets(),
            "accounts": tx.list_accounts(None, None, 10_000),
            "entries": entries,
            "batches": batches,
            "nodes": nodes,
            "checkpoints": checkpoints,
        }


def _write_v1(url: str, rows: dict[str, Any]) -> None:
    """Store ``rows`` the way version 1 of this backend laid them out."""
    with psycopg.connect(url, autocommit=True) as conn:
        assert migrate(conn, target=1) == 0
        with conn.transaction():
            conn.cursor().executemany("INSERT INTO assets (code, scale) VALUES (%s, %s)", list(rows["assets"].items()))
            conn.cursor().executemany(
                "INSERT INTO accounts (account_id, asset, balance, overdraft_limit, metadata, created_at)"
                " VALUES (%s, %s, %s, %s, %s, %s)",
                [(a.account_id, a.asset, a.balance, a.overdraft_limit, a.metadata, a.created_at)
                 for a in rows["accounts"]],
            )
            conn.cursor().executemany(
                "INSERT INTO entries (seq, entry_id, batch_id, account_id, asset, amount, direction,"
                " running_balance, created_at, reference, metadata, reverses)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                [(e.seq, e.entry_id, e.batch_id, e.account_id, e.asset, e.amount, e.direction,
                  e.running_balance, e.created_at, e.reference, e.metadata, e.reverses) for e in rows["entries"]],
            )
            conn.cursor().executemany(
                "INSERT INTO batches (batch_id, first_seq, count, created_at, reverses, reason,"
                " idempotency_key, request_hash) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                [(b.batch_id, b.first_seq, b.count, b.created_at, b.reverses, b.reason, b.idempotency_key,
                  b.request_hash) for b in rows["batches"]],
            )
            conn.cursor().executemany(
                "INSERT INTO nodes (level, idx, hash) VALUES (%s, %s, %s)",
                [(level, idx, h) for (level, idx), h in rows["nodes"].items()],
            )
            head = rows["head"]
            conn.execute(
                "UPDATE tree_head SET size = %s, root = %s, updated_at = %s", (head.size, head.root, head.updated_at)
            )
            conn.cursor().executemany(
                "INSERT INTO checkpoints (seq, balances) VALUES (%s, %s)",
                [(seq, Jsonb(bal)) for seq, bal in rows["checkpoints"]],
            )


def _populate(ledger: Ledger) -> None:
    ledger.create_account("carol", overdraft_limit=50, metadata={"team": "ops", "name": "Carolé"})
    for i in range(12):
        ledger.create_entry(f"user-{i % 4}", Decimal("10.25") + i, "credit", reference=f"deposit {i}")
    first = ledger.transfer("user-0", "carol", "3.5", reference="job-1", idempotency_key="job-1")
    ledger.transfer("carol", "user-1", 40, metadata={"why": "overdraft"})
    ledger.rollback_batch(first.batch_id, "refund")
    ledger.create_batch(
        [
            {"account_id": "user-2", "amount": "1", "entry_type": "debit"},
            {"account_id": "user-3", "amount": "1", "entry_type": "credit"},
        ],
        idempotency_key="batch-key",
    )


def test_schema_from_version_1_is_upgraded_without_losing_a_row(pg_url: str) -> None:
    with Ledger("memory://", checkpoint_interval=8) as source:
        _populate(source)
        before = _rows_of(source)
        receipts = [source.receipt(seq) for seq in range(1, before["head"].size + 1)]
        _write_v1(pg_url, before)
        assert _sql(pg_url, f"SELECT max(version) FROM {VERSION_TABLE}") == [(1,)]

        with Ledger(pg_url) as upgraded:  # first use by this version upgrades the schema
            assert _sql(pg_url, f"SELECT max(version) FROM {VERSION_TABLE}") == [(SCHEMA_VERSION,)]
            assert _rows_of(upgraded) == before
            report = upgraded.verify()
            assert report.ok, report.problems
            assert [upgraded.receipt(seq) for seq in range(1, before["head"].size + 1)] == receipts
            # The upgraded ledger keeps working exactly like the original.
            for ledger in (source, upgraded):
                ledger.transfer("user-3", "user-0", "2.75", idempotency_key="after-upgrade")
                replay = ledger.transfer("user-3", "user-0", "2.75", idempotency_key="after-upgrade")
                assert replay.replayed
            assert upgraded.snapshot().balances == source.snapshot().balances
            assert upgraded.tree_head().tree_size == source.tree_head().tree_size
            assert upgraded.verify().ok

            # A bulk write after the upgrade stores its nodes in blocks (several streamed
            # chunks); proofs that mix them with the old per-node rows still verify.
            old_size, old_root = before["head"].size, upgraded.root_at(before["head"].size)
            bulk = upgraded.transfer_many([("user-0", f"user-{1 + i % 3}", "0.01") for i in range(400)])
            head = upgraded.tree_head()
            assert _sql(pg_url, "SELECT count(*) FROM node_blocks")[0][0] >= 2
            for entry in (*bulk[0].entries, *bulk[-1].entries, *upgraded.get_batch(bulk[0].batch_id).entries):
                assert upgraded.verify_receipt(entry)
            for seq in (1, old_size, old_size + 1, old_size + 400, head.tree_size):
                assert upgraded.receipt(seq).verify()  # proofs at the current head, across both layouts
            proof = [bytes.fromhex(h) for h in upgraded.consistency_proof(old_size)]
            assert merkle.verify_consistency(old_size, head.tree_size, bytes.fromhex(old_root),
                                             bytes.fromhex(head.root), proof)
            report = upgraded.verify()
            assert report.ok, report.problems


# ----------------------------------------------------------------- append-only


def test_the_database_refuses_to_rewrite_history(pg_url: str) -> None:
    with Ledger(pg_url, checkpoint_interval=4) as ledger:
        _populate(ledger)
        size = ledger.tree_head().tree_size
    refused = [
        "UPDATE entries SET amount = amount + 1 WHERE seq = 0",
        "DELETE FROM entries WHERE seq = 0",
        "TRUNCATE entries",
        "UPDATE batches SET reason = 'edited'",
        "DELETE FROM batches",
        "UPDATE node_blocks SET hashes = hashes WHERE first_pos = 0",
        "DELETE FROM node_blocks",
        "TRUNCATE node_blocks",
        "TRUNCATE nodes",  # per-node rows of schema versions before 5
        "DELETE FROM checkpoints",
        "UPDATE checkpoints SET balances = '{}'",
        "UPDATE assets SET scale = 2",
        "DELETE FROM accounts WHERE account_id = 'carol'",
        "TRUNCATE accounts CASCADE",
        "UPDATE accounts SET account_id = 'mallory' WHERE account_id = 'carol'",
        "UPDATE accounts SET asset = 'OTHER' WHERE account_id = 'carol'",
        "UPDATE tree_head SET size = size - 1",
        "DELETE FROM tree_head",
    ]
    assert _sql(pg_url, "SELECT count(*) FROM checkpoints")[0][0] > 0
    for statement in refused:
        with pytest.raises(psycopg.errors.RestrictViolation, match=r"append-only|never shrinks"):
            _sql(pg_url, statement)
    with Ledger(pg_url) as ledger:
        assert ledger.tree_head().tree_size == size
        assert ledger.verify().ok


@pytest.fixture
def owner_url(pg_url: str) -> Iterator[str]:
    """The ledger run by an ordinary (non-superuser) role that owns its schema."""
    role = f"ledger_owner_{uuid.uuid4().hex[:10]}"
    _sql(pg_url, f'CREATE ROLE "{role}" LOGIN')
    try:
        _sql(pg_url, f'CREATE SCHEMA ledger AUTHORIZATION "{role}"')
        base, dbname = pg_url.rsplit("/", 1)
        host = base.split("@", 1)[1]
        yield f"postgresql://{role}@{host}/{dbname}?options=-csearch_path%3Dledger"
    finally:
        _sql(pg_url, f'DROP OWNED BY "{role}" CASCADE')
        _sql(pg_url, f'DROP ROLE "{role}"')


def test_the_ledger_role_has_no_privilege_to_rewrite_history(owner_url: str) -> None:
    with Ledger(owner_url) as ledger:
        _populate(ledger)
        assert ledger.verify().ok
    with psycopg.connect(owner_url, autocommit=True) as conn:
        # Even the owner switching the trigger off leaves the privileges in the way.
        conn.execute("ALTER TABLE entries DISABLE TRIGGER entries_append_only")
        for statement in ("UPDATE entries SET amount = 1", "DELETE FROM entries", "TRUNCATE entries",
                          "DELETE FROM nodes", "DELETE FROM node_blocks", "UPDATE node_blocks SET hashes = hashes",
                          "UPDATE batches SET reason = NULL"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
    with Ledger(owner_url) as ledger:
        ledger.transfer("user-3", "user-0", 1)
        assert ledger.verify().ok


# ---------------------------------------------------------------- error mapping


def _deadlock(url: str) -> psycopg.Error:
    """Provoke a real deadlock between two connections; return the error the loser got."""
    _sql(url, "CREATE TABLE IF NOT EXISTS dl (id INT PRIMARY KEY, v INT)")
    _sql(url, "INSERT INTO dl VALUES (1, 0), (2, 0) ON CONFLICT DO NOTHING")
    errors: list[psycopg.Error] = []
    barrier = threading.Barrier(2, timeout=30)

    def side(first: int, second: int) -> None:
        with psycopg.connect(url) as conn:
            try:
                conn.execute("UPDATE dl SET v = v + 1 WHERE id = %s", (first,))
                barrier.wait()
                conn.execute("UPDATE dl SET v = v + 1 WHERE id = %s", (second,))
                conn.commit()
            except psycopg.Error as exc:
                errors.append(exc)
                conn.rollback()

    threads = [threading.Thread(target=side, args=a) for a in ((1, 2), (2, 1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(errors) == 1, errors
    return errors[0]


def test_driver_errors_map_to_the_one_error_tree(pg_url: str) -> None:
    deadlock = _deadlock(pg_url)
    assert isinstance(deadlock, psycopg.errors.DeadlockDetected)
    assert isinstance(_translate(deadlock, None, "x"), RetryableStorageError)

    with psycopg.connect(pg_url, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.UniqueViolation) as unique:
            conn.execute("INSERT INTO dl VALUES (1, 0)")
        assert isinstance(_translate(unique.value, conn, "x"), RetryableStorageError)
        with pytest.raises(psycopg.errors.SerializationFailure) as serial:
            conn.execute("DO $$ BEGIN RAISE EXCEPTION 'x' USING ERRCODE = 'serialization_failure'; END $$")
        assert isinstance(_translate(serial.value, conn, "x"), RetryableStorageError)
        with pytest.raises(psycopg.errors.UndefinedTable) as bug:
            conn.execute("SELECT * FROM no_such_table")
        mapped = _translate(bug.value, conn, "x")
        assert type(mapped) is StorageError  # a bug is not retried
        assert mapped.details["sqlstate"] == "42P01"


def test_an_unreachable_server_is_a_storage_error_naming_where_not_the_password() -> None:
    with pytest.raises(StorageError) as err:
        PostgresStorage("postgresql://someone:s3cret@127.0.0.1:1/nowhere?connect_timeout=2")
    assert "127.0.0.1:1/nowhere" in str(err.value)
    assert "s3cret" not in str(err.value)


# ------------------------------------------------------------ connection loss


def _fund(ledger: Ledger, n: int, amount: int) -> list[str]:
    names = [f"acct-{i:02d}" for i in range(n)]
    for name in names:
        ledger.create_entry(name, amount, "credit")
    return names


def _kill_when_in_transaction(admin_url: str, app: str, timeout: float = 60.0) -> int:
    """Terminate the backend of ``app`` once it holds row locks (has an xid)."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(admin_url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND backend_xid IS NOT NULL", (app,)
            ).fetchone()
            if row is not None:
                killed = conn.execute("SELECT pg_terminate_backend(%s)", (row[0],)).fetchone()
                assert killed == (True,)
                return int(row[0])
            time.sleep(0.002)
    raise AssertionError(f"{app} never opened a write transaction")


def _backend_pid(ledger: Ledger) -> int:
    with ledger.storage.transaction(write=False) as tx:
        assert isinstance(tx, PostgresTransaction)
        return int(tx._rows("SELECT pg_backend_pid()")[0][0])


def _bulk_in_thread(ledger: Ledger, transfers: list[tuple[str, str, int]], ref: str) -> dict[str, Any]:
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["batches"] = ledger.transfer_many(transfers, reference=ref)
        except Exception as exc:
            result["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    result["thread"] = thread
    return result


def _entries_with(url: str, ref: str) -> int:
    return int(_sql(url, "SELECT count(*) FROM entries WHERE reference = %s", (ref,))[0][0])


def test_backend_terminated_mid_batch_is_all_or_nothing(pg_url: str) -> None:
    app = f"victim-{uuid.uuid4().hex[:8]}"
    with Ledger(f"{pg_url}?application_name={app}") as ledger:
        names = _fund(ledger, 20, 1_000_000)
        ledger.max_attempts = 1  # surface the failure instead of retrying it
        transfers = [(names[i % 20], names[(i * 7 + 1) % 20], 1 + i % 5) for i in range(3000)]
        transfers = [t for t in transfers if t[0] != t[1]]
        interrupted = 0
        for attempt in range(3):
            ref = f"bulk-{attempt}"
            run = _bulk_in_thread(ledger, transfers, ref)
            _kill_when_in_transaction(pg_url, app)
            run["thread"].join(120)
            assert not run["thread"].is_alive()
            stored = _entries_with(pg_url, ref)
            if "error" in run:
                assert isinstance(run["error"], RetryableStorageError), run["error"]
                assert stored == 0  # nothing of the interrupted batch survived
                interrupted += 1
            else:  # the kill landed after the commit: then all of it is there
                assert stored == 2 * len(transfers)
        assert interrupted >= 1, "the kill never landed inside the transaction"
        assert ledger.verify().ok


def test_engine_reconnects_and_finishes_a_batch_after_its_backend_is_killed(pg_url: str) -> None:
    app = f"victim-{uuid.uuid4().hex[:8]}"
    with Ledger(f"{pg_url}?application_name={app}") as ledger:
        names = _fund(ledger, 20, 1_000_000)
        transfers = [(names[i % 20], names[(i * 3 + 2) % 20], 2) for i in range(3000)]
        transfers = [t for t in transfers if t[0] != t[1]]
        run = _bulk_in_thread(ledger, transfers, "bulk")
        killed = _kill_when_in_transaction(pg_url, app)
        run["thread"].join(120)
        assert "error" not in run, run.get("error")
        assert len(run["batches"]) == len(transfers)
        assert _entries_with(pg_url, "bulk") == 2 * len(transfers)  # exactly once
        assert _backend_pid(ledger) != killed
        report = ledger.verify()
        assert report.ok, report.problems
        assert sum(ledger.get_balance(n) for n in names) == 20 * 1_000_000


class _LostCommitAnswer(PostgresStorage):
    """Commits for real, then behaves as if the connection died before the answer."""

    lose_next = 0

    def _commit(self, tx: PostgresTransaction) -> None:
        super()._commit(tx)
        if self.lose_next:
            self.lose_next -= 1
            tx.conn.close()
            raise psycopg.OperationalError("server closed the connection unexpectedly")


def test_a_commit_whose_answer_is_lost_is_not_written_twice(pg_url: str) -> None:
    storage = _LostCommitAnswer(pg_url)
    with Ledger(storage=storage) as ledger:
        ledger.create_entry("alice", 100, "credit")
        storage.lose_next = 1
        batch = ledger.transfer("alice", "bob", 30, reference="once")
        assert storage.lose_next == 0
        assert [e.account_id for e in batch.entries] == ["alice", "bob"]
        storage.lose_next = 1
        batches = ledger.transfer_many([("alice", "bob", 1), ("bob", "alice", 2)], reference="bulk-once")
        assert len(batches) == 2
        assert _entries_with(pg_url, "once") == 2
        assert _entries_with(pg_url, "bulk-once") == 4
        assert ledger.get_balance("alice") == 71
        assert ledger.verify().ok


def test_idle_connections_killed_by_the_server_are_replaced(pg_url: str) -> None:
    app = f"idle-{uuid.uuid4().hex[:8]}"
    with Ledger(f"{pg_url}?application_name={app}") as ledger:
        assert isinstance(ledger.storage, PostgresStorage)
        ledger.storage.idle_check_seconds = 0.0
        ledger.create_entry("alice", 10, "credit")
        before = _backend_pid(ledger)
        assert _sql(pg_url, "SELECT pg_terminate_backend(%s)", (before,)) == [(True,)]
        assert ledger.get_balance("alice") == 10  # a read: not retried by the engine
        ledger.create_entry("alice", 1, "credit")
        assert _backend_pid(ledger) != before


def _hold_the_head(url: str, ready: Any) -> None:
    with Ledger(url) as ledger, ledger.storage.transaction(write=True) as tx:
        tx.get_accounts(["alice", "bob"])  # the rows and the head are now locked
        ready.set()
        time.sleep(600)


def test_a_stopped_writer_holding_the_head_lock_does_not_stall_the_others(pg_url: str) -> None:
    with Ledger(pg_url) as ledger:
        ledger.create_entry("alice", 10, "credit")
        ready = SPAWN.Event()
        holder = SPAWN.Process(target=_hold_the_head, args=(
            f"{pg_url}?options=-c%20idle_in_transaction_session_timeout%3D1500", ready))
        holder.start()
        try:
            assert ready.wait(60)
            os.kill(holder.pid, signal.SIGSTOP)  # a hung host: the socket stays open
            start = time.monotonic()
            ledger.transfer("alice", "bob", 3)  # waits for the server to end the holder's session
            waited = time.monotonic() - start
            assert 1.0 < waited < 30, waited
        finally:
            holder.kill()
            holder.join(10)
        assert ledger.get_balance("bob") == 3
        assert ledger.verify().ok


# ------------------------------------------------------------------ concurrency


def _opposite_transfers(url: str, src: str, dst: str, n: int, start: Any, out: Any) -> None:
    start.wait(30)
    done = 0
    try:
        with Ledger(url) as ledger:
            for _ in range(n):
                ledger.transfer(src, dst, 1)
                done += 1
        out.put((src, done, None))
    except Exception as exc:
        out.put((src, done, f"{type(exc).__name__}: {exc}"))


def test_opposite_transfers_in_many_processes_never_deadlock(pg_url: str) -> None:
    with Ledger(pg_url) as ledger:
        ledger.create_entry("a", 10_000, "credit")
        ledger.create_entry("b", 10_000, "credit")
    deadlocks_before = _sql(pg_url, "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
    start, out = SPAWN.Event(), SPAWN.Queue()
    pairs = [("a", "b"), ("b", "a")] * 2
    procs = [SPAWN.Process(target=_opposite_transfers, args=(pg_url, s, d, 250, start, out)) for s, d in pairs]
    for p in procs:
        p.start()
    time.sleep(1.0)
    start.set()
    _join_all(procs)
    results = [out.get(timeout=5) for _ in procs]
    assert [r[2] for r in results] == [None] * len(procs)
    assert sum(r[1] for r in results) == 1000
    time.sleep(0.5)  # backends publish their statistics when they exit
    deadlocks_after = _sql(pg_url, "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
    assert deadlocks_after == deadlocks_before
    with Ledger(pg_url) as ledger:
        assert ledger.get_balance("a") == ledger.get_balance("b") == 10_000
        assert ledger.tree_head().tree_size == 2 + 2 * 1000
        assert ledger.verify().ok


def _create_same(url: str, start: Any, out: Any) -> None:
    start.wait(30)
    try:
        with Ledger(url) as ledger:
            ledger.create_account("shared", overdraft_limit=5)
            ledger.create_entry("fresh", 1, "credit")  # a credit creating an account
        out.put("created")
    except AccountExistsError:
        out.put("exists")
    except Exception as exc:
        out.put(f"{type(exc).__name__}: {exc}")


def test_racing_creators_of_one_account_behave_as_on_sqlite(pg_url: str) -> None:
    Ledger(pg_url).close()
    start, out = SPAWN.Event(), SPAWN.Queue()
    procs = [SPAWN.Process(target=_create_same, args=(pg_url, start, out)) for _ in range(6)]
    for p in procs:
        p.start()
    time.sleep(1.0)
    start.set()
    _join_all(procs)
    results = sorted(out.get(timeout=5) for _ in procs)
    assert results == ["created"] + ["exists"] * 5
    with Ledger(pg_url) as ledger:
        assert ledger.get_balance("fresh") == 1  # the winner's credit; the losers stopped before theirs
        assert ledger.verify().ok


# ----------------------------------------------------- agreement with SQLite


def _outcome(fn: Any) -> Any:
    try:
        return ("ok", fn())
    except Exception as exc:
        return ("error", type(exc).__name__)


def _text_edge_cases(ledger: Ledger) -> list[Any]:
    out: list[Any] = []
    for name in ("b-2", "B-1", "a.9", "A:0", "a-10", "a_1", "Z@x", "0zero"):
        ledger.create_entry(name, 10, "credit", reference=f"ref {name} é")
    out.append([a.account_id for a in ledger.list_accounts()])
    out.append([a.account_id for a in ledger.list_accounts(prefix="a")])
    out.append([a.account_id for a in ledger.list_accounts(after="a", limit=3)])
    out.append(_outcome(lambda: [a.account_id for a in ledger.list_accounts(after="a\x00z")]))
    out.append(_outcome(lambda: [a.account_id for a in ledger.list_accounts(prefix="a\x00")]))
    out.append([e.account_id for e in ledger.list_entries(reference="ref a.9 é").items])
    out.append(_outcome(lambda: ledger.list_entries(reference="ref\x00").items))
    for key in ("nul\x00key", "back\\slash", "back\\0slash", "\x00", "plain"):
        try:
            first = ledger.transfer("b-2", "B-1", "0.5", idempotency_key=key)
        except ValidationError:
            out.append((key, "refused"))
            continue
        again = ledger.transfer("b-2", "B-1", "0.5", idempotency_key=key)
        assert again.replayed
        assert again.batch_id == first.batch_id
        assert again.idempotency_key == key
        with pytest.raises(IdempotencyConflictError):
            ledger.transfer("b-2", "B-1", "0.25", idempotency_key=key)
        out.append((key, [str(e.amount) for e in again.entries]))
    out.append(ledger.get_balance("b-2"))
    out.append(_outcome(lambda: ledger.reversal_of("no\x00such")))
    out.append(_outcome(lambda: ledger.rollback_batch("no\x00such", "why")))
    return out


def test_text_rules_agree_with_sqlite(pg_url: str, tmp_path: Path) -> None:
    results = []
    for url in (f"sqlite:///{tmp_path / 'ledger.db'}", pg_url):
        with Ledger(url) as ledger:
            results.append(_text_edge_cases(ledger))
            assert ledger.verify().ok
    assert results[0] == results[1]
    assert results[1][0] == ["0zero", "A:0", "B-1", "Z@x", "a-10", "a.9", "a_1", "b-2"]  # byte order


def test_point_in_time_reads_match_sqlite(pg_url: str, tmp_path: Path) -> None:
    from datetime import UTC, datetime

    results = []
    for url in (f"sqlite:///{tmp_path / 'ledger.db'}", pg_url):
        with Ledger(url, checkpoint_interval=4) as ledger:
            marks = []
            for i in range(15):
                ledger.create_entry("alice", i + 1, "credit")
                if i % 5 == 4:
                    marks.append(datetime.now(UTC))
                    time.sleep(0.002)
            got = [ledger.get_balance("alice", at=m) for m in marks]
            got += [ledger.get_balance("alice", at=s) for s in (0, 1, 7, 15, 99)]
            got.append(ledger.snapshot(at=9).balances)
            results.append(got)
    assert results[0] == results[1]
    assert results[1][:3] == [Decimal(15), Decimal(55), Decimal(120)]


def test_many_threads_share_one_storage(pg_url: str) -> None:
    with Ledger(pg_url) as ledger:
        _fund(ledger, 4, 1000)
        errors: list[BaseException] = []

        def work(n: int) -> None:
            try:
                for i in range(40):
                    ledger.transfer(f"acct-{(n + i) % 4:02d}", f"acct-{(n + i + 1) % 4:02d}", 1)
                    ledger.get_balance(f"acct-{n % 4:02d}")
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(12)]  # more threads than pool slots
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        assert ledger.tree_head().tree_size == 4 + 2 * 12 * 40
        assert sum(ledger.get_balance(f"acct-{i:02d}") for i in range(4)) == 4000
        assert ledger.verify().ok


def test_url_spellings_open_the_same_ledger(pg_url: str) -> None:
    with Ledger(pg_url) as ledger:
        ledger.create_entry("alice", 3, "credit")
    for spelling in (pg_url.replace("postgresql://", "postgres://", 1),
                     pg_url.replace("postgresql://", "postgresql+psycopg://", 1)):
        with Ledger(spelling) as ledger:
            assert ledger.get_balance("alice") == 3
            assert ledger.database_url == spelling


def _use_inherited(ledger: Ledger, out: Any) -> None:
    try:
        ledger.get_balance("alice")
        out.put("used the parent's connections")
    except StorageError as exc:
        out.put(f"refused: {exc}")


def test_a_storage_inherited_through_fork_refuses_instead_of_sharing_connections(pg_url: str) -> None:
    fork = mp.get_context("fork")
    with Ledger(pg_url) as ledger:
        ledger.create_entry("alice", 4, "credit")
        out = fork.Queue()
        child = fork.Process(target=_use_inherited, args=(ledger, out))
        child.start()
        _join_all([child])
        assert out.get(timeout=5).startswith("refused: this PostgreSQL storage was opened in process")
        ledger.create_entry("alice", 1, "credit")  # the parent's connections are untouched
        assert ledger.get_balance("alice") == 5


def test_lost_commit_of_a_bulk_write_that_starts_with_a_replay_is_not_applied_twice(pg_url: str) -> None:
    """The retry must recognise its own commit even when the first request of the
    write was an idempotent replay (which stores no batch of its own)."""
    storage = _LostCommitAnswer(pg_url)
    with Ledger(storage=storage) as ledger:
        ledger.create_entry("alice", 100, "credit")
        first = ledger.transfer("alice", "bob", 10, idempotency_key="k1")
        replay = transfer_request("alice", "bob", 10, None, None).keyed("k1")
        fresh = transfer_request("alice", "carol", 5, None, None)
        again = transfer_request("alice", "bob", 10, None, None).keyed("k1")
        storage.lose_next = 1
        out = ledger._post([replay, fresh, again])
        assert storage.lose_next == 0
        assert ledger.get_balance("carol") == 5  # once, not twice
        assert ledger.get_balance("alice") == 85
        assert len(out) == 3
        assert out[0].batch_id == first.batch_id
        assert out[0].replayed
        assert out[1].batch_id == fresh.batch_id
        assert not out[1].replayed
        assert [e.account_id for e in out[1].entries] == ["alice", "carol"]
        assert out[2].batch_id == first.batch_id
        assert out[2].replayed
        assert ledger.verify().ok
