"""Proofs and the full audit at a million entries, against raw SQLite in the same run.

On an SQLite ledger of ``--entries`` entries (default 1,000,000; transfers among
100 accounts, built once and reused from ``--db``):

* inclusion proof generation: ``Evidence.inclusion_proof(seq)`` (the bundle a
  client gets: entry, audit path, root, signed head, consistency proof) for
  random entries at the current size and at random older sizes; also the core
  ``Ledger.receipt``. Baseline: raw ``sqlite3`` reading the same entry row and
  the same Merkle nodes by primary key (the least any proof must read).
* proof verification: ``verifier.verify_inclusion_bundle`` (Ed25519 signature,
  RFC 9162 inclusion and consistency, leaf re-hash), and consistency proofs
  between random sizes: generation and verification.
* the full audit: ``Ledger.verify`` and ``Evidence.verify`` in entries per
  second. Baseline: raw ``sqlite3`` scanning every entry row and SHA-256-hashing
  its canonical leaf (the least any audit must do).

Targets (issue 5): a proof in under 5 ms; the full audit at 100,000 entries/s or more.
``--profile`` prints the top of a cProfile of ``Ledger.verify`` on the first
``--profile-entries`` entries' worth of ledger.

    python3 bench/bench_proofs.py [--entries 1000000] [--db /tmp/bench_proofs.db] [--update-docs]
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import io
import json
import os
import platform
import pstats
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from docs_section import replace_section  # noqa: E402 - bench/ is the script's directory

from sardis_ledger import Ledger, merkle, verifier  # noqa: E402
from sardis_ledger.evidence import Evidence  # noqa: E402
from sardis_ledger.signing import Keyring  # noqa: E402

DOCS = ROOT / "docs" / "benchmarks.md"
SECTION = "## Audit and proofs"
ACCOUNTS = 100
NOTE = ("Evidence.verify adds to the core walk only a handful of reads (signed heads, rows past the head), so the"
        " two differ by noise. Below 100,000 entries/s the time is the core walk's (core.py): the profile shows the"
        " per-entry Python work (metadata canonical-form check, leaf encoding, Merkle append, node reads).")


def build(db: Path, entries: int) -> Ledger:
    """Reuse ``db`` if it holds at least ``entries`` entries, else build it."""
    if db.exists():
        led = Ledger(f"sqlite:///{db}")
        if led.tree_head().tree_size >= entries:
            return led
        led.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
    led = Ledger(f"sqlite:///{db}")
    t0 = time.perf_counter()
    led.post_many([[{"account_id": f"acct{i:03d}", "amount": 10**9, "entry_type": "credit"}]
                   for i in range(ACCOUNTS)])
    rng = random.Random(7)
    size = ACCOUNTS
    while size < entries:
        n = min(1000, (entries - size) // 2) or 1
        moves = []
        for _ in range(n):
            a, b = rng.sample(range(ACCOUNTS), 2)
            moves.append((f"acct{a:03d}", f"acct{b:03d}", rng.randint(1, 1000)))
        led.transfer_many(moves)
        size += 2 * n
        if size % 100_000 < 2000:
            print(f"  built {size:,} entries ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    print(f"  built {led.tree_head().tree_size:,} entries in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return led


def timed(fn: Callable[[], object], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def stats(ms: list[float]) -> tuple[float, float]:
    ordered = sorted(ms)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def node_reader(conn: sqlite3.Connection) -> Callable[[list[tuple[int, int]]], list[bytes]]:
    """Raw reads of Merkle nodes by primary key in one query, whichever way the schema keys them."""
    cols = {r[1] for r in conn.execute("PRAGMA table_info(nodes)")}
    if "pos" in cols:
        position = merkle.node_position  # type: ignore[attr-defined,unused-ignore]

        def by_pos(coords: list[tuple[int, int]]) -> list[bytes]:
            keys = [position(lv, ix) for lv, ix in coords]
            q = f"SELECT hash FROM nodes WHERE pos IN ({','.join('?' * len(keys))})"
            return [r[0] for r in conn.execute(q, keys)]

        return by_pos

    def by_level(coords: list[tuple[int, int]]) -> list[bytes]:
        q = "SELECT hash FROM nodes WHERE " + " OR ".join("(level = ? AND idx = ?)" for _ in coords)
        return [r[0] for r in conn.execute(q, [v for c in coords for v in c])]

    return by_level


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--db", type=Path, default=Path(tempfile.gettempdir()) / "bench_proofs.db")
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--audit-rounds", type=int, default=2, help="interleaved rounds of the full audits")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--profile-entries", type=int, default=200_000)
    parser.add_argument("--update-docs", action="store_true")
    args = parser.parse_args()
    if not 2 <= args.entries <= 10**8 or not 10 <= args.samples <= 100_000 or not 1 <= args.audit_rounds <= 10:
        parser.error("--entries must be within 2..1e8, --samples within 10..1e5, --audit-rounds within 1..10")

    led = build(args.db, args.entries)
    size = led.tree_head().tree_size
    keys_dir = Path(tempfile.mkdtemp(prefix="bench-keys-"))
    ev = Evidence(led, Keyring(keys_dir))
    sth = ev.signed_tree_head()
    keys = verifier.load_public_keys(ev.public_keyring())
    rng = random.Random(11)
    seqs = [rng.randint(1, size) for _ in range(args.samples)]
    olds = [rng.randint(s, size) for s in seqs]
    rows: list[tuple[str, str, str, str]] = []

    def row(label: str, ms: list[float], base: list[float] | None = None) -> None:
        p50, p99 = stats(ms)
        ratio = f"{p50 / statistics.median(base):.1f}×" if base else ""
        rows.append((label, f"{p50:.3f}", f"{p99:.3f}", ratio))
        print(f"{label:62s} p50 {p50:8.3f} ms  p99 {p99:8.3f} ms  {ratio}")

    # raw baseline: the entry row and the nodes of its audit path and root, by primary key
    raw = sqlite3.connect(args.db)
    read_nodes = node_reader(raw)
    def plan(s: int) -> list[tuple[int, int]]:
        def walk(g: merkle.NodeGetter) -> object:
            return merkle.inclusion_proof(s - 1, size, g), merkle.tree_root(size, g)

        return sorted(merkle.needed_nodes(walk))

    plans = iter([(s, plan(s)) for s in seqs])

    def raw_proof() -> None:
        s, coords = next(plans)
        raw.execute("SELECT * FROM entries WHERE seq = ?", (s - 1,)).fetchone()
        read_nodes(coords)

    base = timed(raw_proof, args.samples)
    row("raw sqlite3: entry row + audit-path nodes (baseline)", base)
    it = iter(seqs)
    row("Ledger.receipt(seq) (core inclusion proof)", timed(lambda: led.receipt(next(it)), args.samples), base)
    bundles: list[dict[str, object]] = []
    it = iter(seqs)
    row("Evidence.inclusion_proof(seq): bundle at the signed head",
        timed(lambda: bundles.append(ev.inclusion_proof(next(it))), args.samples), base)
    pairs = iter(zip(seqs, olds, strict=True))
    old_bundles: list[dict[str, object]] = []
    row("Evidence.inclusion_proof(seq, older size): + consistency",
        timed(lambda: old_bundles.append(ev.inclusion_proof(*next(pairs))), args.samples), base)
    wire = [json.loads(json.dumps(b)) for b in bundles + old_bundles]
    it_b = iter(wire)
    row("verifier.verify_inclusion_bundle (signature + proofs + leaf)",
        timed(lambda: verifier.verify_inclusion_bundle(next(it_b), keys), len(wire)))
    receipts = [led.receipt(s) for s in seqs]
    it_r = iter(receipts)

    def verify_path() -> None:
        r = next(it_r)
        verifier.verify_inclusion(r.leaf_index, r.tree_size, bytes.fromhex(r.leaf_hash),
                                  [bytes.fromhex(p) for p in r.inclusion_proof], bytes.fromhex(r.root))

    row("verifier.verify_inclusion (audit path only)", timed(verify_path, len(receipts)))
    proofs: list[dict[str, object]] = []
    it_o = iter(olds)
    row("Evidence.consistency_proof(old) to the signed head",
        timed(lambda: proofs.append(ev.consistency_proof(next(it_o))), args.samples))
    it_p = iter(proofs)

    def verify_cons() -> None:
        p = next(it_p)
        verifier.verify_consistency(int(p["old_size"]), int(p["new_size"]),  # type: ignore[call-overload]
                                    bytes.fromhex(str(p["old_root"])), bytes.fromhex(str(p["new_root"])),
                                    [bytes.fromhex(x) for x in p["proof"]])  # type: ignore[attr-defined]

    row("verifier.verify_consistency", timed(verify_cons, len(proofs)))

    # the full audit
    from sardis_ledger.records import EntryRow, leaf_bytes

    def raw_scan() -> None:
        scale = led.get_asset("TOKEN").scale
        h = hashlib.sha256
        for r in raw.execute("SELECT seq, entry_id, batch_id, account_id, asset, amount, direction, running_balance,"
                             " created_at, reference, metadata, reverses FROM entries ORDER BY seq"):
            h(b"\x00" + leaf_bytes(EntryRow(*r), scale)).digest()

    throughput: list[tuple[str, str, str]] = []
    audits: list[tuple[str, Callable[[], object]]] = [
        ("raw sqlite3: scan every row + SHA-256 of its leaf (baseline)", raw_scan),
        ("Ledger.verify() (core)", led.verify),
        ("Evidence.verify() (core + signed heads + rows past the head)", lambda: ev.verify(sign=False)),
    ]
    best = {label: float("inf") for label, _ in audits}
    for _ in range(args.audit_rounds):  # interleaved rounds, best of each: load on a shared machine varies
        for label, fn in audits:
            t = time.perf_counter()
            result = fn()
            best[label] = min(best[label], time.perf_counter() - t)
            assert getattr(result, "ok", True), label
    base_s = best[audits[0][0]]
    for label, _ in audits:
        secs = best[label]
        ratio = f"{secs / base_s:.1f}×" if label != audits[0][0] else ""
        throughput.append((label, f"{size / secs:,.0f}", ratio))
        print(f"{label:62s} {size / secs:12,.0f} entries/s ({secs:.1f} s) {ratio}")

    profile_text = ""
    if args.profile:
        prof_db = Path(tempfile.gettempdir()) / "bench_proofs_profile.db"
        small = build(prof_db, args.profile_entries)
        pr = cProfile.Profile()
        pr.enable()
        small.verify()
        pr.disable()
        buf = io.StringIO()
        pstats.Stats(pr, stream=buf).sort_stats("tottime").print_stats(12)
        profile_text = buf.getvalue()
        print(profile_text)
        small.close()

    print(f"signed head: size {sth.tree_size}, key {sth.key_id[:16]}…")
    if args.update_docs:
        replace_section(SECTION, section(rows, throughput, size, args, profile_text))
    led.close()
    raw.close()


def section(rows: list[tuple[str, str, str, str]], throughput: list[tuple[str, str, str]], size: int,
            args: argparse.Namespace, profile_text: str) -> str:
    command = "python3 bench/bench_proofs.py " + " ".join(
        a for a in sys.argv[1:] if a != "--update-docs")
    lines = [
        SECTION,
        "",
        f"SQLite ledger of {size:,} entries (transfers among {ACCOUNTS} accounts), {args.samples} random entries"
        " per row; times in milliseconds. The baselines are raw `sqlite3` doing the least the operation must do,"
        " measured in the same run: compare the ratio column. Targets: a proof under 5 ms; the full audit at"
        " 100,000 entries/s or more.",
        "",
        f"Command: `{command.strip()}`",
        "",
        f"Machine: {os.cpu_count()} cores, Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}.",
        "",
        "| operation | p50 ms | p99 ms | vs baseline |",
        "|---|---|---|---|",
        *(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows),
        "",
        f"Full audits: best of {args.audit_rounds} interleaved rounds.",
        "",
        "| full audit | entries/s | time vs baseline |",
        "|---|---|---|",
        *(f"| {a} | {b} | {c} |" for a, b, c in throughput),
        "",
    ]
    lines += [NOTE, ""]
    if profile_text:
        lines += ["Profile of `Ledger.verify` (top by own time):", "", "```", profile_text.strip(), "```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
