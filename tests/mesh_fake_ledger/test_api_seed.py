"""The seed's HTTP examples, run as written against a real uvicorn server.

The curl requests run through the real ``curl`` binary (through httpx when there
is none), the ``requests`` snippet runs as Python; only ``localhost:8000``
becomes the test server's address. Each example is also checked to be in the
seed document when it is beside the repository, so the two cannot drift.
"""

from __future__ import annotations

import contextlib
import io
import json
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from ledger_http_helpers import SRC, Server, clean_env, free_port, have_json_backend, run_server

SEED = Path(__file__).resolve().parents[3] / "shared" / "seeds" / "mesh_fake_ledger.md"

CURL_BALANCE = "curl http://localhost:8000/accounts/alice/balance"
CURL_ENSURE = """curl -X POST http://localhost:8000/accounts/bob/ensure \\
  -H "Content-Type: application/json" \\
  -d '{"initial_balance": 50}'"""
CURL_TRANSFER = """curl -X POST http://localhost:8000/transfers \\
  -H "Content-Type: application/json" \\
  -d '{
    "from_account": "alice",
    "to_account": "provider",
    "amount": 10,
    "job_id": "job_123"
  }'"""
CURL_HISTORY = "curl http://localhost:8000/transfers?limit=20"
CURL_HISTORY_ACCOUNT = "curl http://localhost:8000/transfers?account=alice&limit=10"
CURL_ACCOUNTS = "curl http://localhost:8000/accounts"

REQUESTS_SNIPPET = '''import requests

BASE_URL = "http://localhost:8000"

# Ensure accounts
requests.post(f"{BASE_URL}/accounts/alice/ensure", json={"initial_balance": 100})
requests.post(f"{BASE_URL}/accounts/provider/ensure", json={"initial_balance": 0})

# Transfer
response = requests.post(f"{BASE_URL}/transfers", json={
    "from_account": "alice",
    "to_account": "provider",
    "amount": 10,
    "job_id": "test_job"
})
print(response.json())

# Check balance
response = requests.get(f"{BASE_URL}/accounts/alice/balance")
print(response.json())
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The seed's way: ``LEDGER_PATH=… python -m uvicorn mesh_fake_ledger.api:app``."""
    tmp = tmp_path_factory.mktemp("seed_api")
    if have_json_backend():
        env = clean_env(LEDGER_PATH=str(tmp / "ledger.json"))
    else:  # until the JSON backend lands
        env = clean_env(LEDGER_DATABASE_URL=f"sqlite:///{tmp / 'ledger.db'}")
    with run_server(env=env, log_dir=tmp) as srv:
        yield srv


def _in_seed(snippet: str) -> None:
    if SEED.exists():
        assert snippet in SEED.read_text(), f"example not in the seed any more:\n{snippet}"


def run_curl(command: str, server: Server) -> Any:
    """Run a seed curl command (through bash, as a user would) and parse its JSON output."""
    _in_seed(command)
    command = command.replace("http://localhost:8000", server.url)
    if shutil.which("curl"):
        proc = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)
    # No curl: send the same request with httpx (bash ends an unquoted URL at '&').
    args = shlex.split(command.replace("\\\n", " ").split("&")[0])
    method = args[args.index("-X") + 1] if "-X" in args else "GET"
    url = next(a for a in args if a.startswith("http"))
    data = args[args.index("-d") + 1] if "-d" in args else None
    response = httpx.request(method, url, content=data, headers={"Content-Type": "application/json"} if data else {})
    return response.json()


def test_requests_snippet_then_every_curl_example(server: Server) -> None:
    _in_seed(REQUESTS_SNIPPET)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(REQUESTS_SNIPPET.replace("http://localhost:8000", server.url), "seed", "exec"), {})
    transfer_line, balance_line = out.getvalue().strip().splitlines()
    assert "'from_account': 'alice'" in transfer_line
    assert "'amount': 10" in transfer_line
    assert "'job_id': 'test_job'" in transfer_line
    assert balance_line == "{'account_id': 'alice', 'balance': 90}"

    assert run_curl(CURL_BALANCE, server) == {"account_id": "alice", "balance": 90}

    bob = run_curl(CURL_ENSURE, server)
    assert bob["id"] == "bob"
    assert bob["balance"] == 50
    assert run_curl(CURL_ENSURE, server)["balance"] == 50  # granted once, however often it runs

    transfer = run_curl(CURL_TRANSFER, server)
    assert (transfer["from_account"], transfer["to_account"], transfer["amount"], transfer["job_id"]) == (
        "alice", "provider", 10, "job_123")
    again = run_curl(CURL_TRANSFER, server)  # a retried charge of the same job never charges twice
    assert again["id"] == transfer["id"]
    assert run_curl(CURL_BALANCE, server)["balance"] == 80

    history = run_curl(CURL_HISTORY, server)
    assert history[0]["job_id"] == "job_123"  # most recent first
    assert "test_job" in [t["job_id"] for t in history]
    assert len(history) <= 20

    mine = run_curl(CURL_HISTORY_ACCOUNT, server)
    assert mine
    assert all("alice" in (t["from_account"], t["to_account"]) for t in mine)
    assert {t["job_id"] for t in mine} >= {"job_123", "test_job"}

    accounts = {a["id"]: a["balance"] for a in run_curl(CURL_ACCOUNTS, server)}
    assert accounts == {"alice": 80, "bob": 50, "provider": 20}


def test_insufficient_balance_is_402_with_the_seed_fields(server: Server) -> None:
    httpx.post(f"{server.url}/accounts/carol/ensure", json={"initial_balance": 5}).raise_for_status()
    r = httpx.post(f"{server.url}/transfers", json={"from_account": "carol", "to_account": "provider",
                                                     "amount": 1000})
    assert r.status_code == 402
    assert r.json() == {"error": "payment_required", "required_tokens": 1000, "current_balance": 5,
                        "account_id": "carol", "message": r.json()["message"]}
    assert httpx.get(f"{server.url}/accounts/carol/balance").json()["balance"] == 5


def test_python_api_py_shorthand_starts_the_server(tmp_path: Path) -> None:
    """``python api.py`` (the seed's shorthand), from the package directory."""
    port = free_port()
    env = clean_env(LEDGER_DATABASE_URL=f"sqlite:///{tmp_path / 'l.db'}", LEDGER_PORT=str(port))
    argv = [sys.executable, "api.py"]
    with run_server(argv, env=env, cwd=SRC / "mesh_fake_ledger", log_dir=tmp_path, port=port) as srv:
        r = httpx.post(f"{srv.url}/accounts/alice/ensure", json={"initial_balance": 3})
        assert r.status_code == 200
        assert r.json()["balance"] == 3
