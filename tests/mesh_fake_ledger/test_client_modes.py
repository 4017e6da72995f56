"""LedgerClient behaves the same on a JSON file, on SQL storage and over HTTP:
same results, same exceptions (a 402 comes back as PaymentRequiredError)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from ledger_http_helpers import Server, clean_env, free_port, have_json_backend, run_server

from mesh_fake_ledger import (
    AccountNotFoundError,
    AlreadyReversedError,
    AsyncLedgerClient,
    HoldError,
    IdempotencyConflictError,
    InsufficientBalanceError,
    LedgerClient,
    PaymentRequiredError,
    StorageError,
    ValidationError,
)

MODES = [pytest.param("json", marks=pytest.mark.skipif(not have_json_backend(), reason="no JSON backend yet")),
         "sqlite", "remote"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("client_api")
    with run_server(env=clean_env(LEDGER_DATABASE_URL=f"sqlite:///{tmp / 'ledger.db'}"), log_dir=tmp) as srv:
        yield srv


def make_client(mode: str, tmp_path: Path, server: Server | None) -> LedgerClient:
    if mode == "json":
        return LedgerClient(json_path=tmp_path / "ledger.json")
    if mode == "sqlite":
        return LedgerClient(database_url=f"sqlite:///{tmp_path / 'ledger.db'}")
    assert server is not None
    return LedgerClient(base_url=server.url)


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


@pytest.fixture
def client(mode: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[LedgerClient]:
    srv = request.getfixturevalue("server") if mode == "remote" else None
    with make_client(mode, tmp_path, srv) as c:
        yield c


@pytest.fixture
def ids() -> Callable[[str], str]:
    """Unique account ids, so tests can share the module's server."""
    tag = uuid.uuid4().hex[:8]
    return lambda name: f"{name}-{tag}"


def test_seed_usage(client: LedgerClient, ids: Callable[[str], str]) -> None:
    user, provider = ids("user1"), ids("provider")
    client.ensure_account(user, initial_balance=100)
    client.ensure_account(provider, initial_balance=0)
    client.ensure_account(user, initial_balance=100)  # granted once
    assert client.can_pay(user, 10)
    record = client.charge(user, provider, 10, job_id=ids("job_123"))
    assert record["id"]
    assert record["amount"] == 10
    assert record["from_account"] == user
    assert client.get_balance(user) == Decimal(90)
    assert isinstance(client.get_balance(user), Decimal)
    assert client.charge(user, provider, 10, job_id=ids("job_123"))["id"] == record["id"]  # retried job
    assert client.get_balance(provider) == 10
    assert [t["id"] for t in client.transfers(user, limit=1)] == [record["id"]]
    assert client.get_transfer(record["id"]) == record
    assert not client.can_pay(user, 91)
    assert client.charge(user, provider, "0.5")["amount"] == "0.5"
    assert client.get_balance(user) == Decimal("89.5")


def test_same_exceptions(client: LedgerClient, ids: Callable[[str], str]) -> None:
    payer, provider = ids("payer"), ids("provider")
    client.ensure_account(payer, initial_balance=5)
    client.ensure_account(provider)
    with pytest.raises(PaymentRequiredError) as info:
        client.charge(payer, provider, 6, job_id=ids("big"))
    assert isinstance(info.value, InsufficientBalanceError)
    body = info.value.to_json()
    assert (body["required_tokens"], body["current_balance"], body["account_id"]) == (6, 5, payer)
    with pytest.raises(AccountNotFoundError) as missing:
        client.get_balance(ids("nobody"))
    assert missing.value.account_id == ids("nobody")
    with pytest.raises(AccountNotFoundError):
        client.charge(payer, ids("nobody"), 1)
    for bad_amount in (1.5, -1, 0, "abc", "1e400", True, "0.0000001"):
        with pytest.raises(ValidationError):
            client.charge(payer, provider, bad_amount)  # type: ignore[arg-type]
    for bad_id in ("../etc", "a/b", "", "x" * 200, "hold:abc", "sp ace", "\x00"):
        with pytest.raises(ValidationError):
            client.get_balance(bad_id)
    client.charge(payer, provider, 1, job_id=ids("j"))
    with pytest.raises(IdempotencyConflictError):
        client.charge(payer, provider, 2, job_id=ids("j"))
    assert client.get_balance(payer) == 4


def test_holds_capture_void_and_expiry(client: LedgerClient, ids: Callable[[str], str]) -> None:
    payer, provider = ids("payer"), ids("provider")
    client.ensure_account(payer, initial_balance=100)
    client.ensure_account(provider)
    hold = client.hold(payer, 30, provider, job_id=ids("job"))
    assert hold["status"] == "open"
    assert hold["amount"] == 30
    assert client.get_balance(payer) == 70  # reserved funds are not spendable
    assert client.hold(payer, 30, provider, job_id=ids("job"))["hold_id"] == hold["hold_id"]  # retried
    with pytest.raises(IdempotencyConflictError):
        client.hold(payer, 31, provider, job_id=ids("job"))
    with pytest.raises(PaymentRequiredError):
        client.hold(payer, 71, provider)
    done = client.capture(hold["hold_id"], 12)
    assert (done["status"], done["captured"], done["released"]) == ("captured", 12, 18)
    assert client.capture(hold["hold_id"], 12)["settlement_id"] == done["settlement_id"]  # retried capture
    assert (client.get_balance(payer), client.get_balance(provider)) == (Decimal(88), Decimal(12))
    with pytest.raises(HoldError):
        client.void(hold["hold_id"])
    with pytest.raises(HoldError):
        client.capture(hold["hold_id"], 13)

    voided = client.void(client.hold(payer, 8, provider)["hold_id"])
    assert voided["status"] == "voided"
    assert client.get_balance(payer) == 88

    started = time.monotonic()
    short = client.hold(payer, 50, provider, timeout=1.0)
    assert client.get_balance(payer) == 38
    time.sleep(max(0.0, started + 1.2 - time.monotonic()))
    assert client.get_balance(payer) == 88  # expiry is reflected without anyone touching the hold
    assert client.get_hold(short["hold_id"])["status"] == "expired"
    with pytest.raises(HoldError) as late:
        client.capture(short["hold_id"])
    assert late.value.to_json()["reason"] == "already_settled"
    with pytest.raises(ValidationError):
        client.get_hold("not-a-hold")
    with pytest.raises(HoldError):
        client.get_hold("20200101T000000000000-0123456789abcdef0123")


def test_refunds(client: LedgerClient, ids: Callable[[str], str]) -> None:
    payer, provider = ids("payer"), ids("provider")
    client.ensure_account(payer, initial_balance=20)
    client.ensure_account(provider)
    charge = client.charge(payer, provider, 10, job_id=ids("job"))
    part = client.refund(charge["id"], 4, reason="partial outage", idempotency_key=ids("r1"))
    assert (part["kind"], part["reverses"], part["amount"], part["from_account"]) == (
        "refund", charge["id"], 4, provider)
    assert client.refund(charge["id"], 4, idempotency_key=ids("r1"))["id"] == part["id"]  # retried
    with pytest.raises(ValidationError):
        client.refund(charge["id"], 7)  # only 6 left
    rest = client.refund(charge["id"])
    assert rest["amount"] == 6
    with pytest.raises(AlreadyReversedError):
        client.refund(charge["id"], 1)
    assert [r["id"] for r in client.refunds(charge["id"])] == [part["id"], rest["id"]]
    assert client.get_balance(payer) == 20


def test_credit_and_accounts(client: LedgerClient, ids: Callable[[str], str]) -> None:
    acct = ids("acct")
    created = client.create_account(acct, 3)
    assert created["id"] == acct
    assert created["balance"] == 3
    credit = client.credit(acct, "2.25", reason="grant")
    assert (credit["kind"], credit["to_account"], credit["amount"], credit["note"]) == ("credit", acct, "2.25",
                                                                                         "grant")
    assert client.get_account(acct)["balance"] == "5.25"
    assert acct in {a["id"] for a in client.list_accounts()}


def _normalise(value: Any) -> Any:
    volatile = {"id", "timestamp", "created_at", "sequence", "merkle_root", "hold_id", "expires_at",
                "hold_transfer_id", "settlement_id", "settled_at", "reverses"}
    if isinstance(value, dict):
        return {k: ("*" if k in volatile else _normalise(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    if isinstance(value, str) and value.startswith("hold:"):
        return "hold:*"  # escrow accounts are named after their (random) hold id
    return value


def _scenario(client: LedgerClient) -> list[Any]:
    out: list[Any] = [client.ensure_account("alice", 50), client.ensure_account("provider"),
                      client.charge("alice", "provider", "2.5", job_id="j1"), client.can_pay("alice", 48)]
    hold = client.hold("alice", 10, "provider", job_id="j2")
    out += [hold, client.capture(hold["hold_id"], 4), client.get_balance("alice")]
    out += [client.refund(client.transfers("alice", 5)[0]["id"], 1), client.transfers("alice", 10)]
    for call in (lambda: client.charge("alice", "provider", 100), lambda: client.get_balance("zed")):
        try:
            call()
        except Exception as exc:
            out.append((type(exc).__name__, {k: v for k, v in exc.to_json().items() if k != "message"}))  # type: ignore[attr-defined]
    return out


def test_every_mode_gives_the_same_answers(tmp_path: Path) -> None:
    results = {}
    modes = ["sqlite", "remote"] + (["json"] if have_json_backend() else [])
    for mode in modes:
        d = tmp_path / mode
        d.mkdir()
        if mode == "remote":
            env = clean_env(LEDGER_DATABASE_URL=f"sqlite:///{d / 'srv.db'}")
            with run_server(env=env, log_dir=d) as srv, LedgerClient(base_url=srv.url) as c:
                results[mode] = _normalise(_scenario(c))
        else:
            with make_client(mode, d, None) as c:
                results[mode] = _normalise(_scenario(c))
    assert all(r == results["sqlite"] for r in results.values()), results


def test_unreachable_server_is_a_storage_error() -> None:
    with LedgerClient(base_url=f"http://127.0.0.1:{free_port()}", timeout=2) as c, pytest.raises(StorageError):
        c.get_balance("alice")


def test_one_of_the_modes_only(tmp_path: Path) -> None:
    with pytest.raises(ValidationError):
        LedgerClient(json_path=tmp_path / "a.json", base_url="http://127.0.0.1:1")


@pytest.mark.parametrize("remote", [False, True])
def test_async_client(remote: bool, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    tag = uuid.uuid4().hex[:8]
    alice, provider = f"alice-{tag}", f"provider-{tag}"

    async def scenario() -> None:
        if remote:
            srv: Server = request.getfixturevalue("server")
            client = AsyncLedgerClient(base_url=srv.url)
        else:
            client = AsyncLedgerClient(database_url=f"sqlite:///{tmp_path / 'a.db'}")
        async with client:
            await client.ensure_account(alice, 20)
            await client.ensure_account(provider)
            charges = await asyncio.gather(*(client.charge(alice, provider, 3, job_id=f"{tag}-{i}")
                                             for i in range(5)))
            assert len({c["id"] for c in charges}) == 5
            with pytest.raises(PaymentRequiredError):
                await client.charge(alice, provider, 6)
            hold = await client.hold(alice, 5, provider)
            assert (await client.capture(hold["hold_id"], 2))["captured"] == 2
            assert await client.get_balance(alice) == 3
            assert await client.can_pay(alice, 3)
            assert len(await client.transfers(alice, limit=100)) == 8

    asyncio.run(scenario())
