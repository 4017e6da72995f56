"""Cost of one write to the JSON-file ledger as history grows, against the naive way.

One write is one ``LedgerService.charge`` (a two-leg transfer, committed to disk
before it returns) on a ledger already holding 1k, 10k or 100k transfers. The
baseline, measured in the same run on the same disk, is what the seed's
original store did: keep the seed document in memory and, per write, append the
transfer, ``json.dumps`` the whole document and replace the file atomically
(temp file + fsync + ``os.replace`` + directory fsync, the same durability).

Writes at the different sizes are interleaved in rounds (the order rotating),
so machine noise spreads over every size instead of landing on one; the
baseline runs after ours, since its large files leave dirty pages that slow the
next fsync. The figures that matter are the ratios inside one run. Usage::

    python3 bench/bench_jsonfile.py [--sizes 1000,10000,100000] [--writes 1000] [--naive-writes 40]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from mesh_fake_ledger import LedgerConfig, LedgerService

FILL_CHUNK = 5_000


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class NaiveSeedStore:
    """The seed's store: the whole document re-encoded and replaced per write."""

    def __init__(self, path: Path, transfers: int) -> None:
        self.path = path
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.doc: dict[str, Any] = {
            "accounts": {
                "alice": {"balance": 10**9, "created_at": now, "meta": {}},
                "provider": {"balance": 0, "created_at": now, "meta": {}},
            },
            "transfers": [],
        }
        for i in range(transfers):
            self._apply(f"fill-{i}")
        self._save()

    def _apply(self, job_id: str) -> dict[str, Any]:
        accounts = self.doc["accounts"]
        if accounts["alice"]["balance"] < 1:
            raise RuntimeError("insufficient balance")
        accounts["alice"]["balance"] -= 1
        accounts["provider"]["balance"] += 1
        record = {
            "id": str(uuid.uuid4()),
            "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "from_account": "alice", "to_account": "provider", "amount": 1, "job_id": job_id, "note": None,
        }
        self.doc["transfers"].append(record)
        return record

    def _save(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        data = json.dumps(self.doc, indent=2).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        _fsync_dir(self.path.parent)

    def charge(self, job_id: str) -> None:
        self._apply(job_id)
        self._save()


def build_ledger(path: Path, transfers: int) -> LedgerService:
    service = LedgerService(LedgerConfig(ledger_path=path))
    service.create_account_if_missing("alice", initial_balance=10**9)
    service.create_account_if_missing("provider")
    done = 0
    while done < transfers:
        n = min(FILL_CHUNK, transfers - done)
        service.ledger.transfer_many([("alice", "provider", 1)] * n, reference="fill")
        done += n
    return service


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "mean_ms": statistics.fmean(samples) * 1e3,
        "median_ms": statistics.median(samples) * 1e3,
        "p95_ms": ordered[int(0.95 * (len(ordered) - 1))] * 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--writes", type=int, default=1000, help="charges per size on the JSON ledger")
    parser.add_argument("--naive-writes", type=int, default=40, help="charges per size on the naive baseline")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--dir", default=None, help="where to put the files (default: a temp dir)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        services: dict[int, LedgerService] = {}
        naive: dict[int, NaiveSeedStore] = {}
        for n in sizes:
            t = time.perf_counter()
            services[n] = build_ledger(root / f"ledger-{n}.json", n)
            build_s = time.perf_counter() - t
            t = time.perf_counter()
            LedgerService(LedgerConfig(ledger_path=root / f"ledger-{n}.json")).close()
            open_s = time.perf_counter() - t
            naive[n] = NaiveSeedStore(root / f"naive-{n}.json", n)
            print(f"built {n} transfers in {build_s:.1f}s; reopening it takes {open_s * 1e3:.0f} ms", flush=True)

        ours: dict[int, list[float]] = {n: [] for n in sizes}
        base: dict[int, list[float]] = {n: [] for n in sizes}
        # Our writes first, then the baseline's: the baseline leaves tens of MB of dirty
        # pages that would slow whichever fsync follows. The order of sizes rotates per round.
        os.sync()
        for r in range(args.rounds):
            for n in sizes[r % len(sizes) :] + sizes[: r % len(sizes)]:
                svc = services[n]
                for i in range(args.writes // args.rounds):
                    ours[n].append(timed(partial(svc.charge, "alice", "provider", 1, job_id=f"bench-{r}-{i}")))
        os.sync()
        for r in range(args.rounds):
            for n in sizes[r % len(sizes) :] + sizes[: r % len(sizes)]:
                for i in range(max(1, args.naive_writes // args.rounds)):
                    base[n].append(timed(partial(naive[n].charge, f"bench-{r}-{i}")))

        print()
        print("| transfers in ledger | JSON ledger mean / median / p95 (ms) | naive rewrite mean / median (ms) "
              "| JSON ledger vs naive | head file | segments |")
        print("|---:|---:|---:|---:|---:|---:|")
        first = summary(ours[sizes[0]])["mean_ms"]
        for n in sizes:
            o, b = summary(ours[n]), summary(base[n])
            head = root / f"ledger-{n}.json"
            segs = len(list((root / f"ledger-{n}.json.d").glob("segment-*.json")))
            print(
                f"| {n:,} | {o['mean_ms']:.2f} / {o['median_ms']:.2f} / {o['p95_ms']:.2f} "
                f"| {b['mean_ms']:.2f} / {b['median_ms']:.2f} | {o['mean_ms'] / b['mean_ms']:.2f}x "
                f"| {head.stat().st_size / 1024:.0f} KiB | {segs} |"
            )
        last = summary(ours[sizes[-1]])["mean_ms"]
        print(f"\nJSON ledger: mean cost at {sizes[-1]:,} / at {sizes[0]:,} = {last / first:.2f} (target <= 2)")
        nb0, nb1 = summary(base[sizes[0]])["mean_ms"], summary(base[sizes[-1]])["mean_ms"]
        print(f"naive rewrite: mean cost at {sizes[-1]:,} / at {sizes[0]:,} = {nb1 / nb0:.2f}")
        for svc in services.values():
            assert svc.ledger.verify().ok
            svc.close()


if __name__ == "__main__":
    main()
