"""Hostile and malformed requests to a real server: each is a 4xx with a JSON body
carrying a stable ``error`` code, never a 500, and changes nothing."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from ledger_http_helpers import Server, clean_env, run_server

from mesh_fake_ledger import LedgerClient, ValidationError


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("errors_api")
    with run_server(env=clean_env(LEDGER_DATABASE_URL=f"sqlite:///{tmp / 'ledger.db'}"), log_dir=tmp) as srv:
        httpx.post(f"{srv.url}/accounts/alice/ensure", json={"initial_balance": 100}).raise_for_status()
        httpx.post(f"{srv.url}/accounts/provider/ensure", json={}).raise_for_status()
        yield srv


def _transfer(amount: str, extra: str = "") -> bytes:
    return (f'{{"from_account": "alice", "to_account": "provider", "amount": {amount}{extra}}}').encode()


JSON = {"Content-Type": "application/json"}

BAD_BODIES = [
    ("malformed JSON", b'{"from_account":', 422, "invalid_request"),
    ("not an object", b"[1, 2]", 422, "invalid_request"),
    ("unknown field", _transfer("1", ', "amuont": 2'), 422, "invalid_request"),
    ("float that lost precision", _transfer("0.30000000000000004"), 422, "invalid_request"),
    ("too many decimals", _transfer('"1.0000001"'), 422, "invalid_request"),
    ("huge exponent", _transfer("1e400"), 422, "invalid_request"),
    ("negative", _transfer("-5"), 422, "invalid_request"),
    ("zero", _transfer("0"), 422, "invalid_request"),
    ("boolean", _transfer("true"), 422, "invalid_request"),
    ("null", _transfer("null"), 422, "invalid_request"),
    ("list", _transfer("[1]"), 422, "invalid_request"),
    ("NaN literal", _transfer("NaN"), 422, "invalid_request"),
    ("Infinity literal", _transfer("Infinity"), 422, "invalid_request"),
    ("NaN string", _transfer('"NaN"'), 422, "invalid_request"),
    ("comma decimal", _transfer('"1,5"'), 422, "invalid_request"),
    ("5000-digit integer", _transfer("9" * 5000), 422, "invalid_request"),
    ("too large", _transfer("1" + "0" * 30), 422, "invalid_request"),
    ("deep nesting", b"[" * 20_000, 422, "invalid_request"),
    ("nesting within the limit of recursion", b'{"a":' * 100 + b"1" + b"}" * 100, 422, "invalid_request"),
    ("invalid UTF-8", b'{"from_account": "\xff\xfe"}', 422, "invalid_request"),
    ("control character job id", _transfer("1", ', "job_id": "a\\u0000b"'), 422, "invalid_request"),
    ("hostile from_account", b'{"from_account": "../../etc", "amount": 1}', 422, "invalid_request"),
    ("reserved account", b'{"from_account": "hold:x", "to_account": "provider", "amount": 1}', 422,
     "invalid_request"),
    ("long note", _transfer("1", ', "note": "%s"' % ("n" * 300)), 422, "invalid_request"),
    ("unknown payer", b'{"from_account": "ghost", "to_account": "provider", "amount": 1}', 404,
     "account_not_found"),
    ("overdraw", _transfer("101"), 402, "payment_required"),
    ("body too large", b'{"note": "' + b"x" * 70_000 + b'"}', 413, "payload_too_large"),
]


@pytest.mark.parametrize(("name", "body", "status", "code"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
def test_bad_transfer_bodies(server: Server, name: str, body: bytes, status: int, code: str) -> None:
    r = httpx.post(f"{server.url}/transfers", content=body, headers=JSON)
    assert r.status_code == status, r.text
    payload = r.json()
    assert payload["error"] == code
    assert isinstance(payload["message"], str)
    assert httpx.get(f"{server.url}/accounts/alice/balance").json()["balance"] == 100


def test_exact_json_numbers_are_accepted_exactly(server: Server) -> None:
    for raw, shown in (("10.1", "10.1"), ("1e0", 1), ("0.000001", "0.000001")):
        r = httpx.post(f"{server.url}/transfers", content=_transfer(raw), headers=JSON)
        assert r.status_code == 201, r.text
        assert r.json()["amount"] == shown
        refund = httpx.post(f"{server.url}/transfers/{r.json()['id']}/refunds", json={})
        assert refund.status_code == 201, refund.text
    assert httpx.get(f"{server.url}/accounts/alice/balance").json()["balance"] == 100


def test_chunked_body_without_length_is_limited(server: Server) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"note": "'
        for _ in range(100):
            yield b"x" * 1024

    r = httpx.post(f"{server.url}/transfers", content=chunks(), headers=JSON)
    assert r.status_code == 413
    assert r.json()["error"] == "payload_too_large"


@pytest.mark.parametrize("path", [
    "/accounts/%00/balance", "/accounts/" + "a" * 300 + "/balance", "/accounts/%C3%BC/balance",
    "/accounts/hold:x/balance", "/accounts/..%2F..%2Fetc/balance", "/accounts/%2e%2e/balance",
    "/transfers/%00", "/transfers/" + "x" * 300, "/transfers/nope", "/holds/nope", "/holds/%27%3B--",
    "/transfers?limit=abc", "/transfers?limit=100000000000000000000000000000", "/transfers?account=%00",
    "/accounts/alice/can-pay?amount=1.5e9999", "/accounts/alice/can-pay",
])
def test_hostile_paths_and_queries(server: Server, path: str) -> None:
    r = httpx.get(server.url + path)
    assert 400 <= r.status_code < 500, r.text
    assert isinstance(r.json()["error"], str)


def test_other_client_mistakes(server: Server) -> None:
    url = server.url
    r = httpx.post(f"{url}/transfers", content=_transfer("1"), headers={"Content-Type": "text/plain"})
    assert r.status_code == 422
    r = httpx.post(f"{url}/transfers", content=_transfer("1"), headers={**JSON, "Idempotency-Key": "k" * 500})
    assert r.status_code == 422
    r = httpx.delete(f"{url}/transfers")
    assert (r.status_code, r.json()["error"]) == (405, "method_not_allowed")
    r = httpx.post(f"{url}/holds/20200101T000000000000-0123456789abcdef0123/capture", json={"amount": "abc"})
    assert r.status_code == 422
    r = httpx.post(f"{url}/holds", json={"payer": "alice", "amount": 1, "timeout": 0})
    assert r.status_code == 422
    r = httpx.post(f"{url}/holds", json={"payer": "alice", "amount": 1, "timeout": "5"})
    assert r.status_code == 422
    r = httpx.post(f"{url}/accounts/alice/ensure", json={"initial_balance": 5, "meta": {"x": 1.5}})
    assert r.status_code == 422  # metadata numbers must be exact too
    r = httpx.get(f"{url}/transfers/0123456789abcdef0123456789abcdef")
    assert (r.status_code, r.json()["error"]) == (404, "batch_not_found")
    key = {"Idempotency-Key": "same-key"}
    assert httpx.post(f"{url}/transfers", content=_transfer("1"), headers={**JSON, **key}).status_code == 201
    assert httpx.post(f"{url}/transfers", content=_transfer("1"), headers={**JSON, **key}).status_code == 201
    r = httpx.post(f"{url}/transfers", content=_transfer("2"), headers={**JSON, **key})
    assert (r.status_code, r.json()["error"]) == (409, "idempotency_conflict")
    assert httpx.get(f"{url}/accounts/alice/balance").json()["balance"] == 99


def test_the_client_refuses_the_same_mistakes_before_sending(server: Server) -> None:
    with LedgerClient(base_url=server.url) as client:
        for call in (
            lambda: client.charge("alice", "provider", 0.1),  # type: ignore[arg-type]
            lambda: client.charge("alice", "provider", "1e400"),
            lambda: client.charge("../x", "provider", 1),
            lambda: client.hold("alice", 1, timeout="5"),  # type: ignore[arg-type]
            lambda: client.get_hold(""),
            lambda: client.transfers(limit=0),
        ):
            with pytest.raises(ValidationError):
                call()
        with pytest.raises(ValidationError):
            client.hold("alice", 1, timeout=-1)  # refused by the server, raised as the same error
