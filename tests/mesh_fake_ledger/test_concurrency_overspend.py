"""Several processes charging one payer never overspend it: through the HTTP API
(two uvicorn workers) and through a shared ledger (SQLite, JSON, PostgreSQL)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from ledger_http_helpers import Server, clean_env, have_json_backend, run_server

from mesh_fake_ledger import LedgerConfig, LedgerService

PROCESSES = 4

_HTTP_CHARGER = r"""
import sys, json, time, httpx
url, payer, n, tag, start, mode = sys.argv[1:7]
n, start = int(n), float(start)
codes = {}
with httpx.Client(base_url=url, timeout=30) as c:
    time.sleep(max(0.0, start - time.time()))
    for i in range(n):
        if mode == "charge":
            r = c.post("/transfers", json={"from_account": payer, "to_account": "provider", "amount": 1,
                                           "job_id": f"{tag}-{i}"})
        else:
            r = c.post("/holds", json={"payer": payer, "receiver": "provider", "amount": 1, "job_id": f"{tag}-{i}"})
            if r.status_code == 201:
                r = c.post(f"/holds/{r.json()['hold_id']}/capture", json={})
                codes["captured"] = codes.get("captured", 0) + (r.status_code == 200)
        codes[str(r.status_code)] = codes.get(str(r.status_code), 0) + 1
print(json.dumps(codes))
"""

_LOCAL_CHARGER = r"""
import sys, json, time
from pathlib import Path
from mesh_fake_ledger import LedgerService, LedgerConfig, PaymentRequiredError
url, payer, n, tag, start = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], float(sys.argv[5])
config = (LedgerConfig(ledger_path=Path(url), database_url=None) if url.endswith(".json")
          else LedgerConfig(database_url=url))
ok = refused = 0
with LedgerService(config) as svc:
    svc.get_balance(payer)
    time.sleep(max(0.0, start - time.time()))
    for i in range(n):
        try:
            svc.charge(payer, "provider", 1, job_id=f"{tag}-{i}")
            ok += 1
        except PaymentRequiredError:
            refused += 1
print(json.dumps({"ok": ok, "refused": refused}))
"""


def _run_all(script: str, args: list[list[str]]) -> list[dict[str, int]]:
    procs = [subprocess.Popen([sys.executable, "-c", script, *a], env=clean_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for a in args]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr
        out.append(json.loads(stdout))
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("overspend_api")
    env = clean_env(LEDGER_DATABASE_URL=f"sqlite:///{tmp / 'ledger.db'}")
    with run_server(env=env, workers=2, log_dir=tmp) as srv:
        yield srv


@pytest.mark.parametrize("mode", ["charge", "hold"])
def test_http_charges_from_many_processes_never_overspend(server: Server, mode: str) -> None:
    payer = f"payer-{mode}"
    httpx.post(f"{server.url}/accounts/{payer}/ensure", json={"initial_balance": 60}).raise_for_status()
    httpx.post(f"{server.url}/accounts/provider/ensure", json={}).raise_for_status()
    start = str(time.time() + 2.0)
    results = _run_all(_HTTP_CHARGER, [[server.url, payer, "25", f"{mode}-p{i}", start, mode]
                                       for i in range(PROCESSES)])
    if mode == "charge":
        assert sum(r.get("201", 0) for r in results) == 60
        assert sum(r.get("402", 0) for r in results) == PROCESSES * 25 - 60
    else:
        assert sum(r.get("captured", 0) for r in results) == 60
        assert sum(r.get("402", 0) for r in results) == PROCESSES * 25 - 60
    assert httpx.get(f"{server.url}/accounts/{payer}/balance").json() == {"account_id": payer, "balance": 0}
    history = httpx.get(f"{server.url}/transfers", params={"account": payer, "limit": 1000}).json()
    assert len({t["id"] for t in history if t["kind"] == ("transfer" if mode == "charge" else "hold")}) == 60


SHARED = ["sqlite", pytest.param("json", marks=pytest.mark.skipif(not have_json_backend(), reason="no JSON backend")),
          pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.mark.parametrize("backend", SHARED)
def test_shared_ledger_from_many_processes_never_overspends(backend: str, tmp_path: Path,
                                                            request: pytest.FixtureRequest) -> None:
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'ledger.db'}"
        config = LedgerConfig(database_url=url)
    elif backend == "json":
        url = str(tmp_path / "ledger.json")
        config = LedgerConfig(ledger_path=Path(url), database_url=None)
    else:
        url = request.getfixturevalue("pg_url")
        config = LedgerConfig(database_url=url)
    with LedgerService(config) as svc:
        svc.create_account_if_missing("payer", 40)
        svc.create_account_if_missing("provider")
    start = str(time.time() + 2.0)
    results = _run_all(_LOCAL_CHARGER, [[url, "payer", "15", f"p{i}", start] for i in range(PROCESSES)])
    assert sum(r["ok"] for r in results) == 40
    assert sum(r["refused"] for r in results) == PROCESSES * 15 - 40
    with LedgerService(config) as svc:
        assert svc.get_balance("payer") == 0
        assert svc.get_balance("provider") == 40
        assert svc.ledger.verify().ok
