"""Money paths under adversarial use: refunds that a stranger's job id must not
block, and pay-per-job retries that must not get work for free."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import Depends, FastAPI

from mesh_fake_ledger import LedgerConfig, LedgerService
from mesh_fake_ledger.payments import JobPayment, Paywall


@pytest.fixture
def service(tmp_path: Path) -> Iterator[LedgerService]:
    with LedgerService(LedgerConfig(database_url=f"sqlite:///{tmp_path / 'ledger.db'}")) as svc:
        svc.create_account_if_missing("alice", 100)
        svc.create_account_if_missing("bob", 100)
        svc.create_account_if_missing("provider")
        yield svc


def test_a_job_id_that_looks_like_a_refund_reference_does_not_block_refunds(service: LedgerService) -> None:
    paid = service.charge("alice", "provider", 10, job_id="job-1")
    # Bob picks job ids that equal the reference refunds of alice's payment use.
    service.charge("bob", "provider", 10, job_id=f"refund:{paid['id']}")
    service.hold("bob", 5, "provider", job_id=f"refund:{paid['id']}:hold")
    refund = service.refund(paid["id"])
    assert refund["amount"] == 10
    assert [r["id"] for r in service.get_refunds(paid["id"])] == [refund["id"]]
    assert service.get_balance("alice") == 100


def _charge_app(service: LedgerService, runs: list[str]) -> FastAPI:
    paywall = Paywall(service, price=3, receiver="provider", mode="charge")
    app = FastAPI()
    paywall.install(app)

    @app.post("/job")
    def job(fail: bool = False, payment: JobPayment = Depends(paywall)) -> dict[str, str]:  # noqa: B008 - a local dependency
        runs.append(payment.job_id)
        if fail:
            raise RuntimeError("job failed")
        return {"ok": payment.job_id}

    return app


def _post(app: FastAPI, *requests: tuple[str, dict[str, str]]) -> list[int]:
    async def run() -> list[int]:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as c:
            return [(await c.post(path, headers=headers)).status_code for path, headers in requests]

    return asyncio.run(run())


def test_charge_mode_retry_of_a_refunded_job_does_not_run_it_for_free(service: LedgerService) -> None:
    runs: list[str] = []
    app = _charge_app(service, runs)
    headers = {"X-Payer-Account": "alice", "Idempotency-Key": "job-7"}
    assert _post(app, ("/job?fail=true", headers), ("/job", headers)) == [500, 409]
    assert runs == ["job-7"]  # the retry never reached the endpoint
    assert (service.get_balance("alice"), service.get_balance("provider")) == (100, 0)


def test_charge_mode_retry_of_a_done_job_is_refused_not_run_again(service: LedgerService) -> None:
    runs: list[str] = []
    app = _charge_app(service, runs)
    headers = {"X-Payer-Account": "alice", "Idempotency-Key": "job-8"}
    assert _post(app, ("/job", headers), ("/job", headers)) == [200, 409]
    assert runs == ["job-8"]
    assert (service.get_balance("alice"), service.get_balance("provider")) == (97, 3)
