"""HTTP API of the mesh ledger (FastAPI).

Run it with ``python -m uvicorn mesh_fake_ledger.api:app``, ``python -m
mesh_fake_ledger serve`` (which calls :func:`serve`) or ``python
src/mesh_fake_ledger/api.py``. Storage comes from ``LEDGER_DATABASE_URL`` or
``LEDGER_PATH`` (see :class:`~mesh_fake_ledger.LedgerConfig`); API keys from
``LEDGER_API_KEYS_FILE`` / ``LEDGER_API_KEYS`` (see :mod:`.security`).

Errors are JSON ``{"error": <stable code>, "message": …, details…}`` with the
status mapped in :mod:`.http_errors`. Request bodies are parsed with exact
decimals (a JSON number never passes through a float), bodies over 64 KiB are
refused with 413, and nothing a client sends yields a 500.

``create_app(service)`` builds an app around any :class:`LedgerService`;
:func:`get_service` and :func:`get_principal` are the dependencies other
routers (the audit API) reuse.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from mesh_fake_ledger.api_deps import PrincipalDep, ServiceDep, _Runtime, get_principal, get_service
from mesh_fake_ledger.api_models import (
    AccountCreateIn,
    AccountOut,
    BalanceOut,
    CanPayOut,
    CaptureIn,
    CreditIn,
    EnsureIn,
    ErrorOut,
    HealthOut,
    HoldIn,
    HoldOut,
    PaymentRequiredOut,
    RefundIn,
    ReleasedOut,
    TransferIn,
    TransferOut,
)
from mesh_fake_ledger.http_errors import error_response
from mesh_fake_ledger.ledger_service import LedgerConfig, LedgerService
from mesh_fake_ledger.security import KeyStore, Principal, is_loopback
from sardis_ledger.amounts import parse_amount
from sardis_ledger.errors import LedgerError, ValidationError, json_amount

__all__ = [
    "MAX_BODY_BYTES",
    "PrincipalDep",
    "ServiceDep",
    "app",
    "create_app",
    "get_principal",
    "get_service",
    "serve",
]

log = logging.getLogger("mesh_fake_ledger.api")

MAX_BODY_BYTES = 64 * 1024
_JSON_MAX_DEPTH = 32


# ------------------------------------------------------------------ exact JSON


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def _depth(value: object, limit: int) -> int:
    stack: list[tuple[object, int]] = [(value, 1)]
    deepest = 0
    while stack:
        item, d = stack.pop()
        deepest = max(deepest, d)
        if deepest > limit:
            return deepest
        if isinstance(item, dict):
            stack.extend((v, d + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, d + 1) for v in item)
    return deepest


class _ExactRequest(Request):
    """Reads at most MAX_BODY_BYTES and parses JSON numbers as Decimal, so ``10.1``
    means exactly 10.1 and ``0.30000000000000004`` is refused by the amount check
    instead of being rounded. Any undecodable body is a JSON error (422)."""

    async def body(self) -> bytes:
        if not hasattr(self, "_body"):
            declared = self.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
                raise StarletteHTTPException(413, f"request body exceeds {MAX_BODY_BYTES} bytes")
            chunks: list[bytes] = []
            size = 0
            async for chunk in self.stream():
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise StarletteHTTPException(413, f"request body exceeds {MAX_BODY_BYTES} bytes")
                chunks.append(chunk)
            self._body = b"".join(chunks)
        return self._body

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            raw = await self.body()
            try:
                text = raw.decode("utf-8")
                value = json.loads(text, parse_float=Decimal, parse_constant=_refuse_constant)
            except json.JSONDecodeError:
                raise
            except (ValueError, RecursionError) as exc:  # bad UTF-8, 5000-digit integers, deep nesting
                raise json.JSONDecodeError(f"unparseable JSON: {type(exc).__name__}", "", 0) from None
            if _depth(value, _JSON_MAX_DEPTH) > _JSON_MAX_DEPTH:
                raise json.JSONDecodeError(f"JSON nested deeper than {_JSON_MAX_DEPTH}", "", 0)
            self._json = value
        return self._json


class _ExactRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def exact(request: Request) -> Response:
            return await handler(_ExactRequest(request.scope, request.receive))

        return exact


# -------------------------------------------------------------------- runtime


IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", max_length=200,
           description="Retrying with the same key returns the first result instead of writing twice."),
]
AccountPath = Annotated[str, Path(max_length=128, description="Account id")]
TransferPath = Annotated[str, Path(max_length=128, description="Transfer id")]
HoldPath = Annotated[str, Path(max_length=64, description="Hold id")]


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    out: dict[int | str, dict[str, Any]] = {
        401: {"model": ErrorOut, "description": "Missing or invalid API key"},
        403: {"model": ErrorOut, "description": "The key lacks the scope"},
        422: {"model": ErrorOut, "description": "Invalid input"},
        503: {"model": ErrorOut, "description": "Storage unavailable; retry"},
    }
    for code in codes:
        if code == 402:
            out[402] = {"model": PaymentRequiredOut, "description": "The payer cannot pay"}
        else:
            out[code] = {"model": ErrorOut, "description": {404: "Not found", 409: "Conflict",
                                                            413: "Body too large"}.get(code, "Error")}
    return out


def _json(content: Any, status_code: int = 200) -> JSONResponse:
    return JSONResponse(content, status_code=status_code)


# --------------------------------------------------------------------- routes


def _build_router() -> APIRouter:
    router = APIRouter(route_class=_ExactRoute)

    @router.get("/health", response_model=HealthOut, tags=["meta"])
    async def health() -> JSONResponse:
        """Liveness: answers without touching storage or keys."""
        return _json({"status": "ok"})

    # ---------------------------------------------------------- accounts
    @router.get("/accounts", response_model=list[AccountOut], tags=["accounts"], responses=_errors())
    def list_accounts(service: ServiceDep, principal: PrincipalDep) -> JSONResponse:
        principal.require_read(None)
        return _json(service.list_accounts())

    @router.post("/accounts", status_code=201, response_model=AccountOut, tags=["accounts"],
                 responses=_errors(409, 413))
    def create_account(body: AccountCreateIn, service: ServiceDep, principal: PrincipalDep) -> JSONResponse:
        """Create an account (admin); 409 if the id is taken."""
        principal.require_admin("create accounts")
        return _json(service.create_account(body.account_id, body.initial_balance, body.meta), 201)

    @router.get("/accounts/{account_id}", response_model=AccountOut, tags=["accounts"], responses=_errors(404))
    def get_account(account_id: AccountPath, service: ServiceDep, principal: PrincipalDep) -> JSONResponse:
        principal.require_read([account_id])
        return _json(service.get_account(account_id))

    @router.get("/accounts/{account_id}/balance", response_model=BalanceOut, tags=["accounts"],
                responses=_errors(404))
    def get_balance(account_id: AccountPath, service: ServiceDep, principal: PrincipalDep) -> JSONResponse:
        principal.require_read([account_id])
        return _json({"account_id": account_id, "balance": json_amount(service.get_balance(account_id))})

    @router.get("/accounts/{account_id}/can-pay", response_model=CanPayOut, tags=["accounts"],
                responses=_errors(404))
    def can_pay(
        account_id: AccountPath, amount: Annotated[str, Query(max_length=64)], service: ServiceDep,
        principal: PrincipalDep,
    ) -> JSONResponse:
        """Whether the account could pay ``amount`` now (a hint: use a hold to be sure)."""
        principal.require_read([account_id])
        value = parse_amount(amount, None)
        balance = service.get_balance(account_id)
        return _json({"account_id": account_id, "amount": json_amount(value), "balance": json_amount(balance),
                      "can_pay": balance >= value})

    @router.post("/accounts/{account_id}/ensure", response_model=AccountOut, tags=["accounts"],
                 responses=_errors(413))
    def ensure_account(
        account_id: AccountPath, service: ServiceDep, principal: PrincipalDep, body: EnsureIn | None = None,
    ) -> JSONResponse:
        """Create the account unless it exists; the initial balance is granted once.
        Granting tokens needs admin; an account key may ensure its own empty account."""
        body = body or EnsureIn(initial_balance=Decimal(0), meta=None)
        if body.initial_balance > 0 or body.meta:
            principal.require_admin("grant an initial balance")
        else:
            principal.require_any_of([account_id], f"create account {account_id!r}")
        return _json(service.create_account_if_missing(account_id, body.initial_balance, body.meta))

    @router.post("/accounts/{account_id}/credit", status_code=201, response_model=TransferOut, tags=["accounts"],
                 responses=_errors(404, 409, 413))
    def credit(
        account_id: AccountPath, body: CreditIn, service: ServiceDep, principal: PrincipalDep,
        idempotency_key: IdempotencyKey = None,
    ) -> JSONResponse:
        """Issue new tokens to an account (admin)."""
        principal.require_admin("credit accounts")
        return _json(service.credit(account_id, body.amount, body.reason, idempotency_key=idempotency_key), 201)

    # --------------------------------------------------------- transfers
    @router.post("/transfers", status_code=201, response_model=TransferOut, tags=["transfers"],
                 responses=_errors(402, 404, 409, 413))
    def create_transfer(
        body: TransferIn, service: ServiceDep, principal: PrincipalDep, idempotency_key: IdempotencyKey = None,
    ) -> JSONResponse:
        """Charge: move ``amount`` from ``from_account`` to ``to_account``. 402 when the
        payer cannot pay. Idempotent by ``job_id`` and by the Idempotency-Key header."""
        principal.require_spend(body.from_account)
        record = service.charge(body.from_account, body.to_account, body.amount, job_id=body.job_id,
                                note=body.note, idempotency_key=idempotency_key)
        return _json(record, 201)

    @router.get("/transfers", response_model=list[TransferOut], tags=["transfers"], responses=_errors(404))
    def list_transfers(
        service: ServiceDep, principal: PrincipalDep,
        account: Annotated[str | None, Query(max_length=128)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    ) -> JSONResponse:
        """Most recent first; ``account`` filters to one account's transfers."""
        principal.require_read(None if account is None else [account])
        return _json(service.get_transfers(account_id=account, limit=limit))

    def _visible_transfer(service: LedgerService, principal: Principal, transfer_id: str) -> dict[str, Any]:
        record = service.get_transfer(transfer_id)
        principal.require_read([record["from_account"], record["to_account"]])
        return record

    @router.get("/transfers/{transfer_id}", response_model=TransferOut, tags=["transfers"],
                responses=_errors(404))
    def get_transfer(transfer_id: TransferPath, service: ServiceDep, principal: PrincipalDep) -> JSONResponse:
        return _json(_visible_transfer(service, principal, transfer_id))

    @router.post("/transfers/{transfer_id}/refunds", status_code=201, response_model=TransferOut,
                 tags=["transfers"], responses=_errors(404, 409, 413))
    def refund(
        transfer_id: TransferPath, service: ServiceDep, principal: PrincipalDep, body: RefundIn | None = None,
        idempotency_key: IdempotencyKey = None,
    ) -> JSONResponse:
        """Refund all (default: what is left) or part of a transfer or hold capture, from
        its receiver back to its payer (admin or the receiver's key)."""
        amount, reason = (body.amount, body.reason) if body is not None else (None, None)
        original = service.get_transfer(transfer_id)
        principal.require_any_of([original["to_account"]], "refund this transfer")
        record = service.refund(transfer_id, amount, reason, idempotency_key=idempotency_key)
        return _json(record, 201)

    @router.get("/transfers/{transfer_id}/refunds", response_model=list[TransferOut], tags=["transfers"],
                responses=_errors(404))
    def list_refunds(transfer_id: TransferPath, service: ServiceDep, principal: PrincipalDep) -> JSONResponse:
        _visible_transfer(service, principal, transfer_id)
        return _json(service.get_refunds(transfer_id))

    # ------------------------------------------------------------- holds
    @router.post("/holds", status_code=201, response_model=HoldOut, tags=["holds"],
                 responses=_errors(402, 404, 409, 413))
    def create_hold(body: HoldIn, service: ServiceDep, principal: PrincipalDep) -> JSONResponse:
        """Reserve up to ``amount`` of the payer's tokens for a job (402 if it cannot);
        capture the actual cost later, or void. Expires after ``timeout`` seconds."""
        principal.require_spend(body.payer)
        hold = service.hold(body.payer, body.amount, body.receiver, body.job_id, timeout=body.timeout,
                            note=body.note)
        return _json(hold, 201)

    def _visible_hold(service: LedgerService, principal: Principal, hold_id: str) -> dict[str, Any]:
        hold = service.get_hold(hold_id)
        principal.require_read([hold["payer"], hold["receiver"]])
        return hold

    @router.get("/holds/{hold_id}", response_model=HoldOut, tags=["holds"], responses=_errors(404))
    def get_hold(hold_id: HoldPath, service: ServiceDep, principal: PrincipalDep) -> JSONResponse:
        return _json(_visible_hold(service, principal, hold_id))

    @router.post("/holds/{hold_id}/capture", response_model=HoldOut, tags=["holds"],
                 responses=_errors(404, 409, 413))
    def capture_hold(
        hold_id: HoldPath, service: ServiceDep, principal: PrincipalDep, body: CaptureIn | None = None,
    ) -> JSONResponse:
        """Pay the receiver ``amount`` (default: all) of the hold; the rest returns to
        the payer. 409 when the hold was already settled or has expired."""
        hold = _visible_hold(service, principal, hold_id)
        principal.require_any_of([hold["payer"], hold["receiver"]], "capture this hold")
        return _json(service.capture(hold_id, body.amount if body is not None else None))

    @router.post("/holds/{hold_id}/void", response_model=HoldOut, tags=["holds"], responses=_errors(404, 409))
    def void_hold(hold_id: HoldPath, service: ServiceDep, principal: PrincipalDep) -> JSONResponse:
        """Return the whole hold to the payer (admin or the receiver's key)."""
        hold = _visible_hold(service, principal, hold_id)
        principal.require_any_of([hold["receiver"]], "void this hold")
        return _json(service.void(hold_id))

    @router.post("/holds/release-expired", response_model=ReleasedOut, tags=["holds"], responses=_errors())
    def release_expired(service: ServiceDep, principal: PrincipalDep) -> JSONResponse:
        """Release every expired hold now (they are also released lazily)."""
        principal.require_admin("release holds")
        return _json({"released": service.release_expired_holds()})

    return router


# ------------------------------------------------------------------------ app


def _validation_message(errors: Sequence[Any]) -> str:
    parts = []
    for err in list(errors)[:3]:
        if err.get("type") == "json_invalid":
            parts.append("request body is not valid JSON")
            continue
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large",
               415: "unsupported_media_type"}


def create_app(
    service: LedgerService | None = None,
    *,
    config: LedgerConfig | None = None,
    keys: KeyStore | None = None,
    insecure: bool | None = None,
    routers: Sequence[APIRouter] = (),
    audit: bool = True,
    title: str = "Mesh Fake Ledger",
) -> FastAPI:
    """The ledger API around ``service`` (default: one built from ``config`` or the
    environment on first use). ``keys`` default to ``LEDGER_API_KEYS_FILE`` /
    ``LEDGER_API_KEYS``; ``routers`` are included after the ledger's own routes.
    ``audit`` adds the evidence routes (signed tree head, proofs, keys, verify)."""
    runtime = _Runtime(service, config, keys, insecure)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        runtime.keys()  # a broken key file fails startup, not the first request
        yield
        runtime.close()

    application = FastAPI(
        title=title,
        version="1.0.0",
        description="Token ledger for compute in a mesh: accounts, charges (HTTP 402 when a payer cannot pay),"
        " holds for pay-per-job, refunds. Amounts are integers or exact decimal strings.",
        lifespan=lifespan,
    )
    application.state.ledger_runtime = runtime
    application.include_router(_build_router())
    if audit:
        # Late import: the audit router depends on this module's ServiceDep/PrincipalDep.
        from mesh_fake_ledger.audit_api import audit_router

        application.include_router(audit_router())
    for extra in routers:
        application.include_router(extra)

    @application.exception_handler(LedgerError)
    async def ledger_error(_request: Request, exc: LedgerError) -> JSONResponse:
        return error_response(exc)

    @application.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in exc.errors()
        ]
        return error_response(ValidationError(_validation_message(errors), errors=errors))

    @application.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> Response:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        body = {"error": code, "message": str(exc.detail)}
        return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @application.exception_handler(Exception)
    async def internal_error(_request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error: %s", type(exc).__name__, exc_info=exc)
        return JSONResponse({"error": "internal_error", "message": "internal server error"}, status_code=500)

    return application


app = create_app()
"""The app ``uvicorn mesh_fake_ledger.api:app`` serves; configured from the environment."""


def serve(
    host: str,
    port: int,
    *,
    workers: int = 1,
    database_url: str | None = None,
    ledger_path: str | None = None,
    insecure: bool = False,
    api_keys_file: str | None = None,
) -> None:
    """Run the API with uvicorn until interrupted.

    Settings travel to the workers through the environment (``LEDGER_DATABASE_URL``,
    ``LEDGER_PATH``, ``LEDGER_API_KEYS_FILE``, ``LEDGER_INSECURE``). Refuses
    (ValidationError) to listen beyond loopback without API keys unless
    ``insecure``: an open ledger on a network is anyone's money.
    """
    import uvicorn

    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValidationError("port must be an integer from 0 to 65535", field="port")
    if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= 64:
        raise ValidationError("workers must be an integer from 1 to 64", field="workers")
    if database_url:
        os.environ["LEDGER_DATABASE_URL"] = database_url
    if ledger_path:
        os.environ["LEDGER_PATH"] = str(ledger_path)
    if api_keys_file:
        os.environ["LEDGER_API_KEYS_FILE"] = str(api_keys_file)
    if insecure:
        os.environ["LEDGER_INSECURE"] = "1"
    keys = KeyStore.from_env()  # fail here, before binding, on a broken key file
    if keys is None and not insecure and not is_loopback(host):
        raise ValidationError(
            f"refusing to listen on {host} without API keys: configure LEDGER_API_KEYS_FILE"
            " (or pass insecure=True / --insecure to accept an open ledger on the network)",
            field="host",
        )
    uvicorn.run(
        "mesh_fake_ledger.api:app", host=host, port=port, workers=workers, log_level="info",
        timeout_graceful_shutdown=10,
    )


if __name__ == "__main__":
    serve(os.environ.get("LEDGER_HOST", "127.0.0.1"), int(os.environ.get("LEDGER_PORT", "8000")))
