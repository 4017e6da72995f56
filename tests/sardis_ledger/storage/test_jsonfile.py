"""The JSON-file backend: the seed's inspectable file, crash safety, sharing, segments.

Behaviour every backend shares is in the conformance suite (run with ``-k json``);
this module checks what only the JSON file promises: the file on disk is valid,
complete and in the seed's shape after every acknowledged write, survives
SIGKILL, is shared safely by real processes, and seals old history into
segments that reload to the same ledger.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import select
import signal
import subprocess
import sys
import textwrap
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from mesh_fake_ledger import LedgerConfig, LedgerService
from sardis_ledger import IntegrityError, Ledger, PaymentRequiredError, StorageError
from sardis_ledger.records import AccountRow
from sardis_ledger.storage import open_storage
from sardis_ledger.storage.jsonfile import JSONFileStorage

SEED_ACCOUNT_KEYS = {"balance", "created_at", "meta"}
SEED_TRANSFER_KEYS = {"id", "timestamp", "from_account", "to_account", "amount", "job_id", "note"}


def _no_floats(text: str) -> Any:
    def refuse(value: str) -> Any:
        raise AssertionError(f"a float in the ledger file: {value}")

    return json.loads(text, parse_float=refuse)


def _all_transfers(path: Path) -> list[dict[str, Any]]:
    """Sealed segments in order, then the head's tail: the whole history."""
    doc = _no_floats(path.read_text())
    seg = doc["segments"]
    out: list[dict[str, Any]] = []
    for n in range(1, seg["count"] + 1):
        out += _no_floats((path.parent / seg["directory"] / f"segment-{n:06d}.json").read_text())["transfers"]
    tail: list[dict[str, Any]] = doc["transfers"]
    return out + tail


def _service(path: Path, **kw: Any) -> LedgerService:
    return LedgerService(LedgerConfig(ledger_path=path), ledger=Ledger(storage=JSONFileStorage(path, **kw)))


def test_open_storage_and_ledger_service_use_the_json_backend(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "ledger.json"
    assert isinstance(open_storage(str(path)), JSONFileStorage)
    service = LedgerService(LedgerConfig(ledger_path=path))
    assert isinstance(service.ledger.storage, JSONFileStorage)
    service.create_account_if_missing("alice", initial_balance=100)
    assert json.loads(path.read_text())["accounts"]["alice"]["balance"] == 100


def test_file_is_valid_and_complete_after_every_write(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    service = _service(path, segment_transfers=3)
    service.create_account_if_missing("alice", initial_balance=100)
    service.create_account_if_missing("provider")
    ids: list[str] = []
    for i in range(12):
        if i % 4 == 3:
            ids.append(service.credit("alice", "0.25", reason=f"grant {i}")["id"])
        else:
            ids.append(service.charge("alice", "provider", i + 1, job_id=f"job_{i}")["id"])
        doc = _no_floats(path.read_text())
        for account in ("alice", "provider"):
            assert Decimal(str(doc["accounts"][account]["balance"])) == service.get_balance(account)
        recorded = [t["id"] for t in _all_transfers(path)]
        assert recorded[1:] == ids  # the first record is alice's opening balance
        assert doc["tree_head"]["size"] == service.ledger.tree_head().tree_size
    assert json.loads(path.read_text())["segments"]["count"] >= 3


def test_seed_view_fields(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    service = _service(path)
    service.create_account_if_missing("alice", initial_balance=100)
    service.create_account_if_missing("provider", initial_balance=0)
    charged = service.charge(payer_id="alice", receiver_id="provider", amount=10, job_id="job_123")
    service.charge("alice", "provider", "2.5", job_id="job_124", note="half a job")
    service.credit("alice", 7, reason="Initial grant")
    doc = _no_floats(path.read_text())
    alice, provider = doc["accounts"]["alice"], doc["accounts"]["provider"]
    assert alice.keys() >= SEED_ACCOUNT_KEYS
    assert alice["balance"] == "94.5"
    assert provider["balance"] == "12.5"
    assert alice["meta"] == {}
    assert alice["created_at"].endswith("Z")
    first, second, credit = doc["transfers"][1:]
    assert first.keys() >= SEED_TRANSFER_KEYS
    assert {k: first[k] for k in SEED_TRANSFER_KEYS - {"timestamp"}} == {
        "id": charged["id"], "from_account": "alice", "to_account": "provider", "amount": 10,
        "job_id": "job_123", "note": None,
    }
    assert first["timestamp"] == charged["timestamp"]
    assert first["timestamp"].endswith("Z")
    assert (second["amount"], second["note"]) == ("2.5", "half a job")
    assert (credit["from_account"], credit["to_account"], credit["amount"], credit["note"]) == (
        None, "alice", 7, "Initial grant",
    )
    assert [leg["type"] for leg in first["entries"]] == ["debit", "credit"]
    assert [leg["running_balance"] for leg in second["entries"]] == ["87.5", "12.5"]


def test_reopen_gives_the_same_ledger(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    ledger = Ledger(storage=JSONFileStorage(path, segment_transfers=5), checkpoint_interval=8)
    ledger.create_entry("alice", 1000, "credit", metadata={"source": "grant", "n": [1, 2]})
    batches = ledger.transfer_many([("alice", f"u{i % 4}", f"{i}.5") for i in range(30)])
    ledger.create_batch([
        {"account_id": "alice", "amount": 3, "entry_type": "debit", "reference": "r1"},
        {"account_id": "u1", "amount": 1, "entry_type": "credit", "reference": "r1"},
        {"account_id": "u2", "amount": 2, "entry_type": "credit", "reference": "r1"},
    ], idempotency_key="k-1")
    reversal = ledger.rollback_batch(batches[3].batch_id, reason="refund")
    mid = ledger.tree_head().tree_size // 2
    before = (ledger.verify(), ledger.snapshot(), ledger.snapshot(at=mid), ledger.receipt(5), ledger.root_at(mid))
    ledger.close()

    again = Ledger(storage=JSONFileStorage(path, segment_transfers=5), checkpoint_interval=8)
    after = (again.verify(), again.snapshot(), again.snapshot(at=mid), again.receipt(5), again.root_at(mid))
    assert after == before
    assert after[0].ok
    assert again.reversal_of(batches[3].batch_id) == reversal.batch_id
    replay = again.create_batch([
        {"account_id": "alice", "amount": 3, "entry_type": "debit", "reference": "r1"},
        {"account_id": "u1", "amount": 1, "entry_type": "credit", "reference": "r1"},
        {"account_id": "u2", "amount": 2, "entry_type": "credit", "reference": "r1"},
    ], idempotency_key="k-1")
    assert replay.replayed
    assert again.tree_head().tree_size == before[0].tree_size
    assert again.get_account("alice").metadata == {}
    assert again.list_entries(reference="r1").items[0].metadata == {}
    assert len(list((tmp_path / "ledger.json.d").iterdir())) >= 6


def test_segments_are_sealed_chained_and_immutable(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    ledger = Ledger(storage=JSONFileStorage(path, segment_transfers=4))
    ledger.create_entry("a", 100, "credit")
    seen: dict[str, bytes] = {}
    for _ in range(5):
        ledger.transfer_many([("a", "b", 1)] * 3)
        for seg in sorted((tmp_path / "ledger.json.d").glob("segment-*.json")):
            data = seg.read_bytes()
            assert seen.setdefault(seg.name, data) == data, f"{seg.name} was rewritten"
    doc = json.loads(path.read_text())
    count = doc["segments"]["count"]
    assert count == len(seen) == 4
    assert len(doc["transfers"]) == 16 - 4 * 4
    previous = None
    for n in range(1, count + 1):
        data = seen[f"segment-{n:06d}.json"]
        seg = json.loads(data)
        assert (seg["segment"], seg["previous_sha256"], seg["ledger_id"]) == (n, previous, doc["ledger_id"])
        assert len(seg["transfers"]) == 4
        previous = hashlib.sha256(data).hexdigest()
    assert doc["segments"]["last_sha256"] == previous


def test_a_second_instance_reloads_incrementally(tmp_path: Path) -> None:
    """Two storages on one file behave like two processes (flock is per open file)."""
    path = tmp_path / "ledger.json"
    one = Ledger(storage=JSONFileStorage(path, segment_transfers=3))
    two = Ledger(storage=JSONFileStorage(path, segment_transfers=3))
    one.create_entry("a", 50, "credit")
    for i in range(20):
        writer, reader = (one, two) if i % 3 else (two, one)
        writer.transfer("a", "b", 1)
        assert reader.get_balance("b") == i + 1
        assert reader.tree_head() == writer.tree_head()
    assert one.verify() == two.verify()
    assert one.verify().ok


def test_failed_transaction_leaves_memory_and_disk_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ledger.json"
    storage = JSONFileStorage(path, segment_transfers=2)
    ledger = Ledger(storage=storage)
    ledger.create_entry("alice", 10, "credit")
    ledger.transfer("alice", "bob", 1)
    disk = path.read_bytes()
    state = (ledger.verify(), ledger.snapshot(), ledger.list_accounts(), ledger.tree_head())

    with pytest.raises(PaymentRequiredError.__mro__[1]):  # InsufficientBalanceError
        ledger.transfer_many([("alice", "carol", 2), ("alice", "dave", 100)])

    class Boom(Exception):
        pass

    def write_then_fail() -> None:
        with storage.transaction(write=True) as tx:
            tx.insert_asset("GOLD", 2)
            tx.insert_accounts([AccountRow("zed", "TOKEN", 0, 0, "{}", "2030-01-01T00:00:00.000000Z")])
            tx.update_balances({"alice": 5, "zed": 5})
            tx.set_head(tx.head())
            raise Boom

    with pytest.raises(Boom):
        write_then_fail()
    assert path.read_bytes() == disk
    assert (ledger.verify(), ledger.snapshot(), ledger.list_accounts(), ledger.tree_head()) == state
    with storage.transaction(write=False) as tx:
        assert "GOLD" not in tx.assets()

    # A commit that fails before the head is replaced: same guarantee, and the next write works.
    def failing_replace(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", failing_replace)
        with pytest.raises(StorageError, match="No space left"):
            ledger.transfer_many([("alice", "bob", 1)] * 3)  # would also seal a segment
    assert path.read_bytes() == disk
    assert (ledger.verify(), ledger.snapshot(), ledger.list_accounts(), ledger.tree_head()) == state
    ledger.transfer("alice", "bob", 1)
    assert ledger.get_balance("bob") == 2
    assert ledger.verify().ok


def test_tampering_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    ledger = Ledger(storage=JSONFileStorage(path, segment_transfers=2))
    ledger.create_entry("a", 10, "credit")
    for _ in range(4):
        ledger.transfer("a", "b", 1)
    ledger.close()
    text = path.read_text()
    last = text.rindex('"amount": 1,')
    path.write_text(text[:last] + '"amount": 2,' + text[last + len('"amount": 1,'):])
    report = Ledger(storage=JSONFileStorage(path, segment_transfers=2)).verify()
    assert not report.ok
    assert report.first_bad_sequence is not None

    path.write_text(text)
    seg = tmp_path / "ledger.json.d" / "segment-000001.json"
    seg.write_text(seg.read_text().replace('"amount": 10', '"amount": 11', 1))
    with pytest.raises(IntegrityError, match="segment"):
        JSONFileStorage(path)


def test_foreign_or_empty_files(tmp_path: Path) -> None:
    legacy = tmp_path / "legacy.json"
    legacy.write_text(json.dumps({"accounts": {"alice": {"balance": 90}}, "transfers": []}))
    with pytest.raises(StorageError, match="not a sardis ledger JSON file"):
        JSONFileStorage(legacy)
    assert json.loads(legacy.read_text())["accounts"]["alice"]["balance"] == 90  # untouched
    for name, content in (("empty.json", ""), ("braces.json", "{}")):
        (tmp_path / name).write_text(content)
        ledger = Ledger(storage=JSONFileStorage(tmp_path / name))
        ledger.create_entry("a", 1, "credit")
        assert json.loads((tmp_path / name).read_text())["accounts"]["a"]["balance"] == 1


# ---------------------------------------------------------------------------
# real processes

_CHILD = textwrap.dedent("""
    import sys
    from pathlib import Path
    from mesh_fake_ledger import LedgerConfig, LedgerService
    from sardis_ledger import Ledger, PaymentRequiredError
    from sardis_ledger.storage.jsonfile import JSONFileStorage

    path, tag, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    service = LedgerService(LedgerConfig(ledger_path=path),
                            ledger=Ledger(storage=JSONFileStorage(path, segment_transfers=int(sys.argv[4]))))
    print("ready", flush=True)
    sys.stdin.readline()  # start together, so writes really contend
    for i in range(count):
        try:
            record = service.charge("alice", "provider", 1, job_id=f"{tag}-{i}")
        except PaymentRequiredError:
            print("refused", flush=True)
            continue
        print("ack", record["id"], flush=True)
""")


class _Child:
    """A child process whose stdout is read unbuffered, line by line, with a
    deadline (a buffered reader would hide lines from ``select``)."""

    def __init__(self, path: Path, tag: str, count: int, segment: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(path), tag, str(count), str(segment)],
            stdout=subprocess.PIPE, stdin=subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        self.fd = self.proc.stdout.fileno()
        self.buf = b""
        self.eof = False

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.flush()

    def line(self, deadline: float) -> str | None:
        """The next line, or None at end of output."""
        while b"\n" not in self.buf and not self.eof:
            ready, _, _ = select.select([self.fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise AssertionError("child process did not answer in time")
            chunk = os.read(self.fd, 65536)
            self.buf += chunk
            self.eof = not chunk
        if b"\n" not in self.buf:
            return None
        text, self.buf = self.buf.split(b"\n", 1)
        return text.decode()

    def rest(self, deadline: float) -> list[str]:
        out = []
        while (line := self.line(deadline)) is not None:
            out.append(line)
        return out

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        for stream in (self.proc.stdout, self.proc.stdin):
            if stream is not None:
                stream.close()


def test_sigkill_mid_write_keeps_every_acknowledged_transfer(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    setup = _service(path, segment_transfers=5)
    setup.create_account_if_missing("alice", initial_balance=1_000_000)
    setup.create_account_if_missing("provider")
    acked: list[str] = []
    rng = random.Random(7)
    for round_ in range(4):
        child = _Child(path, f"r{round_}", 100_000, 5)
        deadline = time.monotonic() + 60
        try:
            assert child.line(deadline) == "ready"
            child.go()
            target = len(acked) + rng.randint(5, 25)
            while len(acked) < target:
                line = child.line(deadline)
                assert (line or "").startswith("ack "), line
                assert line is not None
                acked.append(line.split()[1])
            time.sleep(rng.random() * 0.01)  # land somewhere inside a later write
            os.kill(child.proc.pid, signal.SIGKILL)
            child.proc.wait(timeout=30)
            acked += [ln.split()[1] for ln in child.rest(deadline) if ln.startswith("ack ")]
            assert child.proc.returncode == -signal.SIGKILL
        finally:
            child.close()
        doc = json.loads(path.read_text())  # valid and complete, whatever the kill interrupted
        recorded = {t["id"] for t in _all_transfers(path)}
        assert set(acked) <= recorded
        reopened = Ledger(storage=JSONFileStorage(path, segment_transfers=5))
        assert reopened.verify().ok
        assert reopened.get_balance("provider") == len(recorded) - 1 == doc["accounts"]["provider"]["balance"]
        reopened.close()
    assert json.loads(path.read_text())["segments"]["count"] > 0


def test_processes_sharing_one_file_never_overspend_or_lose_updates(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    setup = _service(path, segment_transfers=16)
    setup.create_account_if_missing("alice", initial_balance=100)
    setup.create_account_if_missing("provider")
    children = [_Child(path, f"p{n}", 50, 16) for n in range(3)]  # 150 attempts at 1 token, 100 available
    acked: list[str] = []
    refused = 0
    try:
        deadline = time.monotonic() + 90
        for child in children:
            assert child.line(deadline) == "ready"
        for child in children:
            child.go()
        per_child = []
        for child in children:
            lines = child.rest(deadline)
            assert child.proc.wait(timeout=30) == 0
            per_child.append(sum(ln.startswith("ack ") for ln in lines))
            acked += [ln.split()[1] for ln in lines if ln.startswith("ack ")]
            refused += lines.count("refused")
    finally:
        for child in children:
            child.close()
    assert (len(acked), refused) == (100, 50)
    assert all(n > 0 for n in per_child), per_child  # every process got some writes in
    assert len(set(acked)) == 100
    assert set(acked) <= {t["id"] for t in _all_transfers(path)}
    final = _service(path)
    assert (final.get_balance("alice"), final.get_balance("provider")) == (Decimal(0), Decimal(100))
    assert final.ledger.verify().ok
