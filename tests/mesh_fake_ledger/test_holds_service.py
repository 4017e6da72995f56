"""Holds and refunds on LedgerService: semantics, expiry, and races between
threads and between processes (only one settlement per hold can commit; refunds
never exceed what was paid)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from ledger_http_helpers import clean_env

from mesh_fake_ledger import (
    AccountNotFoundError,
    HoldError,
    LedgerConfig,
    LedgerService,
    PaymentRequiredError,
    ValidationError,
)


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


@pytest.fixture
def service(url: str) -> Iterator[LedgerService]:
    with LedgerService(LedgerConfig(database_url=url)) as svc:
        svc.create_account_if_missing("alice", 100)
        svc.create_account_if_missing("provider")
        yield svc


def escrow_total(svc: LedgerService) -> Decimal:
    return sum((a.balance for a in svc.ledger.list_accounts(prefix="hold:", limit=10_000)), Decimal(0))


def test_hold_capture_partial_and_void(service: LedgerService) -> None:
    hold = service.hold("alice", 40, "provider", "job-1")
    assert (service.get_balance("alice"), escrow_total(service)) == (Decimal(60), Decimal(40))
    with pytest.raises(ValidationError):
        service.capture(hold["hold_id"], 41)
    done = service.capture(hold["hold_id"], "12.5")
    assert (done["captured"], done["released"], done["status"]) == ("12.5", "27.5", "captured")
    assert (service.get_balance("alice"), service.get_balance("provider"), escrow_total(service)) == (
        Decimal("87.5"), Decimal("12.5"), Decimal(0))
    settlement = service.get_transfer(done["settlement_id"])
    assert (settlement["kind"], settlement["to_account"], settlement["amount"], settlement["released"]) == (
        "hold_capture", "provider", "12.5", "27.5")
    voided = service.void(service.hold("alice", 10)["hold_id"])
    assert voided["status"] == "voided"
    assert service.void(voided["hold_id"])["status"] == "voided"  # idempotent
    assert service.get_balance("alice") == Decimal("87.5")
    assert service.ledger.verify().ok


def test_hold_input_checks(service: LedgerService) -> None:
    with pytest.raises(AccountNotFoundError):
        service.hold("nobody", 1)
    with pytest.raises(ValidationError):
        service.hold("alice", 1, "alice")
    with pytest.raises(ValidationError):
        service.hold("hold:x", 1)
    for timeout in (0, -1, float("nan"), float("inf"), 10**9, True):
        with pytest.raises(ValidationError):
            service.hold("alice", 1, timeout=timeout)
    with pytest.raises(PaymentRequiredError) as info:
        service.hold("alice", 101)
    assert info.value.to_json()["current_balance"] == 100
    with pytest.raises(ValidationError):
        service.get_hold("../../etc/passwd")


def test_expired_holds_are_released_lazily_and_by_a_new_process(url: str, service: LedgerService) -> None:
    started = time.monotonic()
    service.hold("alice", 30, timeout=1.0)
    service.hold("alice", 20, timeout=1.0)
    kept = service.hold("alice", 5, timeout=60)
    assert service.get_balance("alice") == 45
    time.sleep(max(0.0, started + 1.2 - time.monotonic()))
    with LedgerService(LedgerConfig(database_url=url)) as fresh:  # its first sweep reads every hold
        assert fresh.get_balance("alice") == 95
    assert service.get_balance("alice") == 95
    assert service.release_expired_holds() == 0
    assert service.get_hold(kept["hold_id"])["status"] == "open"
    assert escrow_total(service) == 5


def test_release_expired_holds_explicitly(service: LedgerService) -> None:
    started = time.monotonic()
    ids = [service.hold("alice", 10, timeout=1.0)["hold_id"] for _ in range(3)]
    time.sleep(max(0.0, started + 1.2 - time.monotonic()))
    assert service.release_expired_holds() == 3
    assert {service.get_hold(i)["status"] for i in ids} == {"expired"}
    with pytest.raises(HoldError):
        service.capture(ids[0])


def test_racing_settlements_in_threads_commit_once(service: LedgerService) -> None:
    holds = [service.hold("alice", 10)["hold_id"] for _ in range(5)]
    outcomes: list[str] = []
    lock = threading.Lock()

    def settle(hold_id: str, how: int) -> None:
        try:
            if how == 0:
                service.void(hold_id)
            else:
                service.capture(hold_id, how)
            result = f"ok{how}"
        except HoldError:
            result = "refused"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=settle, args=(h, how)) for h in holds for how in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    states = [service.get_hold(h) for h in holds]
    assert all(s["status"] in ("captured", "voided") for s in states)
    captured = sum(Decimal(str(s["captured"])) for s in states)
    assert service.get_balance("provider") == captured
    assert service.get_balance("alice") == 100 - captured
    assert escrow_total(service) == 0
    assert service.ledger.verify().ok


_RACER = r"""
import sys, json
from mesh_fake_ledger import LedgerService, LedgerConfig, HoldError
import time
url, action, holds, start = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), float(sys.argv[4])
won = 0
with LedgerService(LedgerConfig(database_url=url)) as svc:
    time.sleep(max(0.0, start - time.time()))  # all processes start together
    for hold_id in holds:
        try:
            if action == "capture":
                svc.capture(hold_id, 3)
            elif action == "void":
                svc.void(hold_id)
            else:
                svc.release_expired_holds()
            won += 1
        except HoldError:
            pass
print(json.dumps(won))
"""


def test_capture_void_and_expiry_race_across_processes(url: str, service: LedgerService) -> None:
    """Three processes settle the same holds three ways while they expire."""
    holds = [service.hold("alice", 5, timeout=2.1)["hold_id"] for _ in range(12)]
    start = str(time.time() + 2.0)
    procs = [subprocess.Popen([sys.executable, "-c", _RACER, url, action, json.dumps(holds), start], env=clean_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for action in ("capture", "void", "expire")]
    for p in procs:
        _out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    time.sleep(max(0.0, float(start) + 0.2 - time.time()))
    states = [service.get_hold(h) for h in holds]
    assert all(s["status"] in ("captured", "voided", "expired") for s in states)
    for h in holds:  # exactly one settling batch per hold
        entries = service.ledger.list_entries(account_id=f"hold:{h}").items
        assert [e.entry_type.value for e in entries] == ["credit", "debit"]
    captured = sum(Decimal(str(s["captured"])) for s in states)
    assert service.get_balance("provider") == captured
    assert service.get_balance("alice") == 100 - captured
    assert service.ledger.verify().ok


_REFUNDER = r"""
import sys, json
from mesh_fake_ledger import LedgerService, LedgerConfig, LedgerError
import time
url, tid, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
with LedgerService(LedgerConfig(database_url=url)) as svc:
    svc.get_refunds(tid)
    time.sleep(max(0.0, start - time.time()))  # all processes start together
    try:
        print(json.dumps(svc.refund(tid, 3)["amount"]))
    except LedgerError as exc:
        print(json.dumps(exc.code))
"""


def test_concurrent_refunds_never_exceed_the_transfer(url: str, service: LedgerService) -> None:
    charge = service.charge("alice", "provider", 10, job_id="refund-me")
    start = str(time.time() + 2.0)
    procs = [subprocess.Popen([sys.executable, "-c", _REFUNDER, url, charge["id"], start], env=clean_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(5)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        results.append(json.loads(out))
    assert sorted(map(str, results)) == ["3", "3", "3", "invalid_request", "invalid_request"]
    refunds = service.get_refunds(charge["id"])
    assert [r["amount"] for r in refunds] == [3, 3, 3]
    assert service.refund(charge["id"])["amount"] == 1  # what is left
    assert service.get_balance("alice") == 100
    assert service.ledger.verify().ok


def test_refund_only_payments(service: LedgerService) -> None:
    credit = service.credit("alice", 5)
    with pytest.raises(ValidationError):
        service.refund(credit["id"])
    hold = service.hold("alice", 10, job_id="cap")
    with pytest.raises(ValidationError):
        service.refund(hold["hold_transfer_id"])
    captured = service.capture(hold["hold_id"], 4)
    back = service.refund(captured["settlement_id"])
    assert (back["amount"], back["to_account"], back["reverses"]) == (4, "alice", captured["settlement_id"])
    assert service.get_balance("alice") == 105


def test_hold_committed_after_a_sweep_passed_its_expiry_is_still_released(service: LedgerService) -> None:
    """A slow commit (or another host's clock) can land an already-expired hold
    behind the sweep's position; deep sweeps re-read the recent past for it."""
    assert service.release_expired_holds() == 0  # the sweep is now past "now"
    past = datetime.now(UTC) - timedelta(seconds=5)
    hold_id = f"{past:%Y%m%dT%H%M%S%f}-{'ab' * 10}"
    meta = {"kind": "hold", "hold_id": hold_id, "payer": "alice", "receiver": "provider", "job_id": None,
            "expires_at": past.isoformat().replace("+00:00", "Z")}
    service.ledger.transfer("alice", f"hold:{hold_id}", 7, metadata=meta)  # as a late hold() would
    assert service.release_expired_holds() == 1
    assert service.get_hold(hold_id)["status"] == "expired"
    assert service.get_balance("alice") == 100
