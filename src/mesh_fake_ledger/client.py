"""``LedgerClient`` / ``AsyncLedgerClient``: one interface, local or over HTTP.

``LedgerClient(json_path="ledger.json")`` or ``LedgerClient(database_url=…)``
works on the ledger in this process; ``LedgerClient(base_url="http://…")``
talks to the HTTP API. The three behave identically: same arguments, same
return values (the API's JSON shapes; amounts as integers or exact decimal
strings, balances as ``Decimal``), same exceptions (a 402 from the server is
raised as :class:`PaymentRequiredError` again, from the one error tree).

That sameness is by construction: each operation is described once, as a
:class:`_Call` holding its HTTP request, its local implementation and the
conversion of the answer, and both clients (sync and async) only *run* calls.
Arguments are checked on the client the way the service checks them, so a
float amount or a hostile id is refused with the same ValidationError whether
or not a server is involved. Transport failures become StorageError.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx

from sardis_ledger.amounts import parse_amount, validate_account_id
from sardis_ledger.errors import LedgerError, StorageError, ValidationError, error_from_json, json_amount

from ._records import RESERVED_PREFIXES
from .ledger_service import LedgerConfig, LedgerService

__all__ = ["AsyncLedgerClient", "LedgerClient"]

T = TypeVar("T")
Amount = Decimal | int | str
_RETRIES = 3


@dataclass(frozen=True, slots=True)
class _Call(Generic[T]):
    """One operation: how to ask the server, how to do it locally, and how the
    (JSON-shaped) answer becomes the return value."""

    method: str
    path: str
    local: Callable[[LedgerService], Any]
    parse: Callable[[Any], T]
    body: Any = None
    params: Mapping[str, Any] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    idempotent: bool = False
    """Safe to resend after an ambiguous failure (reads, keyed writes)."""


def _obj(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise LedgerError("ledger API answered with an unexpected body")
    return body


def _objs(body: Any) -> list[dict[str, Any]]:
    if not isinstance(body, list) or not all(isinstance(b, dict) for b in body):
        raise LedgerError("ledger API answered with an unexpected body")
    return body


def _decimal(key: str) -> Callable[[Any], Decimal]:
    return lambda body: Decimal(str(body[key]))


def _account(account_id: object, name: str = "account_id") -> str:
    validate_account_id(account_id, field=name)
    assert isinstance(account_id, str)
    if account_id.startswith(RESERVED_PREFIXES):
        raise ValidationError(f"account ids starting with {RESERVED_PREFIXES} are reserved", field=name)
    return account_id


def _seg(value: object, name: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 128:
        raise ValidationError(f"{name} must be a non-empty string", field=name)
    return quote(value, safe="")


def _wire(amount: object, name: str = "amount", *, allow_zero: bool = False) -> int | str:
    """An amount as JSON: checked like the service checks it (floats refused), sent exactly."""
    return json_amount(parse_amount(amount, None, field=name, allow_zero=allow_zero))


def _opt(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if v is not None}


# ---------------------------------------------------------------- operations


def _ensure_account(account_id: str, initial_balance: Amount, meta: Mapping[str, Any] | None) -> _Call[dict[str, Any]]:
    acct = _account(account_id)
    ib = _wire(initial_balance, "initial_balance", allow_zero=True)
    return _Call("POST", f"/accounts/{_seg(acct, 'account_id')}/ensure",
                 lambda s: s.create_account_if_missing(acct, ib, meta), _obj,
                 body=_opt({"initial_balance": ib, "meta": dict(meta) if meta else None}), idempotent=True)


def _create_account(account_id: str, initial_balance: Amount, meta: Mapping[str, Any] | None) -> _Call[dict[str, Any]]:
    acct = _account(account_id)
    ib = _wire(initial_balance, "initial_balance", allow_zero=True)
    return _Call("POST", "/accounts", lambda s: s.create_account(acct, ib, meta), _obj,
                 body=_opt({"account_id": acct, "initial_balance": ib, "meta": dict(meta) if meta else None}))


def _get_account(account_id: str) -> _Call[dict[str, Any]]:
    acct = _account(account_id)
    return _Call("GET", f"/accounts/{_seg(acct, 'account_id')}", lambda s: s.get_account(acct), _obj,
                 idempotent=True)


def _list_accounts() -> _Call[list[dict[str, Any]]]:
    return _Call("GET", "/accounts", lambda s: s.list_accounts(), _objs, idempotent=True)


def _get_balance(account_id: str) -> _Call[Decimal]:
    acct = _account(account_id)
    return _Call("GET", f"/accounts/{_seg(acct, 'account_id')}/balance",
                 lambda s: {"account_id": acct, "balance": json_amount(s.get_balance(acct))}, _decimal("balance"),
                 idempotent=True)


def _can_pay(account_id: str, amount: Amount) -> _Call[bool]:
    acct = _account(account_id)
    value = _wire(amount)
    return _Call("GET", f"/accounts/{_seg(acct, 'account_id')}/can-pay",
                 lambda s: {"can_pay": s.require_balance(acct, value)}, lambda b: bool(b["can_pay"]),
                 params={"amount": str(value)}, idempotent=True)


def _idem(key: str | None) -> dict[str, str]:
    return {"Idempotency-Key": key} if key is not None else {}


def _charge(
    payer_id: str, receiver_id: str | None, amount: Amount, job_id: str | None, note: str | None,
    idempotency_key: str | None, *, auto_key: bool,
) -> _Call[dict[str, Any]]:
    payer = _account(payer_id, "from_account")
    receiver = None if receiver_id is None else _account(receiver_id, "to_account")
    value = _wire(amount)
    key = idempotency_key
    if key is None and job_id is None and auto_key:
        key = f"client:{uuid.uuid4().hex}"  # a resend after a lost answer replays instead of charging twice
    return _Call("POST", "/transfers",
                 lambda s: s.charge(payer, receiver, value, job_id=job_id, note=note, idempotency_key=key), _obj,
                 body=_opt({"from_account": payer, "to_account": receiver, "amount": value, "job_id": job_id,
                            "note": note}),
                 headers=_idem(key), idempotent=key is not None or job_id is not None)


def _credit(account_id: str, amount: Amount, reason: str | None, idempotency_key: str | None) -> _Call[dict[str, Any]]:
    acct = _account(account_id)
    value = _wire(amount)
    return _Call("POST", f"/accounts/{_seg(acct, 'account_id')}/credit",
                 lambda s: s.credit(acct, value, reason, idempotency_key=idempotency_key), _obj,
                 body=_opt({"amount": value, "reason": reason}), headers=_idem(idempotency_key),
                 idempotent=idempotency_key is not None)


def _transfers(account_id: str | None, limit: int) -> _Call[list[dict[str, Any]]]:
    acct = None if account_id is None else _account(account_id)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
        raise ValidationError("limit must be an integer from 1 to 1000", field="limit")
    return _Call("GET", "/transfers", lambda s: s.get_transfers(account_id=acct, limit=limit), _objs,
                 params=_opt({"account": acct, "limit": limit}), idempotent=True)


def _get_transfer(transfer_id: str) -> _Call[dict[str, Any]]:
    seg = _seg(transfer_id, "transfer_id")
    return _Call("GET", f"/transfers/{seg}", lambda s: s.get_transfer(transfer_id), _obj, idempotent=True)


def _refund(
    transfer_id: str, amount: Amount | None, reason: str | None, idempotency_key: str | None,
) -> _Call[dict[str, Any]]:
    seg = _seg(transfer_id, "transfer_id")
    value = None if amount is None else _wire(amount)
    return _Call("POST", f"/transfers/{seg}/refunds",
                 lambda s: s.refund(transfer_id, value, reason, idempotency_key=idempotency_key), _obj,
                 body=_opt({"amount": value, "reason": reason}), headers=_idem(idempotency_key),
                 idempotent=idempotency_key is not None)


def _refunds(transfer_id: str) -> _Call[list[dict[str, Any]]]:
    seg = _seg(transfer_id, "transfer_id")
    return _Call("GET", f"/transfers/{seg}/refunds", lambda s: s.get_refunds(transfer_id), _objs, idempotent=True)


def _hold(
    payer_id: str, amount: Amount, receiver_id: str | None, job_id: str | None, timeout: float | None,
    note: str | None,
) -> _Call[dict[str, Any]]:
    payer = _account(payer_id, "payer")
    receiver = None if receiver_id is None else _account(receiver_id, "receiver")
    value = _wire(amount)
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float, Decimal))):
        raise ValidationError("timeout must be a number of seconds", field="timeout")
    wire_timeout = None if timeout is None else (timeout if isinstance(timeout, int) else float(timeout))
    return _Call("POST", "/holds",
                 lambda s: s.hold(payer, value, receiver, job_id, timeout=timeout, note=note), _obj,
                 body=_opt({"payer": payer, "amount": value, "receiver": receiver, "job_id": job_id,
                            "timeout": wire_timeout, "note": note}),
                 idempotent=job_id is not None)


def _get_hold(hold_id: str) -> _Call[dict[str, Any]]:
    return _Call("GET", f"/holds/{_seg(hold_id, 'hold_id')}", lambda s: s.get_hold(hold_id), _obj, idempotent=True)


def _capture(hold_id: str, amount: Amount | None) -> _Call[dict[str, Any]]:
    value = None if amount is None else _wire(amount)
    return _Call("POST", f"/holds/{_seg(hold_id, 'hold_id')}/capture", lambda s: s.capture(hold_id, value), _obj,
                 body=_opt({"amount": value}), idempotent=True)


def _void(hold_id: str) -> _Call[dict[str, Any]]:
    return _Call("POST", f"/holds/{_seg(hold_id, 'hold_id')}/void", lambda s: s.void(hold_id), _obj,
                 idempotent=True)


def _release_expired() -> _Call[int]:
    return _Call("POST", "/holds/release-expired", lambda s: {"released": s.release_expired_holds()},
                 lambda b: int(b["released"]), idempotent=True)


# -------------------------------------------------------------------- modes


def _local_service(json_path: str | os.PathLike[str] | None, database_url: str | None,
                   config: LedgerConfig | None) -> LedgerService:
    if config is not None:
        return LedgerService(config)
    if database_url is not None:
        return LedgerService(LedgerConfig(database_url=database_url))
    if json_path is not None:
        return LedgerService(LedgerConfig(ledger_path=Path(json_path), database_url=None))
    return LedgerService(LedgerConfig())


def _check_modes(json_path: object, database_url: object, base_url: object, service: object) -> None:
    given = [n for n, v in (("json_path", json_path), ("database_url", database_url), ("base_url", base_url),
                            ("service", service)) if v is not None]
    if len(given) > 1:
        raise ValidationError(f"give one of json_path, database_url, base_url or service, not {given}")


def _auth_headers(api_key: str | None) -> dict[str, str]:
    key = api_key if api_key is not None else os.environ.get("LEDGER_API_KEY")
    return {"Authorization": f"Bearer {key}"} if key else {}


def _answer(call: _Call[T], response: httpx.Response) -> T:
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code >= 400:
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            raise error_from_json(body)
        raise LedgerError(f"ledger API answered HTTP {response.status_code}", status=response.status_code)
    return call.parse(body)


def _should_retry(call: _Call[Any], exc: Exception | None, response: httpx.Response | None, attempt: int) -> bool:
    if attempt >= _RETRIES - 1:
        return False
    if exc is not None:
        return isinstance(exc, httpx.ConnectError) or (call.idempotent and isinstance(exc, httpx.TransportError))
    return response is not None and response.status_code == 503 and call.idempotent


def _backoff(attempt: int) -> float:
    return float(min(1.0, 0.05 * 2**attempt) * (0.5 + random.random()))


class _Base:
    def __init__(
        self,
        json_path: str | os.PathLike[str] | None,
        base_url: str | None,
        database_url: str | None,
        service: LedgerService | None,
        config: LedgerConfig | None,
    ) -> None:
        _check_modes(json_path, database_url, base_url, service)
        self.base_url = base_url.rstrip("/") if base_url is not None else None
        self._owns_service = service is None and base_url is None
        self.service: LedgerService | None = service
        if self.service is None and base_url is None:
            self.service = _local_service(json_path, database_url, config)

    @property
    def is_remote(self) -> bool:
        return self.base_url is not None

    def __repr__(self) -> str:
        where = self.base_url or (self.service.ledger.database_url if self.service else "?")
        return f"{type(self).__name__}({where!r})"


class LedgerClient(_Base):
    """The ledger, locally or over HTTP; see the module docstring. Use as a context
    manager or call :meth:`close`."""

    def __init__(
        self,
        json_path: str | os.PathLike[str] | None = None,
        *,
        base_url: str | None = None,
        database_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 10.0,
        service: LedgerService | None = None,
        config: LedgerConfig | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(json_path, base_url, database_url, service, config)
        self._http: httpx.Client | None = None
        if self.base_url is not None:
            self._http = httpx.Client(base_url=self.base_url, timeout=timeout, headers=_auth_headers(api_key),
                                      transport=transport)

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
        if self._owns_service and self.service is not None:
            self.service.close()

    def __enter__(self) -> LedgerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, call: _Call[T]) -> T:
        if self._http is None:
            assert self.service is not None
            return call.parse(call.local(self.service))
        for attempt in range(_RETRIES):
            try:
                response = self._http.request(call.method, call.path, json=call.body, params=call.params,
                                              headers=dict(call.headers))
            except httpx.HTTPError as exc:
                if _should_retry(call, exc, None, attempt):
                    time.sleep(_backoff(attempt))
                    continue
                raise StorageError(f"ledger API at {self.base_url} unreachable: {type(exc).__name__}") from None
            if _should_retry(call, None, response, attempt):
                time.sleep(_backoff(attempt))
                continue
            return _answer(call, response)
        raise AssertionError("unreachable")

    # The operations (each defined once above; see _Call).
    def ensure_account(self, account_id: str, initial_balance: Amount = 0,
                       meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Create the account unless it exists; the initial balance is granted once."""
        return self._run(_ensure_account(account_id, initial_balance, meta))

    def create_account(self, account_id: str, initial_balance: Amount = 0,
                       meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return self._run(_create_account(account_id, initial_balance, meta))

    def get_account(self, account_id: str) -> dict[str, Any]:
        return self._run(_get_account(account_id))

    def list_accounts(self) -> list[dict[str, Any]]:
        return self._run(_list_accounts())

    def get_balance(self, account_id: str) -> Decimal:
        return self._run(_get_balance(account_id))

    def can_pay(self, account_id: str, amount: Amount) -> bool:
        """Whether the account could pay now: a hint; a hold or charge is the guarantee."""
        return self._run(_can_pay(account_id, amount))

    def charge(self, payer_id: str, receiver_id: str | None, amount: Amount, job_id: str | None = None, *,
               note: str | None = None, idempotency_key: str | None = None) -> dict[str, Any]:
        """Move tokens payer → receiver; PaymentRequiredError when the payer cannot pay.
        Idempotent by job_id / idempotency_key."""
        call = _charge(payer_id, receiver_id, amount, job_id, note, idempotency_key, auto_key=self.is_remote)
        return self._run(call)

    def credit(self, account_id: str, amount: Amount, reason: str | None = None, *,
               idempotency_key: str | None = None) -> dict[str, Any]:
        return self._run(_credit(account_id, amount, reason, idempotency_key))

    def transfers(self, account_id: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Most recent transfers first."""
        return self._run(_transfers(account_id, limit))

    get_transfers = transfers

    def get_transfer(self, transfer_id: str) -> dict[str, Any]:
        return self._run(_get_transfer(transfer_id))

    def refund(self, transfer_id: str, amount: Amount | None = None, reason: str | None = None, *,
               idempotency_key: str | None = None) -> dict[str, Any]:
        return self._run(_refund(transfer_id, amount, reason, idempotency_key))

    def refunds(self, transfer_id: str) -> list[dict[str, Any]]:
        return self._run(_refunds(transfer_id))

    def hold(self, payer_id: str, amount: Amount, receiver_id: str | None = None, job_id: str | None = None, *,
             timeout: float | None = None, note: str | None = None) -> dict[str, Any]:
        """Reserve up to ``amount`` for a job; capture or void it later (or let it expire)."""
        return self._run(_hold(payer_id, amount, receiver_id, job_id, timeout, note))

    def get_hold(self, hold_id: str) -> dict[str, Any]:
        return self._run(_get_hold(hold_id))

    def capture(self, hold_id: str, amount: Amount | None = None) -> dict[str, Any]:
        return self._run(_capture(hold_id, amount))

    def void(self, hold_id: str) -> dict[str, Any]:
        return self._run(_void(hold_id))

    def release_expired_holds(self) -> int:
        return self._run(_release_expired())


class AsyncLedgerClient(_Base):
    """:class:`LedgerClient` for asyncio: the same operations as coroutines. Local
    mode runs the service in a worker thread, so the event loop never blocks."""

    def __init__(
        self,
        json_path: str | os.PathLike[str] | None = None,
        *,
        base_url: str | None = None,
        database_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 10.0,
        service: LedgerService | None = None,
        config: LedgerConfig | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(json_path, base_url, database_url, service, config)
        self._http: httpx.AsyncClient | None = None
        if self.base_url is not None:
            self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout, headers=_auth_headers(api_key),
                                           transport=transport)

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
        if self._owns_service and self.service is not None:
            self.service.close()

    async def __aenter__(self) -> AsyncLedgerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _run(self, call: _Call[T]) -> T:
        if self._http is None:
            assert self.service is not None
            return call.parse(await asyncio.to_thread(call.local, self.service))
        for attempt in range(_RETRIES):
            try:
                response = await self._http.request(call.method, call.path, json=call.body, params=call.params,
                                                    headers=dict(call.headers))
            except httpx.HTTPError as exc:
                if _should_retry(call, exc, None, attempt):
                    await asyncio.sleep(_backoff(attempt))
                    continue
                raise StorageError(f"ledger API at {self.base_url} unreachable: {type(exc).__name__}") from None
            if _should_retry(call, None, response, attempt):
                await asyncio.sleep(_backoff(attempt))
                continue
            return _answer(call, response)
        raise AssertionError("unreachable")

    async def ensure_account(self, account_id: str, initial_balance: Amount = 0,
                             meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return await self._run(_ensure_account(account_id, initial_balance, meta))

    async def create_account(self, account_id: str, initial_balance: Amount = 0,
                             meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return await self._run(_create_account(account_id, initial_balance, meta))

    async def get_account(self, account_id: str) -> dict[str, Any]:
        return await self._run(_get_account(account_id))

    async def list_accounts(self) -> list[dict[str, Any]]:
        return await self._run(_list_accounts())

    async def get_balance(self, account_id: str) -> Decimal:
        return await self._run(_get_balance(account_id))

    async def can_pay(self, account_id: str, amount: Amount) -> bool:
        return await self._run(_can_pay(account_id, amount))

    async def charge(self, payer_id: str, receiver_id: str | None, amount: Amount, job_id: str | None = None, *,
                     note: str | None = None, idempotency_key: str | None = None) -> dict[str, Any]:
        call = _charge(payer_id, receiver_id, amount, job_id, note, idempotency_key, auto_key=self.is_remote)
        return await self._run(call)

    async def credit(self, account_id: str, amount: Amount, reason: str | None = None, *,
                     idempotency_key: str | None = None) -> dict[str, Any]:
        return await self._run(_credit(account_id, amount, reason, idempotency_key))

    async def transfers(self, account_id: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        return await self._run(_transfers(account_id, limit))

    get_transfers = transfers

    async def get_transfer(self, transfer_id: str) -> dict[str, Any]:
        return await self._run(_get_transfer(transfer_id))

    async def refund(self, transfer_id: str, amount: Amount | None = None, reason: str | None = None, *,
                     idempotency_key: str | None = None) -> dict[str, Any]:
        return await self._run(_refund(transfer_id, amount, reason, idempotency_key))

    async def refunds(self, transfer_id: str) -> list[dict[str, Any]]:
        return await self._run(_refunds(transfer_id))

    async def hold(self, payer_id: str, amount: Amount, receiver_id: str | None = None, job_id: str | None = None,
                   *, timeout: float | None = None, note: str | None = None) -> dict[str, Any]:
        call = _hold(payer_id, amount, receiver_id, job_id, timeout, note)
        return await self._run(call)

    async def get_hold(self, hold_id: str) -> dict[str, Any]:
        return await self._run(_get_hold(hold_id))

    async def capture(self, hold_id: str, amount: Amount | None = None) -> dict[str, Any]:
        return await self._run(_capture(hold_id, amount))

    async def void(self, hold_id: str) -> dict[str, Any]:
        return await self._run(_void(hold_id))

    async def release_expired_holds(self) -> int:
        return await self._run(_release_expired())
