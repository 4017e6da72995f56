"""JSON backend review: reloads interrupted mid-way and processes that fork after opening."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sardis_ledger import Ledger
from sardis_ledger.storage import _json_index
from sardis_ledger.storage.jsonfile import JSONFileStorage


@pytest.mark.parametrize("transfers", [1, 4])
def test_json_reload_interrupted_midway_leaves_no_half_loaded_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, transfers: int
) -> None:
    """A KeyboardInterrupt while another process's records are being indexed must not
    leave a record half in memory (entries without their Merkle nodes): that reported a
    valid file as corrupt, or made every later write fail with IntegrityError."""
    path = tmp_path / "ledger.json"
    one = Ledger(storage=JSONFileStorage(path, segment_transfers=3))
    two = Ledger(storage=JSONFileStorage(path, segment_transfers=3))
    one.create_entry("a", 50, "credit")
    assert two.get_balance("a") == 50
    for _ in range(transfers):
        one.transfer("a", "b", 1)

    real_add_node = _json_index.Index.add_node
    calls = []

    def interrupted(self: _json_index.Index, level: int, index: int, digest: bytes) -> None:
        calls.append((level, index))
        if len(calls) == 1:
            raise KeyboardInterrupt
        real_add_node(self, level, index, digest)

    with monkeypatch.context() as patch:
        patch.setattr(_json_index.Index, "add_node", interrupted)
        with pytest.raises(KeyboardInterrupt):
            two.get_balance("b")

    assert two.get_balance("b") == transfers
    two.transfer("a", "b", 1)
    assert one.get_balance("b") == transfers + 1
    assert two.verify().ok
    assert one.verify().ok


def test_json_process_that_forks_after_opening_can_write_in_the_child(tmp_path: Path) -> None:
    """A prefork server (or multiprocessing with fork) opens the ledger, then forks:
    the child inherited a file lock that filelock refuses to use, so every write in
    the child failed with a bare RuntimeError."""
    path = tmp_path / "ledger.json"
    ledger = Ledger(storage=JSONFileStorage(path, segment_transfers=3))
    ledger.create_entry("a", 100, "credit")
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            for _ in range(5):
                ledger.transfer("a", "child", 1)
            code = 0
        finally:
            os._exit(code)
    for _ in range(5):
        ledger.transfer("a", "parent", 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert ledger.get_balance("child") == 5
    assert ledger.get_balance("parent") == 5
    assert ledger.get_balance("a") == 90
    assert ledger.verify().ok


def test_json_interrupt_between_body_and_commit_leaves_no_phantom_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A KeyboardInterrupt that lands after the transaction body but before the commit
    (here: while checking whether anything changed) left the uncommitted rows in memory
    with the old generation, so the next write published a head whose tree size counted
    entries no file held, and the ledger no longer opened."""
    path = tmp_path / "ledger.json"
    ledger = Ledger(storage=JSONFileStorage(path))
    ledger.create_entry("a", 10, "credit")

    real_mark = _json_index.Index.mark
    calls = []

    def interrupted(self: _json_index.Index) -> _json_index.Mark:
        calls.append(1)
        if len(calls) == 2:  # the first call starts the undo log, the second follows the body
            raise KeyboardInterrupt
        return real_mark(self)

    with monkeypatch.context() as patch:
        patch.setattr(_json_index.Index, "mark", interrupted)
        with pytest.raises(KeyboardInterrupt):
            ledger.transfer("a", "b", 3)

    assert ledger.get_balance("a") == 10
    ledger.transfer("a", "b", 1)
    reopened = Ledger(storage=JSONFileStorage(path))
    assert reopened.get_balance("b") == 1
    assert reopened.verify().ok
