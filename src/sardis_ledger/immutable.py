"""The immutable audit trail: a separate, append-only, Merkle-proven log.

The seed pairs the ledger with an immudb server. No immudb server can run where
this project is built and tested, and an adapter that was never run against one
would be a guess, so none ships. Instead the audit trail is its own log, kept in
a store apart from the ledger's (its own SQLite file, or its own PostgreSQL
database), with the same evidence as the ledger: every record is a leaf of an
RFC 9162 tree (:mod:`sardis_ledger.merkle`), every write returns an inclusion
proof, and tree heads are signed (:mod:`sardis_ledger.signing`) and logged
outside the store, so a rewritten or rolled-back audit store is detected.

How :class:`ImmutableConfig` selects the store (the seed's fields keep working):

* ``url`` wins: ``sqlite:///path.db``, a ``.db`` path, or ``postgresql://…``.
* else ``backend="postgresql"``: ``postgresql://user:password@host:port/database``
  built from the fields.
* else (``backend="auto"`` or ``"sqlite"``, the default): an SQLite file named
  ``<database>.db`` in ``directory`` (default ``LEDGER_AUDIT_DIR``, else the working
  directory). ``host`` and ``port`` name an immudb server and are not used by it.
* ``backend="immudb"`` is refused with an error that says the above.

A record's leaf is the canonical JSON ``{"created_at", "data", "entry_id",
"ref_seq", "tx", "v": 1}``; ``tx`` is the 1-based transaction id (leaf index + 1).
:class:`VerificationStatus` of a record:

* ``VERIFIED``: its bytes hash to its leaf, the inclusion proof reaches the stored
  root, and the store still contains the last head signed for it.
* ``TAMPERED``: something stored contradicts something else: bytes vs leaf hash,
  proof vs root, or the store vs a signed head (rewritten or rolled back).
* ``MISSING``: no record has this entry id.
* ``UNVERIFIABLE``: the record is there but cannot be proven: Merkle nodes its
  proof needs are absent, or the signed head is under a key the keyring lacks.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import merkle
from .audit_records import (  # re-exported: the seed imports them from here
    AuditReceipt,
    AuditRecord,
    ImmutableConfig,
    VerificationResult,
    VerificationStatus,
    _canonical_data,
    _check_entry_id,
    _now_iso,
)
from .errors import (
    IdempotencyConflictError,
    IntegrityError,
    LedgerError,
    StorageError,
    ValidationError,
)
from .models import Receipt, TreeHead, VerifyReport
from .signing import HeadLog, Keyring, SignedTreeHead, TreeHeadSigner
from .verifier import VerificationError

__all__ = [
    "AUDIT_ORIGIN",
    "AuditLog",
    "AuditReceipt",
    "AuditRecord",
    "AuditTrail",
    "ImmutableConfig",
    "VerificationResult",
    "VerificationStatus",
    "create_audit_trail",
]

AUDIT_ORIGIN = "sardis-audit"
_EMPTY_ROOT = merkle.EMPTY_ROOT
_MAX_DATA = 64 * 1024



# ---------------------------------------------------------------- the store

_SQLITE_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS audit_records (tx INTEGER PRIMARY KEY, entry_id TEXT NOT NULL UNIQUE,"
    " ref_seq INTEGER, data TEXT NOT NULL, created_at TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS audit_records_ref ON audit_records (ref_seq) WHERE ref_seq IS NOT NULL",
    "CREATE TABLE IF NOT EXISTS audit_nodes (level INTEGER NOT NULL, idx INTEGER NOT NULL, hash BLOB NOT NULL,"
    " PRIMARY KEY (level, idx)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS audit_head (id INTEGER PRIMARY KEY CHECK (id = 1), size INTEGER NOT NULL,"
    " root BLOB NOT NULL, updated_at TEXT NOT NULL)",
    "INSERT OR IGNORE INTO audit_head (id, size, root, updated_at) VALUES (1, 0, X'" + _EMPTY_ROOT.hex() + "', '')",
    "CREATE TABLE IF NOT EXISTS audit_intents (intent_id TEXT PRIMARY KEY, idempotency_key TEXT NOT NULL,"
    " request TEXT NOT NULL, created_at TEXT NOT NULL)",
    *[
        f"CREATE TRIGGER IF NOT EXISTS {t}_no_{op.lower()} BEFORE {op} ON {t}"
        " BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END"
        for t in ("audit_records", "audit_nodes") for op in ("UPDATE", "DELETE")
    ],
]

_PG_LOCK_KEY = 0x5A_4D_1E_06_A0D1
_PG_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS audit_records (tx BIGINT PRIMARY KEY, entry_id TEXT COLLATE \"C\" NOT NULL UNIQUE,"
    " ref_seq BIGINT, data TEXT NOT NULL, created_at TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS audit_records_ref ON audit_records (ref_seq) WHERE ref_seq IS NOT NULL",
    "CREATE TABLE IF NOT EXISTS audit_nodes (level INTEGER NOT NULL, idx BIGINT NOT NULL, hash BYTEA NOT NULL,"
    " PRIMARY KEY (level, idx))",
    "CREATE TABLE IF NOT EXISTS audit_head (id INTEGER PRIMARY KEY CHECK (id = 1), size BIGINT NOT NULL,"
    " root BYTEA NOT NULL, updated_at TEXT NOT NULL)",
    "INSERT INTO audit_head (id, size, root, updated_at) VALUES (1, 0, '\\x" + _EMPTY_ROOT.hex() + "'::bytea, '')"
    " ON CONFLICT (id) DO NOTHING",
    "CREATE TABLE IF NOT EXISTS audit_intents (intent_id TEXT PRIMARY KEY, idempotency_key TEXT NOT NULL,"
    " request TEXT NOT NULL, created_at TEXT NOT NULL)",
    "CREATE OR REPLACE FUNCTION audit_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
    " RAISE EXCEPTION 'the audit trail is append-only: % on % refused', TG_OP, TG_TABLE_NAME"
    " USING ERRCODE = 'restrict_violation'; END $$",
    *[
        f"DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = '{t}_append_only') THEN"
        f" CREATE TRIGGER {t}_append_only BEFORE UPDATE OR DELETE ON {t}"
        " FOR EACH ROW EXECUTE FUNCTION audit_refuse_change(); END IF; END $$"
        for t in ("audit_records", "audit_nodes")
    ],
    "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'audit_records_no_truncate') THEN"
    " CREATE TRIGGER audit_records_no_truncate BEFORE TRUNCATE ON audit_records"
    " FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change(); END IF; END $$",
]


class _Cursor:
    """The few queries the audit log runs, on either SQL dialect."""

    def __init__(self, conn: Any, pg: bool) -> None:
        self.conn = conn
        self.pg = pg

    def run(self, sql: str, args: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        pg = self.pg
        cur = self.conn.execute(sql.replace("?", "%s"), list(args) or None) if pg else self.conn.execute(sql, args)
        return list(cur.fetchall()) if cur.description is not None else []

    def many(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
        if not rows:
            return
        if self.pg:
            with self.conn.cursor() as cur:
                cur.executemany(sql.replace("?", "%s"), rows)
        else:
            self.conn.executemany(sql, rows)

    def head(self, lock: bool = False) -> tuple[int, bytes, str]:
        sql = "SELECT size, root, updated_at FROM audit_head WHERE id = 1"
        rows = self.run(sql + (" FOR UPDATE" if lock and self.pg else ""))
        if not rows:
            raise IntegrityError("the audit store has no tree head row")
        size, root, updated = rows[0]
        return int(size), bytes(root), str(updated)

    def nodes(self, coords: Sequence[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        out: dict[tuple[int, int], bytes] = {}
        coords = list(coords)
        for i in range(0, len(coords), 300):
            chunk = coords[i:i + 300]
            cond = " OR ".join("(level = ? AND idx = ?)" for _ in chunk)
            for level, idx, h in self.run(f"SELECT level, idx, hash FROM audit_nodes WHERE {cond}",
                                          [v for c in chunk for v in c]):
                out[(int(level), int(idx))] = bytes(h)
        return out

    def record(self, where: str, arg: object) -> AuditRecord | None:
        rows = self.run(f"SELECT tx, entry_id, ref_seq, data, created_at FROM audit_records WHERE {where} = ?", [arg])
        return _record(rows[0]) if rows else None


def _record(row: Sequence[Any]) -> AuditRecord:
    return AuditRecord(int(row[0]), str(row[1]), None if row[2] is None else int(row[2]), str(row[3]), str(row[4]))


class AuditLog:
    """Synchronous audit log on one store (``url``: SQLite file or PostgreSQL).

    Thread-safe (a connection per thread) and multi-process safe (writers
    serialise on the head row: ``BEGIN IMMEDIATE`` in SQLite, ``FOR UPDATE`` in
    PostgreSQL). :class:`AuditTrail` is the seed's async face on it.
    """

    def __init__(self, url: str, *, keyring: Keyring | None = None, origin: str = AUDIT_ORIGIN,
                 sign_writes: bool = True) -> None:
        if not isinstance(url, str) or not url:
            raise ValidationError("audit store URL must be a non-empty string", field="url")
        self.url = url
        self.pg = url.startswith(("postgresql://", "postgres://"))
        if not self.pg:
            path = url[len("sqlite:///"):].split("?", 1)[0] if url.startswith("sqlite:///") else url
            if url.startswith("memory://") or path == ":memory:" or not path.endswith((".db", ".sqlite", ".sqlite3")):
                raise ValidationError("the audit store is an SQLite file (sqlite:///path.db) or a PostgreSQL URL; "
                                      "an in-memory audit trail would prove nothing", field="url")
            self.path: str | None = path
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        else:
            self.path = None
        self.keyring = keyring if keyring is not None else Keyring.for_database(url)
        self.head_log = HeadLog.for_store(self.keyring, origin, url)
        self.signer = TreeHeadSigner(self, self.keyring, self.head_log, origin=origin)
        self.sign_writes = sign_writes
        self._local = threading.local()
        self._conns: list[Any] = []
        self._conns_lock = threading.Lock()
        self._frontier: tuple[int, bytes, merkle.Frontier] | None = None
        self._migrate()

    # -- connections -------------------------------------------------------------

    def _conn(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                if self.pg:
                    import psycopg

                    conn = psycopg.connect(self.url, autocommit=True)
                else:
                    assert self.path is not None
                    conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=60)
                    conn.execute("PRAGMA journal_mode=WAL")
                    conn.execute("PRAGMA synchronous=NORMAL")
                    conn.execute("PRAGMA busy_timeout=60000")
            except Exception as exc:
                raise StorageError(f"cannot open the audit store {self._safe_url()}: {exc}") from None
            self._local.conn = conn
            with self._conns_lock:
                self._conns.append(conn)
        return conn

    def _safe_url(self) -> str:
        from .signing import store_location

        return store_location(self.url)

    @contextmanager
    def _tx(self, *, write: bool) -> Iterator[_Cursor]:
        conn = self._conn()
        try:
            conn.execute("BEGIN" if self.pg or not write else "BEGIN IMMEDIATE")
        except Exception as exc:
            raise StorageError(f"audit store could not begin a transaction: {exc}") from None
        try:
            yield _Cursor(conn, self.pg)
        except LedgerError:
            conn.execute("ROLLBACK")
            raise
        except BaseException as exc:
            with suppress(Exception):  # the connection may be gone; report the first error
                conn.execute("ROLLBACK")
            if isinstance(exc, Exception) and type(exc).__module__.startswith(("sqlite3", "psycopg")):
                raise StorageError(f"audit store error: {exc}") from exc
            raise
        try:
            conn.execute("COMMIT")
        except Exception as exc:
            raise StorageError(f"audit store commit failed: {exc}") from exc

    def _migrate(self) -> None:
        with self._tx(write=True) as cur:
            if self.pg:
                cur.run("SELECT pg_advisory_xact_lock(?)", [_PG_LOCK_KEY])
            for statement in _PG_SCHEMA if self.pg else _SQLITE_SCHEMA:
                cur.run(statement)

    def close(self) -> None:
        with self._conns_lock:
            for conn in self._conns:
                with suppress(Exception):  # closing is best effort
                    conn.close()
            self._conns.clear()
        self._local = threading.local()

    # -- writes ------------------------------------------------------------------

    def _load_frontier(self, cur: _Cursor, size: int, root: bytes) -> merkle.Frontier:
        cached = self._frontier
        if cached is not None and cached[0] == size and cached[1] == root:
            return cached[2].copy()
        coords = merkle.frontier_coords(size)
        nodes = cur.nodes(coords)
        try:
            frontier = merkle.Frontier(size, [nodes[c] for c in coords])
        except KeyError:
            raise IntegrityError(f"audit store: Merkle nodes missing for tree size {size}") from None
        if frontier.root() != root:
            raise IntegrityError("audit store: the tree head does not match its Merkle nodes; refusing to append")
        return frontier

    def append(self, entry_id: str, data: Mapping[str, Any], *, ref_seq: int | None = None) -> AuditReceipt:
        """Append one record; a retry with the same id and data returns the first receipt."""
        return self.append_many([(entry_id, data, ref_seq)])[0]

    def append_many(self, records: Sequence[tuple[str, Mapping[str, Any], int | None]], *,
                    clear_intent: str | None = None) -> list[AuditReceipt]:
        """Append records in one transaction (all or none); ``clear_intent`` is
        deleted in the same transaction (see :mod:`sardis_ledger.hybrid`)."""
        prepared = []
        for entry_id, data, ref in records:
            if ref is not None and (isinstance(ref, bool) or not isinstance(ref, int) or ref < 0):
                raise ValidationError("ref_seq must be a non-negative integer", field="ref_seq")
            prepared.append((_check_entry_id(entry_id), _canonical_data(data), ref))
        with self._tx(write=True) as cur:
            size, root, updated = cur.head(lock=True)
            frontier = self._load_frontier(cur, size, root)
            before = {(lv, ix): h for lv, ix, h in frontier.stack}
            created_at = max(_now_iso(), updated)
            results: list[AuditRecord] = []
            new_rows: list[AuditRecord] = []
            new_nodes: list[tuple[int, int, bytes]] = []
            seen: dict[str, AuditRecord] = {}
            for entry_id, data_json, ref in prepared:
                prior = seen.get(entry_id) or cur.record("entry_id", entry_id)
                if prior is not None:
                    if prior.data_json != data_json or prior.ref_seq != ref:
                        raise IdempotencyConflictError(
                            f"audit entry {entry_id!r} was already written with different data", entry_id=entry_id
                        )
                    results.append(prior)
                    continue
                rec = AuditRecord(frontier.size + 1, entry_id, ref, data_json, created_at)
                new_nodes.extend(frontier.append(merkle.hash_leaf(rec.leaf)))
                new_rows.append(rec)
                seen[entry_id] = rec
                results.append(rec)
            if new_rows:
                cur.many("INSERT INTO audit_records (tx, entry_id, ref_seq, data, created_at) VALUES (?, ?, ?, ?, ?)",
                         [(r.tx, r.entry_id, r.ref_seq, r.data_json, r.created_at) for r in new_rows])
                cur.many("INSERT INTO audit_nodes (level, idx, hash) VALUES (?, ?, ?)", new_nodes)
                root = frontier.root()
                cur.run("UPDATE audit_head SET size = ?, root = ?, updated_at = ? WHERE id = 1",
                        [frontier.size, root, created_at])
            if clear_intent is not None:
                cur.run("DELETE FROM audit_intents WHERE intent_id = ?", [clear_intent])
            size = frontier.size
            known = dict(before)
            known.update({(lv, ix): h for lv, ix, h in new_nodes})
            indexes = [rec.tx - 1 for rec in results]

            def plan(g: merkle.NodeGetter) -> object:
                return [merkle.inclusion_proof(i, size, g) for i in indexes]

            need = merkle.needed_nodes(plan)
            known.update(cur.nodes(sorted(need - known.keys())))
            proofs = [self._receipt(rec, size, root, known) for rec in results]
        self._frontier = (size, root, frontier)
        sth = self.signer.signed_tree_head() if self.sign_writes and new_rows else None
        return [
            AuditReceipt(rec.entry_id, rec.tx, datetime.fromisoformat(rec.created_at), proof, rec.leaf, sth)
            for rec, proof in zip(results, proofs, strict=True)
        ]

    @staticmethod
    def _receipt(rec: AuditRecord, size: int, root: bytes, nodes: Mapping[tuple[int, int], bytes]) -> Receipt:
        proof = merkle.inclusion_proof(rec.tx - 1, size, lambda lv, ix: nodes[(lv, ix)])
        return Receipt(rec.tx - 1, size, merkle.hash_leaf(rec.leaf).hex(), root.hex(), tuple(p.hex() for p in proof))

    # -- reads -------------------------------------------------------------------

    def tree_head(self) -> TreeHead:
        with self._tx(write=False) as cur:
            size, root, updated = cur.head()
        ts = datetime.fromisoformat(updated) if updated else datetime.fromtimestamp(0, UTC)
        return TreeHead(size, root.hex(), ts)

    def root_at(self, tree_size: int) -> str:
        with self._tx(write=False) as cur:
            size, _, _ = cur.head()
            if not 0 <= tree_size <= size:
                raise ValidationError(f"tree size must be within 0..{size}", field="tree_size")
            coords = merkle.needed_nodes(lambda g: merkle.tree_root(tree_size, g))
            nodes = cur.nodes(sorted(coords))
        if coords - nodes.keys():
            raise IntegrityError(f"audit store: Merkle nodes missing for tree size {tree_size}")
        return merkle.tree_root(tree_size, lambda lv, ix: nodes[(lv, ix)]).hex()

    def consistency_proof(self, old_size: int, new_size: int) -> list[str]:
        with self._tx(write=False) as cur:
            size, _, _ = cur.head()
            if not 0 <= old_size <= new_size <= size:
                raise ValidationError(f"tree sizes must satisfy 0 <= old <= new <= {size}", field="tree_size")
            coords = merkle.needed_nodes(lambda g: merkle.consistency_proof(old_size, new_size, g))
            nodes = cur.nodes(sorted(coords))
        if coords - nodes.keys():
            raise IntegrityError("audit store: Merkle nodes missing for a consistency proof")
        return [p.hex() for p in merkle.consistency_proof(old_size, new_size, lambda lv, ix: nodes[(lv, ix)])]

    def signed_tree_head(self) -> SignedTreeHead:
        return self.signer.signed_tree_head()

    def get(self, entry_id: str) -> AuditRecord | None:
        with self._tx(write=False) as cur:
            return cur.record("entry_id", _check_entry_id(entry_id))

    def get_tx(self, tx: int) -> AuditRecord | None:
        with self._tx(write=False) as cur:
            return cur.record("tx", tx)

    def records_by_ref(self, ref_from: int, limit: int) -> list[AuditRecord]:
        """Records whose ``ref_seq`` is at least ``ref_from``, in ``ref_seq`` order."""
        with self._tx(write=False) as cur:
            rows = cur.run("SELECT tx, entry_id, ref_seq, data, created_at FROM audit_records"
                           " WHERE ref_seq >= ? ORDER BY ref_seq, tx LIMIT ?", [ref_from, limit])
        return [_record(r) for r in rows]

    def records(self, tx_from: int, tx_to: int) -> list[AuditRecord]:
        """Records with ``tx_from <= tx < tx_to`` in order."""
        with self._tx(write=False) as cur:
            rows = cur.run("SELECT tx, entry_id, ref_seq, data, created_at FROM audit_records"
                           " WHERE tx >= ? AND tx < ? ORDER BY tx", [tx_from, tx_to])
        return [_record(r) for r in rows]

    # -- verification --------------------------------------------------------------

    def verify_entry(self, entry_id: str) -> VerificationResult:
        """Check one record against its leaf, the stored root and the signed heads."""
        with self._tx(write=False) as cur:
            rec = cur.record("entry_id", _check_entry_id(entry_id))
            if rec is None:
                return VerificationResult(entry_id, VerificationStatus.MISSING, "no audit record has this entry id")
            size, root, _ = cur.head()
            if not 1 <= rec.tx <= size:
                return VerificationResult(entry_id, VerificationStatus.TAMPERED,
                                          f"record tx {rec.tx} lies outside the tree head of size {size}", rec.tx)
            coords = merkle.needed_nodes(lambda g: (merkle.inclusion_proof(rec.tx - 1, size, g),
                                                    merkle.tree_root(size, g)))
            nodes = cur.nodes(sorted(coords | {(0, rec.tx - 1)}))
        stored_leaf = nodes.get((0, rec.tx - 1))
        leaf = merkle.hash_leaf(rec.leaf)
        if stored_leaf is not None and stored_leaf != leaf:
            return VerificationResult(entry_id, VerificationStatus.TAMPERED,
                                      f"record tx {rec.tx} does not hash to its stored leaf", rec.tx)
        if coords - nodes.keys():
            return VerificationResult(entry_id, VerificationStatus.UNVERIFIABLE,
                                      "Merkle nodes needed to prove this record are missing", rec.tx)

        def get(lv: int, ix: int) -> bytes:
            return nodes[(lv, ix)]

        path = merkle.inclusion_proof(rec.tx - 1, size, get)
        if merkle.root_from_inclusion_proof(rec.tx - 1, size, leaf, path) != root:
            return VerificationResult(entry_id, VerificationStatus.TAMPERED,
                                      "the record's inclusion proof does not reach the stored root", rec.tx)
        proof = Receipt(rec.tx - 1, size, leaf.hex(), root.hex(), tuple(p.hex() for p in path))
        try:
            sth = self._check_signed_heads(TreeHead(size, root.hex(), datetime.now(UTC)))
        except VerificationError as exc:
            status = VerificationStatus.UNVERIFIABLE if exc.reason == "unknown_key" else VerificationStatus.TAMPERED
            return VerificationResult(entry_id, status, exc.message, rec.tx, proof)
        except IntegrityError as exc:
            return VerificationResult(entry_id, VerificationStatus.TAMPERED, exc.message, rec.tx, proof)
        return VerificationResult(entry_id, VerificationStatus.VERIFIED,
                                  f"record tx {rec.tx} is in the signed audit log of size {sth.tree_size}",
                                  rec.tx, proof, sth)

    def _check_signed_heads(self, head: TreeHead) -> SignedTreeHead:
        """The last signed head must verify and be contained in the store; then sign
        the current head, so this verified state is itself pinned."""
        last = self.head_log.last()
        if last is not None:
            self.signer.verify_head(last)
            self.signer.check_extends(last, head)
        return self.signer.signed_tree_head()

    def verify_all(self, progress: Callable[[int, int], None] | None = None, *, chunk: int = 20_000) -> VerifyReport:
        """Audit the whole store: every record's leaf, every stored node, the root,
        rows beyond the head, and every signed head in the heads log."""
        report = VerifyReport()
        with self._tx(write=False) as cur:
            size, root, _ = cur.head()
        report.tree_size, report.root = size, root.hex()
        frontier = merkle.Frontier()
        expected = 1
        bad_leaves: list[int] = []
        for start in range(0, size, chunk):
            end = min(start + chunk, size)
            with self._tx(write=False) as cur:
                rows = [_record(r) for r in cur.run(
                    "SELECT tx, entry_id, ref_seq, data, created_at FROM audit_records WHERE tx > ? AND tx <= ?"
                    " ORDER BY tx", [start, end])]
                stored: dict[tuple[int, int], bytes] = {}
                for level in range(end.bit_length() + 1):
                    lo, hi = (start >> level), (end >> level) - 1
                    if hi >= lo:
                        for ix, h in cur.run("SELECT idx, hash FROM audit_nodes WHERE level = ? AND idx >= ?"
                                             " AND idx <= ?", [level, lo, hi]):
                            stored[(level, int(ix))] = bytes(h)
            created: list[tuple[int, int, bytes]] = []
            for rec in rows:
                if rec.tx != expected:
                    report.fail(f"audit tx {expected} is missing (found tx {rec.tx})", expected)
                    expected = rec.tx
                created.extend(frontier.append(merkle.hash_leaf(rec.leaf)))
                expected += 1
                report.entries_checked += 1
            for level, index, h in created:
                if stored.get((level, index)) == h:
                    continue
                first, last = index << level, ((index + 1) << level) - 1
                if level == 0:
                    bad_leaves.append(index)
                    report.fail(f"audit tx {index + 1}: stored leaf does not match the record", index + 1)
                elif not any(first <= b <= last for b in bad_leaves):  # not just the echo of a bad leaf
                    report.fail(f"audit txs {first + 1}-{last + 1}: stored Merkle node {(level, index)} does not "
                                "match the records", first + 1)
            if progress is not None:
                progress(end, size)
        if expected - 1 != size:
            report.fail(f"audit head claims {size} records, the store has {expected - 1}", expected)
        if frontier.root() != root:
            report.fail("audit store: the stored head's root does not match the records", report.first_bad_sequence)
        with self._tx(write=False) as cur:
            extra = cur.run("SELECT tx FROM audit_records WHERE tx > ? ORDER BY tx LIMIT 1", [size])
        if extra:
            report.fail(f"audit tx {extra[0][0]} lies beyond the tree head of size {size} (inserted, or the head "
                        "was rolled back)", int(extra[0][0]))
        keys = self.keyring.public_keys()
        from .verifier import verify_signed_tree_head

        for number, item in self.head_log.entries():
            if isinstance(item, str):
                report.fail("audit heads log: " + item)
                continue
            try:
                verify_signed_tree_head(item, keys, origin=self.signer.origin)
                self.signer.check_extends(item, TreeHead(size, root.hex(), datetime.now(UTC)))
            except (VerificationError, IntegrityError) as exc:
                bad = exc.details.get("first_bad_sequence")
                report.fail(f"audit signed head (log line {number}): {exc.message}", bad if isinstance(bad, int)
                            else None)
            except LedgerError as exc:
                report.fail(f"audit signed head (log line {number}) cannot be checked: {exc.message}")
        return report

    # -- write-ahead intents (used by the hybrid ledger) ---------------------------

    def add_intent(self, intent_id: str, idempotency_key: str, request: str) -> None:
        with self._tx(write=True) as cur:
            cur.run("INSERT INTO audit_intents (intent_id, idempotency_key, request, created_at) VALUES (?, ?, ?, ?)",
                    [intent_id, idempotency_key, request, _now_iso()])

    def drop_intent(self, intent_id: str) -> None:
        with self._tx(write=True) as cur:
            cur.run("DELETE FROM audit_intents WHERE intent_id = ?", [intent_id])

    def pending_intents(self, limit: int = 1000) -> list[tuple[str, str, str, str]]:
        """(intent_id, idempotency_key, request, created_at), oldest first."""
        with self._tx(write=False) as cur:
            rows = cur.run("SELECT intent_id, idempotency_key, request, created_at FROM audit_intents"
                           " ORDER BY created_at, intent_id LIMIT ?", [limit])
        return [(str(a), str(b), str(c), str(d)) for a, b, c, d in rows]


class AuditTrail:
    """The seed's async audit trail: ``write`` and ``verify`` run in a worker
    thread over one :class:`AuditLog`."""

    def __init__(self, config: ImmutableConfig | None = None, *, log: AuditLog | None = None) -> None:
        self.config = config or ImmutableConfig()
        if log is None:
            url = self.config.store_url()
            keyring = Keyring(self.config.key_dir) if self.config.key_dir else None
            log = AuditLog(url, keyring=keyring, sign_writes=self.config.sign_writes)
        self.log = log

    async def write(self, entry_id: str, data: Mapping[str, Any], *, ref_seq: int | None = None) -> AuditReceipt:
        return await asyncio.to_thread(self.log.append, entry_id, data, ref_seq=ref_seq)

    async def verify(self, entry_id: str) -> VerificationResult:
        return await asyncio.to_thread(self.log.verify_entry, entry_id)

    async def get(self, entry_id: str) -> AuditRecord | None:
        return await asyncio.to_thread(self.log.get, entry_id)

    async def signed_tree_head(self) -> SignedTreeHead:
        return await asyncio.to_thread(self.log.signed_tree_head)

    async def verify_all(self, progress: Callable[[int, int], None] | None = None) -> VerifyReport:
        return await asyncio.to_thread(self.log.verify_all, progress)

    async def close(self) -> None:
        await asyncio.to_thread(self.log.close)

    def public_keyring(self) -> dict[str, Any]:
        return self.log.keyring.public_keyring()


def create_audit_trail(config: ImmutableConfig | None = None) -> AuditTrail:
    """The seed's entry point: an :class:`AuditTrail` on the store ``config`` selects."""
    return AuditTrail(config)

