"""The engine on embedded SQLite: transfers per second beside raw sqlite3, and a
1,000,000-entry ledger's memory, point-in-time balance and receipt costs.

Throughput. Each round runs, in fresh files, the engine doing transfers
(``Ledger.transfer`` one per commit, ``Ledger.transfer_many`` 1,000 per commit)
and two raw ``sqlite3`` baselines with the same pragmas (WAL, synchronous=NORMAL):

* **same rows** (the issue's baseline, "raw sqlite3 doing the same row writes"):
  exactly the rows the engine writes per transfer (balances, a batch row, two
  entries, their Merkle nodes, the tree head) into the engine's schema, with
  constant hashes and no checks. Engine ÷ this is the engine's own cost, and the
  targets (≥ 0.33 one per commit, ≥ 0.5 at 1,000) are read against it;
* **plain transfer** (DESIGN.md's scale figure): two balance updates and one
  narrow insert. Same rows ÷ this is what the ledger's records cost in SQLite
  before any engine code runs, reported so that price is visible too.

Rounds alternate baselines and engine so all see the same machine load; the
figure reported is the median of the rounds, and the ratios are what to read on
a shared machine.

Scale. A child process builds a ledger of ``--entries`` entries with
``transfer_many`` (1,000 transfers per commit among ``--accounts`` accounts),
sampling its resident memory as it goes; then it times ``get_balance(at=...)``
(sequence numbers and datetimes), ``Ledger.receipt`` and a deep page of
``list_entries`` on random targets. Its peak RSS (``ru_maxrss``) is reported.

    python3 bench/bench_engine.py [--single 3000] [--bulk 100000] [--rounds 5]
        [--entries 1000000] [--accounts 1000] [--profile] [--update-docs]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import random
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from docs_section import replace_section

from sardis_ledger import Ledger
from sardis_ledger.storage.sqlite import SQLiteStorage

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmarks.md"
SECTION = "## Engine (SQLite)"
ACCOUNTS = 100  # throughput runs: transfers rotate over this many funded accounts


# ---------------------------------------------------------------- throughput


def raw_transfers(path: Path, n: int, per_commit: int) -> float:
    """The baseline: per transfer two balance updates and one insert, nothing else."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(f"PRAGMA cache_size=-{SQLiteStorage.cache_kib}")
    conn.execute("CREATE TABLE accounts (id TEXT PRIMARY KEY, balance INTEGER NOT NULL) WITHOUT ROWID")
    conn.execute(
        "CREATE TABLE transfers (id INTEGER PRIMARY KEY, src TEXT NOT NULL, dst TEXT NOT NULL,"
        " amount INTEGER NOT NULL, created_at TEXT NOT NULL)"
    )
    conn.executemany("INSERT INTO accounts VALUES (?, ?)", [(f"a{i}", 10**15) for i in range(ACCOUNTS)])
    pairs = [(f"a{i % ACCOUNTS}", f"a{(i + 1) % ACCOUNTS}") for i in range(n)]
    start = time.perf_counter()
    for lo in range(0, n, per_commit):
        conn.execute("BEGIN IMMEDIATE")
        for src, dst in pairs[lo : lo + per_commit]:
            conn.execute("UPDATE accounts SET balance = balance - ? WHERE id = ?", (1_000_000, src))
            conn.execute("UPDATE accounts SET balance = balance + ? WHERE id = ?", (1_000_000, dst))
            conn.execute(
                "INSERT INTO transfers (src, dst, amount, created_at) VALUES (?, ?, ?, ?)",
                (src, dst, 1_000_000, datetime.now(UTC).isoformat()),
            )
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return n / elapsed


def raw_engine_rows(path: Path, n: int, per_commit: int) -> float:
    """A second baseline: raw sqlite3 writing exactly the rows the engine writes for
    each transfer (balances, a batch row, two entries, their Merkle nodes, the tree
    head) into the engine's schema, with constant hashes and no validation. The gap
    between it and the engine is the engine's own Python work; the gap between it
    and the plain transfer is what the ledger's records cost in SQLite."""
    SQLiteStorage(path).close()  # the engine's schema, indexes and triggers
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(f"PRAGMA cache_size=-{SQLiteStorage.cache_kib}")
    conn.executemany(
        "INSERT INTO accounts VALUES (?, 'TOKEN', ?, 0, '{}', '2024-01-01T00:00:00.000000Z')",
        [(f"a{i}", 10**15) for i in range(ACCOUNTS)],
    )
    digest = bytes(32)
    balance = dict.fromkeys((f"a{i}" for i in range(ACCOUNTS)), 10**15)
    seq = pos = 0
    start = time.perf_counter()
    for lo in range(0, n, per_commit):
        batches, entries, nodes = [], [], []
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        for i in range(lo, min(n, lo + per_commit)):
            src, dst = f"a{i % ACCOUNTS}", f"a{(i + 1) % ACCOUNTS}"
            bid = f"{time.time_ns():020x}{i:012x}"
            batches.append((bid, seq, 2, stamp, None, None, None, None))
            for k, (acct, sign) in enumerate(((src, -1), (dst, 1))):
                balance[acct] += sign * 1_000_000
                entries.append((seq, f"{bid}{k}", bid, acct, "TOKEN", 1_000_000, "debit" if sign < 0 else "credit",
                                balance[acct], stamp, None, "{}", None))
                for _ in range(((seq + 1) & -(seq + 1)).bit_length()):  # nodes appending this leaf creates
                    nodes.append((pos, digest))
                    pos += 1
                seq += 1
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("UPDATE accounts SET balance = ? WHERE account_id = ?",
                         [(balance[a], a) for a in {e[3] for e in entries}])
        conn.executemany("INSERT INTO batches VALUES (?, ?, ?, ?, ?, ?, ?, ?)", batches)
        conn.executemany("INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", entries)
        conn.executemany("INSERT INTO nodes VALUES (?, ?)", nodes)
        conn.execute(
            "INSERT INTO tree_head VALUES (1, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET size = excluded.size,"
            " root = excluded.root, updated_at = excluded.updated_at", (seq, digest, stamp),
        )
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return n / elapsed


def engine_transfers(path: Path, n: int, per_commit: int) -> float:
    with Ledger(f"sqlite:///{path}") as ledger:
        ledger.post_many([[{"account_id": f"a{i}", "amount": 10**9, "entry_type": "credit"}] for i in range(ACCOUNTS)])
        pairs = [(f"a{i % ACCOUNTS}", f"a{(i + 1) % ACCOUNTS}", 1) for i in range(n)]
        start = time.perf_counter()
        if per_commit == 1:
            for src, dst, amount in pairs:
                ledger.transfer(src, dst, amount)
        else:
            for lo in range(0, n, per_commit):
                ledger.transfer_many(pairs[lo : lo + per_commit])
        elapsed = time.perf_counter() - start
    return n / elapsed


def throughput(n: int, per_commit: int, rounds: int) -> dict[str, Any]:
    raw: list[float] = []
    rows: list[float] = []
    eng: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench_engine_") as tmp:
        for r in range(rounds):
            raw.append(raw_transfers(Path(tmp) / f"raw{r}.db", n, per_commit))
            eng.append(engine_transfers(Path(tmp) / f"eng{r}.db", n, per_commit))
            rows.append(raw_engine_rows(Path(tmp) / f"rows{r}.db", n, per_commit))
    ratios = [e / b for e, b in zip(eng, raw, strict=True)]
    row_ratios = [e / b for e, b in zip(eng, rows, strict=True)]
    return {
        "per_commit": per_commit, "transfers": n, "rounds": rounds,
        "raw": statistics.median(raw), "engine": statistics.median(eng), "rows": statistics.median(rows),
        "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
        "rows_ratio": statistics.median(row_ratios), "rows_ratio_min": min(row_ratios),
        "rows_ratio_max": max(row_ratios),
        "rows_vs_raw": statistics.median([w / b for w, b in zip(rows, raw, strict=True)]),
    }


def profile_bulk(n: int) -> str:
    with tempfile.TemporaryDirectory(prefix="bench_engine_prof_") as tmp:
        prof = cProfile.Profile()
        prof.enable()
        engine_transfers(Path(tmp) / "p.db", n, 1000)
        prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(14)
    text = out.getvalue()
    return text[text.index("ncalls") - 3 :].rstrip() if "ncalls" in text else text


# ---------------------------------------------------------------- 1M entries (child process)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _timed(fn: Callable[[], object], samples: int) -> dict[str, float]:
    times = []
    for _ in range(samples):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    return {"p50_ms": statistics.median(times), "p99_ms": times[min(len(times) - 1, int(len(times) * 0.99))]}


def scale_child(path: str, entries: int, accounts: int) -> dict[str, Any]:
    rng = random.Random(7)
    names = [f"acct{i:05d}" for i in range(accounts)]
    samples: list[tuple[int, float]] = []
    stamps: list[tuple[int, datetime]] = []
    with Ledger(f"sqlite:///{path}") as ledger:
        ledger.post_many([[{"account_id": a, "amount": 10**9, "entry_type": "credit"}] for a in names])
        start = time.perf_counter()
        size = accounts
        every = max(1, entries // 2000 // 20)  # about 20 samples
        for commit in range(entries):  # bounded: each commit adds 2,000 entries
            if size >= entries:
                break
            batch = [(src, dst, rng.randint(1, 100)) for src, dst in (rng.sample(names, 2) for _ in range(1000))]
            ledger.transfer_many(batch)
            size += 2 * len(batch)
            if commit % every == 0:
                samples.append((size, _rss_mb()))
                stamps.append((size, datetime.now(UTC)))
        samples.append((size, _rss_mb()))
        build_s = time.perf_counter() - start
        size = ledger.tree_head().tree_size
        seqs = [rng.randint(1, size) for _ in range(1000)]
        it = iter(seqs * 3)
        balance_seq = _timed(lambda: ledger.get_balance(rng.choice(names), at=next(it)), 300)
        balance_time = _timed(lambda: ledger.get_balance(rng.choice(names), at=rng.choice(stamps)[1]), 300)
        receipt = _timed(lambda: ledger.receipt(next(it)), 300)
        receipt_old = _timed(lambda: ledger.receipt(next(it) // 2 + 1, size // 2 + 1), 100)
        deep_page = _timed(
            lambda: ledger.list_entries(account_id=rng.choice(names), cursor=rng.randint(1, size), limit=100), 100
        )
        check = ledger.receipt(seqs[0])
        assert check.verify()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "entries": size, "accounts": accounts, "build_s": build_s, "entries_per_s": (size - accounts) / build_s,
        "rss_samples_mb": samples, "peak_rss_mb": peak_mb, "db_mb": os.path.getsize(path) / 2**20,
        "get_balance_at_seq": balance_seq, "get_balance_at_time": balance_time,
        "receipt": receipt, "receipt_at_older_size": receipt_old, "list_entries_deep_page": deep_page,
    }


def scale(entries: int, accounts: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench_engine_1m_") as tmp:
        proc = subprocess.run(
            [sys.executable, __file__, "--child", str(Path(tmp) / "big.db"), str(entries), str(accounts)],
            capture_output=True, text=True, timeout=3600, check=False,
        )
    if proc.returncode != 0:
        raise SystemExit(f"scale child failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


# ---------------------------------------------------------------- report


def report(single: dict[str, Any], bulk: dict[str, Any], big: dict[str, Any] | None, command: str,
           load: float, profile: str | None) -> str:
    def row(name: str, r: dict[str, Any], target: str) -> str:
        return (f"| {name} | {r['rows']:,.0f} | {r['engine']:,.0f} | **{r['rows_ratio']:.2f}** "
                f"({r['rows_ratio_min']:.2f}–{r['rows_ratio_max']:.2f}) | {target} | {r['raw']:,.0f} |"
                f" {r['rows_vs_raw']:.2f} | {r['ratio']:.2f} ({r['ratio_min']:.2f}–{r['ratio_max']:.2f}) |")

    lines = [
        SECTION,
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {os.cpu_count()} cores (load average {load:.1f} at the start),",
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, {datetime.now(UTC):%Y-%m-%d}."
        " Absolute figures are noisy here; the ratio against raw `sqlite3` in the same rounds is what to compare.",
        "",
        f"Transfers per second (median of {single['rounds']} alternating rounds; ratio range in brackets).",
        "Engine: per transfer two entries (each a Merkle leaf), their nodes, a batch row, balances and the tree head.",
        "Raw, same rows (the issue's baseline: \"raw sqlite3 doing the same row writes\"): raw `sqlite3` writing"
        " exactly those rows into the engine's schema (constant hashes, no checks); WAL, `synchronous=NORMAL`.",
        "Plain transfer (for scale, DESIGN.md's baseline table): two `UPDATE accounts` and one narrow `INSERT`.",
        "",
        "| per commit | raw, same rows /s | engine /s | engine ÷ raw same rows | target | plain transfer /s |"
        " same rows ÷ plain | engine ÷ plain |",
        "|---|---:|---:|---:|---|---:|---:|---:|",
        row(f"1 (`Ledger.transfer`, {single['transfers']:,} transfers)", single, "≥ 0.33"),
        row(f"1,000 (`Ledger.transfer_many`, {bulk['transfers']:,} transfers)", bulk, "≥ 0.5"),
        "",
    ]
    if big is not None:
        points = big["rss_samples_mb"]
        shown = points[:: max(1, len(points) // 8)]
        shown += points[-1:] if shown[-1] != points[-1] else []
        rss = ", ".join(f"{n // 1000:,}k: {mb:.0f}" for n, mb in shown)
        lines += [
            f"A ledger of {big['entries']:,} entries ({big['accounts']:,} accounts), built with `transfer_many`"
            f" in a child process in {big['build_s']:.0f} s ({big['entries_per_s']:,.0f} entries/s);"
            f" file {big['db_mb']:.0f} MB.",
            "",
            f"| at {big['entries']:,} entries | p50 ms | p99 ms | target |",
            "|---|---:|---:|---|",
            f"| `get_balance(account, at=sequence)` | {big['get_balance_at_seq']['p50_ms']:.3f} |"
            f" {big['get_balance_at_seq']['p99_ms']:.3f} | < 5 ms |",
            f"| `get_balance(account, at=datetime)` | {big['get_balance_at_time']['p50_ms']:.3f} |"
            f" {big['get_balance_at_time']['p99_ms']:.3f} | < 5 ms |",
            f"| `Ledger.receipt(sequence)` (proof at the current head) | {big['receipt']['p50_ms']:.3f} |"
            f" {big['receipt']['p99_ms']:.3f} | < 5 ms |",
            f"| `Ledger.receipt(sequence, older size)` | {big['receipt_at_older_size']['p50_ms']:.3f} |"
            f" {big['receipt_at_older_size']['p99_ms']:.3f} | |",
            f"| `list_entries(account_id=…, cursor=<random>, limit=100)` |"
            f" {big['list_entries_deep_page']['p50_ms']:.3f} | {big['list_entries_deep_page']['p99_ms']:.3f} | |",
            "",
            f"Peak memory of the whole run (`ru_maxrss` of the child): **{big['peak_rss_mb']:.0f} MB**"
            f" (target < 200 MB, flat). Resident MB as the ledger grew (entries: MB): {rss}.",
            "",
        ]
    lines += notes(single, bulk, big)
    if profile:
        lines += ["Profile of the 1,000-per-commit path (top by own time):", "", "```", profile, "```", ""]
    return "\n".join(lines)


def notes(single: dict[str, Any], bulk: dict[str, Any], big: dict[str, Any] | None) -> list[str]:
    """What the figures say against the targets, in words (written from the numbers)."""

    def verdict(ok: bool) -> str:
        return "met" if ok else "**missed**"

    out = [
        "Reading:",
        "",
        f"- Targets, against raw `sqlite3` doing the same row writes: 1 per commit ≥ 0.33:"
        f" {verdict(single['rows_ratio_min'] >= 0.33)} ({single['rows_ratio']:.2f}, every round"
        f" ≥ {single['rows_ratio_min']:.2f}); 1,000 per commit ≥ 0.5: {verdict(bulk['rows_ratio_min'] >= 0.5)}"
        f" ({bulk['rows_ratio']:.2f}, every round ≥ {bulk['rows_ratio_min']:.2f}). The gap is Python per leg"
        " (validation, leaf bytes, two SHA-256, the frontier append) and per commit (reading accounts and head).",
        f"- Against the plain transfer the engine reaches {single['ratio']:.2f} / {bulk['ratio']:.2f}: the ledger's"
        f" records themselves cost that much. Raw `sqlite3` writing only them reaches {single['rows_vs_raw']:.2f}"
        f" (1 per commit) and {bulk['rows_vs_raw']:.2f} (1,000 per commit) of the plain transfer: per transfer it"
        " inserts two entry rows (keyed by sequence, indexed by entry id and by account), a batch row and about four"
        " Merkle node rows, and rewrites the tree head, where the plain transfer inserts one narrow row; a single"
        " commit dirties about 8.5 pages against 2.",
        "- Done to get here (from 0.08 / 0.04 at the start): validation before the lock; receipts and batch entries"
        " built lazily when read; time-ordered ids (random UUIDs scattered index inserts); leaf bytes and amounts"
        " formatted with integers; Merkle nodes keyed by creation order (one append-only B-tree); partial unique"
        " indexes; one `executemany` per table. No invariant was relaxed: every entry is hashed and its nodes stored"
        " in the same transaction.",
        "- What would lower the records' own cost (not done: it changes the storage layout other components and"
        " tests read):"
        " keeping each entry's Merkle nodes in its own row, folding the batch row into the first entry,"
        " deriving entry ids from batch ids to drop one index.",
    ]
    if big is not None:
        worst = max(big["get_balance_at_seq"]["p99_ms"], big["get_balance_at_time"]["p99_ms"], big["receipt"]["p99_ms"])
        flat = big["rss_samples_mb"][-1][1] - big["rss_samples_mb"][len(big["rss_samples_mb"]) // 4][1]
        out.append(
            f"- At {big['entries']:,} entries: balance-at and receipts {verdict(worst < 5)} (< 5 ms; worst p99"
            f" {worst:.2f} ms: one index lookup / O(log n) nodes in one query);"
            f" memory {verdict(big['peak_rss_mb'] < 200)}"
            f" ({big['peak_rss_mb']:.0f} MB peak; resident memory moved {flat:+.1f} MB over the last three quarters"
            " of the build: SQLite's page cache, capped at 32 MiB per connection, fills and then stays)."
        )
    return [*out, ""]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(scale_child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--single", type=int, default=3000, help="transfers per round, one per commit")
    ap.add_argument("--bulk", type=int, default=100_000, help="transfers per round, 1,000 per commit")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--entries", type=int, default=1_000_000, help="size of the scale run (0 skips it)")
    ap.add_argument("--accounts", type=int, default=1000, help="accounts in the scale run")
    ap.add_argument("--profile", action="store_true", help="add a cProfile of the bulk path")
    ap.add_argument("--update-docs", action="store_true", help=f"rewrite the {SECTION!r} section of {DOCS}")
    args = ap.parse_args()
    load = os.getloadavg()[0]
    single = throughput(args.single, 1, args.rounds)
    print(json.dumps({"single": single}), flush=True)
    bulk = throughput(args.bulk, 1000, args.rounds)
    print(json.dumps({"bulk": bulk}), flush=True)
    big = scale(args.entries, args.accounts) if args.entries else None
    if big is not None:
        print(json.dumps({"scale": big}), flush=True)
    profile = profile_bulk(min(args.bulk, 50_000)) if args.profile else None
    command = "python3 bench/bench_engine.py " + " ".join(sys.argv[1:])
    section = report(single, bulk, big, command.strip(), load, profile)
    print(section)
    if args.update_docs:
        replace_section(SECTION, section)


if __name__ == "__main__":
    main()
