"""API keys and scopes: the key file, authentication, what each scope may do over
real HTTP, the loopback-only default, and keys kept out of logs and memory."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from ledger_http_helpers import Server, clean_env, free_port, run_server

from mesh_fake_ledger import AuthError, LedgerClient, LedgerConfig, LedgerService, ValidationError
from mesh_fake_ledger.api import create_app, serve
from mesh_fake_ledger.security import KeyStore, generate_key, hash_key, is_loopback

ADMIN = "admin-key-" + "a" * 20
ALICE = "alice-key-" + "b" * 20
PROVIDER = "provider-key-" + "c" * 20
READER = "reader-key-" + "d" * 20
WRONG = "wrong-key-" + "e" * 20


def key_file(path: Path) -> Path:
    path.write_text(json.dumps({"keys": [
        {"name": "ops", "scope": "admin", "sha256": hash_key(ADMIN)},
        {"name": "alice-app", "scope": "account", "account": "alice", "sha256": hash_key(ALICE)},
        {"name": "provider-app", "scope": "account", "account": "provider", "key": PROVIDER},
        {"name": "dashboard", "scope": "read", "sha256": hash_key(READER).upper()},
    ]}))
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("keys_api")
    env = clean_env(LEDGER_DATABASE_URL=f"sqlite:///{tmp / 'ledger.db'}",
                    LEDGER_API_KEYS_FILE=str(key_file(tmp / "keys.json")))
    with run_server(env=env, log_dir=tmp) as srv:
        yield srv


def call(server: Server, method: str, path: str, key: str | None = None, *, bearer: bool = True,
         **kwargs: object) -> httpx.Response:
    headers = {} if key is None else ({"Authorization": f"Bearer {key}"} if bearer else {"X-API-Key": key})
    return httpx.request(method, server.url + path, headers=headers, **kwargs)  # type: ignore[arg-type]


def test_key_file_parsing(tmp_path: Path) -> None:
    store = KeyStore.from_file(key_file(tmp_path / "k.json"))
    assert len(store) == 4
    assert store.authenticate(ALICE).account == "alice"
    assert store.authenticate(PROVIDER).scope == "account"
    assert store.authenticate(READER).scope == "read"
    for bad in (None, "", WRONG, ALICE + "x", "x" * 10_000):
        with pytest.raises(AuthError):
            store.authenticate(bad)
    text = repr(store) + "".join(repr(k) for k in store._keys)
    for secret in (ADMIN, ALICE, PROVIDER, hash_key(ADMIN)):
        assert secret not in text
    assert all(not hasattr(k, "key") for k in store._keys)  # plaintext keys are dropped on load
    bad_files = [
        {"keys": [{"name": "x", "scope": "root", "key": ADMIN}]},
        {"keys": [{"name": "x", "scope": "account", "key": ADMIN}]},
        {"keys": [{"name": "x", "scope": "admin", "account": "alice", "key": ADMIN}]},
        {"keys": [{"name": "x", "scope": "admin", "key": ADMIN, "sha256": hash_key(ADMIN)}]},
        {"keys": [{"name": "x", "scope": "admin", "key": "short"}]},
        {"keys": [{"name": "x", "scope": "admin", "sha256": "abc"}]},
        {"keys": [{"name": "x", "scope": "admin", "key": ADMIN, "extra": 1}]},
        {"keys": "nope"},
    ]
    for i, data in enumerate(bad_files):
        path = tmp_path / f"bad{i}.json"
        path.write_text(json.dumps(data))
        with pytest.raises(ValidationError):
            KeyStore.from_file(path)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValidationError):
        KeyStore.from_file(tmp_path / "broken.json")
    assert KeyStore.from_env({}) is None
    inline = KeyStore.from_env({"LEDGER_API_KEYS": json.dumps([{"name": "a", "scope": "read", "key": READER}])})
    assert inline is not None
    assert inline.authenticate(READER).name == "a"
    assert generate_key() != generate_key()
    assert len(generate_key()) > 40


def test_scopes_over_http(server: Server) -> None:
    assert call(server, "GET", "/health").status_code == 200
    r = call(server, "GET", "/accounts")
    assert (r.status_code, r.json()["error"]) == (401, "unauthorized")
    assert r.headers["www-authenticate"] == "Bearer"
    assert call(server, "GET", "/accounts", WRONG).status_code == 401

    # admin: creates and credits accounts
    assert call(server, "POST", "/accounts/alice/ensure", ADMIN, json={"initial_balance": 50}).status_code == 200
    assert call(server, "POST", "/accounts/bob/ensure", ADMIN, json={"initial_balance": 50}).status_code == 200
    assert call(server, "POST", "/accounts/provider/ensure", ADMIN, bearer=False, json={}).status_code == 200
    assert call(server, "POST", "/accounts/alice/credit", ADMIN, json={"amount": 5}).status_code == 201

    # account key: spends only from its own account, reads only its own data
    pay = {"from_account": "alice", "to_account": "provider", "amount": 10}
    charge = call(server, "POST", "/transfers", ALICE, json=pay)
    assert charge.status_code == 201
    r = call(server, "POST", "/transfers", ALICE, json={**pay, "from_account": "bob"})
    assert (r.status_code, r.json()["error"], r.json()["reason"]) == (403, "unauthorized", "forbidden")
    assert call(server, "POST", "/accounts/alice/credit", ALICE, json={"amount": 5}).status_code == 403
    assert call(server, "POST", "/accounts/alice/ensure", ALICE, json={"initial_balance": 5}).status_code == 403
    assert call(server, "POST", "/accounts/alice/ensure", ALICE, json={}).status_code == 200
    assert call(server, "POST", "/accounts/carl/ensure", ALICE, json={}).status_code == 403
    assert call(server, "GET", "/accounts/alice/balance", ALICE, bearer=False).json()["balance"] == 45
    assert call(server, "GET", "/accounts/bob/balance", ALICE).status_code == 403
    assert call(server, "GET", "/accounts", ALICE).status_code == 403
    assert call(server, "GET", "/transfers", ALICE).status_code == 403
    assert call(server, "GET", "/transfers?account=alice", ALICE).status_code == 200
    assert call(server, "GET", f"/transfers/{charge.json()['id']}", ALICE).status_code == 200
    assert call(server, "POST", f"/transfers/{charge.json()['id']}/refunds", ALICE, json={}).status_code == 403
    hold = call(server, "POST", "/holds", ALICE, json={"payer": "alice", "receiver": "provider", "amount": 5})
    assert hold.status_code == 201
    hold_id = hold.json()["hold_id"]
    assert call(server, "POST", "/holds", ALICE, json={"payer": "bob", "amount": 5}).status_code == 403
    assert call(server, "POST", f"/holds/{hold_id}/void", ALICE).status_code == 403  # only the receiver voids
    assert call(server, "POST", "/holds/release-expired", ALICE).status_code == 403

    # the receiver's key: voids holds made out to it, refunds what it received
    assert call(server, "POST", f"/holds/{hold_id}/void", PROVIDER).json()["status"] == "voided"
    refund = call(server, "POST", f"/transfers/{charge.json()['id']}/refunds", PROVIDER, json={"amount": 3})
    assert refund.status_code == 201
    assert call(server, "GET", "/accounts/bob/balance", PROVIDER).status_code == 403

    # read-only: sees everything, changes nothing
    assert call(server, "GET", "/accounts", READER).status_code == 200
    assert call(server, "GET", "/transfers", READER).status_code == 200
    assert call(server, "GET", "/accounts/bob/balance", READER).json()["balance"] == 50
    assert call(server, "POST", "/transfers", READER, json=pay).status_code == 403
    assert call(server, "POST", "/accounts/zed/ensure", READER, json={}).status_code == 403
    assert call(server, "GET", "/accounts/alice/balance", ADMIN).json()["balance"] == 48


def test_remote_client_with_keys_raises_auth_errors(server: Server) -> None:
    with LedgerClient(base_url=server.url, api_key=ALICE) as alice:
        assert alice.get_balance("alice") >= 0
        with pytest.raises(AuthError):
            alice.get_balance("bob")
        with pytest.raises(AuthError):
            alice.credit("alice", 1)
    with LedgerClient(base_url=server.url) as anonymous, pytest.raises(AuthError):
        anonymous.list_accounts()


def test_keys_never_reach_the_log(server: Server) -> None:
    for key in (ADMIN, ALICE, WRONG, PROVIDER, READER):
        call(server, "GET", "/accounts/alice/balance", key)
        call(server, "GET", "/accounts/alice/balance", key, bearer=False)
    log = server.log()
    assert "GET /accounts/alice/balance" in log  # the access log is on
    for secret in (ADMIN, ALICE, WRONG, PROVIDER, READER, hash_key(ADMIN)):
        assert secret not in log


def test_without_keys_only_loopback_clients_are_served(tmp_path: Path) -> None:
    service = LedgerService(LedgerConfig(database_url=f"sqlite:///{tmp_path / 'l.db'}"))

    async def status(client_host: str, insecure: bool) -> int:
        app = create_app(service, insecure=insecure, keys=None)
        app.state.ledger_runtime._keys_loaded = True  # no keys, whatever the environment says
        transport = httpx.ASGITransport(app=app, client=(client_host, 4321))
        async with httpx.AsyncClient(transport=transport, base_url="http://ledger") as c:
            return (await c.get("/accounts")).status_code

    assert asyncio.run(status("127.0.0.1", False)) == 200
    assert asyncio.run(status("::1", False)) == 200
    assert asyncio.run(status("10.1.2.3", False)) == 403
    assert asyncio.run(status("10.1.2.3", True)) == 200
    service.close()


def test_serve_refuses_to_listen_beyond_loopback_without_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("LEDGER_API_KEYS_FILE", "LEDGER_API_KEYS", "LEDGER_INSECURE"):
        monkeypatch.delenv(var, raising=False)
    for host in ("0.0.0.0", "::", "192.168.1.10"):
        with pytest.raises(ValidationError, match="without API keys"):
            serve(host, free_port())
    with pytest.raises(ValidationError):
        serve("127.0.0.1", 70000)
    assert is_loopback("127.0.0.1")
    assert is_loopback("localhost")
    assert is_loopback("::1")
    assert not is_loopback("0.0.0.0")
    assert not is_loopback("example.com")


def test_broken_key_file_fails_startup(tmp_path: Path) -> None:
    (tmp_path / "keys.json").write_text('{"keys": [{"name": "x", "scope": "god", "key": "0123456789abcdef"}]}')
    env = clean_env(LEDGER_DATABASE_URL=f"sqlite:///{tmp_path / 'l.db'}",
                    LEDGER_API_KEYS_FILE=str(tmp_path / "keys.json"))
    with pytest.raises(RuntimeError, match="scope"), run_server(env=env, log_dir=tmp_path, startup_timeout=20):
        pass
