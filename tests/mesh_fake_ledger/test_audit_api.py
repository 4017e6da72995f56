"""The audit routes on a real uvicorn server: a client that trusts nothing but the
published keys checks every head and proof it is given, and the full audit over
HTTP names a tampered entry."""

from __future__ import annotations

import json
import sqlite3
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from ledger_http_helpers import Server, clean_env, run_server

from sardis_ledger import verifier
from sardis_ledger.verifier import TreeHeadTracker, VerificationError

ADMIN, READER, ALICE = "admin-key-0123456789", "reader-key-0123456789", "alice-key-0123456789"

APP = textwrap.dedent("""
    from mesh_fake_ledger.api import create_app
    from mesh_fake_ledger.audit_api import audit_router

    app = create_app(routers=[audit_router()])
""")


@dataclass
class Env:
    server: Server
    db: Path

    def get(self, path: str, key: str = ADMIN, **params: Any) -> httpx.Response:
        return httpx.get(self.server.url + path, params=params, headers={"X-API-Key": key}, timeout=30)

    def post(self, path: str, key: str = ADMIN, **body: Any) -> httpx.Response:
        return httpx.post(self.server.url + path, json=body, headers={"X-API-Key": key}, timeout=60)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("audit_api")
    (tmp / "audit_app.py").write_text(APP)
    keys = ('{"keys": ['
            f'{{"name": "ops", "scope": "admin", "key": "{ADMIN}"}},'
            f'{{"name": "dash", "scope": "read", "key": "{READER}"}},'
            f'{{"name": "alice", "scope": "account", "account": "alice", "key": "{ALICE}"}}]}}')
    server_env = clean_env(LEDGER_DATABASE_URL=f"sqlite:///{tmp / 'ledger.db'}", LEDGER_API_KEYS=keys,
                           LEDGER_KEY_DIR=str(tmp / "keys"))
    server_env["PYTHONPATH"] = f"{tmp}:{server_env['PYTHONPATH']}"
    with run_server(app="audit_app:app", env=server_env, log_dir=tmp) as srv:
        e = Env(srv, tmp / "ledger.db")
        for acct, balance in (("alice", 100), ("bob", 0), ("carol", 5)):
            e.post(f"/accounts/{acct}/ensure", initial_balance=balance).raise_for_status()
        yield e


def transfer(env: Env, src: str, dst: str, amount: int) -> str:
    r = env.post("/transfers", from_account=src, to_account=dst, amount=amount)
    r.raise_for_status()
    transfer_id: str = r.json()["id"]
    return transfer_id


def test_a_client_checks_every_head_and_proof(env: Env, tmp_path: Path) -> None:
    keys = verifier.load_public_keys(env.get("/keys").json())
    client = TreeHeadTracker(tmp_path / "held.json", keys, origin="sardis-ledger")

    def proof(old: int, new: int) -> list[str]:
        r = env.get("/proofs/consistency", old=old, new=new)
        r.raise_for_status()
        body: list[str] = r.json()["proof"]
        return body

    first = client.update(env.get("/tree-head").json())
    moved = transfer(env, "alice", "bob", 7)
    second = client.update(env.get("/tree-head").json(), proof)
    assert second.tree_size == first.tree_size + 2

    bundle = env.get("/proofs/inclusion", transfer_id=moved).json()
    proven = verifier.verify_inclusion_bundle(bundle, keys, origin="sardis-ledger", tracker=client)
    assert [(p.fields["account_id"], p.fields["entry_type"], p.fields["amount"]) for p in proven] == [
        ("alice", "debit", "7"), ("bob", "credit", "7")]
    old = env.get("/proofs/inclusion", sequence=1, tree_size=1).json()
    assert verifier.verify_inclusion_bundle(old, keys)[0].tree_size == 1
    by_entry = env.get("/proofs/inclusion", entry_id=proven[1].fields["entry_id"]).json()
    assert verifier.verify_inclusion_bundle(by_entry, keys)[0].sequence == proven[1].sequence

    forged = dict(env.get("/tree-head").json(), root="00" * 32)
    with pytest.raises(VerificationError, match="signature"):
        client.update(forged, proof)


@pytest.mark.parametrize(("params", "status", "code"), [
    ({}, 422, "invalid_request"),
    ({"sequence": 1, "transfer_id": "x"}, 422, "invalid_request"),
    ({"sequence": 0}, 422, "invalid_request"),
    ({"sequence": "abc"}, 422, "invalid_request"),
    ({"sequence": 10**9}, 422, "invalid_request"),
    ({"sequence": 1, "tree_size": 10**9}, 422, "invalid_request"),
    ({"transfer_id": "no-such-transfer"}, 404, "batch_not_found"),
    ({"entry_id": "no-such-entry"}, 404, "entry_not_found"),
])
def test_bad_proof_requests(env: Env, params: dict[str, Any], status: int, code: str) -> None:
    r = env.get("/proofs/inclusion", **params)
    assert r.status_code == status, r.text
    assert r.json()["error"] == code


def test_bad_consistency_requests(env: Env) -> None:
    for params in ({"old": 5, "new": 2}, {"old": -1}, {"old": 10**9}, {}):
        r = env.get("/proofs/consistency", **params)
        assert r.status_code == 422, (params, r.text)
        assert r.json()["error"] == "invalid_request"


def test_scopes(env: Env) -> None:
    assert env.get("/tree-head", key=READER).status_code == 200
    assert env.get("/keys", key=ALICE).status_code == 200
    assert env.get("/tree-head", key="wrong-key-0123456789").status_code == 401
    assert env.post("/verify", key=READER).status_code == 403
    mine = transfer(env, "alice", "carol", 1)
    theirs = transfer(env, "carol", "bob", 1)
    own = env.get("/proofs/inclusion", key=ALICE, transfer_id=mine)
    assert own.status_code == 200
    # alice proves her own leg; carol's leaf (and running balance) is not hers to see
    assert [json.loads(e["leaf"])["account_id"] for e in own.json()["entries"]] == ["alice"]
    assert verifier.verify_inclusion_bundle(own.json(), verifier.load_public_keys(env.get("/keys").json()))
    denied = env.get("/proofs/inclusion", key=ALICE, transfer_id=theirs)
    assert denied.status_code == 403
    assert "leaf" not in denied.text


def test_verify_over_http_names_the_tampered_entry(env: Env) -> None:
    report = env.post("/verify").json()
    assert report["ok"] is True, report
    assert report["signed_heads_checked"] >= 1
    size = report["tree_size"]
    raw = sqlite3.connect(env.db, isolation_level=None)
    raw.execute("DROP TRIGGER entries_no_update")
    raw.execute("UPDATE entries SET amount = amount * 10 WHERE seq = ?", (size - 3,))
    raw.close()
    report = env.post("/verify").json()
    assert report["ok"] is False
    assert report["first_bad_sequence"] == size - 2
    assert any(f"entry {size - 2}" in p for p in report["problems"])
