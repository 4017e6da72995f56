"""The CLI as users run it: ``python -m mesh_fake_ledger ...`` in a real subprocess.

Each test checks the exit code (0 success, 1 refusal, 2 usage, 3 failure), what
reached stdout/stderr, and, for refused or malformed input, that the ledger did
not change. No run may print a traceback. State is read back in-process through
``LedgerService`` (cheap) rather than by spawning more CLI processes.

Every command runs in real subprocesses; the large matrices of bad input call
:func:`mesh_fake_ledger.cli.main` in this process (the same code path minus the
interpreter start, which costs ~0.5 s a run on a loaded machine), with a few of
the same cases repeated through a real process to show the boundary adds nothing.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mesh_fake_ledger import LedgerConfig, LedgerService
from mesh_fake_ledger.cli import main

COMMANDS = ["create-account", "balance", "transfer", "history", "list-accounts", "credit", "serve", "demo"]
OK, REFUSED, USAGE, FAILURE = 0, 1, 2, 3


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_") and k != "COLUMNS"}
    env.update(extra)
    return env


def cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, expect: int | None = OK, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the CLI; assert the exit code (unless ``expect`` is None) and no traceback."""
    proc = subprocess.run(
        [sys.executable, "-m", "mesh_fake_ledger", *args],
        cwd=cwd,
        env=env if env is not None else _env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stdout, proc.stdout
    if expect is not None:
        assert proc.returncode == expect, (
            f"{args}: exit {proc.returncode}, expected {expect}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


Run = Callable[..., Result]


@pytest.fixture
def inproc(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> Run:
    """``main(argv)`` in this process, in ``tmp_path`` with no LEDGER_* settings."""
    monkeypatch.chdir(tmp_path)
    for name in [k for k in os.environ if k.startswith("LEDGER_")]:
        monkeypatch.delenv(name)

    def run(*args: str, env: dict[str, str] | None = None, expect: int | None = OK) -> Result:
        for key, value in (env or {}).items():
            monkeypatch.setenv(key, value)
        capsys.readouterr()
        code = main(list(args), prog_name="mesh-ledger")
        out, err = capsys.readouterr()
        assert "Traceback" not in out + err, err
        if expect is not None:
            assert code == expect, f"{args}: exit {code}, expected {expect}\nstdout:\n{out}\nstderr:\n{err}"
        return Result(code, out, err)

    return run


def error_line(proc: subprocess.CompletedProcess[str] | Result) -> str:
    """The one line of error a failed command must print on stderr."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "error:" in lines[0]
    return lines[0]


def state(url: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    service = LedgerService(LedgerConfig(database_url=url))
    try:
        return service.list_accounts(), service.get_transfers(limit=10_000)
    finally:
        service.close()


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


@pytest.fixture
def funded(url: str) -> str:
    """A ledger with alice (100) and provider (0), made in-process."""
    service = LedgerService(LedgerConfig(database_url=url))
    service.create_account("alice", initial_balance=100)
    service.create_account("provider")
    service.close()
    return url


def balances(url: str) -> dict[str, Any]:
    return {a["id"]: a["balance"] for a in state(url)[0]}


# ------------------------------------------------------------------------ help


def test_help(tmp_path: Path) -> None:
    out = cli("--help", cwd=tmp_path, env=_env(COLUMNS="200")).stdout
    assert "Usage:" in out
    for name in COMMANDS:
        assert name in out
    assert "Exit codes" in out
    assert "transfer" in cli("transfer", "--help", cwd=tmp_path, env=_env(COLUMNS="200")).stdout
    assert not list(tmp_path.iterdir()), "help must not create a ledger"


@pytest.mark.parametrize("command", COMMANDS)
def test_help_on_every_command(command: str, inproc: Run, tmp_path: Path) -> None:
    out = inproc(command, "--help", env={"COLUMNS": "200"}).stdout
    assert f"Usage: mesh-ledger {command}" in out
    assert "--ledger" in out
    assert "--database-url" in out
    assert not list(tmp_path.iterdir()), "help must not create a ledger"


def test_no_arguments_is_usage_error_with_help(tmp_path: Path) -> None:
    proc = cli(cwd=tmp_path, expect=USAGE)
    assert "Usage:" in proc.stdout + proc.stderr


def test_version(tmp_path: Path) -> None:
    assert re.fullmatch(r"mesh-ledger \d+\.\d+\.\d+\S*\n", cli("--version", cwd=tmp_path).stdout)


# ------------------------------------------------------------ the seed's flows


def test_seed_manual_cli_sequence(tmp_path: Path) -> None:
    """The seed's "Manual CLI Testing" block as written (storage from the environment)."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    env = _env(LEDGER_DATABASE_URL=url)
    cli("create-account", "alice", "--balance", "100", cwd=tmp_path, env=env)
    cli("create-account", "bob", "--balance", "50", cwd=tmp_path, env=env)
    cli("create-account", "provider", "--balance", "0", cwd=tmp_path, env=env)
    cli("transfer", "alice", "provider", "10", cwd=tmp_path, env=env)
    cli("transfer", "bob", "provider", "5", cwd=tmp_path, env=env)
    listing = cli("list-accounts", cwd=tmp_path, env=env).stdout
    rows = {m[0]: m[1] for m in re.findall(r"│ (\w+)\s+│\s+(\d+) │", listing)}
    assert rows == {"alice": "90", "bob": "45", "provider": "15"}, listing
    hist = cli("history", cwd=tmp_path, env=env).stdout
    assert hist.count("provider") == 2
    assert "(opening)" in hist
    refused = cli("transfer", "alice", "provider", "1000", cwd=tmp_path, env=env, expect=REFUSED)
    assert "payment required" in error_line(refused)
    assert "1000" in refused.stderr
    assert "90" in refused.stderr
    assert balances(url) == {"alice": 90, "bob": 45, "provider": 15}


def test_seed_cli_usage_block(funded: str, tmp_path: Path) -> None:
    """The seed's "CLI Usage" commands after the accounts exist, with --database-url after."""
    db = ["--database-url", funded]
    assert cli("balance", "alice", *db, cwd=tmp_path).stdout.strip() == "alice: 100"
    out = cli("transfer", "alice", "provider", "10", "--job-id", "job_123", *db, cwd=tmp_path).stdout
    assert "Transferred 10 from alice to provider (job job_123)" in out
    assert "job_123" in cli("history", "--limit", "10", *db, cwd=tmp_path).stdout
    assert "job_123" in cli("history", "--account", "alice", "--limit", "5", *db, cwd=tmp_path).stdout
    assert "alice" in cli("list-accounts", *db, cwd=tmp_path).stdout
    out = cli("credit", "alice", "50", "--reason", "Initial grant", *db, cwd=tmp_path).stdout
    assert "Credited 50 to alice: Initial grant" in out
    assert "Balance of alice: 140" in out
    assert balances(funded) == {"alice": 140, "provider": 10}


def test_ledger_path_option_and_environment(tmp_path: Path) -> None:
    """``--ledger`` names the file (a .db path is SQLite); ``LEDGER_PATH`` is its default."""
    cli("create-account", "alice", "--balance", "7", "--ledger", "mine.db", cwd=tmp_path)
    assert (tmp_path / "mine.db").exists()
    assert "alice: 7" in cli("balance", "alice", cwd=tmp_path, env=_env(LEDGER_PATH="mine.db")).stdout
    # an explicit --ledger wins over LEDGER_DATABASE_URL: the user named this ledger
    other = _env(LEDGER_DATABASE_URL=f"sqlite:///{tmp_path / 'other.db'}")
    assert "alice: 7" in cli("--ledger", "mine.db", "balance", "alice", cwd=tmp_path, env=other).stdout


def test_json_ledger_file(tmp_path: Path) -> None:
    """The seed's default: an inspectable ``ledger.json`` in the working directory."""
    cli("create-account", "alice", "--balance", "100", cwd=tmp_path)
    cli("create-account", "provider", cwd=tmp_path)
    cli("transfer", "alice", "provider", "10", "--job-id", "job_123", cwd=tmp_path)
    doc = json.loads((tmp_path / "ledger.json").read_text())
    assert doc["accounts"]["alice"]["balance"] == 90
    assert doc["transfers"][-1]["job_id"] == "job_123"
    cli("credit", "alice", "5", "--ledger", str(tmp_path / "custom_ledger.json"), cwd=tmp_path, expect=REFUSED)


# ----------------------------------------------------------------------- JSON


def test_json_output_of_every_command(url: str, tmp_path: Path) -> None:
    db = ["--database-url", url, "--json"]
    created = json.loads(cli("create-account", "alice", "--balance", "100.5", *db, cwd=tmp_path).stdout)
    assert created["id"] == "alice"
    assert created["balance"] == "100.5"
    json.loads(cli("create-account", "provider", *db, cwd=tmp_path).stdout)
    record = json.loads(
        cli("transfer", "alice", "provider", "0.25", "--job-id", "j1", "--note", "GPU", *db, cwd=tmp_path).stdout
    )
    assert record["from_account"] == "alice"
    assert record["to_account"] == "provider"
    assert record["amount"] == "0.25"
    assert record["job_id"] == "j1"
    assert record["note"] == "GPU"
    assert json.loads(cli("balance", "alice", *db, cwd=tmp_path).stdout) == {"account_id": "alice", "balance": "100.25"}
    credited = json.loads(cli("credit", "provider", "1.000001", "--reason", "bonus", *db, cwd=tmp_path).stdout)
    assert credited["to_account"] == "provider"
    assert credited["amount"] == "1.000001"
    assert credited["balance"] == "1.250001"
    assert credited["note"] == "bonus"
    hist = json.loads(cli("history", *db, cwd=tmp_path).stdout)
    assert [h["amount"] for h in hist] == ["1.000001", "0.25", "100.5"]
    assert hist[1]["id"] == record["id"]
    accounts = json.loads(cli("list-accounts", *db, cwd=tmp_path).stdout)
    assert {a["id"]: a["balance"] for a in accounts} == {"alice": "100.25", "provider": "1.250001"}


def test_options_before_or_after_the_command(funded: str, tmp_path: Path) -> None:
    before = cli("--database-url", funded, "--json", "balance", "alice", cwd=tmp_path).stdout
    after = cli("balance", "alice", "--json", "--database-url", funded, cwd=tmp_path).stdout
    assert json.loads(before) == json.loads(after) == {"account_id": "alice", "balance": 100}


def test_tables_fold_long_ids_instead_of_hiding_them(url: str, tmp_path: Path) -> None:
    long_id = "acct_" + "x" * 90
    cli("create-account", long_id, "--balance", "3", "--database-url", url, cwd=tmp_path)
    out = cli("list-accounts", "--database-url", url, cwd=tmp_path, env=_env(COLUMNS="60")).stdout
    assert "…" not in out
    first_column = "".join(line.split("│")[1].strip() for line in out.splitlines() if line.count("│") == 4)
    assert long_id in first_column


def test_user_text_is_shown_literally_not_as_markup(funded: str, tmp_path: Path) -> None:
    out = cli(
        "transfer", "alice", "provider", "1", "--note", "[bold red]free[/] tokens", "--database-url", funded,
        cwd=tmp_path,
    ).stdout
    assert "[bold red]free[/] tokens" in out


# ------------------------------------------------------------------ refusals


def test_refusal_insufficient_balance_json_body(funded: str, tmp_path: Path) -> None:
    proc = cli("transfer", "alice", "provider", "1000", "--database-url", funded, "--json", cwd=tmp_path, expect=1)
    assert json.loads(proc.stdout) == {
        "error": "payment_required",
        "message": "payment required: 1000 tokens, account 'alice' has 100",
        "required_tokens": 1000,
        "current_balance": 100,
        "account_id": "alice",
    }
    error_line(proc)
    assert balances(funded) == {"alice": 100, "provider": 0}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["balance", "nobody"], "account 'nobody' does not exist"),
        (["transfer", "alice", "nobody", "1"], "account 'nobody' does not exist"),
        (["transfer", "nobody", "alice", "1"], "account 'nobody' does not exist"),
        (["credit", "nobody", "1"], "account 'nobody' does not exist"),
        (["history", "--account", "nobody"], "account 'nobody' does not exist"),
        (["create-account", "alice"], "alice"),
    ],
    ids=["balance", "transfer-to", "transfer-from", "credit", "history", "create-existing"],
)
def test_refusals_exit_1_and_change_nothing(args: list[str], message: str, funded: str, inproc: Run) -> None:
    before = state(funded)
    proc = inproc(*args, "--database-url", funded, expect=REFUSED)
    assert message in error_line(proc)
    assert state(funded) == before


def test_job_id_makes_a_retry_idempotent_and_a_conflict_a_refusal(funded: str, tmp_path: Path) -> None:
    db = ["--database-url", funded, "--json"]
    first = json.loads(cli("transfer", "alice", "provider", "10", "--job-id", "job_9", *db, cwd=tmp_path).stdout)
    again = json.loads(cli("transfer", "alice", "provider", "10", "--job-id", "job_9", *db, cwd=tmp_path).stdout)
    assert again["id"] == first["id"]
    assert balances(funded) == {"alice": 90, "provider": 10}
    proc = cli("transfer", "alice", "provider", "11", "--job-id", "job_9", *db, cwd=tmp_path, expect=REFUSED)
    assert json.loads(proc.stdout)["error"] == "idempotency_conflict"
    assert balances(funded) == {"alice": 90, "provider": 10}


# --------------------------------------------------------------- usage errors

BAD_AMOUNTS = ["-5", "0", "NaN", "inf", "-inf", "1e400", "0.30000000000000004", "abc", "", "1,5", "0x10"]
BAD_IDS = ["../x", "a;DROP", "x" * 5000, "", " alice", "hold:alice", "alice\nbob"]


@pytest.mark.parametrize("amount", BAD_AMOUNTS)
def test_bad_transfer_amount_is_usage_error(amount: str, funded: str, inproc: Run) -> None:
    before = state(funded)
    proc = inproc("transfer", "alice", "provider", amount, "--database-url", funded, expect=USAGE)
    assert "amount" in error_line(proc)
    assert state(funded) == before


@pytest.mark.parametrize("account", BAD_IDS, ids=lambda a: repr(a[:12]))
def test_bad_account_id_is_usage_error(account: str, funded: str, inproc: Run) -> None:
    before = state(funded)
    proc = inproc("credit", account, "5", "--database-url", funded, expect=USAGE)
    line = error_line(proc)
    assert "account" in line
    assert len(line) < 300
    assert state(funded) == before


@pytest.mark.parametrize(
    "args",
    [
        ["create-account", "a;DROP"],
        ["create-account", "alice", "--balance", "-1"],
        ["create-account", "alice", "--balance", "1e400"],
        ["create-account", "alice", "--balance", "NaN"],
        ["credit", "alice", "inf"],
        ["transfer", "alice", "../x", "1"],
        ["balance", "../x"],
    ],
    ids=["create-bad-id", "create-negative", "create-huge", "create-nan", "credit-inf", "transfer-bad-id", "balance"],
)
def test_usage_errors_never_create_the_ledger(args: list[str], inproc: Run, tmp_path: Path) -> None:
    target = tmp_path / "fresh.db"
    error_line(inproc(*args, "--database-url", f"sqlite:///{target}", expect=USAGE))
    assert not target.exists()


@pytest.mark.parametrize(
    "args",
    [
        ["history", "--limit", "0"],
        ["history", "--limit", "abc"],
        ["history", "--limit", "10001"],
        ["transfer", "alice", "provider"],
        ["transfer", "alice", "provider", "5", "--bogus"],
        ["frobnicate"],
        ["balance", "alice", "--ledger", "x.db", "--database-url", "sqlite:///y.db"],
        ["balance", "alice", "--database-url", "ftp://example.org/ledger"],
        ["transfer", "alice", "provider", "1", "--note", "x" * 300],
        ["serve", "--port", "70000"],
        ["serve", "--workers", "0"],
    ],
    ids=[
        "limit-0", "limit-abc", "limit-huge", "missing-amount", "unknown-option", "unknown-command",
        "both-storages", "unsupported-url", "note-too-long", "serve-port", "serve-workers",
    ],
)
def test_usage_errors_exit_2_with_one_line(args: list[str], funded: str, inproc: Run) -> None:
    before = state(funded)
    error_line(inproc(*args, env={"LEDGER_DATABASE_URL": funded}, expect=USAGE))
    assert state(funded) == before


@pytest.mark.parametrize("balance", ["0.30000000000000004", "1e15", "0.0000001"])
def test_refused_initial_balance_creates_no_account(balance: str, funded: str, inproc: Run) -> None:
    before = state(funded)
    line = error_line(inproc("create-account", "bob", "--balance", balance, "--database-url", funded, expect=USAGE))
    assert "balance" in line
    assert state(funded) == before


@pytest.mark.parametrize(
    ("args", "expect", "message"),
    [
        (["transfer", "alice", "provider", "-5"], USAGE, "-5"),
        (["transfer", "alice", "provider", "NaN"], USAGE, "NaN"),
        (["credit", "a;DROP", "5"], USAGE, "'a;DROP' is not valid"),
        (["transfer", "alice", "provider"], USAGE, "Missing argument"),
        (["balance", "nobody"], REFUSED, "'nobody' does not exist"),
    ],
    ids=["negative", "nan", "hostile-id", "missing-argument", "unknown-account"],
)
def test_errors_through_a_real_process(
    args: list[str], expect: int, message: str, funded: str, tmp_path: Path
) -> None:
    before = state(funded)
    line = error_line(cli(*args, "--database-url", funded, cwd=tmp_path, expect=expect))
    assert message in line
    assert "amount" in line or "account" in line or "argument" in line
    assert state(funded) == before


def test_usage_error_in_json_mode_is_a_json_document(tmp_path: Path) -> None:
    proc = cli("--json", "history", "--limit", "0", cwd=tmp_path, expect=USAGE)
    assert json.loads(proc.stdout)["error"] == "usage_error"
    error_line(proc)


# -------------------------------------------------------------------- failures


def test_storage_failure_exits_3(tmp_path: Path) -> None:
    (tmp_path / "garbage.db").write_bytes(b"this is not a database" * 300)
    proc = cli("balance", "alice", "--ledger", "garbage.db", cwd=tmp_path, expect=FAILURE)
    assert "garbage.db" in error_line(proc)
    (tmp_path / "afile").write_text("")
    cli("list-accounts", "--database-url", f"sqlite:///{tmp_path / 'afile' / 'x.db'}", cwd=tmp_path, expect=FAILURE)


_BOOM = (
    "import sys\n"
    "import mesh_fake_ledger.cli as cli\n"
    "from mesh_fake_ledger import LedgerService\n"
    "def boom(self, *a, **k):\n"
    "    raise RuntimeError('disk on fire')\n"
    "LedgerService.get_balance = boom\n"
    "raise SystemExit(cli.main(sys.argv[1:]))\n"
)


@pytest.mark.parametrize("debug", [False, True])
def test_unexpected_error_exits_3_and_traceback_only_with_debug(debug: bool, funded: str, tmp_path: Path) -> None:
    args = ["balance", "alice", "--database-url", funded, *(["--debug"] if debug else [])]
    proc = subprocess.run(
        [sys.executable, "-c", _BOOM, *args], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=60,
        check=False,
    )
    assert proc.returncode == FAILURE, proc.stderr
    assert "RuntimeError: disk on fire" in proc.stderr
    assert ("Traceback" in proc.stderr) is debug
    if not debug:
        assert "--debug" in error_line(proc)


# ------------------------------------------------------------ serve and demo


def test_serve_answers_http(url: str, tmp_path: Path) -> None:
    import socket
    import time

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "mesh_fake_ledger", "serve", "--port", str(port), "--database-url", url],
        cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        answer = None
        for _ in range(200):  # bounded: ~20 s
            if proc.poll() is not None:
                break
            try:
                answer = httpx.post(f"http://127.0.0.1:{port}/accounts/alice/ensure", json={"initial_balance": 5})
                break
            except httpx.TransportError:
                time.sleep(0.1)
        assert answer is not None, f"serve exited {proc.poll()}: {proc.stderr.read() if proc.stderr else ''}"
        assert answer.status_code == 200, answer.text
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert "Traceback" not in err
    assert balances(url) == {"alice": 5}


def test_serve_on_a_taken_port_exits_3_with_a_message(url: str, tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        proc = cli("serve", "--port", port, "--database-url", url, cwd=tmp_path, expect=FAILURE)
    last = proc.stderr.strip().splitlines()[-1]
    assert "error:" in last
    assert port in last


def test_serve_refuses_a_public_interface_without_keys(url: str, tmp_path: Path) -> None:
    proc = cli("serve", "--host", "0.0.0.0", "--port", "0", "--database-url", url, cwd=tmp_path, expect=USAGE)
    assert "API keys" in error_line(proc)


def test_demo_runs_the_tour_and_stops_its_server(tmp_path: Path) -> None:
    out = cli("demo", cwd=tmp_path, timeout=120).stdout
    assert "402" in out
    assert "payment_required" in out
    assert not list(tmp_path.iterdir()), "the demo ledger lives in a temporary directory"


def test_demo_json(url: str, tmp_path: Path) -> None:
    doc = json.loads(cli("demo", "--json", "--database-url", url, cwd=tmp_path, timeout=120).stdout)
    statuses = [step["status"] for step in doc["steps"]]
    assert 402 in statuses
    assert all(200 <= s < 300 for s in statuses if s != 402)
    assert balances(url)["alice"] == 120


def test_demo_keep_serving_until_interrupted(tmp_path: Path) -> None:
    import signal

    import httpx

    with subprocess.Popen(
        [sys.executable, "-m", "mesh_fake_ledger", "demo", "--keep-serving"],
        cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    ) as proc:
        try:
            assert proc.stderr is not None
            line = proc.stderr.readline()  # printed once the tour is done
            found = re.search(r"http://127\.0\.0\.1:\d+", line)
            assert found, line
            assert httpx.get(f"{found.group(0)}/accounts").status_code == 200
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=30) == OK
            assert "Traceback" not in proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{found.group(0)}/accounts", timeout=2.0)


@pytest.mark.postgres
def test_postgresql_database_url(pg_url: str, tmp_path: Path) -> None:
    cli("create-account", "alice", "--balance", "2.5", "--database-url", pg_url, cwd=tmp_path)
    out = cli("--database-url", pg_url, "--json", "balance", "alice", cwd=tmp_path).stdout
    assert json.loads(out) == {"account_id": "alice", "balance": "2.5"}
