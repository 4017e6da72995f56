"""PostgreSQL storage: one ledger shared by many processes on many hosts.

How it keeps the storage contract (see :mod:`.base`):

* **Serialising writers.** Write transactions run at READ COMMITTED. The engine
  first calls ``get_accounts``, which locks the account rows with ``SELECT … FOR
  UPDATE`` ordered by account id (one global order, so opposite transfers cannot
  deadlock) and then the single ``tree_head`` row ``FOR UPDATE``, in one round
  trip. Every Merkle append happens under that row lock, so leaf indexes have no
  gaps or duplicates; and because a statement that ran after a lock wait sees
  everything committed before it, balances and the tree are never read stale.
  Accounts are only created under the head lock too, so two creators of one id
  behave as on SQLite (the second sees the first's row) instead of colliding.
* **Consistent reads.** Read transactions are REPEATABLE READ READ ONLY: the
  engine reads the head, then entries, nodes and accounts, and needs them to
  describe one moment (``verify`` compares balances with the log).
* **A short serialised section.** Connections are in autocommit mode and this
  module sends ``BEGIN``/``COMMIT`` itself, pipelined with the first and last
  statements. Writes are queued and go out as one statement (each table's rows
  as one JSON array, unpacked by data-modifying CTEs) together with ``COMMIT``;
  the head row carries the Merkle frontier, so the engine's append reads
  nothing more. A transfer is two round trips; between the head lock and the
  commit there is only the engine's own work.
* **Few rows per write.** The Merkle nodes a write creates occupy consecutive
  places in creation order, so they are stored as one ``node_blocks`` row of
  32-byte hashes (schema version 5; older databases keep their per-node rows in
  ``nodes``, still read). A bulk write also streams its rows to the server in
  chunks (:meth:`PostgresTransaction.send_writes`) while the engine builds the
  rest, so on two cores the client's and the server's halves of the work overlap.
* **Failures.** Deadlocks, serialization failures, unique violations from racing
  inserts and lost connections (``pg_terminate_backend``, a failed ``COMMIT``,
  a network cut) become :class:`~sardis_ledger.errors.RetryableStorageError`,
  which the engine retries; a broken connection is closed and the pool opens a
  new one. Every other database error is a :class:`StorageError`.
* **Append-only.** Triggers refuse UPDATE/DELETE/TRUNCATE on history tables and
  the schema owner's own privileges for them are revoked (see
  :mod:`.pg_migrations`), so even a bug in Python cannot rewrite history.

Amounts are BIGINT minor units, hashes BYTEA, timestamps the engine's ISO text.
"""

from __future__ import annotations

import json
import os
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool

from ..errors import LedgerError, RetryableStorageError, StorageError
from ..merkle import created_by, frontier_coords, node_position
from ..records import AccountRow, BatchRow, EntryRow, HeadRow
from .base import EntryQuery, Storage, Transaction, first_node_position
from .pg_migrations import MIGRATION_LOCK_KEY, MIGRATIONS, VERSION_TABLE

__all__ = ["SCHEMA_VERSION", "PostgresStorage", "PostgresTransaction", "migrate"]

SCHEMA_VERSION = len(MIGRATIONS)

_ENTRY_COLS = (
    "seq, entry_id, batch_id, account_id, asset, amount, direction, running_balance,"
    " created_at, reference, metadata, reverses"
)
_ACCOUNT_COLS = "account_id, asset, balance, overdraft_limit, metadata, created_at"
_BATCH_COLS = "batch_id, first_seq, count, created_at, reverses, reason, idempotency_key, request_hash"

# Every write of a transaction goes out as one statement: each table's rows as
# one JSON array, unpacked server-side (one parameter per table costs the client
# far less than one per column, and the server parses it once).
_W_ACCOUNTS = (
    f"INSERT INTO accounts ({_ACCOUNT_COLS}) SELECT r->>0, r->>1, (r->>2)::bigint, (r->>3)::bigint, r->>4, r->>5"
    " FROM jsonb_array_elements(%s::jsonb) AS r"
)
_W_BALANCES = (
    "UPDATE accounts AS a SET balance = (v->>1)::bigint"
    " FROM ledger_json_rows(%s::jsonb) AS v WHERE a.account_id = v->>0"
)
_W_BATCHES = (
    f"INSERT INTO batches ({_BATCH_COLS}) SELECT r->>0, (r->>1)::bigint, (r->>2)::int, r->>3, r->>4, r->>5, r->>6,"
    " r->>7 FROM jsonb_array_elements(%s::jsonb) AS r"
)
_W_ENTRIES = (
    f"INSERT INTO entries ({_ENTRY_COLS}) SELECT (r->>0)::bigint, r->>1, r->>2, r->>3, r->>4, (r->>5)::bigint,"
    " r->>6, (r->>7)::bigint, r->>8, r->>9, r->>10, r->>11 FROM jsonb_array_elements(%s::jsonb) AS r"
)
_W_NODES = "INSERT INTO node_blocks (first_pos, hashes) VALUES (%s, %s)"
# Nodes by creation-order place: the block that holds each place, then its slice.
_NODES_AT = (
    "SELECT w.p, substring(b.hashes FROM ((w.p - b.first_pos) * 32 + 1)::int FOR 32)"
    " FROM unnest(%s::bigint[]) AS w(p) JOIN LATERAL (SELECT first_pos, hashes FROM node_blocks"
    " WHERE first_pos <= w.p ORDER BY first_pos DESC LIMIT 1) AS b ON w.p < b.first_pos + octet_length(b.hashes) / 32"
)
# Every block overlapping the places lo..hi (the first may start before lo).
_NODE_SPAN = (
    "SELECT first_pos, hashes FROM node_blocks WHERE first_pos <= %s"
    " AND first_pos >= coalesce((SELECT max(first_pos) FROM node_blocks WHERE first_pos <= %s), 0)"
    " ORDER BY first_pos"
)
# Schema versions before 5 kept one row per node, keyed by (level, idx).
_LEGACY_NODES = (
    "SELECT n.level, n.idx, n.hash FROM unnest(%s::int[], %s::bigint[]) AS w(level, idx)"
    " JOIN nodes n ON n.level = w.level AND n.idx = w.idx"
)
_W_HEAD = "UPDATE tree_head SET size = %s, root = %s, updated_at = %s, frontier = %s WHERE id = 1"
_W_CHECKPOINT = "INSERT INTO checkpoints (seq, balances) VALUES (%s, %s::jsonb)"
_json = json.JSONEncoder(separators=(",", ":")).encode

_HEAD = "SELECT size, root, updated_at, frontier FROM tree_head WHERE id = 1"
_HEAD_FOR_UPDATE = _HEAD + " FOR UPDATE"
_LOCK_ACCOUNTS = f"SELECT {_ACCOUNT_COLS} FROM accounts WHERE account_id = ANY(%s) ORDER BY account_id FOR UPDATE"

_RETRYABLE_SQLSTATES = frozenset({
    "40001",  # serialization_failure
    "40P01",  # deadlock_detected
    "23505",  # unique_violation: two writers created the same account or key
    "55P03",  # lock_not_available
    "57P01",  # admin_shutdown: pg_terminate_backend
    "57P02",  # crash_shutdown
    "57P03",  # cannot_connect_now
    "25P03",  # idle_in_transaction_session_timeout
})
IDLE_IN_TRANSACTION_TIMEOUT_MS = 60_000
"""Default server-side limit on a session idling inside a transaction (override
with ``?options=-c idle_in_transaction_session_timeout=…`` in the URL)."""
_IDLE_PING_SECONDS = 5.0
"""A pooled connection idle longer than this is checked before use, so a server
restart or a killed backend costs a reconnect instead of a failed read."""


Params = Sequence[Any] | None


def _translate(exc: psycopg.Error, conn: psycopg.Connection[Any] | None, what: str) -> LedgerError:
    """Map a driver error to the ledger's tree; retryable when a retry can succeed."""
    state = getattr(exc, "sqlstate", None)
    broken = conn is not None and (conn.broken or conn.closed)
    message = f"PostgreSQL {what} failed: {str(exc).strip() or type(exc).__name__}"
    if broken or state in _RETRYABLE_SQLSTATES or (state is None and isinstance(exc, psycopg.OperationalError)):
        return RetryableStorageError(message, sqlstate=state)
    return StorageError(message, sqlstate=state)


def _escape_key(key: str | None) -> str | None:
    r"""PostgreSQL text cannot hold NUL, but idempotency keys are any string; this
    escaping is injective, so keys stay unique and round-trip exactly."""
    if key is None or ("\x00" not in key and "\\" not in key):
        return key
    return key.replace("\\", "\\\\").replace("\x00", "\\0")


def _unescape_key(key: str | None) -> str | None:
    if key is None or "\\" not in key:
        return key
    out: list[str] = []
    it = iter(key)
    for ch in it:
        if ch == "\\":
            nxt = next(it, "")
            out.append("\x00" if nxt == "0" else nxt)
        else:
            out.append(ch)
    return "".join(out)


def _batch(r: Sequence[Any]) -> BatchRow:
    return BatchRow(r[0], r[1], r[2], r[3], r[4], r[5], _unescape_key(r[6]), r[7])


class PostgresTransaction(Transaction):
    """One database transaction on one connection; not shared between threads.

    Writes are queued and sent, as one statement, in a pipeline with the next
    read or the ``COMMIT``; the engine cannot tell this from immediate writes
    because every read first sends what is queued. Errors from a queued write
    therefore surface at that next read or at commit, still inside the
    transaction, and roll it back.

    In a write transaction the first ``get_accounts`` also locks the tree head,
    in the same round trip and after the account rows, which is the order the
    engine takes them in anyway (it calls ``head()`` next). The head row carries
    the Merkle frontier, so the engine's append needs no further read: the
    section in which writers are serialised is one round trip plus the commit.
    """

    __slots__ = (
        "_balances", "_batches", "_begin", "_checkpoints", "_entries", "_head", "_new_accounts", "_new_head",
        "_new_nodes", "_nodes", "_stream", "conn", "write",
    )

    def __init__(self, conn: psycopg.Connection[Any], write: bool, begin: str) -> None:
        self.conn = conn
        self.write = write
        self._begin: str | None = begin
        """Sent with the first statement, saving a round trip."""
        self._head: HeadRow | None = None
        """The locked head (write transactions): nobody else can change it."""
        self._nodes: dict[tuple[int, int], bytes] = {}
        """Merkle nodes known in this transaction. Nodes never change once
        written, so any node seen stays valid."""
        # queued writes
        self._new_accounts: list[AccountRow] = []
        self._balances: dict[str, int] = {}
        self._batches: list[BatchRow] = []
        self._entries: list[EntryRow] = []
        self._new_nodes: list[tuple[int, int, bytes]] = []
        self._new_head: tuple[HeadRow, bytes | None] | None = None
        self._checkpoints: list[tuple[int, dict[str, int]]] = []
        self._stream: AbstractContextManager[Any] | None = None
        """The pipeline :meth:`send_writes` left open: statements sent and not
        yet answered. Later reads and the commit sync it; :meth:`end_stream`
        closes it."""

    # -- plumbing -----------------------------------------------------------
    def _rows(self, sql: str, params: Params = None) -> list[tuple[Any, ...]]:
        return self._many([(sql, params)])[0]

    def _many(self, statements: Sequence[tuple[str, Params]]) -> list[list[tuple[Any, ...]]]:
        """Run queued writes and ``statements`` in one round trip; rows of each."""
        try:
            queued = self._take_queued()
            if len(statements) == 1 and not queued and self._stream is None:
                return [self.conn.execute(*statements[0]).fetchall()]
            with self.conn.pipeline():
                for sql, params in queued:
                    self.conn.execute(sql, params)
                cursors = [self.conn.execute(sql, params) for sql, params in statements]
            return [cur.fetchall() for cur in cursors]
        except psycopg.Error as exc:
            raise _translate(exc, self.conn, "query") from exc

    def _take_queued(self) -> list[tuple[str, Params]]:
        """``BEGIN`` if not yet sent, then every queued write as one statement."""
        out: list[tuple[str, Params]] = []
        if self._begin is not None:
            out.append((self._begin, None))
            self._begin = None
        parts: list[str] = []
        params: list[Any] = []
        if self._new_accounts:
            # A credit creates its account and sets its balance in one transaction:
            # one statement cannot update a row it inserts, so insert the final balance.
            rows = [
                [a.account_id, a.asset, self._balances.pop(a.account_id, a.balance), a.overdraft_limit, a.metadata,
                 a.created_at]
                for a in self._new_accounts
            ]
            parts.append(_W_ACCOUNTS)
            params.append(_json(rows))
            self._new_accounts = []
        if self._balances:
            parts.append(_W_BALANCES)
            params.append(_json(list(self._balances.items())))
            self._balances = {}
        if self._batches:
            parts.append(_W_BATCHES)
            params.append(_json([
                [b.batch_id, b.first_seq, b.count, b.created_at, b.reverses, b.reason, _escape_key(b.idempotency_key),
                 b.request_hash]
                for b in self._batches
            ]))
            self._batches = []
        if self._entries:
            parts.append(_W_ENTRIES)
            params.append(_json([
                [e.seq, e.entry_id, e.batch_id, e.account_id, e.asset, e.amount, e.direction, e.running_balance,
                 e.created_at, e.reference, e.metadata, e.reverses]
                for e in self._entries
            ]))
            self._entries = []
        if self._new_nodes:
            nodes, self._new_nodes = self._new_nodes, []
            parts.append(_W_NODES)
            params += [first_node_position(nodes), b"".join(n[2] for n in nodes)]
        if self._new_head is not None:
            head, frontier = self._new_head
            parts.append(_W_HEAD)
            params += [head.size, head.root, head.updated_at, frontier]
            self._new_head = None
        for seq, balances in self._checkpoints:
            parts.append(_W_CHECKPOINT)
            params += [seq, _json(balances)]
        self._checkpoints = []
        if len(parts) == 1:
            out.append((parts[0], params))
        elif parts:
            ctes = ", ".join(f"w{i} AS ({part})" for i, part in enumerate(parts))
            out.append((f"WITH {ctes} SELECT 1", params))
        return out

    def send_writes(self) -> None:
        """Send the queued writes without waiting for their answers, so the server
        inserts them while the engine builds the next chunk of a bulk write (on
        two cores this overlaps the two halves of the work instead of adding
        them). Their outcome is read at the next read or at commit."""
        queued = self._take_queued()
        if not queued:
            return
        try:
            if self._stream is None:
                stream = self.conn.pipeline()
                stream.__enter__()
                self._stream = stream
            for sql, params in queued:
                self.conn.execute(sql, params)
        except psycopg.Error as exc:
            raise _translate(exc, self.conn, "write") from exc

    def end_stream(self, *, failed: bool) -> None:
        """Leave pipeline mode. After a failure the answers are moot: errors are
        dropped here and the caller rolls back (or discards a broken connection)."""
        stream, self._stream = self._stream, None
        if stream is None:
            return
        if not failed:
            stream.__exit__(None, None, None)
            return
        with suppress(psycopg.Error):
            stream.__exit__(None, None, None)

    def commit(self) -> None:
        """Send queued writes and COMMIT in one round trip; raise if it did not commit."""
        with self.conn.pipeline():
            for sql, params in self._take_queued():
                self.conn.execute(sql, params)
            cur = self.conn.execute("COMMIT")
        self.end_stream(failed=False)
        if cur.statusmessage != "COMMIT":  # PostgreSQL answers ROLLBACK to COMMIT of a failed transaction
            raise StorageError(f"PostgreSQL rolled back instead of committing ({cur.statusmessage})")

    def _take_head(self, rows: list[tuple[Any, ...]]) -> HeadRow:
        if not rows:
            raise StorageError("the tree_head row is missing; the schema is damaged")
        size, root, updated_at, frontier = rows[0]
        head = HeadRow(size, bytes(root), updated_at)
        if frontier is not None:
            coords = frontier_coords(size)
            blob = bytes(frontier)
            if len(blob) == 32 * len(coords):
                self._nodes.update((c, blob[32 * i : 32 * i + 32]) for i, c in enumerate(coords))
        if self.write:
            self._head = head
        return head

    # -- reads --------------------------------------------------------------
    def head(self) -> HeadRow:
        if self._head is not None:
            return self._head
        return self._take_head(self._rows(_HEAD_FOR_UPDATE if self.write else _HEAD))

    def assets(self) -> dict[str, int]:
        return {code: scale for code, scale in self._rows("SELECT code, scale FROM assets")}

    def get_accounts(self, account_ids: Sequence[str]) -> dict[str, AccountRow]:
        ids = sorted(set(account_ids))
        if not ids:
            return {}
        if not self.write:
            q = f"SELECT {_ACCOUNT_COLS} FROM accounts WHERE account_id = ANY(%s)"
            return {r[0]: AccountRow(*r) for r in self._rows(q, (ids,))}
        if self._head is not None:
            # The head is already ours (the engine reads a reversal's accounts
            # after it): waiting here could deadlock with a writer that holds
            # one of these rows and waits for the head, so give way and retry.
            rows = self._rows(_LOCK_ACCOUNTS + " NOWAIT", (ids,))
            return {r[0]: AccountRow(*r) for r in rows}
        # Rows in sorted order (one global order: opposite transfers cannot
        # deadlock), then the head, in one round trip.
        rows, head_rows = self._many([(_LOCK_ACCOUNTS, (ids,)), (_HEAD_FOR_UPDATE, None)])
        self._take_head(head_rows)
        found = {r[0]: AccountRow(*r) for r in rows}
        missing = [i for i in ids if i not in found]
        if missing:
            # Accounts are only created under the head lock, so now that we hold
            # it, a fresh statement sees every account that will ever race us.
            found.update({r[0]: AccountRow(*r) for r in self._rows(_LOCK_ACCOUNTS, (missing,))})
        return found

    def list_accounts(self, prefix: str | None, after: str | None, limit: int) -> list[AccountRow]:
        # Valid ids never contain NUL (which PostgreSQL text cannot hold): cut
        # the bounds there and the comparison gives SQLite's answer.
        after = (after or "").split("\x00", 1)[0]
        sql = f"SELECT {_ACCOUNT_COLS} FROM accounts WHERE account_id > %s"
        args: list[object] = [after]
        if prefix:
            if "\x00" in prefix:
                return []
            sql += " AND account_id >= %s AND account_id < %s"
            args += [prefix, prefix + "\uffff"]
        sql += " ORDER BY account_id LIMIT %s"
        args.append(limit)
        return [AccountRow(*r) for r in self._rows(sql, args)]

    def all_balances(self) -> dict[str, int]:
        return {a: b for a, b in self._rows("SELECT account_id, balance FROM accounts")}

    def get_nodes(self, coords: Iterable[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        wanted = list(coords)
        out = {c: h for c in wanted if (h := self._nodes.get(c)) is not None}
        missing = [c for c in wanted if c not in out]
        if missing:
            out.update(self._fetch_nodes(missing))
        return out

    def _fetch_nodes(self, coords: Sequence[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        """Stored nodes at ``coords``: from the blocks, then, for any not there,
        from the per-node rows that schema versions before 5 wrote."""
        by_pos = {node_position(level, idx): (level, idx) for level, idx in coords}
        found = {by_pos[p]: bytes(h) for p, h in self._rows(_NODES_AT, (list(by_pos),))}
        if len(found) < len(by_pos):
            self._legacy_nodes([c for c in coords if c not in found], found)
        self._nodes.update(found)
        return found

    def _legacy_nodes(self, coords: Sequence[tuple[int, int]], into: dict[tuple[int, int], bytes]) -> None:
        rows = self._rows(_LEGACY_NODES, ([c[0] for c in coords], [c[1] for c in coords]))
        into.update(((level, idx), bytes(h)) for level, idx, h in rows)

    def _nodes_in_span(self, coords: Sequence[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        """Like :meth:`_fetch_nodes` for ``coords`` in creation order that lie close
        together: one read of the blocks overlapping their span."""
        if not coords:
            return {}
        positions = [node_position(level, idx) for level, idx in coords]
        lo, hi = positions[0], positions[-1]
        if hi - lo > 4 * len(positions) + 64:  # sparse: probe each place instead
            return self._fetch_nodes(coords)
        stored: dict[int, bytes] = {}
        blocks = self._rows(_NODE_SPAN, (hi, lo))
        for k, (first, blob) in enumerate(blocks):
            # The same rule as _NODES_AT: a place belongs to the last block starting
            # at or before it (the database keeps blocks from overlapping anyway).
            stop = blocks[k + 1][0] if k + 1 < len(blocks) else hi + 1
            blob = bytes(blob)
            for p in range(max(first, lo), min(first + len(blob) // 32, stop, hi + 1)):
                stored[p] = blob[32 * (p - first) : 32 * (p - first) + 32]
        found = {c: stored[p] for c, p in zip(coords, positions, strict=True) if p in stored}
        if len(found) < len(coords):
            self._legacy_nodes([c for c in coords if c not in found], found)
        return found

    def get_batch(self, batch_id: str) -> BatchRow | None:
        if "\x00" in batch_id:
            return None
        rows = self._rows(f"SELECT {_BATCH_COLS} FROM batches WHERE batch_id = %s", (batch_id,))
        return _batch(rows[0]) if rows else None

    def find_idempotency(self, key: str) -> BatchRow | None:
        rows = self._rows(f"SELECT {_BATCH_COLS} FROM batches WHERE idempotency_key = %s", (_escape_key(key),))
        return _batch(rows[0]) if rows else None

    def find_reversal(self, batch_id: str) -> str | None:
        if "\x00" in batch_id:
            return None
        rows = self._rows("SELECT batch_id FROM batches WHERE reverses = %s", (batch_id,))
        return rows[0][0] if rows else None

    def entries_by_seq(self, start: int, end: int) -> list[EntryRow]:
        q = f"SELECT {_ENTRY_COLS} FROM entries WHERE seq >= %s AND seq < %s ORDER BY seq"
        return [EntryRow(*r) for r in self._rows(q, (start, end))]

    def query_entries(self, query: EntryQuery) -> list[EntryRow]:
        conds = ["seq >= %s"]
        args: list[object] = [query.seq_from]
        if query.seq_to is not None:
            conds.append("seq < %s")
            args.append(query.seq_to)
        if query.account_id is not None:
            if "\x00" in query.account_id:
                return []
            conds.append("account_id = %s")
            args.append(query.account_id)
        if query.reference is not None:
            if "\x00" in query.reference:
                return []
            conds.append("reference = %s")
            args.append(query.reference)
        order = "DESC" if query.descending else "ASC"
        q = f"SELECT {_ENTRY_COLS} FROM entries WHERE {' AND '.join(conds)} ORDER BY seq {order} LIMIT %s"
        args.append(query.limit)
        return [EntryRow(*r) for r in self._rows(q, args)]

    def get_entry(self, entry_id: str) -> EntryRow | None:
        if "\x00" in entry_id:
            return None
        rows = self._rows(f"SELECT {_ENTRY_COLS} FROM entries WHERE entry_id = %s", (entry_id,))
        return EntryRow(*rows[0]) if rows else None

    def last_entry_before(self, account_id: str, seq_end: int) -> EntryRow | None:
        q = f"SELECT {_ENTRY_COLS} FROM entries WHERE account_id = %s AND seq < %s ORDER BY seq DESC LIMIT 1"
        rows = self._rows(q, (account_id, seq_end))
        return EntryRow(*rows[0]) if rows else None

    def seq_after_time(self, timestamp: str) -> int:
        value: int = self._rows("SELECT ledger_seq_after_time(%s)", (timestamp,))[0][0]
        return value

    def checkpoint_at_or_before(self, seq: int) -> tuple[int, dict[str, int]] | None:
        rows = self._rows("SELECT seq, balances FROM checkpoints WHERE seq <= %s ORDER BY seq DESC LIMIT 1", (seq,))
        if not rows:
            return None
        balances: dict[str, int] = rows[0][1]
        return rows[0][0], {k: int(v) for k, v in balances.items()}

    def node_range(self, level: int, idx_from: int, idx_to: int) -> list[tuple[int, bytes]]:
        found = self._nodes_in_span([(level, i) for i in range(idx_from, idx_to + 1)])
        return [(i, found[(level, i)]) for i in range(idx_from, idx_to + 1) if (level, i) in found]

    def nodes_created_by(self, start: int, end: int) -> dict[tuple[int, int], bytes]:
        # Creation order: the nodes appending these leaves created are one run of places.
        return self._nodes_in_span([c for leaf in range(start, end) for c in created_by(leaf)])

    # -- writes -------------------------------------------------------------
    def insert_asset(self, code: str, scale: int) -> None:
        # Two first writers may both find the default asset missing; the loser
        # waits for the winner's commit and then inserts nothing.
        rows = self._rows(
            "WITH ins AS (INSERT INTO assets (code, scale) VALUES (%s, %s) ON CONFLICT (code) DO NOTHING"
            " RETURNING scale) SELECT scale FROM ins UNION ALL SELECT scale FROM assets WHERE code = %s",
            (code, scale, code),
        )
        if rows and rows[0][0] != scale:
            raise RetryableStorageError(f"asset {code} was registered concurrently with scale {rows[0][0]}")

    def insert_accounts(self, rows: Sequence[AccountRow]) -> None:
        self._new_accounts.extend(rows)

    def update_balances(self, balances: Mapping[str, int]) -> None:
        self._balances.update(balances)

    def insert_batch(self, row: BatchRow) -> None:
        self._batches.append(row)

    def insert_batches(self, rows: Sequence[BatchRow]) -> None:
        self._batches.extend(rows)

    def insert_entries(self, rows: Sequence[EntryRow]) -> None:
        self._entries.extend(rows)

    def insert_nodes(self, nodes: Sequence[tuple[int, int, bytes]]) -> None:
        self._nodes.update(((level, idx), h) for level, idx, h in nodes)
        self._new_nodes.extend(nodes)

    def set_head(self, head: HeadRow) -> None:
        # The new frontier is made of nodes this transaction read or wrote; if
        # one is unknown, store none and the next writer reads the nodes table.
        coords = frontier_coords(head.size)
        hashes = [self._nodes.get(c) for c in coords]
        frontier = b"".join(h for h in hashes if h is not None) if None not in hashes else None
        self._new_head = (head, frontier)
        self._head = head

    def insert_checkpoint(self, seq: int, balances: Mapping[str, int]) -> None:
        self._checkpoints.append((seq, dict(balances)))


def _conninfo(url: str) -> str:
    if url.startswith("postgresql+psycopg://"):
        url = "postgresql://" + url[len("postgresql+psycopg://") :]
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise StorageError(f"invalid PostgreSQL URL: {exc}") from None
    params.setdefault("application_name", "sardis-ledger")
    params.setdefault("connect_timeout", 10)
    options = str(params.get("options") or "")
    if "idle_in_transaction_session_timeout" not in options:
        # A writer that stops (SIGSTOP, a hung host) while holding the head lock
        # would stall every other writer; the server ends such a session instead.
        params["options"] = f"{options} -c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_TIMEOUT_MS}".strip()
    return make_conninfo("", **params)


def _redacted(conninfo: str) -> str:
    params = conninfo_to_dict(conninfo)
    return f"{params.get('host', 'localhost')}:{params.get('port', 5432)}/{params.get('dbname', '')}"


def migrate(conn: psycopg.Connection[Any], target: int | None = None) -> int:
    """Bring the schema up to ``target`` (default: the newest) and return the
    version found before. ``conn`` must not be in a transaction; it is left idle."""
    target = SCHEMA_VERSION if target is None else target
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (version INTEGER PRIMARY KEY,"
            " name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        row = conn.execute(f"SELECT coalesce(max(version), 0) FROM {VERSION_TABLE}").fetchone()
        current: int = row[0] if row else 0
        if current > SCHEMA_VERSION:
            raise StorageError(
                f"the database schema is version {current}, newer than this sardis-ledger "
                f"understands ({SCHEMA_VERSION}); upgrade sardis-ledger"
            )
        for version in range(current + 1, target + 1):
            name, script = MIGRATIONS[version - 1]
            conn.execute(script)
            conn.execute(f"INSERT INTO {VERSION_TABLE} (version, name) VALUES (%s, %s)", (version, name))
    return current


class PostgresStorage(Storage):
    """``postgresql://user:password@host:port/dbname?…`` (any libpq URL).

    The schema is created or upgraded on first use. Connections come from a
    pool of at most ``pool_size``; threads beyond that wait for one. A storage
    opened before ``fork()`` refuses to work in the child (pooled connections
    cannot be shared by two processes): open the ledger in each process.
    """

    def __init__(self, url: str, *, pool_size: int = 8, pool_timeout: float = 15.0) -> None:
        self.url = url
        self._conninfo = _conninfo(url)
        self._where = _redacted(self._conninfo)
        try:
            with psycopg.connect(self._conninfo, autocommit=True) as conn:
                version = self._schema_version(conn)
                if version != SCHEMA_VERSION:
                    migrate(conn)
        except psycopg.Error as exc:
            raise StorageError(f"cannot open PostgreSQL ledger at {self._where}: {exc}") from exc
        self.idle_check_seconds = _IDLE_PING_SECONDS
        self._pid = os.getpid()
        self._last_used: weakref.WeakKeyDictionary[psycopg.Connection[Any], float] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self._pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            self._conninfo,
            kwargs={"autocommit": True},
            min_size=1,
            max_size=max(1, pool_size),
            timeout=pool_timeout,
            name=f"sardis-ledger {self._where}",
            open=True,
        )
        # A ledger dropped without close() (or still open at exit) closes its pool from
        # the thread that drops it; left to the pool's own __del__, that can run inside
        # one of the pool's workers, which cannot join itself.
        self._finalizer = weakref.finalize(self, self._pool.close)

    @staticmethod
    def _schema_version(conn: psycopg.Connection[Any]) -> int:
        row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (VERSION_TABLE,)).fetchone()
        if not row or not row[0]:
            return 0
        found = conn.execute(f"SELECT coalesce(max(version), 0) FROM {VERSION_TABLE}").fetchone()
        return int(found[0]) if found else 0

    def _acquire(self) -> psycopg.Connection[Any]:
        """A healthy pooled connection; one idle for a while is pinged first."""
        if os.getpid() != self._pid:
            raise StorageError(
                f"this PostgreSQL storage was opened in process {self._pid} before a fork; open the ledger"
                " again in this process (connections cannot be shared between processes)"
            )
        for _ in range(3):
            try:
                conn = self._pool.getconn()
            except psycopg.Error as exc:
                raise _translate(exc, None, f"connection to {self._where}") from exc
            with self._lock:
                last = self._last_used.get(conn, 0.0)
            if time.monotonic() - last < self.idle_check_seconds:
                return conn
            try:
                conn.execute("SELECT 1")
                return conn
            except psycopg.Error:
                conn.close()
                self._pool.putconn(conn)
        try:
            return self._pool.getconn()
        except psycopg.Error as exc:
            raise _translate(exc, None, f"connection to {self._where}") from exc

    def _release(self, conn: psycopg.Connection[Any]) -> None:
        if not conn.closed and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.close()  # never hand out a connection in an unknown transaction state
        if not conn.closed:
            with self._lock:
                self._last_used[conn] = time.monotonic()
        self._pool.putconn(conn)

    def _commit(self, tx: PostgresTransaction) -> None:
        """Seam for tests that need a commit whose outcome the client never learns."""
        tx.commit()

    @contextmanager
    def transaction(self, *, write: bool) -> Iterator[Transaction]:
        conn = self._acquire()
        begin = "BEGIN ISOLATION LEVEL READ COMMITTED" if write else "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
        tx = PostgresTransaction(conn, write, begin)
        try:
            try:
                yield tx
            except BaseException:
                tx.end_stream(failed=True)
                self._rollback(conn)
                raise
            try:
                self._commit(tx)
            except psycopg.Error as exc:
                tx.end_stream(failed=True)
                self._rollback(conn)
                raise _translate(exc, conn, "commit") from exc
            except BaseException:
                tx.end_stream(failed=True)
                self._rollback(conn)
                raise
        finally:
            self._release(conn)

    @staticmethod
    def _rollback(conn: psycopg.Connection[Any]) -> None:
        if conn.closed:
            return
        try:
            if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                conn.execute("ROLLBACK")
        except psycopg.Error:
            conn.close()

    def close(self) -> None:
        self._finalizer()

