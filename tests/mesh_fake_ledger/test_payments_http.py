"""The 402 integration end to end: examples/example_service.py, run as a script,
charging per job through a real ledger API server, driven over real HTTP."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import Depends, FastAPI
from ledger_http_helpers import EXAMPLES, Server, clean_env, free_port, run_server

from mesh_fake_ledger import LedgerConfig, LedgerService
from mesh_fake_ledger.payments import JobPayment, Paywall


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    tmp = tmp_path_factory.mktemp("payments")
    with run_server(env=clean_env(LEDGER_DATABASE_URL=f"sqlite:///{tmp / 'ledger.db'}"), log_dir=tmp) as ledger:
        for account, balance in (("alice", 100), ("poor", 1), ("provider", 0)):
            httpx.post(f"{ledger.url}/accounts/{account}/ensure", json={"initial_balance": balance}).raise_for_status()
        port = free_port()
        env = clean_env(LEDGER_URL=ledger.url, PORT=str(port))
        argv = [sys.executable, str(EXAMPLES / "example_service.py")]
        with run_server(argv, env=env, port=port, log_dir=tmp) as service:
            yield ledger, service


def balance(ledger: Server, account: str) -> int:
    value: int = httpx.get(f"{ledger.url}/accounts/{account}/balance").json()["balance"]
    return value


def scan(service: Server, payer: str | None, targets: list[str], **extra: object) -> httpx.Response:
    headers = {"X-Payer-Account": payer} if payer else {}
    headers.update({k.replace("_", "-"): str(v) for k, v in extra.items() if k != "fail"})
    return httpx.post(f"{service.url}/scan", json={"targets": targets, "fail": bool(extra.get("fail"))},
                      headers=headers, timeout=30)


def test_job_is_held_then_captured_at_its_actual_cost(servers: tuple[Server, Server]) -> None:
    ledger, service = servers
    before = balance(ledger, "alice"), balance(ledger, "provider")
    r = scan(service, "alice", ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["reserved"] == 5
    assert body["charged"] == 1 + sum(1 for x in body["results"] if x["up"])
    hold = httpx.get(f"{ledger.url}/holds/{body['hold_id']}").json()
    assert (hold["status"], hold["captured"], hold["released"]) == ("captured", body["charged"],
                                                                    5 - body["charged"])
    assert (balance(ledger, "alice"), balance(ledger, "provider")) == (before[0] - body["charged"],
                                                                       before[1] + body["charged"])


def test_payer_who_cannot_pay_gets_402_and_no_work(servers: tuple[Server, Server]) -> None:
    ledger, service = servers
    r = scan(service, "poor", ["a", "b", "c"])
    assert r.status_code == 402
    assert r.json() == {"error": "payment_required", "message": r.json()["message"], "required_tokens": 4,
                        "current_balance": 1, "account_id": "poor"}
    r = scan(service, "stranger", ["a"])
    assert r.status_code == 402
    assert (r.json()["current_balance"], r.json()["account_id"]) == (0, "stranger")
    assert scan(service, None, ["a"]).status_code == 422
    assert balance(ledger, "poor") == 1


def test_failed_job_costs_nothing(servers: tuple[Server, Server]) -> None:
    ledger, service = servers
    before = balance(ledger, "alice")
    r = scan(service, "alice", ["a", "b"], fail=True)
    assert r.status_code == 500
    assert balance(ledger, "alice") == before  # the hold was voided


def test_retried_job_is_paid_once(servers: tuple[Server, Server]) -> None:
    ledger, service = servers
    before = balance(ledger, "alice")
    first = scan(service, "alice", ["x", "y"], Idempotency_Key="scan-42")
    assert first.status_code == 200
    again = scan(service, "alice", ["x", "y"], Idempotency_Key="scan-42")
    assert (again.status_code, again.json()["error"]) == (409, "idempotency_conflict")
    assert balance(ledger, "alice") == before - first.json()["charged"]


def test_charge_mode_refunds_a_failed_job(tmp_path: Path) -> None:
    service = LedgerService(LedgerConfig(database_url=f"sqlite:///{tmp_path / 'l.db'}"))
    service.create_account_if_missing("alice", 10)
    service.create_account_if_missing("provider")
    paywall = Paywall(service, price=3, receiver="provider", mode="charge")
    app = FastAPI()
    paywall.install(app)

    @app.post("/job")
    def job(fail: bool = False, payment: JobPayment = Depends(paywall)) -> dict[str, str]:  # noqa: B008 - a local dependency
        if fail:
            raise RuntimeError("job failed")
        assert payment.charge is not None
        return {"charge": payment.charge["id"]}

    async def run() -> list[int]:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as c:
            headers = {"X-Payer-Account": "alice"}
            return [(await c.post("/job", headers=headers)).status_code,
                    (await c.post("/job?fail=true", headers=headers)).status_code,
                    (await c.post("/job", headers=headers)).status_code,
                    (await c.post("/job", headers=headers)).status_code,
                    (await c.post("/job", headers=headers)).status_code]

    assert asyncio.run(run()) == [200, 500, 200, 200, 402]
    assert service.get_balance("alice") == 1
    assert service.get_balance("provider") == 9
    service.close()
