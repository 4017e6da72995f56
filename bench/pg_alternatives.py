"""Raw-SQL models of the two designs that take the Merkle log off the money path.

Measured by ``bench_postgres.py`` beside the engine, not adopted: on the
machine this project is benchmarked on (2 cores shared by the writers and the
server) neither beats the engine's design, in which a writer locks its accounts
and then the one tree-head row and appends in its own transaction.

* **Deferred integration** (:func:`deferred_writer`): a transfer commits its
  balances and one pending row under its account locks only; then, in a second
  transaction under an advisory lock, the writer moves every pending row it sees
  into the log and learns its own sequence numbers.
* **One sequencer** (:func:`sequencer_writer`): a writer queues its request
  and commits; whichever writer holds an advisory lock executes everything
  queued in one bulk transaction (the bulk path runs at ~20k transfers/s) and
  notifies; the others wait for the notification and read their result.

Both are raw psycopg with no engine code and placeholder hashes, so they are
upper bounds for their design. Every process function reports through the
harness of ``bench_postgres._run_processes``.
"""

from __future__ import annotations

import hashlib
import json
import random
import secrets
import time
from typing import Any

import psycopg

SEQUENCER_LOCK = 0x5EC_0001


def timed_loop(one: Any, seconds: float, ready: Any, go: Any, out: Any) -> None:
    """Warm up, wait for the common start, run ``one`` for ``seconds``, report the count."""
    for _ in range(20):
        one()
    ready.put(True)
    go.wait(120)
    n, start = 0, time.perf_counter()
    stop = start + seconds
    while time.perf_counter() < stop:
        one()
        n += 1
    out.put((n, time.perf_counter() - start))




def deferred_tables(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE dfr_pending (id BIGSERIAL PRIMARY KEY, batch_id TEXT NOT NULL, legs JSONB NOT NULL)")
        conn.execute(
            "CREATE TABLE dfr_entries (seq BIGINT PRIMARY KEY, entry_id TEXT UNIQUE, batch_id TEXT, account INT,"
            " amount BIGINT, running_balance BIGINT)"
        )
        conn.execute("CREATE INDEX ON dfr_entries (account, seq)")
        conn.execute("CREATE TABLE dfr_batches (batch_id TEXT PRIMARY KEY, first_seq BIGINT, count INT)")
        conn.execute("CREATE TABLE dfr_nodes (level INT, idx BIGINT, hash BYTEA, PRIMARY KEY (level, idx))")
        conn.execute("CREATE TABLE dfr_head (id INT PRIMARY KEY, size BIGINT NOT NULL)")
        conn.execute("INSERT INTO dfr_head VALUES (1, 0)")


def deferred_writer(url: str, accounts: int, seed: int,
                         seconds: float, ready: Any, go: Any, out: Any) -> None:
    """Deferred integration (see the module docstring): three round trips, two commits."""
    try:
        rnd = random.Random(seed)
        with psycopg.connect(url, autocommit=True) as conn:
            def one() -> None:
                a = rnd.randrange(1, accounts + 1)
                b = rnd.randrange(1, accounts)
                b += b >= a
                batch_id = secrets.token_hex(8)
                with conn.pipeline():
                    conn.execute("BEGIN")
                    cur = conn.execute(
                        "SELECT id, balance FROM pgb_accounts WHERE id = ANY(%s) ORDER BY id FOR UPDATE", ([a, b],)
                    )
                balance: dict[int, int] = dict(cur.fetchall())
                legs = [[a, -1, balance[a] - 1, secrets.token_hex(8)], [b, 1, balance[b] + 1, secrets.token_hex(8)]]
                with conn.pipeline():
                    conn.execute(
                        "UPDATE pgb_accounts SET balance = v.b FROM (VALUES (%s::int, %s::bigint), (%s, %s)) v(i, b)"
                        " WHERE pgb_accounts.id = v.i", (a, legs[0][2], b, legs[1][2]),
                    )
                    conn.execute("INSERT INTO dfr_pending (batch_id, legs) VALUES (%s, %s::jsonb)",
                                 (batch_id, json.dumps(legs)))
                    conn.execute("COMMIT")
                    conn.execute("BEGIN")
                    conn.execute("SELECT pg_advisory_xact_lock(7411)")
                    head = conn.execute("SELECT size FROM dfr_head WHERE id = 1")
                    pending = conn.execute("SELECT id, batch_id, legs FROM dfr_pending ORDER BY id")
                size, todo = head.fetchall()[0][0], pending.fetchall()
                if not todo:  # another writer integrated ours
                    conn.execute("SELECT first_seq FROM dfr_batches WHERE batch_id = %s", (batch_id,)).fetchall()
                    conn.execute("COMMIT")
                    return
                entries, batches, nodes, seq = [], [], [], size
                for _, bid, pend_legs in todo:
                    batches.append([bid, seq, len(pend_legs)])
                    for account, amount, running, entry_id in pend_legs:
                        entries.append([seq, entry_id, bid, account, amount, running])
                        digest = hashlib.sha256(b"\x00" + json.dumps([seq, entry_id, account, amount]).encode())
                        nodes.append([0, seq, digest.hexdigest()])
                        level, idx = 0, seq
                        while idx & 1:  # parents this leaf completes (hash values immaterial here)
                            level, idx = level + 1, idx >> 1
                            nodes.append([level, idx, digest.hexdigest()])
                        seq += 1
                with conn.pipeline():
                    conn.execute(
                        "INSERT INTO dfr_entries SELECT (r->>0)::bigint, r->>1, r->>2, (r->>3)::int, (r->>4)::bigint,"
                        " (r->>5)::bigint FROM jsonb_array_elements(%s::jsonb) r", (json.dumps(entries),),
                    )
                    conn.execute("INSERT INTO dfr_batches SELECT r->>0, (r->>1)::bigint, (r->>2)::int"
                                 " FROM jsonb_array_elements(%s::jsonb) r", (json.dumps(batches),))
                    conn.execute("INSERT INTO dfr_nodes SELECT (r->>0)::int, (r->>1)::bigint, decode(r->>2, 'hex')"
                                 " FROM jsonb_array_elements(%s::jsonb) r", (json.dumps(nodes),))
                    conn.execute("UPDATE dfr_head SET size = %s WHERE id = 1", (seq,))
                    conn.execute("DELETE FROM dfr_pending WHERE id <= %s", (todo[-1][0],))
                    conn.execute("COMMIT")

            timed_loop(one, seconds, ready, go, out)
    except Exception as exc:
        ready.put(False)
        out.put(f"{type(exc).__name__}: {exc}")


def sequencer_tables(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE seq_requests (id BIGSERIAL PRIMARY KEY, src INT, dst INT, amount BIGINT)")
        conn.execute("CREATE TABLE seq_results (id BIGINT PRIMARY KEY, first_seq BIGINT)")
        conn.execute(
            "CREATE TABLE seq_entries (seq BIGINT PRIMARY KEY, entry_id TEXT UNIQUE, batch_id TEXT, account INT,"
            " amount BIGINT, running_balance BIGINT)"
        )
        conn.execute("CREATE INDEX ON seq_entries (account, seq)")
        conn.execute("CREATE TABLE seq_batches (batch_id TEXT PRIMARY KEY, first_seq BIGINT, count INT)")
        conn.execute("CREATE TABLE seq_blocks (first_pos BIGINT PRIMARY KEY, hashes BYTEA)")
        conn.execute("CREATE TABLE seq_head (id INT PRIMARY KEY, size BIGINT NOT NULL)")
        conn.execute("INSERT INTO seq_head VALUES (1, 0)")


def _sequence_queued(conn: psycopg.Connection[Any]) -> int:
    """Execute every queued request in one transaction; how many there were."""
    with conn.pipeline():
        conn.execute("BEGIN")
        taken = conn.execute("DELETE FROM seq_requests RETURNING id, src, dst, amount")
        head = conn.execute("SELECT size FROM seq_head WHERE id = 1")
    requests, size = sorted(taken.fetchall()), head.fetchall()[0][0]
    if not requests:
        conn.execute("COMMIT")
        return 0
    ids = sorted({r[1] for r in requests} | {r[2] for r in requests})
    rows = conn.execute("SELECT id, balance FROM pgb_accounts WHERE id = ANY(%s) ORDER BY id FOR UPDATE", (ids,))
    balance: dict[int, int] = dict(rows.fetchall())
    entries, batches, results, hashes, seq = [], [], [], [], size
    for rid, src, dst, amount in requests:
        if balance[src] < amount:
            results.append([rid, -1])
            continue
        balance[src] -= amount
        balance[dst] += amount
        batch_id = secrets.token_hex(8)
        batches.append([batch_id, seq, 2])
        results.append([rid, seq])
        for account in (src, dst):
            entry_id = secrets.token_hex(8)
            entries.append([seq, entry_id, batch_id, account, amount, balance[account]])
            digest = hashlib.sha256(b"\x00" + json.dumps([seq, entry_id, account, amount]).encode()).digest()
            hashes += [digest] * ((seq + 1) & -(seq + 1)).bit_length()  # the leaf and the parents it completes
            seq += 1
    with conn.pipeline():
        conn.execute("UPDATE pgb_accounts SET balance = (v->>1)::bigint FROM jsonb_array_elements(%s::jsonb) v"
                     " WHERE pgb_accounts.id = (v->>0)::int", (json.dumps(list(balance.items())),))
        conn.execute("INSERT INTO seq_entries SELECT (r->>0)::bigint, r->>1, r->>2, (r->>3)::int, (r->>4)::bigint,"
                     " (r->>5)::bigint FROM jsonb_array_elements(%s::jsonb) r", (json.dumps(entries),))
        conn.execute("INSERT INTO seq_batches SELECT r->>0, (r->>1)::bigint, (r->>2)::int"
                     " FROM jsonb_array_elements(%s::jsonb) r", (json.dumps(batches),))
        conn.execute("INSERT INTO seq_blocks VALUES (%s, %s)", (2 * size - size.bit_count(), b"".join(hashes)))
        conn.execute("INSERT INTO seq_results SELECT (r->>0)::bigint, (r->>1)::bigint"
                     " FROM jsonb_array_elements(%s::jsonb) r", (json.dumps(results),))
        conn.execute("UPDATE seq_head SET size = %s WHERE id = 1", (seq,))
        conn.execute("NOTIFY seq_done")
        conn.execute("COMMIT")
    return len(requests)


def sequencer_writer(url: str, accounts: int, seed: int,
                     seconds: float, ready: Any, go: Any, out: Any) -> None:
    """One sequencer (see the module docstring): queue, then lead or wait."""
    try:
        rnd = random.Random(seed)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("LISTEN seq_done")

            def result(rid: int) -> bool:
                return bool(conn.execute("SELECT 1 FROM seq_results WHERE id = %s", (rid,)).fetchall())

            def one() -> None:
                a = rnd.randrange(1, accounts + 1)
                b = rnd.randrange(1, accounts)
                b += b >= a
                with conn.pipeline():
                    queued = conn.execute(
                        "INSERT INTO seq_requests (src, dst, amount) VALUES (%s, %s, 1) RETURNING id", (a, b)
                    )
                    lock = conn.execute("SELECT pg_try_advisory_lock(%s)", (SEQUENCER_LOCK,))
                rid, leader = queued.fetchall()[0][0], lock.fetchall()[0][0]
                while True:
                    if leader:
                        while _sequence_queued(conn) and not result(rid):
                            pass
                        conn.execute("SELECT pg_advisory_unlock(%s)", (SEQUENCER_LOCK,))
                    if result(rid):
                        return
                    for _ in conn.notifies(timeout=0.05, stop_after=1):
                        pass
                    leader = conn.execute("SELECT pg_try_advisory_lock(%s)", (SEQUENCER_LOCK,)).fetchall()[0][0]

            timed_loop(one, seconds, ready, go, out)
    except Exception as exc:
        ready.put(False)
        out.put(f"{type(exc).__name__}: {exc}")
