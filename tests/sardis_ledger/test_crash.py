"""kill -9 in the middle of writing: nothing acknowledged is lost, no batch is partial.

A child process appends batches (single commits and 100-batch commits) as fast as
it can and reports each batch id on its stdout only after the write returned.
The test kills it with SIGKILL at a random moment, several times over the same
database, and then audits: every acknowledged batch is there in full, every
batch in the store is whole, and the log verifies.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest

from sardis_ledger import Ledger

WORKERS = Path(__file__).with_name("engine_workers.py")


def _run_and_kill(url: str, after_acks: int) -> dict[str, int]:
    """Start a writer, SIGKILL it once it has acknowledged ``after_acks`` batches,
    and return every batch it acknowledged (including lines still in the pipe)."""
    proc = subprocess.Popen(
        [sys.executable, str(WORKERS), "write", url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    watchdog = threading.Timer(120, proc.kill)  # a hung child must not hang the test
    watchdog.start()
    acked: dict[str, int] = {}
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # ends when the child dies
            if line.endswith("\n") and line.startswith("ack "):
                _, batch_id, legs = line.split()
                acked[batch_id] = int(legs)
            if len(acked) >= after_acks and proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                break
        rest = proc.communicate(timeout=60)[0]  # acknowledged before the kill landed
        for line in rest.splitlines(keepends=True):
            if line.endswith("\n") and line.startswith("ack "):
                _, batch_id, legs = line.split()
                acked[batch_id] = int(legs)
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read() if proc.stderr else proc.returncode
    return acked


@pytest.mark.slow
def test_sigkill_mid_write_keeps_every_acknowledged_batch_whole(durable_url: str) -> None:
    rng = random.Random()
    acked: dict[str, int] = {}
    for _ in range(4):
        acked.update(_run_and_kill(durable_url, rng.randint(1, 120)))
        with Ledger(durable_url) as ledger:
            report = ledger.verify()
            assert report.ok, report.problems
            for batch_id, legs in acked.items():
                batch = ledger.get_batch(batch_id)
                assert len(batch.entries) == legs, f"acknowledged batch {batch_id} lost entries"
            per_batch: Counter[str] = Counter()
            cursor = None
            for _ in range(100_000):
                page = ledger.list_entries(cursor=cursor, limit=1000)
                per_batch.update(e.batch_id for e in page.items)
                if page.next_cursor is None:
                    break
                cursor = page.next_cursor
            assert sum(per_batch.values()) == report.tree_size
            for batch_id, count in per_batch.items():
                assert 2 <= count <= 6
                assert len(ledger.get_batch(batch_id).entries) == count, f"batch {batch_id} is partial"
            assert set(acked) <= set(per_batch)
