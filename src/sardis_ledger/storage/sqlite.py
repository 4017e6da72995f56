"""SQLite storage: the embedded default, safe for many threads and processes.

Writers serialise on SQLite's database lock (``BEGIN IMMEDIATE``), which is
exactly the ordering the Merkle log needs; WAL mode lets readers proceed
meanwhile. ``synchronous=NORMAL`` in WAL mode survives a killed process (the
invariant we promise); pass ``?synchronous=FULL`` in the URL to also survive
power loss at some cost per commit.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from ..errors import RetryableStorageError, StorageError
from ..merkle import created_by, node_position
from ..records import AccountRow, BatchRow, EntryRow, HeadRow
from .base import EntryQuery, Storage, Transaction, first_node_position

__all__ = ["SQLiteStorage"]

_APPEND_ONLY = ("entries", "batches", "nodes", "checkpoints", "assets")

MIGRATIONS: list[str] = [
    # 1: the initial schema. Every table is laid out so that a commit appends near
    # the right edge of each B-tree (sequence numbers, node positions, time-ordered
    # ids): one writer touches a handful of pages per commit, however large the log.
    """
    CREATE TABLE assets (code TEXT PRIMARY KEY, scale INTEGER NOT NULL) WITHOUT ROWID;
    CREATE TABLE accounts (
        account_id TEXT PRIMARY KEY, asset TEXT NOT NULL, balance INTEGER NOT NULL,
        overdraft_limit INTEGER NOT NULL, metadata TEXT NOT NULL, created_at TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE entries (
        seq INTEGER PRIMARY KEY, entry_id TEXT NOT NULL UNIQUE, batch_id TEXT NOT NULL,
        account_id TEXT NOT NULL, asset TEXT NOT NULL, amount INTEGER NOT NULL,
        direction TEXT NOT NULL, running_balance INTEGER NOT NULL, created_at TEXT NOT NULL,
        reference TEXT, metadata TEXT NOT NULL, reverses TEXT
    );
    CREATE INDEX entries_account ON entries (account_id, seq);
    CREATE INDEX entries_reference ON entries (reference, seq) WHERE reference IS NOT NULL;
    CREATE TABLE batches (
        batch_id TEXT PRIMARY KEY, first_seq INTEGER NOT NULL, count INTEGER NOT NULL,
        created_at TEXT NOT NULL, reverses TEXT, reason TEXT,
        idempotency_key TEXT, request_hash TEXT
    ) WITHOUT ROWID;
    CREATE UNIQUE INDEX batches_reverses ON batches (reverses) WHERE reverses IS NOT NULL;
    CREATE UNIQUE INDEX batches_idempotency ON batches (idempotency_key) WHERE idempotency_key IS NOT NULL;
    CREATE TABLE nodes (pos INTEGER PRIMARY KEY, hash BLOB NOT NULL);
    CREATE TABLE tree_head (id INTEGER PRIMARY KEY CHECK (id = 1), size INTEGER NOT NULL,
        root BLOB NOT NULL, updated_at TEXT NOT NULL);
    CREATE TABLE checkpoints (seq INTEGER PRIMARY KEY, balances TEXT NOT NULL);
    """
    + "".join(
        f"""
    CREATE TRIGGER {t}_no_update BEFORE UPDATE ON {t}
        BEGIN SELECT RAISE(ABORT, 'ledger history is append-only'); END;
    CREATE TRIGGER {t}_no_delete BEFORE DELETE ON {t}
        BEGIN SELECT RAISE(ABORT, 'ledger history is append-only'); END;
    """
        for t in _APPEND_ONLY
    ),
]

_ENTRY_COLS = (
    "seq, entry_id, batch_id, account_id, asset, amount, direction, running_balance,"
    " created_at, reference, metadata, reverses"
)
_ACCOUNT_COLS = "account_id, asset, balance, overdraft_limit, metadata, created_at"
_BATCH_COLS = "batch_id, first_seq, count, created_at, reverses, reason, idempotency_key, request_hash"
_CHUNK = 500  # bound parameters per IN (...) query, well under SQLite's limit
_EMPTY_ROOT = bytes.fromhex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")


class SQLiteTransaction(Transaction):
    __slots__ = ("c",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.c = conn

    def head(self) -> HeadRow:
        row = self.c.execute("SELECT size, root, updated_at FROM tree_head WHERE id = 1").fetchone()
        if row is None:
            return HeadRow(0, _EMPTY_ROOT, "")
        return HeadRow(row[0], bytes(row[1]), row[2])

    def assets(self) -> dict[str, int]:
        return dict(self.c.execute("SELECT code, scale FROM assets").fetchall())

    def get_accounts(self, account_ids: Sequence[str]) -> dict[str, AccountRow]:
        # SQLite has no row locks: the write transaction already holds the database lock.
        ids = sorted(set(account_ids))
        out: dict[str, AccountRow] = {}
        for i in range(0, len(ids), _CHUNK):
            chunk = ids[i : i + _CHUNK]
            q = f"SELECT {_ACCOUNT_COLS} FROM accounts WHERE account_id IN ({','.join('?' * len(chunk))})"
            out.update((r[0], AccountRow(*r)) for r in self.c.execute(q, chunk))
        return out

    def list_accounts(self, prefix: str | None, after: str | None, limit: int) -> list[AccountRow]:
        sql = f"SELECT {_ACCOUNT_COLS} FROM accounts WHERE account_id > ?"
        args: list[object] = [after or ""]
        if prefix:
            sql += " AND account_id >= ? AND account_id < ?"
            args += [prefix, prefix + "\uffff"]
        sql += " ORDER BY account_id LIMIT ?"
        args.append(limit)
        return [AccountRow(*r) for r in self.c.execute(sql, args)]

    def all_balances(self) -> dict[str, int]:
        return dict(self.c.execute("SELECT account_id, balance FROM accounts").fetchall())

    def get_nodes(self, coords: Iterable[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        by_pos = {node_position(level, idx): (level, idx) for level, idx in coords}
        wanted = list(by_pos)
        out: dict[tuple[int, int], bytes] = {}
        for i in range(0, len(wanted), _CHUNK):
            chunk = wanted[i : i + _CHUNK]
            q = f"SELECT pos, hash FROM nodes WHERE pos IN ({','.join('?' * len(chunk))})"
            out.update((by_pos[pos], bytes(h)) for pos, h in self.c.execute(q, chunk))
        return out

    def get_batch(self, batch_id: str) -> BatchRow | None:
        r = self.c.execute(f"SELECT {_BATCH_COLS} FROM batches WHERE batch_id = ?", (batch_id,)).fetchone()
        return BatchRow(*r) if r else None

    def find_idempotency(self, key: str) -> BatchRow | None:
        r = self.c.execute(f"SELECT {_BATCH_COLS} FROM batches WHERE idempotency_key = ?", (key,)).fetchone()
        return BatchRow(*r) if r else None

    def find_reversal(self, batch_id: str) -> str | None:
        r = self.c.execute("SELECT batch_id FROM batches WHERE reverses = ?", (batch_id,)).fetchone()
        return r[0] if r else None

    def entries_by_seq(self, start: int, end: int) -> list[EntryRow]:
        q = f"SELECT {_ENTRY_COLS} FROM entries WHERE seq >= ? AND seq < ? ORDER BY seq"
        return [EntryRow(*r) for r in self.c.execute(q, (start, end))]

    def query_entries(self, query: EntryQuery) -> list[EntryRow]:
        conds = ["seq >= ?"]
        args: list[object] = [query.seq_from]
        if query.seq_to is not None:
            conds.append("seq < ?")
            args.append(query.seq_to)
        if query.account_id is not None:
            conds.append("account_id = ?")
            args.append(query.account_id)
        if query.reference is not None:
            conds.append("reference = ?")
            args.append(query.reference)
        order = "DESC" if query.descending else "ASC"
        q = f"SELECT {_ENTRY_COLS} FROM entries WHERE {' AND '.join(conds)} ORDER BY seq {order} LIMIT ?"
        args.append(query.limit)
        return [EntryRow(*r) for r in self.c.execute(q, args)]

    def get_entry(self, entry_id: str) -> EntryRow | None:
        r = self.c.execute(f"SELECT {_ENTRY_COLS} FROM entries WHERE entry_id = ?", (entry_id,)).fetchone()
        return EntryRow(*r) if r else None

    def last_entry_before(self, account_id: str, seq_end: int) -> EntryRow | None:
        q = f"SELECT {_ENTRY_COLS} FROM entries WHERE account_id = ? AND seq < ? ORDER BY seq DESC LIMIT 1"
        r = self.c.execute(q, (account_id, seq_end)).fetchone()
        return EntryRow(*r) if r else None

    def seq_after_time(self, timestamp: str) -> int:
        # created_at never decreases along seq, so binary search on the primary key.
        lo, hi = 0, self.head().size
        while lo < hi:
            mid = (lo + hi) // 2
            r = self.c.execute("SELECT created_at FROM entries WHERE seq = ?", (mid,)).fetchone()
            if r is not None and r[0] <= timestamp:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def checkpoint_at_or_before(self, seq: int) -> tuple[int, dict[str, int]] | None:
        r = self.c.execute(
            "SELECT seq, balances FROM checkpoints WHERE seq <= ? ORDER BY seq DESC LIMIT 1", (seq,)
        ).fetchone()
        return (r[0], json.loads(r[1])) if r else None

    def node_range(self, level: int, idx_from: int, idx_to: int) -> list[tuple[int, bytes]]:
        found = self.get_nodes([(level, i) for i in range(idx_from, idx_to + 1)])
        return [(i, found[(level, i)]) for i in range(idx_from, idx_to + 1) if (level, i) in found]

    def nodes_created_by(self, start: int, end: int) -> dict[tuple[int, int], bytes]:
        # Nodes are keyed by creation order, so this is one range scan.
        if end <= start:
            return {}
        coords = [c for leaf in range(start, end) for c in created_by(leaf)]
        first = node_position(*coords[0])
        q = "SELECT pos, hash FROM nodes WHERE pos >= ? AND pos < ? ORDER BY pos"
        return {coords[pos - first]: bytes(h) for pos, h in self.c.execute(q, (first, first + len(coords)))}

    def insert_asset(self, code: str, scale: int) -> None:
        self.c.execute("INSERT INTO assets (code, scale) VALUES (?, ?)", (code, scale))

    def insert_accounts(self, rows: Sequence[AccountRow]) -> None:
        self.c.executemany(
            f"INSERT INTO accounts ({_ACCOUNT_COLS}) VALUES (?, ?, ?, ?, ?, ?)",
            [(r.account_id, r.asset, r.balance, r.overdraft_limit, r.metadata, r.created_at) for r in rows],
        )

    def update_balances(self, balances: Mapping[str, int]) -> None:
        self.c.executemany(
            "UPDATE accounts SET balance = ? WHERE account_id = ?", [(b, a) for a, b in balances.items()]
        )

    def insert_batch(self, row: BatchRow) -> None:
        self.insert_batches([row])

    def insert_batches(self, rows: Sequence[BatchRow]) -> None:
        self.c.executemany(
            f"INSERT INTO batches ({_BATCH_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(r.batch_id, r.first_seq, r.count, r.created_at, r.reverses, r.reason, r.idempotency_key,
              r.request_hash) for r in rows],
        )

    def insert_entries(self, rows: Sequence[EntryRow]) -> None:
        self.c.executemany(
            f"INSERT INTO entries ({_ENTRY_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (r.seq, r.entry_id, r.batch_id, r.account_id, r.asset, r.amount, r.direction,
                 r.running_balance, r.created_at, r.reference, r.metadata, r.reverses)
                for r in rows
            ],
        )

    def insert_nodes(self, nodes: Sequence[tuple[int, int, bytes]]) -> None:
        # Nodes come in the order appends created them (the contract), which is one
        # run of consecutive positions: no per-node arithmetic on the write path.
        if not nodes:
            return
        first = first_node_position(nodes)
        positions = range(first, first + len(nodes))
        self.c.executemany(
            "INSERT INTO nodes (pos, hash) VALUES (?, ?)", zip(positions, (n[2] for n in nodes), strict=True)
        )

    def set_head(self, head: HeadRow) -> None:
        self.c.execute(
            "INSERT INTO tree_head (id, size, root, updated_at) VALUES (1, ?, ?, ?)"
            " ON CONFLICT (id) DO UPDATE SET size = excluded.size, root = excluded.root,"
            " updated_at = excluded.updated_at",
            (head.size, head.root, head.updated_at),
        )

    def insert_checkpoint(self, seq: int, balances: Mapping[str, int]) -> None:
        self.c.execute(
            "INSERT INTO checkpoints (seq, balances) VALUES (?, ?)",
            (seq, json.dumps(dict(balances), separators=(",", ":"))),
        )


class SQLiteStorage(Storage):
    """``sqlite:///relative.db``, ``sqlite:////abs/path.db``, or a plain ``.db`` path."""

    cache_kib = 32_768
    """Page cache per connection. The default 2 MiB misses on a large ledger's hot
    index pages (one per active account); this stays well inside the memory budget."""

    def __init__(self, path: str | Path, *, synchronous: str = "NORMAL", url: str | None = None) -> None:
        self.path = str(path)
        self.url = url or f"sqlite:///{self.path}"
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise StorageError(f"unknown synchronous mode {synchronous!r}")
        self._synchronous = synchronous.upper()
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        self._pid = os.getpid()
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._migrate(self._conn())

    # One connection per thread: sqlite3 connections must not be shared between
    # threads, nor used in a forked child (SQLite forbids carrying them across
    # fork), so a child abandons the parent's connections and opens its own.
    def _conn(self) -> sqlite3.Connection:
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._local = threading.local()
            self._all = []
            self._all_lock = threading.Lock()
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=60)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            conn.execute("PRAGMA busy_timeout=60000")
            conn.execute(f"PRAGMA cache_size=-{self.cache_kib}")
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open SQLite database {self.path!r}: {exc}") from exc
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
                row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
                current = row[0] or 0
                if current > len(MIGRATIONS):
                    raise StorageError(
                        f"{self.path!r} has schema version {current}; this sardis_ledger knows {len(MIGRATIONS)}"
                    )
                for version, script in enumerate(MIGRATIONS[current:], start=current + 1):
                    for statement in _split_sql(script):
                        conn.execute(statement)
                    conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StorageError(f"cannot prepare SQLite database {self.path!r}: {exc}") from exc

    @contextmanager
    def transaction(self, *, write: bool) -> Iterator[Transaction]:
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        except sqlite3.Error as exc:
            raise _translate(exc, "begin a transaction") from exc
        try:
            yield SQLiteTransaction(conn)
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise _translate(exc, "run a statement") from exc
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise _translate(exc, "commit") from exc

    def close(self) -> None:
        with self._all_lock:
            for conn in self._all:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            self._all.clear()
        self._local = threading.local()


def _translate(exc: sqlite3.Error, doing: str) -> StorageError:
    """sqlite3's errors at the boundary: a busy/locked database is transient (the
    transaction rolled back; the engine retries), anything else is a storage failure."""
    text = str(exc).lower()
    if isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text):
        return RetryableStorageError(f"SQLite could not {doing}: {exc}")
    return StorageError(f"SQLite could not {doing}: {exc}")


def _split_sql(script: str) -> list[str]:
    """Split a migration into statements, keeping trigger bodies whole."""
    out: list[str] = []
    buf = ""
    for piece in script.split(";"):
        buf += piece + ";"
        if sqlite3.complete_statement(buf):
            if buf.strip(" \n;"):
                out.append(buf.strip())
            buf = ""
    return out
