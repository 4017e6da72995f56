"""The bank test on PostgreSQL: many writer processes, random transfers, overdrafts.

Eight real processes make 20,000 random transfers among 20 accounts (some may
go to an overdraft limit, some ask for more than the payer has and must be
refused). Each writer appends one line per answered request to its own file
with a single ``write`` call, so what the file says was acknowledged really
was. Afterwards the database must show: total conserved; no balance below its
floor; every acknowledged transfer exactly once and every refused one not at
all; balances equal to replaying exactly the acknowledged transfers (no lost
update); a gapless Merkle log whose receipts all verified; no deadlock; and
``verify()`` passing. The second test does the same while a writer is killed
with SIGKILL every second and restarted where its file says it stopped,
retrying its unanswered transfer under the same idempotency key.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from sardis_ledger import Ledger
from sardis_ledger.errors import InsufficientBalanceError

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

SPAWN = mp.get_context("spawn")
ACCOUNTS = [f"bank-{i:02d}" for i in range(20)]
FLOORS = {name: (Decimal(500) if i % 4 == 0 else Decimal(0)) for i, name in enumerate(ACCOUNTS)}
OPENING = Decimal(1000)
WRITERS = 8
PER_WRITER = 2_500
DEADLINE = 300.0


def _transfer_for(seed: int, writer: int, index: int) -> tuple[str, str, Decimal]:
    """The same transfer every time it is asked for, so a restarted writer retries
    its unanswered request with identical content under the same key."""
    rnd = random.Random(f"{seed}:{writer}:{index}")
    src = rnd.randrange(len(ACCOUNTS))
    dst = rnd.randrange(len(ACCOUNTS) - 1)
    dst += dst >= src
    big = rnd.random() < 0.1  # asks for more than most accounts hold
    amount = Decimal(rnd.randint(100_000, 400_000) if big else rnd.randint(1, 30_000)) / 100
    return ACCOUNTS[src], ACCOUNTS[dst], amount


def _writer(url: str, seed: int, writer: int, start: int, out_path: str, keyed: bool) -> None:
    fd = os.open(out_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    with Ledger(url) as ledger:
        for index in range(start, PER_WRITER):
            src, dst, amount = _transfer_for(seed, writer, index)
            key = f"w{writer}-{index}"
            try:
                batch = ledger.transfer(src, dst, amount, reference=key, idempotency_key=key if keyed else None)
            except InsufficientBalanceError:
                os.write(fd, f"refused {index}\n".encode())
                continue
            except Exception as exc:
                os.write(fd, f"error {index} {type(exc).__name__}: {exc}\n".replace("\n", " ").encode() + b"\n")
                continue
            receipt = batch.entries[-1].receipt
            assert receipt is not None
            proofs_ok = all(e.receipt is not None and e.receipt.verify(e.leaf) for e in batch.entries)
            os.write(fd, (
                f"ok {index} {batch.batch_id} {batch.entries[0].sequence} {receipt.tree_size} {receipt.root}"
                f" {int(proofs_ok)}\n"
            ).encode())
    os.write(fd, b"done\n")
    os.close(fd)


@dataclass
class _Log:
    ok: dict[str, tuple[str, int, int, str, bool]] = field(default_factory=dict)
    refused: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    done: bool = False
    next_index: int = 0


def _read_log(path: Path, writer: int) -> _Log:
    log = _Log()
    if not path.exists():
        return log
    for line in path.read_text().split("\n")[:-1]:  # a torn last line was never acknowledged
        kind, _, rest = line.partition(" ")
        if kind == "done":
            log.done = True
            continue
        index = int(rest.split(" ", 1)[0])
        log.next_index = max(log.next_index, index + 1)
        key = f"w{writer}-{index}"
        if kind == "ok":
            _, batch_id, seq, size, root, proofs = rest.split(" ")
            entry = (batch_id, int(seq), int(size), root, proofs == "1")
            assert log.ok.setdefault(key, entry)[0] == batch_id, f"{key} acknowledged as two batches"
        elif kind == "refused":
            log.refused.add(key)
        else:
            log.errors.append(line)
    return log


def _setup(url: str) -> None:
    with Ledger(url) as ledger:
        for name in ACCOUNTS:
            ledger.create_account(name, overdraft_limit=FLOORS[name])
            ledger.create_entry(name, OPENING, "credit", reference="opening")


def _start(url: str, seed: int, writer: int, start: int, tmp: Path, keyed: bool) -> Any:
    proc = SPAWN.Process(target=_writer, args=(url, seed, writer, start, str(tmp / f"w{writer}.log"), keyed))
    proc.start()
    return proc


def _deadlocks(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()").fetchone()
        return int(row[0]) if row else -1


def _check(url: str, seed: int, logs: list[_Log], deadlocks_before: int) -> None:
    acked = {k: v for log in logs for k, v in log.ok.items()}
    refused = {k for log in logs for k in log.refused}
    assert [e for log in logs for e in log.errors] == []
    assert all(log.done for log in logs)
    assert len(acked) + len(refused) == WRITERS * PER_WRITER
    assert refused, "no overdraft was attempted: the test would prove nothing"
    assert all(v[4] for v in acked.values()), "a receipt did not verify for its writer"

    with psycopg.connect(url, autocommit=True) as conn:
        stored = {
            ref: (count, batch_ids)
            for ref, count, batch_ids in conn.execute(
                "SELECT reference, count(*), array_agg(DISTINCT batch_id) FROM entries"
                " WHERE reference <> 'opening' GROUP BY reference"
            )
        }
        n_entries, lowest, highest = conn.execute("SELECT count(*), min(seq), max(seq) FROM entries").fetchone()
        below_floor = conn.execute(
            "SELECT count(*) FROM accounts WHERE balance < -overdraft_limit"
        ).fetchone()
    # Every acknowledged transfer exactly once (one batch, two legs); nothing else.
    assert set(stored) == set(acked), (len(stored), len(acked))
    assert all(stored[k] == (2, [v[0]]) for k, v in acked.items())
    assert not refused & set(stored)
    # The log is gapless: leaf indexes 0..n-1, no duplicates (they are the key).
    assert (lowest, highest, n_entries) == (0, n_entries - 1, len(ACCOUNTS) + 2 * len(acked))
    assert len({v[1] for v in acked.values()}) == len(acked)
    assert below_floor == (0,)

    expected = dict.fromkeys(ACCOUNTS, OPENING)
    for key in acked:
        writer, index = key[1:].split("-")
        src, dst, amount = _transfer_for(seed, int(writer), int(index))
        expected[src] -= amount
        expected[dst] += amount
    with Ledger(url) as ledger:
        balances = {name: ledger.get_balance(name) for name in ACCOUNTS}
        assert balances == expected  # no lost update
        assert sum(balances.values()) == OPENING * len(ACCOUNTS)  # conservation
        assert all(balances[n] >= -FLOORS[n] for n in ACCOUNTS)
        head = ledger.tree_head()
        assert head.tree_size == n_entries
        for batch_id, _seq, size, root, _ok in random.Random(seed).sample(sorted(acked.values()), 100):
            assert ledger.root_at(size) == root, f"receipt of {batch_id} does not match the log"
        report = ledger.verify()
        assert report.ok, report.problems[:5]
    assert _deadlocks(url) == deadlocks_before


def _kill_all(procs: dict[int, Any]) -> None:
    for proc in procs.values():
        if proc.is_alive():
            proc.kill()
        proc.join(10)


def test_bank_eight_writer_processes(pg_url: str, tmp_path: Path) -> None:
    seed = random.randrange(1 << 30)
    _setup(pg_url)
    deadlocks_before = _deadlocks(pg_url)
    procs = {w: _start(pg_url, seed, w, 0, tmp_path, keyed=False) for w in range(WRITERS)}
    try:
        deadline = time.monotonic() + DEADLINE
        for proc in procs.values():
            proc.join(max(0.1, deadline - time.monotonic()))
        assert not any(p.is_alive() for p in procs.values()), f"writers did not finish in {DEADLINE}s"
        assert [p.exitcode for p in procs.values()] == [0] * WRITERS
    finally:
        _kill_all(procs)
    time.sleep(0.5)  # backends publish their statistics as they exit
    _check(pg_url, seed, [_read_log(tmp_path / f"w{w}.log", w) for w in range(WRITERS)], deadlocks_before)


def test_bank_with_a_writer_killed_every_second(pg_url: str, tmp_path: Path) -> None:
    seed = random.randrange(1 << 30)
    _setup(pg_url)
    deadlocks_before = _deadlocks(pg_url)
    rnd = random.Random(seed)
    procs = {w: _start(pg_url, seed, w, 0, tmp_path, keyed=True) for w in range(WRITERS)}
    kills = 0
    try:
        deadline = time.monotonic() + DEADLINE
        next_kill = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            finished = {w for w, p in procs.items() if not p.is_alive()}
            for w in finished:
                assert procs[w].exitcode == 0, f"writer {w} failed with exit code {procs[w].exitcode}"
            if len(finished) == WRITERS:
                break
            if time.monotonic() >= next_kill:
                next_kill += 1.0
                victim = rnd.choice(sorted(set(procs) - finished))
                os.kill(procs[victim].pid, signal.SIGKILL)
                procs[victim].join(10)
                assert procs[victim].exitcode == -signal.SIGKILL
                kills += 1
                resume = _read_log(tmp_path / f"w{victim}.log", victim)
                procs[victim] = _start(pg_url, seed, victim, resume.next_index, tmp_path, keyed=True)
            time.sleep(0.02)
        assert all(not p.is_alive() for p in procs.values()), f"writers did not finish in {DEADLINE}s"
    finally:
        _kill_all(procs)
    assert kills >= 5, f"only {kills} kills: the writers finished too fast to test anything"
    time.sleep(0.5)
    _check(pg_url, seed, [_read_log(tmp_path / f"w{w}.log", w) for w in range(WRITERS)], deadlocks_before)
