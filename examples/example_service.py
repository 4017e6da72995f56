"""A compute service that charges per job through the mesh ledger (HTTP 402).

Run it next to a ledger API::

    python -m uvicorn mesh_fake_ledger.api:app --port 8000 &
    LEDGER_URL=http://127.0.0.1:8000 python examples/example_service.py   # listens on 8001

or on a local ledger file (no API): ``LEDGER_PATH=ledger.json python
examples/example_service.py``. Then::

    curl -X POST http://127.0.0.1:8001/scan -H "X-Payer-Account: alice" \
      -H "Content-Type: application/json" -d '{"targets": ["10.0.0.1", "10.0.0.2"]}'

A scan reserves 1 token per target plus 1 up front (a hold), runs, and
captures what it actually cost: 1 per target that answered plus 1. A payer
who cannot cover the reservation gets 402 with ``required_tokens``,
``current_balance`` and ``account_id`` and no work is done; a scan that fails
costs nothing (the hold is voided).
"""

from __future__ import annotations

import hashlib
import os
from typing import Annotated, Any

import uvicorn
from fastapi import Depends, FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field

from mesh_fake_ledger import LedgerClient
from mesh_fake_ledger.payments import JobPayment, Paywall

PROVIDER = os.environ.get("SCAN_PROVIDER_ACCOUNT", "provider")


def make_ledger() -> LedgerClient:
    """The remote ledger when LEDGER_URL is set, else the local one (LEDGER_DATABASE_URL / LEDGER_PATH)."""
    url = os.environ.get("LEDGER_URL")
    if url:
        return LedgerClient(base_url=url, api_key=os.environ.get("LEDGER_API_KEY"))
    return LedgerClient()


class ScanJob(BaseModel):
    model_config = ConfigDict(extra="forbid")
    targets: list[Annotated[str, Field(min_length=1, max_length=253)]] = Field(min_length=1, max_length=100)
    fail: bool = False


async def price_of_scan(request: Request) -> int:
    """The most a scan can cost: 1 token per target plus 1 for the job."""
    body = await request.json()
    targets = body.get("targets") if isinstance(body, dict) else None
    return 1 + (len(targets) if isinstance(targets, list) else 0)


def execute_scan(job: ScanJob) -> list[dict[str, Any]]:
    """Pretend to scan: a target 'answers' when the first byte of its hash is even."""
    if job.fail:
        raise RuntimeError("scanner crashed")
    return [{"target": t, "up": hashlib.sha256(t.encode()).digest()[0] % 2 == 0} for t in job.targets]


ledger = make_ledger()
paywall = Paywall(ledger, price=price_of_scan, receiver=PROVIDER, mode="hold", timeout=120)
app = FastAPI(title="Example scan service (pays per job)")
paywall.install(app)


@app.post("/scan")
def run_scan(job: ScanJob, payment: Annotated[JobPayment, Depends(paywall)]) -> dict[str, Any]:
    results = execute_scan(job)
    cost = 1 + sum(1 for r in results if r["up"])
    payment.set_cost(cost)  # the hold is captured for this much when we return
    return {"job_id": payment.job_id, "hold_id": payment.hold_id, "reserved": int(payment.price), "charged": cost,
            "results": results}


@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}


if __name__ == "__main__":
    uvicorn.run(app, host=os.environ.get("HOST", "127.0.0.1"), port=int(os.environ.get("PORT", "8001")))
