"""HTTP 402 for FastAPI services: price a request, reserve or charge, settle.

::

    ledger = LedgerClient(base_url="http://ledger:8000", api_key=...)
    paywall = Paywall(ledger, price=lambda request: 5, receiver="gpu-provider")
    app = FastAPI()
    paywall.install(app)            # PaymentRequiredError -> 402 with its to_json() body

    @app.post("/scan")
    def scan(job: ScanJob, payment: JobPayment = Depends(paywall)):
        result = run(job)
        payment.set_cost(result.cost)   # optional: capture less than reserved
        return result

Before the endpoint runs, the paywall prices the request and places a *hold*
on the payer (``mode="hold"``, the default) or charges it outright
(``mode="charge"``). A payer that cannot pay never reaches the endpoint: the
client gets 402 with ``required_tokens``, ``current_balance`` and
``account_id``. When the endpoint returns, the hold is captured (the whole
price, or what :meth:`JobPayment.set_cost` said; the rest goes back); when it
raises, the hold is voided (or the charge refunded), so a failed job costs
nothing. If the process dies mid-job, the hold expires and its funds return.

Retries are safe: a request with an ``Idempotency-Key`` (or ``X-Job-Id``)
header is one job; a retry of a job that already settled is refused with 409
instead of running (and charging) it again.

Who the payer is comes from ``X-Payer-Account`` (or a ``payer`` query
parameter) by default. That is only as trustworthy as the caller: in
production pass ``payer=`` a function that derives it from authentication.
"""

from __future__ import annotations

import inspect
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse

from sardis_ledger.amounts import parse_amount
from sardis_ledger.errors import (
    AccountNotFoundError,
    IdempotencyConflictError,
    LedgerError,
    PaymentRequiredError,
    ValidationError,
    json_amount,
)

from .client import AsyncLedgerClient, LedgerClient
from .http_errors import error_response
from .ledger_service import LedgerService

__all__ = ["JobPayment", "Paywall", "install_payment_handlers"]

log = logging.getLogger("mesh_fake_ledger.payments")

Amount = Decimal | int | str
Ledger = LedgerService | LedgerClient | AsyncLedgerClient
Pricer = Callable[[Request], Amount | Awaitable[Amount]] | Amount
Extractor = Callable[[Request], str | Awaitable[str | None] | None]


def install_payment_handlers(app: FastAPI) -> None:
    """Answer ledger errors raised in ``app`` as JSON: PaymentRequiredError as 402
    with its ``to_json()`` body, the others with the statuses of the ledger API."""

    async def ledger_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, LedgerError)
        return error_response(exc)

    app.add_exception_handler(LedgerError, ledger_error)


def _default_payer(request: Request) -> str | None:
    return request.headers.get("x-payer-account") or request.query_params.get("payer")


def _default_job(request: Request) -> str | None:
    return request.headers.get("idempotency-key") or request.headers.get("x-job-id")


async def _resolve(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


@dataclass
class JobPayment:
    """The payment for one request, handed to the endpoint."""

    payer: str
    receiver: str | None
    price: Decimal
    job_id: str
    mode: Literal["hold", "charge"]
    hold: dict[str, Any] | None = None
    charge: dict[str, Any] | None = None
    cost: Decimal | None = field(default=None)
    cancelled: bool = False

    @property
    def hold_id(self) -> str | None:
        return None if self.hold is None else str(self.hold["hold_id"])

    def set_cost(self, amount: Amount) -> None:
        """Capture ``amount`` instead of the whole price (hold mode; at most the price)."""
        value = parse_amount(amount, None, allow_zero=True)
        if value > self.price:
            raise ValidationError(f"cost {json_amount(value)} exceeds the reserved {json_amount(self.price)}",
                                  field="amount")
        if self.mode != "hold" and value != self.price:
            raise ValidationError("set_cost needs mode='hold'; a charge is final", field="amount")
        self.cost = value

    def cancel(self) -> None:
        """Charge nothing for this request (void the hold / refund the charge)."""
        self.cancelled = True


class Paywall:
    """A FastAPI dependency (use ``Depends(paywall)``) that makes a request pay.

    ``ledger`` is a LedgerService, LedgerClient or AsyncLedgerClient; ``price`` a
    number or a function of the request (may be async); ``receiver`` defaults to
    the ledger's provider account; ``timeout`` is the hold's lifetime (longer
    than the job may run).
    """

    def __init__(
        self,
        ledger: Ledger,
        *,
        price: Pricer,
        receiver: str | None = None,
        mode: Literal["hold", "charge"] = "hold",
        timeout: float = 300.0,
        payer: Extractor = _default_payer,
        job_id: Extractor = _default_job,
        app: FastAPI | None = None,
    ) -> None:
        if mode not in ("hold", "charge"):
            raise ValidationError("mode must be 'hold' or 'charge'", field="mode")
        self.ledger = ledger
        self.price = price
        self.receiver = receiver
        self.mode = mode
        self.timeout = timeout
        self.payer = payer
        self.job_id = job_id
        if app is not None:
            self.install(app)

    def install(self, app: FastAPI) -> None:
        install_payment_handlers(app)

    async def _ledger(self, name: str, *args: Any, **kwargs: Any) -> Any:
        method = getattr(self.ledger, name)
        if isinstance(self.ledger, AsyncLedgerClient):
            return await method(*args, **kwargs)
        return await run_in_threadpool(method, *args, **kwargs)

    async def _open(self, payment: JobPayment) -> None:
        try:
            if payment.mode == "hold":
                hold = await self._ledger("hold", payment.payer, payment.price, payment.receiver, payment.job_id,
                                          timeout=self.timeout)
                if hold["status"] != "open":
                    raise IdempotencyConflictError(f"job {payment.job_id!r} was already {hold['status']}",
                                                   job_id=payment.job_id, status=hold["status"])
                payment.hold = hold
            else:
                # A note unique to this request: a retry of the job (done, or failed and refunded)
                # conflicts (409) instead of replaying the charge and running the job again for free.
                payment.charge = await self._ledger("charge", payment.payer, payment.receiver, payment.price,
                                                    payment.job_id, note=f"paywall request {uuid.uuid4().hex}")
        except AccountNotFoundError as exc:
            if exc.account_id != payment.payer:
                raise
            raise PaymentRequiredError(required=payment.price, balance=0, account_id=payment.payer) from None

    async def _settle(self, payment: JobPayment, failed: bool) -> None:
        if payment.mode == "hold":
            if failed or payment.cancelled or payment.cost == 0:
                await self._ledger("void", payment.hold_id)
            else:
                payment.hold = await self._ledger("capture", payment.hold_id, payment.cost)
        elif (failed or payment.cancelled) and payment.charge is not None:
            await self._ledger("refund", payment.charge["id"], None, "job failed",
                               idempotency_key=f"paywall-refund:{payment.charge['id']}")

    async def __call__(self, request: Request) -> AsyncIterator[JobPayment]:
        payer = await _resolve(self.payer(request))
        if not payer:
            raise ValidationError("no payer: send the X-Payer-Account header", field="payer")
        price = parse_amount(await _resolve(self.price(request) if callable(self.price) else self.price), None,
                             field="price")
        job = await _resolve(self.job_id(request)) or f"job-{uuid.uuid4().hex}"
        payment = JobPayment(str(payer), self.receiver, price, str(job), self.mode)
        await self._open(payment)
        try:
            yield payment
        except BaseException:
            try:
                await self._settle(payment, failed=True)
            except LedgerError as exc:  # the hold still expires; never mask the job's own error
                log.warning("could not release payment for job %s: %s", payment.job_id, exc.code)
            raise
        await self._settle(payment, failed=False)
