"""The engine on embedded SQLite: transfers per second beside raw sqlite3, and a
1,000,000-entry ledger's memory, point-in-time balance and receipt costs.

Throughput. Each round runs, in fresh files, raw ``sqlite3`` doing the row writes
of a plain transfer (two balance updates and one insert; WAL, synchronous=NORMAL,
the same pragmas the engine uses) and then the engine doing the same transfers
(``Ledger.transfer`` one per commit, ``Ledger.transfer_many`` 1,000 per commit).
Rounds alternate baseline and engine so both see the same machine load; the
figure reported is the median of the rounds, and the ratio engine/raw is what to
read on a shared machine. The engine writes more per transfer than the baseline
(two entries, their Merkle nodes, a batch row, the tree head): that is the
product, not overhead, so the ratio states its price.

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
import re
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
    eng: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench_engine_") as tmp:
        for r in range(rounds):
            raw.append(raw_transfers(Path(tmp) / f"raw{r}.db", n, per_commit))
            eng.append(engine_transfers(Path(tmp) / f"eng{r}.db", n, per_commit))
    ratios = [e / b for e, b in zip(eng, raw, strict=True)]
    return {
        "per_commit": per_commit, "transfers": n, "rounds": rounds,
        "raw": statistics.median(raw), "engine": statistics.median(eng),
        "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
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
        return (f"| {name} | {r['raw']:,.0f} | {r['engine']:,.0f} | **{r['ratio']:.2f}** "
                f"({r['ratio_min']:.2f}–{r['ratio_max']:.2f}) | {target} |")

    lines = [
        SECTION,
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {os.cpu_count()} cores shared with other engineers' runs (load average {load:.1f} at the start),",
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, {datetime.now(UTC):%Y-%m-%d}."
        " Absolute figures are noisy here; the ratio against raw `sqlite3` in the same rounds is what to compare.",
        "",
        f"Transfers per second (median of {single['rounds']} alternating rounds; ratio range in brackets).",
        "Raw: two `UPDATE accounts` and one `INSERT` per transfer, WAL, `synchronous=NORMAL`.",
        "Engine: per transfer two entries (each a Merkle leaf), their nodes, a batch row, balances and the tree head.",
        "",
        "| per commit | raw sqlite3 /s | engine /s | engine ÷ raw | target |",
        "|---|---:|---:|---:|---|",
        row(f"1 (`Ledger.transfer`, {single['transfers']:,} transfers)", single, "≥ 0.33"),
        row(f"1,000 (`Ledger.transfer_many`, {bulk['transfers']:,} transfers)", bulk, "≥ 0.5"),
        "",
    ]
    if big is not None:
        points = big["rss_samples_mb"]
        rss = ", ".join(f"{n // 1000:,}k: {mb:.0f}" for n, mb in points[:: max(1, len(points) // 8)] + points[-1:])
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
    if profile:
        lines += ["Profile of the 1,000-per-commit path (top by own time):", "", "```", profile, "```", ""]
    return "\n".join(lines)


def update_docs(section: str) -> None:
    text = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section.rstrip() + "\n\n", text)
    else:
        text = text.rstrip() + "\n\n" + section.rstrip() + "\n"
    DOCS.write_text(text.rstrip() + "\n")


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
        update_docs(section)


if __name__ == "__main__":
    main()
