"""The audit commands: verify (exit 0 intact, 3 tampered, naming the entry),
tree-head as a remembering client, prove and consistency checked offline."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mesh_fake_ledger import audit_cli
from sardis_ledger import Ledger, verifier


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.db"
    with Ledger(f"sqlite:///{path}") as led:
        led.create_entry("alice", 100, "credit")
        led.transfer("alice", "bob", 30, reference="job-1")
        led.transfer("bob", "carol", 4)
    return path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = audit_cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_verify_intact_then_tampered(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "verify", "--ledger", str(db))
    assert code == 0
    assert out.startswith("OK: 5 entries verified")
    code, out, _ = run(capsys, "verify", "--ledger", str(db), "--json")
    assert code == 0
    assert json.loads(out)["ok"] is True
    raw = sqlite3.connect(db, isolation_level=None)
    raw.execute("DROP TRIGGER entries_no_update")
    raw.execute("""UPDATE entries SET metadata = '{"note":"x"}' WHERE seq = 3""")
    raw.close()
    code, out, _ = run(capsys, "verify", "--ledger", str(db))
    assert code == audit_cli.EXIT_TAMPERED == 3
    assert "TAMPERED: first bad entry: 4" in out
    code, out, _ = run(capsys, "verify", "--ledger", str(db), "--json", "--no-progress")
    assert code == 3
    report = json.loads(out)
    assert report["first_bad_sequence"] == 4
    assert any("entry 4" in p for p in report["problems"])


def test_tree_head_as_a_client_refuses_a_rollback(db: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    held = tmp_path / "held.json"
    shutil.copy(db, tmp_path / "old.db")
    code, out, _ = run(capsys, "tree-head", "--ledger", str(db), "--tracker", str(held), "--json")
    assert code == 0
    assert json.loads(out)["tree_size"] == 5
    with Ledger(f"sqlite:///{db}") as led:
        led.transfer("alice", "dave", 1)
    code, out, _ = run(capsys, "tree-head", "--ledger", str(db), "--tracker", str(held))
    assert code == 0
    assert "consistent with the kept head of size 5" in out
    # the store rolls back; the server lost its heads log too, so only the client can tell
    shutil.copy(tmp_path / "old.db", db)
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    shutil.rmtree(tmp_path / "keys" / "heads")
    code, _, err = run(capsys, "tree-head", "--ledger", str(db), "--tracker", str(held))
    assert code == 3
    assert "rolled back" in err


def test_prove_and_consistency(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "prove", "2", "--ledger", str(db), "--tree-size", "3")
    assert code == 0
    assert "entry 2" in out
    assert "verified offline" in out
    with Ledger(f"sqlite:///{db}") as led:
        transfer = led.list_entries(since=4, until=4).items[0].batch_id
    code, out, _ = run(capsys, "prove", transfer, "--ledger", str(db), "--json")
    assert code == 0
    bundle = json.loads(out)
    keys = verifier.load_public_keys(json.loads(run(capsys, "keys", "--ledger", str(db), "--json")[1]))
    assert [e.sequence for e in verifier.verify_inclusion_bundle(bundle, keys)] == [4, 5]
    code, out, _ = run(capsys, "consistency", "2", "5", "--ledger", str(db), "--json")
    assert code == 0
    body = json.loads(out)
    verifier.verify_consistency(2, 5, bytes.fromhex(body["old_root"]), bytes.fromhex(body["new_root"]),
                                [bytes.fromhex(p) for p in body["proof"]])


@pytest.mark.parametrize(("args", "code", "words"), [
    (["prove", "99"], 2, "does not exist"),
    (["prove", "1", "--tree-size", "0"], 2, "tree size"),
    (["consistency", "4", "2"], 2, "OLD <= NEW"),
    (["consistency", "1", "99"], 2, "sizes"),
    (["prove", "no-such-transfer"], 1, "does not exist"),  # unknown id: refused, like an unknown account
])
def test_bad_input_is_a_clear_error(db: Path, capsys: pytest.CaptureFixture[str], args: list[str], code: int,
                                    words: str) -> None:
    got, out, err = run(capsys, *args, "--ledger", str(db))
    assert got == code
    assert words in err
    assert "Traceback" not in err + out


def test_key_rotation_from_the_cli(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = json.loads(run(capsys, "keys", "--ledger", str(db), "--json")[1])
    run(capsys, "tree-head", "--ledger", str(db))
    code, out, _ = run(capsys, "keys", "--rotate", "--ledger", str(db), "--json")
    assert code == 0
    rotated = json.loads(out)
    assert rotated["current"] != first["current"]
    assert len(rotated["keys"]) == 2
    assert run(capsys, "verify", "--ledger", str(db))[0] == 0  # heads signed by the old key still check


def test_joins_the_main_cli_in_a_real_process(db: Path) -> None:
    """The lead's one-liner (``add_commands(audit_cli.app)``), with the progress bar forced."""
    script = textwrap.dedent("""
        import sys
        from mesh_fake_ledger import audit_cli, cli
        cli.add_commands(audit_cli.app)
        raise SystemExit(cli.main(sys.argv[1:]))
    """)
    proc = subprocess.run([sys.executable, "-c", script, "--ledger", str(db), "verify", "--progress"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "OK: 5 entries verified" in proc.stdout
    proc = subprocess.run([sys.executable, "-c", script, "prove", "x" * 300, "--ledger", str(db), "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert json.loads(proc.stdout)["error"] == "invalid_request"
    assert "Traceback" not in proc.stderr
