"""Transfers per second on PostgreSQL, beside raw baselines on the same server in the same run.

A scratch database is created (and dropped) through the admin URL
(``LEDGER_TEST_POSTGRES_URL``, default ``postgresql://postgres@127.0.0.1:5432/postgres``).
Measured, each for ``--seconds``:

* **single transfers**, 1 and 8 writer processes, each its own ``Ledger``:
  random pairs among ``--accounts`` funded accounts, 1 token each;
* **pgbench** on the same server and database, 1 and 8 clients, running a plain
  transfer (two balance updates in account order and one insert, one transaction);
* **raw psycopg, 8 processes**: the same plain transfer with the account rows
  locked in order, without and with one extra row (a "tree head") locked and
  updated in every transaction. The gap between the two is what serialising
  every commit on one row costs on this disk, whatever runs on top of it;
* **bulk**: ``Ledger.transfer_many`` of 1,000 transfers per call, beside raw SQL
  writing the same rows into the same schema (1,000 batch rows, 2,000 entries,
  the Merkle nodes as one block row, the balances, the head), with psycopg ``executemany`` and
  with binary ``COPY``.

Ratios against the baselines are what to read: the machine may be shared.

    python bench/bench_postgres.py [--seconds 10] [--accounts 1000] [--bulk-batches 20] [--update-docs]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import random
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from docs_section import replace_section
from pg_alternatives import deferred_tables, deferred_writer, sequencer_tables, sequencer_writer, timed_loop
from pg_scratch import scratch_database

from sardis_ledger import Ledger
from sardis_ledger._write_path import STREAM_ENTRIES
from sardis_ledger.merkle import node_position
from sardis_ledger.storage.postgresql import PostgresStorage

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmarks.md"
SECTION = "## PostgreSQL"
ADMIN_URL = os.environ.get("LEDGER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
SPAWN = mp.get_context("spawn")


@dataclass
class Row:
    label: str
    per_second: float
    note: str = ""


# ------------------------------------------------------------ process harness


def _run_processes(target: Any, args_for: list[tuple[Any, ...]], seconds: float) -> tuple[float, list[Any]]:
    """Start one process per argument tuple; they warm up, wait for a common
    start, run for ``seconds`` and report a count (and extras). Returns the
    total per second and each process's report."""
    ready, go, out = SPAWN.Queue(), SPAWN.Event(), SPAWN.Queue()
    procs = [SPAWN.Process(target=target, args=(*a, seconds, ready, go, out)) for a in args_for]
    for p in procs:
        p.start()
    try:
        for _ in procs:
            ready.get(timeout=120)
        go.set()
        results = [out.get(timeout=seconds + 120) for _ in procs]
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    errors = [r for r in results if isinstance(r, str)]
    if errors:
        raise RuntimeError(f"a benchmark process failed: {errors[0]}")
    done: list[tuple[int, float]] = [(r[0], r[1]) for r in results]
    return sum(n for n, _ in done) / max(el for _, el in done), results


def _engine_writer(url: str, accounts: int, seed: int, seconds: float, ready: Any, go: Any, out: Any) -> None:
    try:
        rnd = random.Random(seed)
        with Ledger(url) as ledger:
            def one() -> None:
                a = rnd.randrange(accounts)
                b = rnd.randrange(accounts - 1)
                b += b >= a
                ledger.transfer(f"acct-{a}", f"acct-{b}", 1)

            for _ in range(20):
                one()
            backend = _backend_cpu_reader(ledger)
            ready.put(True)
            go.wait(120)
            n, start, cpu, server = 0, time.perf_counter(), time.process_time(), backend()
            stop = start + seconds
            while time.perf_counter() < stop:
                one()
                n += 1
            out.put((n, time.perf_counter() - start, (time.process_time() - cpu) / n, (backend() - server) / n))
    except Exception as exc:  # reported to the parent, which fails the run
        ready.put(False)
        out.put(f"{type(exc).__name__}: {exc}")


def _backend_cpu_reader(ledger: Ledger) -> Any:
    """CPU seconds used so far by the server process behind the ledger's
    connection (a local server only; NaN otherwise). One writer thread uses one
    pooled connection, so this is the server's share of its transfers."""
    with ledger.storage.transaction(write=False) as tx:
        pid = tx._rows("SELECT pg_backend_pid()")[0][0]  # type: ignore[attr-defined]

    def read() -> float:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    return read


def _raw_writer(url: str, accounts: int, seed: int, with_head: bool,
                seconds: float, ready: Any, go: Any, out: Any) -> None:
    try:
        rnd = random.Random(seed)
        with psycopg.connect(url) as conn:
            def one() -> None:
                a = rnd.randrange(1, accounts + 1)
                b = rnd.randrange(1, accounts)
                b += b >= a
                lo, hi = sorted((a, b))
                conn.execute("SELECT balance FROM pgb_accounts WHERE id IN (%s, %s) ORDER BY id FOR UPDATE", (lo, hi))
                if with_head:
                    conn.execute("SELECT n FROM pgb_head WHERE id = 1 FOR UPDATE")
                conn.execute("UPDATE pgb_accounts SET balance = balance - 1 WHERE id = %s", (a,))
                conn.execute("UPDATE pgb_accounts SET balance = balance + 1 WHERE id = %s", (b,))
                conn.execute("INSERT INTO pgb_entries (src, dst, amount, created_at) VALUES (%s, %s, 1, now())", (a, b))
                if with_head:
                    conn.execute("UPDATE pgb_head SET n = n + 1 WHERE id = 1")
                conn.commit()

            timed_loop(one, seconds, ready, go, out)
    except Exception as exc:
        ready.put(False)
        out.put(f"{type(exc).__name__}: {exc}")


def plain_bulk(url: str, accounts: int, batches: int) -> float:
    """DESIGN.md's scale figure: a plain transfer (two updates, one insert),
    1,000 per transaction with psycopg ``executemany``."""
    rnd = random.Random(5)
    with psycopg.connect(url) as conn:
        start = time.perf_counter()
        for _ in range(batches):
            pairs = []
            for _ in range(1000):
                a = rnd.randrange(1, accounts + 1)
                b = rnd.randrange(1, accounts)
                pairs.append((a, b + (b >= a)))
            cur = conn.cursor()
            cur.executemany("UPDATE pgb_accounts SET balance = balance - 1 WHERE id = %s", [(a,) for a, _ in pairs])
            cur.executemany("UPDATE pgb_accounts SET balance = balance + 1 WHERE id = %s", [(b,) for _, b in pairs])
            cur.executemany("INSERT INTO pgb_entries (src, dst, amount, created_at) VALUES (%s, %s, 1, now())", pairs)
            conn.commit()
        return batches * 1000 / (time.perf_counter() - start)


# ------------------------------------------------------------------- pgbench

PGBENCH_SCRIPT = """\
\\set a random(1, {n})
\\set b random(1, {n1})
\\set b CASE WHEN :b >= :a THEN :b + 1 ELSE :b END
\\set lo least(:a, :b)
\\set hi greatest(:a, :b)
\\set dlo CASE WHEN :lo = :a THEN -1 ELSE 1 END
BEGIN;
UPDATE pgb_accounts SET balance = balance + :dlo WHERE id = :lo;
UPDATE pgb_accounts SET balance = balance - :dlo WHERE id = :hi;
INSERT INTO pgb_entries (src, dst, amount, created_at) VALUES (:a, :b, 1, now());
END;
"""


def _plain_tables(url: str, accounts: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE pgb_accounts (id INT PRIMARY KEY, balance BIGINT NOT NULL)")
        conn.execute("INSERT INTO pgb_accounts SELECT g, 1000000000 FROM generate_series(1, %s) g", (accounts,))
        conn.execute(
            "CREATE TABLE pgb_entries (id BIGSERIAL PRIMARY KEY, src INT, dst INT, amount BIGINT,"
            " created_at TIMESTAMPTZ)"
        )
        conn.execute("CREATE TABLE pgb_head (id INT PRIMARY KEY, n BIGINT NOT NULL)")
        conn.execute("INSERT INTO pgb_head VALUES (1, 0)")
        conn.execute("VACUUM ANALYZE")


def pgbench(url: str, accounts: int, clients: int, seconds: float) -> float:
    exe = shutil.which("pgbench") or "/usr/lib/postgresql/15/bin/pgbench"
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(PGBENCH_SCRIPT.format(n=accounts, n1=accounts - 1))
        script = f.name
    try:
        proc = subprocess.run(
            [exe, "-n", "-f", script, "-c", str(clients), "-j", str(min(clients, os.cpu_count() or 1)),
             "-T", str(int(seconds)), url],
            capture_output=True, text=True, timeout=seconds + 120, check=True,
        )
    finally:
        os.unlink(script)
    match = re.search(r"tps = ([\d.]+) \(without initial connection time\)", proc.stdout)
    if not match:
        raise RuntimeError(f"pgbench output not understood:\n{proc.stdout}\n{proc.stderr}")
    return float(match.group(1))


# ---------------------------------------------------------------------- bulk


def bulk_engine(url: str, accounts: int, batches: int) -> float:
    """``transfer_many`` of 1,000 random transfers per call, ``batches`` calls."""
    rnd = random.Random(7)
    with Ledger(url) as ledger:
        calls = []
        for _ in range(batches + 1):
            call = []
            for _ in range(1000):
                a = rnd.randrange(accounts)
                b = rnd.randrange(accounts - 1)
                b += b >= a
                call.append((f"acct-{a}", f"acct-{b}", 1))
            calls.append(call)
        ledger.transfer_many(calls[0])  # warm up
        start = time.perf_counter()
        for call in calls[1:]:
            ledger.transfer_many(call)
        return batches * 1000 / (time.perf_counter() - start)


def _raw_bulk_rows(accounts: int, first_seq: int, batches: int) -> list[dict[str, Any]]:
    """Rows shaped like the engine's for ``batches`` calls of 1,000 transfers
    (made before the clock starts: the baseline is the database's cost alone)."""
    now = "2026-01-01T00:00:00.000000Z"
    out = []
    seq = first_seq
    rnd = random.Random(11)
    for _ in range(batches):
        entries, batch_rows, nodes = [], [], []
        touched: dict[str, int] = {}
        for _ in range(1000):
            a = rnd.randrange(accounts)
            b = rnd.randrange(accounts - 1)
            b += b >= a
            batch_id = uuid.uuid4().hex
            batch_rows.append((batch_id, seq, 2, now, None, None, None, None))
            for acct, direction in ((f"acct-{a}", "debit"), (f"acct-{b}", "credit")):
                touched[acct] = 10**9
                entries.append((seq, uuid.uuid4().hex, batch_id, acct, "TOKEN", 10**8, direction, 10**9, now,
                                None, "{}", None))
                nodes.append((0, seq, secrets.token_bytes(32)))
                level, idx = 0, seq
                while idx & 1:  # the parents this leaf completes
                    level, idx = level + 1, idx >> 1
                    nodes.append((level, idx, secrets.token_bytes(32)))
                seq += 1
        # nodes as the engine stores them: the run a write creates, as one block row
        block = (node_position(nodes[0][0], nodes[0][1]), b"".join(h for _, _, h in nodes))
        out.append({"entries": entries, "batches": batch_rows, "nodes": [block], "balances": touched, "size": seq})
    return out


ENTRY_COLS = ("seq, entry_id, batch_id, account_id, asset, amount, direction, running_balance, created_at,"
              " reference, metadata, reverses")
RAW_METHODS = {"executemany": "psycopg `executemany`", "copy": "`COPY`"}
BATCH_COLS = "batch_id, first_seq, count, created_at, reverses, reason, idempotency_key, request_hash"


def bulk_raw(url: str, calls: list[dict[str, Any]], method: str) -> float:
    with psycopg.connect(url) as conn:
        start = time.perf_counter()
        for call in calls:
            cur = conn.cursor()
            if method == "executemany":
                cur.executemany("UPDATE accounts SET balance = %s WHERE account_id = %s",
                                [(v, k) for k, v in call["balances"].items()])
                cur.executemany(f"INSERT INTO batches ({BATCH_COLS}) VALUES ({', '.join(['%s'] * 8)})",
                                call["batches"])
                cur.executemany(f"INSERT INTO entries ({ENTRY_COLS}) VALUES ({', '.join(['%s'] * 12)})",
                                call["entries"])
                cur.executemany("INSERT INTO node_blocks (first_pos, hashes) VALUES (%s, %s)", call["nodes"])
            else:
                cur.executemany("UPDATE accounts SET balance = %s WHERE account_id = %s",
                                [(v, k) for k, v in call["balances"].items()])
                for table, cols, rows in (("batches", BATCH_COLS, call["batches"]),
                                          ("entries", ENTRY_COLS, call["entries"]),
                                          ("node_blocks", "first_pos, hashes", call["nodes"])):
                    with cur.copy(f"COPY {table} ({cols}) FROM STDIN") as copy:
                        for r in rows:
                            copy.write_row(r)
            cur.execute("UPDATE tree_head SET size = %s, root = %s WHERE id = 1",
                        (call["size"], secrets.token_bytes(32)))
            conn.commit()
        return len(calls) * 1000 / (time.perf_counter() - start)


# ---------------------------------------------------------------------- main


def run(seconds: float, accounts: int, bulk_batches: int) -> tuple[list[Row], dict[str, Any]]:
    rows: list[Row] = []
    with scratch_database(ADMIN_URL) as url:
        with Ledger(url) as ledger:
            for i in range(0, accounts, 1000):
                ledger.post_many([
                    [{"account_id": f"acct-{j}", "amount": 10**6, "entry_type": "credit"}]
                    for j in range(i, min(i + 1000, accounts))
                ])
        _plain_tables(url, accounts)

        for writers in (1, 8):
            rate, reports = _run_processes(_engine_writer, [(url, accounts, s) for s in range(writers)], seconds)
            rows.append(Row(f"engine `transfer`, {writers} writer process{'es' if writers > 1 else ''}", rate))
            if writers == 1:
                cpu_client, cpu_server = reports[0][2], reports[0][3]
        for clients in (1, 8):
            rate = pgbench(url, accounts, clients, seconds)
            rows.append(Row(f"pgbench plain transfer, {clients} client{'s' if clients > 1 else ''}", rate))
        for with_head in (False, True):
            rate, _ = _run_processes(_raw_writer, [(url, accounts, s, with_head) for s in range(8)], seconds)
            what = "+ one head row locked and updated" if with_head else "accounts locked in order"
            rows.append(Row(f"raw psycopg transfer, 8 processes, {what}", rate))
        deferred_tables(url)
        rate, _ = _run_processes(deferred_writer, [(url, accounts, s) for s in range(8)], seconds)
        rows.append(Row("raw psycopg transfer, 8 processes, deferred log integration (not adopted)", rate))
        sequencer_tables(url)
        rate, _ = _run_processes(sequencer_writer, [(url, accounts, s) for s in range(8)], seconds)
        rows.append(Row("raw psycopg transfer, 8 processes, queued to one sequencer (not adopted)", rate))

        rows.append(Row("raw psycopg plain transfer, 1,000 per transaction, `executemany`",
                        plain_bulk(url, accounts, bulk_batches)))
        bulk = bulk_engine(url, accounts, bulk_batches)
        rows.append(Row("engine `transfer_many`, 1,000 per call", bulk))
        storage = PostgresStorage(url)
        with storage.transaction(write=False) as tx:
            size = tx.head().size
        storage.close()
        for method in ("executemany", "copy"):
            calls = _raw_bulk_rows(accounts, size, bulk_batches)
            rate = bulk_raw(url, calls, method)
            size = calls[-1]["size"]
            rows.append(Row(f"raw SQL, same rows, {RAW_METHODS[method]}", rate))

    by = {r.label: r.per_second for r in rows}
    ratios = {
        "8 writers / pgbench 8 clients": by["engine `transfer`, 8 writer processes"]
        / by["pgbench plain transfer, 8 clients"],
        "1 writer / pgbench 1 client": by["engine `transfer`, 1 writer process"]
        / by["pgbench plain transfer, 1 client"],
        "bulk / raw executemany": by["engine `transfer_many`, 1,000 per call"]
        / by["raw SQL, same rows, psycopg `executemany`"],
        "bulk / raw COPY": by["engine `transfer_many`, 1,000 per call"] / by["raw SQL, same rows, `COPY`"],
        "raw with head row / without": by["raw psycopg transfer, 8 processes, + one head row locked and updated"]
        / by["raw psycopg transfer, 8 processes, accounts locked in order"],
        "8 writers / raw with head row": by["engine `transfer`, 8 writer processes"]
        / by["raw psycopg transfer, 8 processes, + one head row locked and updated"],
        "deferred / pgbench 8 clients": by["raw psycopg transfer, 8 processes, deferred log integration"
                                          " (not adopted)"] / by["pgbench plain transfer, 8 clients"],
        "sequencer / pgbench 8 clients": by["raw psycopg transfer, 8 processes, queued to one sequencer"
                                           " (not adopted)"] / by["pgbench plain transfer, 8 clients"],
        "raw / pgbench 8 clients": by["raw psycopg transfer, 8 processes, accounts locked in order"]
        / by["pgbench plain transfer, 8 clients"],
        "plain bulk": by["raw psycopg plain transfer, 1,000 per transaction, `executemany`"],
        "bulk": by["engine `transfer_many`, 1,000 per call"],
        "client cpu us": cpu_client * 1e6,
        "server cpu us": cpu_server * 1e6,
    }
    return rows, ratios


def markdown(rows: list[Row], ratios: dict[str, float], command: str, seconds: float, accounts: int,
             load: tuple[float, float, float]) -> str:
    lines = [
        SECTION,
        "",
        f"`{command}` — {platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()},",
        f"{_server_version()}; {accounts} accounts, {seconds:g} s per measurement; load average before the run",
        f"{load[0]:.1f}. **Figures on a 2-core VM are noisy; the",
        "ratios (same server, same run) are what to compare.**",
        "",
        "| what | per second |",
        "|---|---:|",
        *[f"| {r.label} | {r.per_second:,.0f} |" for r in rows],
        "",
        "| ratio | value | target |",
        "|---|---:|---|",
        f"| 8 writers / pgbench 8 clients | {ratios['8 writers / pgbench 8 clients']:.2f} | ≥ 0.5 |",
        f"| 1 writer / pgbench 1 client | {ratios['1 writer / pgbench 1 client']:.2f} | |",
        f"| bulk / raw `executemany` | {ratios['bulk / raw executemany']:.2f} | ≥ 0.5 (and ≥ 20,000/s) |",
        f"| bulk / raw `COPY` | {ratios['bulk / raw COPY']:.2f} | |",
        f"| raw transfer with one head row / without | {ratios['raw with head row / without']:.2f} | |",
        f"| 8 writers / raw transfer with one head row | {ratios['8 writers / raw with head row']:.2f} | |",
        f"| raw psycopg plain transfer, 8 processes / pgbench 8 clients | {ratios['raw / pgbench 8 clients']:.2f} | |",
        f"| raw deferred integration, 8 processes / pgbench 8 clients | {ratios['deferred / pgbench 8 clients']:.2f}"
        " | |",
        f"| raw one sequencer, 8 processes / pgbench 8 clients | {ratios['sequencer / pgbench 8 clients']:.2f}"
        " | |",
        f"| engine bulk / raw plain transfer 1,000 per transaction | {ratios['bulk'] / ratios['plain bulk']:.2f} | |",
        "",
        f"CPU per single transfer (1 writer): {ratios['client cpu us']:.0f} µs in the writer process (engine and",
        f"driver), {ratios['server cpu us']:.0f} µs in its PostgreSQL backend; {os.cpu_count()} cores at that cost",
        f"allow about {(os.cpu_count() or 1) * 1e6 / (ratios['client cpu us'] + ratios['server cpu us']):,.0f}"
        " transfers/s with no serialisation at all.",
        "",
        "How to read these. A write transaction locks its account rows (in id order) and then the one",
        "`tree_head` row, and holds them through `COMMIT`, which waits for the WAL flush: appending to",
        "the Merkle log needs one writer at a time, so these commits cannot share a flush the way",
        "pgbench's do. Inside that section there is one round trip, the engine's own work for the",
        "transfer and the commit (the head row carries the Merkle frontier; all writes go out as one",
        "statement with `COMMIT`). The *raw psycopg … one head row* line is that rule alone under the",
        "simplest possible transaction: it is the ceiling for any design that serialises on the head",
        "row, and the *with / without* ratio is what the rule costs on this disk. When the cores are",
        "oversubscribed the process holding the head lock is often descheduled while every other writer",
        "waits for it, so the 8-writer figure falls further than the database alone explains.",
        "",
        "Why 8 writers stay under half of pgbench here: the writers' Python and the server share 2 cores.",
        "Even raw psycopg running nothing but the plain transfer, with no log at all, reaches the",
        f"*raw psycopg plain transfer / pgbench* ratio above ({ratios['raw / pgbench 8 clients']:.2f});",
        "and the designs",
        "that take the log off the money path (`bench/pg_alternatives.py`: *deferred log integration*,",
        "commit balances and a pending row under account locks, then sequence pending rows in batches;",
        "*one sequencer*, queue requests and let whichever writer holds an advisory lock run them all",
        "as one bulk transaction) were measured as raw SQL too and reach"
        f" {ratios['deferred / pgbench 8 clients']:.2f} and {ratios['sequencer / pgbench 8 clients']:.2f}",
        "of pgbench: their extra round trips, commits and waits cost more CPU than the shared head row",
        "costs waiting. And the engine's own CPU per transfer (above) caps even a design with no",
        "serialisation at all near half of pgbench on these 2 cores.",
        "",
        f"Bulk. The engine hands each {STREAM_ENTRIES} entries to the server as it builds them (pipelined, same",
        "transaction), so the server inserts one chunk while Python builds the next; what is left is",
        "the server inserting the rows (compare the `COPY` line). The absolute 20,000/s target was",
        "set on DESIGN.md's reference machine, where the plain 1,000-per-transaction transfer runs at",
        f"~29k/s; on this one it ran at {ratios['plain bulk']:,.0f}/s in this run, and the engine's bulk figure is",
        f"{ratios['bulk'] / ratios['plain bulk']:.2f} of it.",
        "",
    ]
    return "\n".join(lines)


def _server_version() -> str:
    with psycopg.connect(ADMIN_URL) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return f"PostgreSQL {row[0] if row else '?'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--bulk-batches", type=int, default=20)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    parser.add_argument("--update-docs", action="store_true", help=f"rewrite the '{SECTION}' section of {DOCS}")
    args = parser.parse_args()
    command = "python bench/bench_postgres.py " + " ".join(sys.argv[1:])
    load = os.getloadavg()
    rows, ratios = run(args.seconds, args.accounts, args.bulk_batches)
    section = markdown(rows, ratios, command.strip(), args.seconds, args.accounts, load)
    print(section)
    if args.json:
        print(json.dumps({"rows": [r.__dict__ for r in rows], "ratios": ratios}, indent=2))
    if args.update_docs:
        replace_section(SECTION, section)


if __name__ == "__main__":
    main()
