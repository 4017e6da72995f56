"""The engine's behaviour, once, on every backend (``backend_url``: memory, SQLite,
PostgreSQL, and any backend that joins the fixture).

Each test states one promise of the engine (issue 2 and the sardis seed): entries
with receipts, point-in-time balances, atomic batches, rollback, idempotency,
accounts and assets, listings, checkpoints and the audit.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from sardis_ledger import (
    AccountExistsError,
    AccountNotFoundError,
    AlreadyReversedError,
    AssetMismatchError,
    BatchNotFoundError,
    EntrySpec,
    IdempotencyConflictError,
    InsufficientBalanceError,
    Ledger,
    LedgerBatch,
    LedgerEntry,
    LedgerEntryType,
    Receipt,
    ValidationError,
    merkle,
)


@pytest.fixture
def ledger(backend_url: str) -> Iterator[Ledger]:
    with Ledger(backend_url, checkpoint_interval=5) as led:
        yield led


def _size(ledger: Ledger) -> int:
    return ledger.tree_head().tree_size


def _check_receipt(ledger: Ledger, entry: LedgerEntry) -> None:
    assert entry.receipt is not None
    assert entry.receipt.verify(entry.leaf)
    assert entry.receipt.leaf_index == entry.sequence - 1
    assert ledger.root_at(entry.receipt.tree_size) == entry.receipt.root
    assert ledger.verify_receipt(entry)


# -- entries and receipts ------------------------------------------------------------


def test_create_entry_returns_the_seed_fields_and_a_receipt(ledger: Ledger) -> None:
    entry = ledger.create_entry(
        "acc_123", Decimal("100.50"), LedgerEntryType.CREDIT, reference="payment_456", metadata={"source": "bank"}
    )
    assert isinstance(entry.entry_id, str)
    assert entry.entry_id
    assert entry.account_id == "acc_123"
    assert entry.amount == Decimal("100.50")
    assert entry.entry_type is LedgerEntryType.CREDIT
    assert entry.running_balance == Decimal("100.5")
    assert entry.sequence == 1
    assert entry.created_at.tzinfo is not None
    assert abs(entry.created_at - datetime.now(UTC)) < timedelta(minutes=5)
    assert entry.reference == "payment_456"
    assert entry.metadata == {"source": "bank"}
    assert entry.asset == "TOKEN"
    head = ledger.tree_head()
    assert entry.merkle_root == head.root
    assert entry.receipt is not None
    assert (entry.receipt.leaf_index, entry.receipt.tree_size) == (0, 1)
    _check_receipt(ledger, entry)
    # The receipt the write returned is the one the ledger gives later.
    assert entry.receipt == ledger.receipt(1)
    assert ledger.get_entry(entry.entry_id) == entry


def test_debit_reduces_balance_and_get_balance_reads_it(ledger: Ledger) -> None:
    ledger.create_entry("acc", "500.00", "credit")
    debit = ledger.create_entry("acc", "100.00", "debit", reference="w")
    assert debit.running_balance == Decimal(400)
    assert ledger.get_balance("acc") == Decimal(400)
    assert ledger.get_balance("nobody") == Decimal(0)


def test_receipts_of_a_bulk_write_verify_now_and_after_the_log_grows(ledger: Ledger) -> None:
    ledger.create_entry("bank", 10_000, "credit")
    batches = ledger.transfer_many([("bank", f"u{i % 7}", i + 1) for i in range(37)])
    head = ledger.tree_head()
    assert head.tree_size == 1 + 2 * 37
    for batch in batches:
        assert len(batch.entries) == 2
        for entry in batch.entries:
            assert entry.receipt is not None
            assert entry.receipt.tree_size == head.tree_size
            assert entry.receipt.root == head.root
            _check_receipt(ledger, entry)
            assert entry.receipt == ledger.receipt(entry.sequence)
    old = head
    ledger.transfer_many([("bank", "u1", 1)] * 5)
    new = ledger.tree_head()
    for seq in (1, 2, 40, 75):
        r = ledger.receipt(seq)
        assert r.tree_size == new.tree_size
        assert r.verify()
        assert ledger.receipt(seq, old.tree_size).root == old.root
    proof = [bytes.fromhex(p) for p in ledger.consistency_proof(old.tree_size)]
    assert merkle.verify_consistency(
        old.tree_size, new.tree_size, bytes.fromhex(old.root), bytes.fromhex(new.root), proof
    )


# -- point-in-time balances ----------------------------------------------------------


def test_balance_at_a_sequence_number_or_a_time(ledger: Ledger) -> None:
    first = ledger.create_entry("a", 100, "credit")
    time.sleep(0.002)
    mid = datetime.now(UTC)
    time.sleep(0.002)
    ledger.create_entry("a", 30, "debit")
    ledger.create_entry("b", 5, "credit")
    ledger.create_entry("a", 7, "credit")
    assert [ledger.get_balance("a", at=s) for s in range(5)] == [0, 100, 70, 70, 77]
    assert ledger.get_balance("a", at=99) == 77  # beyond the head: the current state
    assert ledger.get_balance("a", at=mid) == 100
    assert ledger.get_balance("a", at=first.created_at) == 100
    assert ledger.get_balance("a", at=first.created_at - timedelta(seconds=1)) == 0
    assert ledger.get_balance("a", at=datetime.now(UTC) + timedelta(days=1)) == 77
    with pytest.raises(ValidationError):
        ledger.get_balance("a", at=datetime.now())  # naive: ambiguous
    with pytest.raises(ValidationError):
        ledger.get_balance("a", at=-1)


# -- batches -------------------------------------------------------------------------


def test_batch_is_atomic_a_failing_leg_writes_nothing(ledger: Ledger) -> None:
    ledger.create_entry("payer", 100, "credit")
    size = _size(ledger)
    with pytest.raises(InsufficientBalanceError) as info:
        ledger.create_batch([
            {"account_id": "payee", "amount": "60", "entry_type": "credit"},
            {"account_id": "payer", "amount": "60", "entry_type": "debit"},
            {"account_id": "payer", "amount": "60", "entry_type": "debit"},
        ])
    assert info.value.account_id == "payer"
    assert _size(ledger) == size
    assert ledger.get_balance("payer") == 100
    assert not ledger.account_exists("payee")  # the credit leg's implicit account rolled back too
    assert ledger.verify().ok


def test_batch_legs_apply_in_order(ledger: Ledger) -> None:
    batch = ledger.create_batch([
        EntrySpec("x", Decimal(5), LedgerEntryType.CREDIT),
        EntrySpec("x", Decimal(5), LedgerEntryType.DEBIT),
    ])
    assert [e.running_balance for e in batch.entries] == [5, 0]
    assert isinstance(batch, LedgerBatch)
    assert batch.batch_id
    assert ledger.get_batch(batch.batch_id) == batch


def test_transfer_many_is_one_atomic_commit(ledger: Ledger) -> None:
    ledger.create_entry("a", 10, "credit")
    size = _size(ledger)
    with pytest.raises(InsufficientBalanceError):
        ledger.transfer_many([("a", "b", 4), ("a", "b", 4), ("a", "b", 4)])
    assert _size(ledger) == size
    assert ledger.get_balance("a") == 10
    assert len(ledger.transfer_many([("a", "b", 4), ("b", "c", 4)])) == 2
    assert (ledger.get_balance("a"), ledger.get_balance("b"), ledger.get_balance("c")) == (6, 0, 4)


def test_bulk_write_streamed_in_chunks_is_still_one_commit(ledger: Ledger) -> None:
    """A bulk write hands its rows to the storage in chunks (``STREAM_ENTRIES``);
    a refusal after several chunks went out still leaves nothing behind, and a
    write of several chunks reads back whole, in order, with valid receipts."""
    from sardis_ledger._write_path import STREAM_ENTRIES

    n = STREAM_ENTRIES + STREAM_ENTRIES // 2  # transfers: three chunks of entries
    ledger.create_entry("a", n, "credit")
    size = _size(ledger)
    with pytest.raises(InsufficientBalanceError):
        ledger.transfer_many([("a", f"b{i % 5}", 1) for i in range(n)] + [("a", "b0", 1)])
    assert _size(ledger) == size
    assert ledger.get_balance("a") == n
    assert ledger.list_entries(account_id="b0", limit=1).items == ()
    batches = ledger.transfer_many([("a", f"b{i % 5}", 1) for i in range(n)])
    assert _size(ledger) == size + 2 * n
    assert [e.sequence for b in batches for e in b.entries] == list(range(size + 1, size + 2 * n + 1))
    assert ledger.get_balance("a") == 0
    assert sum(ledger.get_balance(f"b{i}") for i in range(5)) == n
    for b in (batches[0], batches[n // 2], batches[-1]):
        assert ledger.get_batch(b.batch_id) == b
        assert all(ledger.verify_receipt(e) for e in b.entries)
    assert ledger.verify().ok


def test_a_write_cannot_reverse_a_batch_it_creates(ledger: Ledger) -> None:
    """Whether the earlier batch's rows were already handed to the storage (a bulk
    write streams them in chunks) must not decide the outcome: always refused."""
    from sardis_ledger._requests import Request, transfer_request
    from sardis_ledger._write_path import STREAM_ENTRIES

    ledger.create_entry("a", 1_000, "credit")
    size = _size(ledger)
    for filler in (0, STREAM_ENTRIES):  # the reversed batch is before / after a chunk boundary
        reqs = [transfer_request("a", "b", 1, None, None) for _ in range(filler // 2 + 1)]
        reversal = Request([], reverses=reqs[-1].batch_id, reason="same call")
        with pytest.raises(ValidationError, match="written by this same call"):
            ledger._post([*reqs, reversal])
        assert _size(ledger) == size


def test_post_many_commits_all_batches_or_none(ledger: Ledger) -> None:
    ok = [{"account_id": "m", "amount": 1, "entry_type": "credit"}]
    bad = [{"account_id": "m", "amount": 99, "entry_type": "debit"}]
    with pytest.raises(InsufficientBalanceError):
        ledger.post_many([ok, ok, bad])
    assert _size(ledger) == 0
    assert len(ledger.post_many([ok, ok])) == 2
    assert ledger.get_balance("m") == 2


# -- rollback ------------------------------------------------------------------------


def test_rollback_appends_the_compensating_batch_and_keeps_the_original(ledger: Ledger) -> None:
    ledger.create_entry("acc_sender", 1000, "credit")
    batch = ledger.create_batch([
        {"account_id": "acc_sender", "amount": "500.00", "entry_type": "debit", "reference": "transfer_123"},
        {"account_id": "acc_receiver", "amount": "500.00", "entry_type": "credit", "reference": "transfer_123"},
    ])
    size = _size(ledger)
    reversal = ledger.rollback_batch(batch.batch_id, "Customer requested refund")
    assert reversal.reverses == batch.batch_id
    assert reversal.reason == "Customer requested refund"
    assert [(e.account_id, e.entry_type, e.amount) for e in reversal.entries] == [
        ("acc_sender", LedgerEntryType.CREDIT, Decimal(500)),
        ("acc_receiver", LedgerEntryType.DEBIT, Decimal(500)),
    ]
    assert all(e.reverses == batch.batch_id for e in reversal.entries)
    assert _size(ledger) == size + 2
    assert ledger.get_batch(batch.batch_id) == ledger.get_batch(batch.batch_id)  # still there, unchanged
    assert [e.sequence for e in ledger.get_batch(batch.batch_id).entries] == [e.sequence for e in batch.entries]
    assert ledger.reversal_of(batch.batch_id) == reversal.batch_id
    assert ledger.get_balance("acc_sender") == 1000
    assert ledger.get_balance("acc_receiver") == 0
    with pytest.raises(AlreadyReversedError):
        ledger.rollback_batch(batch.batch_id, "again")
    assert _size(ledger) == size + 2
    with pytest.raises(BatchNotFoundError):
        ledger.rollback_batch("no-such-batch", "x")
    assert ledger.verify().ok


def test_rollback_that_would_overdraw_is_refused_and_writes_nothing(ledger: Ledger) -> None:
    ledger.create_entry("a", 10, "credit")
    batch = ledger.transfer("a", "b", 10)
    ledger.transfer("b", "c", 10)
    size = _size(ledger)
    with pytest.raises(InsufficientBalanceError):
        ledger.rollback_batch(batch.batch_id, "b already spent it")
    assert _size(ledger) == size
    assert ledger.reversal_of(batch.batch_id) is None


# -- idempotency ---------------------------------------------------------------------


def test_idempotent_retry_returns_the_original_and_different_content_is_refused(ledger: Ledger) -> None:
    ledger.create_entry("a", 100, "credit")
    first = ledger.transfer("a", "b", 10, idempotency_key="job-1")
    size = _size(ledger)
    again = ledger.transfer("a", "b", Decimal("10.000"), idempotency_key="job-1")
    assert again.replayed
    assert not first.replayed
    assert again.batch_id == first.batch_id
    assert [e.entry_id for e in again.entries] == [e.entry_id for e in first.entries]
    assert _size(ledger) == size
    assert ledger.get_balance("a") == 90
    with pytest.raises(IdempotencyConflictError):
        ledger.transfer("a", "b", 11, idempotency_key="job-1")
    with pytest.raises(IdempotencyConflictError):
        ledger.create_entry("a", 10, "credit", idempotency_key="job-1")
    entry = ledger.create_entry("a", 1, "credit", idempotency_key="e-1")
    assert ledger.create_entry("a", 1, "credit", idempotency_key="e-1") == entry
    assert _size(ledger) == size + 1


def test_idempotent_rollback(ledger: Ledger) -> None:
    ledger.create_entry("a", 5, "credit")
    batch = ledger.transfer("a", "b", 5)
    r1 = ledger.rollback_batch(batch.batch_id, "oops", idempotency_key="rb-1")
    r2 = ledger.rollback_batch(batch.batch_id, "oops", idempotency_key="rb-1")
    assert r2.batch_id == r1.batch_id
    assert r2.replayed
    with pytest.raises(IdempotencyConflictError):
        ledger.rollback_batch(batch.batch_id, "other reason", idempotency_key="rb-1")


# -- accounts and assets -------------------------------------------------------------


def test_accounts_carry_asset_overdraft_metadata_and_creation_time(ledger: Ledger) -> None:
    acct = ledger.create_account("ops", overdraft_limit="25.5", metadata={"team": "infra"})
    assert (acct.asset, acct.overdraft_limit, acct.balance) == ("TOKEN", Decimal("25.5"), 0)
    assert acct.metadata == {"team": "infra"}
    assert acct.created_at.tzinfo is not None
    assert acct.floor == Decimal("-25.5")
    assert ledger.get_account("ops") == acct
    ledger.create_entry("ops", "25.5", "debit")
    assert ledger.get_balance("ops") == Decimal("-25.5")
    size = _size(ledger)
    with pytest.raises(InsufficientBalanceError):
        ledger.create_entry("ops", "0.000001", "debit")
    assert _size(ledger) == size
    implicit = ledger.create_entry("fresh", 1, "credit")
    got = ledger.get_account("fresh")
    assert (got.asset, got.overdraft_limit, got.metadata) == ("TOKEN", 0, {})
    assert got.created_at == implicit.created_at


def test_account_creation_conflicts(ledger: Ledger) -> None:
    ledger.create_account("a", overdraft_limit=5)
    with pytest.raises(AccountExistsError):
        ledger.create_account("a")
    assert ledger.create_account("a", overdraft_limit=5, exist_ok=True).overdraft_limit == 5
    with pytest.raises(AccountExistsError):
        ledger.create_account("a", overdraft_limit=6, exist_ok=True)
    with pytest.raises(AccountNotFoundError):
        ledger.get_account("b")
    with pytest.raises(AccountNotFoundError):
        ledger.create_entry("b", 1, "debit")
    assert not ledger.account_exists("b")


def test_amounts_must_fit_the_assets_scale(ledger: Ledger) -> None:
    ledger.register_asset("USD", 2)
    ledger.create_account("usd1", asset="USD")
    ledger.create_entry("usd1", "1.50", "credit")
    ledger.create_entry("usd1", Decimal("1.500000"), "credit")  # trailing zeros are the same amount
    size = _size(ledger)
    with pytest.raises(ValidationError, match="decimal places"):
        ledger.create_entry("usd1", "0.001", "credit")
    with pytest.raises(ValidationError, match="decimal places"):
        ledger.create_entry("usd2", "0.001", "credit", asset="USD")
    assert _size(ledger) == size
    assert not ledger.account_exists("usd2")
    assert ledger.get_balance("usd1") == Decimal(3)
    ledger.create_entry("tok", "0.000001", "credit")  # the default asset has 6 decimals
    with pytest.raises(ValidationError):
        ledger.create_entry("tok", "0.0000001", "credit")
    with pytest.raises(ValidationError):
        ledger.register_asset("USD", 3)
    assert ledger.register_asset("USD", 2).scale == 2
    with pytest.raises(ValidationError, match="unknown asset"):
        ledger.create_account("eur1", asset="EUR")


def test_transfers_move_one_asset(ledger: Ledger) -> None:
    ledger.register_asset("USD", 2)
    ledger.create_account("d", asset="USD")
    ledger.create_entry("d", 10, "credit")
    ledger.create_entry("t", 10, "credit")
    size = _size(ledger)
    with pytest.raises(AssetMismatchError):
        ledger.transfer("d", "t", 1)
    with pytest.raises(AssetMismatchError):
        ledger.create_entry("t", 1, "credit", asset="USD")
    assert _size(ledger) == size
    ledger.transfer("d", "new_usd", "0.25")  # a new receiver takes the sender's asset
    assert ledger.get_account("new_usd").asset == "USD"
    # A batch may mix assets (an exchange); conservation holds per asset.
    ledger.create_batch([
        {"account_id": "d", "amount": 1, "entry_type": "debit", "asset": "USD"},
        {"account_id": "t", "amount": 1, "entry_type": "debit"},
        {"account_id": "new_usd", "amount": 1, "entry_type": "credit"},
        {"account_id": "x", "amount": 1, "entry_type": "credit"},
    ])
    assert ledger.verify().ok


# -- listings ------------------------------------------------------------------------


def test_list_entries_by_account_batch_reference_and_time(ledger: Ledger) -> None:
    ledger.create_entry("a", 100, "credit", reference="r1")
    t1 = datetime.now(UTC)
    time.sleep(0.002)
    b = ledger.transfer("a", "b", 10, reference="r2")
    ledger.transfer("a", "c", 10, reference="r2")
    time.sleep(0.002)
    t2 = datetime.now(UTC)
    time.sleep(0.002)
    ledger.create_entry("b", 1, "credit")

    def seqs(**kw: object) -> list[int]:
        return [e.sequence for e in ledger.list_entries(**kw).items]  # type: ignore[arg-type]

    assert seqs() == [1, 2, 3, 4, 5, 6]
    assert seqs(account_id="a") == [1, 2, 4]
    assert seqs(account_id="b") == [3, 6]
    assert seqs(batch_id=b.batch_id) == [2, 3]
    assert seqs(batch_id="missing") == []
    assert seqs(reference="r2") == [2, 3, 4, 5]
    assert seqs(reference="r2", account_id="a") == [2, 4]
    assert seqs(since=t1, until=t2) == [2, 3, 4, 5]
    assert seqs(since=3, until=4) == [3, 4]
    assert seqs(account_id="a", descending=True) == [4, 2, 1]
    page = ledger.list_entries(account_id="a", with_receipts=True)
    assert all(e.receipt is not None and e.receipt.verify(e.leaf) for e in page.items)
    assert all(e.receipt is None for e in ledger.list_entries().items)


@pytest.mark.parametrize("descending", [False, True])
def test_pagination_visits_every_entry_once(ledger: Ledger, descending: bool) -> None:
    ledger.create_entry("bank", 1000, "credit")
    ledger.transfer_many([("bank", f"u{i % 3}", 1) for i in range(20)])
    for account, expected in ((None, 41), ("u1", 7)):
        seen: list[int] = []
        cursor = None
        for _ in range(100):
            page = ledger.list_entries(account_id=account, cursor=cursor, limit=4, descending=descending)
            seen += [e.sequence for e in page.items]
            assert len(page.items) <= 4
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert len(seen) == expected == len(set(seen))
        assert seen == sorted(seen, reverse=descending)


def test_list_accounts_pages_in_id_order(ledger: Ledger) -> None:
    for name in ("b", "a", "c", "ab"):
        ledger.create_account(name)
    assert [a.account_id for a in ledger.list_accounts(limit=2)] == ["a", "ab"]
    assert [a.account_id for a in ledger.list_accounts(after="ab")] == ["b", "c"]
    assert [a.account_id for a in ledger.list_accounts(prefix="a")] == ["a", "ab"]


# -- snapshots and the audit ---------------------------------------------------------


def test_snapshots_from_checkpoints_match_a_replay(ledger: Ledger) -> None:
    # checkpoint_interval=5 in the fixture: 23 entries cross several checkpoints.
    expected: list[dict[str, int]] = [{}]
    balances: dict[str, int] = {}

    def apply(account: str, delta: int) -> None:
        balances[account] = balances.get(account, 0) + delta
        expected.append(dict(balances))

    ledger.create_entry("a", 100, "credit")
    apply("a", 100)
    for i in range(11):
        ledger.transfer("a", f"r{i % 3}", i + 1)
        apply("a", -(i + 1))
        apply(f"r{i % 3}", i + 1)
    assert _size(ledger) == 23
    for seq in (0, 1, 4, 5, 6, 10, 11, 17, 22, 23):
        snap = ledger.snapshot(at=seq)
        assert snap.sequence == seq
        assert {a: b for a, b in snap.balances.items() if b} == {a: b for a, b in expected[seq].items() if b}
    now = ledger.snapshot()
    assert now.sequence == 23
    assert now.balances == {k: Decimal(v) for k, v in balances.items()}
    assert ledger.snapshot(at=datetime.now(UTC)).balances == now.balances
    assert now.assets["a"] == "TOKEN"


def test_verify_audits_a_healthy_ledger(ledger: Ledger) -> None:
    ledger.register_asset("USD", 2)
    ledger.create_account("o", overdraft_limit=10)
    ledger.create_entry("o", 10, "debit")
    ledger.create_entry("p", 10, "credit")
    ledger.transfer_many([("p", "q", 1)] * 9)
    batch = ledger.transfer("q", "o", 2)
    ledger.rollback_batch(batch.batch_id, "undo")
    report = ledger.verify()
    assert report.ok, report.problems
    assert report.entries_checked == report.tree_size == _size(ledger) == 24
    assert report.first_bad_sequence is None
    seen: list[tuple[int, int]] = []
    assert ledger.verify(lambda done, total: seen.append((done, total)), chunk=7).ok
    assert seen[-1] == (24, 24)
    assert len(seen) == 4


def test_receipt_and_proof_arguments_are_checked(ledger: Ledger) -> None:
    ledger.create_entry("a", 1, "credit")
    for bad in (0, 2, True, "1"):
        with pytest.raises(ValidationError):
            ledger.receipt(bad)  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        ledger.receipt(1, 5)
    with pytest.raises(ValidationError):
        ledger.consistency_proof(2, 1)
    assert isinstance(ledger.receipt(1), Receipt)


def test_unknown_entry_id_is_entry_not_found(ledger: Ledger) -> None:
    from sardis_ledger import EntryNotFoundError

    ledger.create_entry("a", 1, "credit")
    with pytest.raises(EntryNotFoundError) as caught:
        ledger.get_entry("0" * 32)
    assert caught.value.to_json()["error"] == "entry_not_found"
