"""PostgreSQL: bulk writes streamed in chunks (``send_writes``) and Merkle nodes
stored as blocks (schema version 5).

Errors and lost connections inside a streamed chunk; the block layout a
multi-chunk write leaves; every node read path (``get_nodes``, ``node_range``,
``nodes_created_by``) against nodes recomputed from the entries, on a ledger
upgraded from version 4 whose nodes straddle per-node rows and blocks; blocks
that would overlap stored nodes; an idempotency key repeated across a stream
boundary. (Written as an adversarial review; the failing ones drove the fixes.)
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import psycopg
import pytest

from sardis_ledger import Ledger, merkle
from sardis_ledger._requests import transfer_request
from sardis_ledger._write_path import STREAM_ENTRIES
from sardis_ledger.errors import StorageError
from sardis_ledger.records import leaf_bytes
from sardis_ledger.storage.pg_migrations import VERSION_TABLE
from sardis_ledger.storage.postgresql import PostgresStorage

pytestmark = pytest.mark.postgres


def _sql(url: str, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


def _fail_nth_block_insert(url: str, n: int, action: str) -> None:
    """The ``n``-th INSERT into node_blocks from now on runs ``action`` (a
    sequence counts attempts, so it survives the rollback it causes)."""
    _sql(url, f"""
        CREATE SEQUENCE review_calls;
        CREATE FUNCTION review_fail() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN IF nextval('review_calls') = {n} THEN {action} END IF; RETURN NEW; END $$;
        CREATE TRIGGER review_fail BEFORE INSERT ON node_blocks FOR EACH ROW EXECUTE FUNCTION review_fail();
    """)


def _blocks(url: str) -> list[tuple[int, int]]:
    return [(int(f), int(n)) for f, n in _sql(url, "SELECT first_pos, octet_length(hashes) / 32 FROM node_blocks"
                                                     " ORDER BY first_pos")]


def _expected_nodes(ledger: Ledger) -> dict[tuple[int, int], bytes]:
    """Every Merkle node, recomputed from the stored entries."""
    with ledger.storage.transaction(write=False) as tx:
        size = tx.head().size
        scales = tx.assets()
        rows = tx.entries_by_seq(0, size)
    frontier = merkle.Frontier()
    out: dict[tuple[int, int], bytes] = {}
    for row in rows:
        for level, idx, h in frontier.append(merkle.hash_leaf(leaf_bytes(row, scales[row.asset]))):
            out[(level, idx)] = h
    return out


def _pool_is_clean(storage: PostgresStorage) -> None:
    conn = storage._pool.getconn()
    try:
        assert conn._pipeline is None
        assert conn.pgconn.pipeline_status == psycopg.pq.PipelineStatus.OFF
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    finally:
        storage._pool.putconn(conn)


# ------------------------------------------------------------- streamed writes


@pytest.mark.parametrize(
    "action",
    [
        "RAISE EXCEPTION 'review' USING ERRCODE = '40001';",  # serialization failure: retried
        "PERFORM pg_terminate_backend(pg_backend_pid());",  # connection lost mid-stream: retried
    ],
    ids=["serialization", "terminated"],
)
def test_a_failure_in_a_late_streamed_chunk_is_retried_whole(pg_url: str, action: str) -> None:
    n = 4 * STREAM_ENTRIES  # 2n entries: eight streamed chunks, the failure in the sixth
    storage = PostgresStorage(pg_url, pool_size=1)
    with Ledger(storage=storage) as ledger:
        ledger.create_entry("a", n, "credit")
        _fail_nth_block_insert(pg_url, 6, action)
        batches = ledger.transfer_many([("a", f"b{i % 3}", 1) for i in range(n)])
        assert len(batches) == n
        assert _sql(pg_url, "SELECT last_value FROM review_calls")[0][0] > 6  # the failure fired, then a retry
        assert _sql(pg_url, "SELECT count(*), count(DISTINCT batch_id) FROM entries") == [(2 * n + 1, n + 1)]
        _pool_is_clean(storage)
        report = ledger.verify(chunk=97)
        assert report.ok, report.problems


def test_a_refused_streamed_chunk_leaves_nothing_and_a_clean_connection(pg_url: str) -> None:
    n = 3 * STREAM_ENTRIES
    storage = PostgresStorage(pg_url, pool_size=1)
    with Ledger(storage=storage) as ledger:
        ledger.create_entry("a", 2 * n, "credit")
        blocks = _blocks(pg_url)
        _fail_nth_block_insert(pg_url, 3, "RAISE EXCEPTION 'review' USING ERRCODE = '22000';")
        with pytest.raises(StorageError, match="review"):
            ledger.transfer_many([("a", f"b{i % 3}", 1) for i in range(n)])
        assert ledger.tree_head().tree_size == 1
        assert _blocks(pg_url) == blocks
        _pool_is_clean(storage)
        ledger.transfer_many([("a", f"b{i % 3}", 1) for i in range(n)])  # same connection, next write
        assert ledger.verify().ok


def test_blocks_of_a_multi_chunk_write_are_contiguous_and_complete(pg_url: str) -> None:
    with Ledger(pg_url) as ledger:
        ledger.create_entry("a", 10_000, "credit")
        ledger.transfer_many([("a", f"b{i % 7}", 1) for i in range(3 * STREAM_ENTRIES + 17)])
        ledger.post_many([[{"account_id": "c", "amount": 1, "entry_type": "credit"}]] * (STREAM_ENTRIES + 1))
        size = ledger.tree_head().tree_size
    blocks = _blocks(pg_url)
    assert blocks[0][0] == 0
    for (first, count), (nxt, _) in pairwise(blocks):
        assert first + count == nxt, blocks  # no gap, no overlap
    assert blocks[-1][0] + blocks[-1][1] == 2 * size - size.bit_count()


# ------------------------------------------------------ legacy rows and blocks


def _downgrade_to_v4(ledger: Ledger, url: str) -> int:
    """Rewrite the stored nodes as schema version 4 kept them (one row each)."""
    nodes = _expected_nodes(ledger)
    with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
        conn.execute("DROP TABLE node_blocks")
        conn.execute("DROP TRIGGER nodes_closed ON nodes")
        conn.execute(f"DELETE FROM {VERSION_TABLE} WHERE version = 5")
        conn.cursor().executemany(
            "INSERT INTO nodes (level, idx, hash) VALUES (%s, %s, %s)", [(lv, ix, h) for (lv, ix), h in nodes.items()]
        )
    return len(nodes)


def test_every_node_read_agrees_across_legacy_rows_and_streamed_blocks(pg_url: str) -> None:
    with Ledger(pg_url) as ledger:
        for i in range(37):  # odd size: a frontier of several legacy nodes
            ledger.create_entry(f"u{i % 3}", 100, "credit")
        legacy = _downgrade_to_v4(ledger, pg_url)
    with Ledger(pg_url) as ledger:  # upgrades to version 5
        old = ledger.tree_head()
        ledger.transfer_many([(f"u{i % 3}", f"v{i % 4}", 1) for i in range(STREAM_ENTRIES + 61)])
        ledger.transfer("u0", "v0", 1)
        ledger.transfer_many([(f"u{i % 3}", f"v{i % 4}", 1) for i in range(STREAM_ENTRIES // 2 + 3)])
        assert _blocks(pg_url)[0][0] == legacy
        assert len(_blocks(pg_url)) >= 4
        with pytest.raises(psycopg.errors.CheckViolation, match="node_blocks_after_rows"):  # no shadowing old rows
            _sql(pg_url, "INSERT INTO node_blocks (first_pos, hashes) VALUES (0, %s)", (b"\x66" * 32,))
        want = _expected_nodes(ledger)
        size = ledger.tree_head().tree_size
        with ledger.storage.transaction(write=False) as tx:
            assert tx.get_nodes(list(want)) == want
            straddle = [c for c in want if abs(merkle.node_position(*c) - legacy) < 40]
            assert tx.get_nodes(straddle) == {c: want[c] for c in straddle}
            for level in range(size.bit_length()):
                top = (size >> level) - 1
                for lo, hi in ((0, top), (1, top), (top // 3, top // 2 + 1), (top, top + 5)):
                    got = tx.node_range(level, lo, hi)
                    assert got == [(i, want[(level, i)]) for i in range(lo, hi + 1) if (level, i) in want]
            for start, end in ((0, size), (30, 45), (36, 38), (37, 38), (100, 101), (250, 300), (size - 1, size)):
                expect = {c: want[c] for leaf in range(start, end) for c in merkle.created_by(leaf)}
                assert tx.nodes_created_by(start, end) == expect, (start, end)
        for chunk in (1, 7, 37, 250, 20_000):
            report = ledger.verify(chunk=chunk)
            assert report.ok, (chunk, report.problems)
        for seq in (1, 37, 38, 39, 300, size):
            assert ledger.receipt(seq).verify()
            assert ledger.receipt(seq, old.tree_size if seq <= old.tree_size else size).verify()
        proof = [bytes.fromhex(h) for h in ledger.consistency_proof(old.tree_size)]
        head = ledger.tree_head()
        assert merkle.verify_consistency(
            old.tree_size, size, bytes.fromhex(old.root), bytes.fromhex(head.root), proof
        )


# ---------------------------------------------------------------- tampering


def test_verify_reads_the_same_nodes_that_proofs_read(pg_url: str) -> None:
    """Someone who owns the schema (drops the overlap constraint, switches the
    triggers off) inserts a one-hash block inside an existing block plus a
    per-node row, so that proofs could read a different hash for a node than
    ``verify`` compares: verify must not call the ledger sound while its receipts
    stop verifying."""
    with Ledger(pg_url) as ledger:
        ledger.post_many([[{"account_id": "c", "amount": 1, "entry_type": "credit"}]] * 40)
        want = _expected_nodes(ledger)
        (first, count), = _blocks(pg_url)
        target = (0, 30)  # leaf 30: inside the one block, not its first place; entry 32's sibling
        pos = merkle.node_position(*target)
        assert first < pos - 1 < pos < first + count
        before = next(c for c in want if merkle.node_position(*c) == pos - 1)
        with psycopg.connect(pg_url, autocommit=True) as conn, conn.transaction():
            conn.execute("SET LOCAL session_replication_role = replica")  # triggers off
            conn.execute("ALTER TABLE node_blocks DROP CONSTRAINT node_blocks_disjoint")
            conn.execute("INSERT INTO node_blocks (first_pos, hashes) VALUES (%s, %s)", (pos - 1, want[before]))
            conn.execute("INSERT INTO nodes (level, idx, hash) VALUES (%s, %s, %s)", (*target, b"\x66" * 32))
        receipt_ok = ledger.receipt(32).verify()
        report = ledger.verify()
        assert receipt_ok or not report.ok, "verify() passes while the receipt of entry 32 does not verify"


def test_a_block_that_overlaps_stored_nodes_is_refused(pg_url: str) -> None:
    """Per-node rows could not be overwritten by an INSERT (primary key on the
    node); blocks are keyed by their first place only, so the database refuses
    any block that does not start where the log ends (and any per-node row)."""
    with Ledger(pg_url) as ledger:
        ledger.post_many([[{"account_id": "c", "amount": 1, "entry_type": "credit"}]] * 8)
    (first, count), = _blocks(pg_url)
    for at in (first + 3, first, first + count - 1):
        with pytest.raises(psycopg.errors.IntegrityError):  # overlap (or the same first place)
            _sql(pg_url, "INSERT INTO node_blocks (first_pos, hashes) VALUES (%s, %s)", (at, b"\x66" * 32))
    with pytest.raises(psycopg.errors.ExclusionViolation, match="node_blocks_disjoint"):  # covers stored ones
        _sql(pg_url, "INSERT INTO node_blocks (first_pos, hashes) VALUES (%s, %s)", (first + count - 1, b"\x66" * 64))
    with pytest.raises(psycopg.errors.RestrictViolation, match="append-only"):
        _sql(pg_url, "INSERT INTO nodes (level, idx, hash) VALUES (0, 99, %s)", (b"\x66" * 32,))
    with Ledger(pg_url) as ledger:
        assert ledger.verify().ok


# ------------------------------------------------- keys across a stream boundary


def test_an_idempotency_key_repeated_after_a_stream_point_replays(pg_url: str) -> None:
    """A bulk write may repeat a key (``keys_here``); once the first use was
    streamed, ``find_idempotency`` finds it in the open transaction and the
    replay is built from stored rows against the head before this write."""
    with Ledger(pg_url) as ledger:
        ledger.create_entry("a", 1_000, "credit")
        reqs = [transfer_request("a", f"b{i % 5}", 1, None, None) for i in range(STREAM_ENTRIES // 2 + 1)]
        reqs[0] = reqs[0].keyed("k")
        again = transfer_request("a", "b0", 1, None, None).keyed("k")
        out = ledger._post([*reqs, again])
        assert out[-1].replayed
        assert out[-1].batch_id == out[0].batch_id
        assert ledger.get_balance("a") == 1_000 - len(reqs)
        assert all(ledger.verify_receipt(e) for e in out[-1].entries)
