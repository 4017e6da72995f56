"""The write path of :class:`~sardis_ledger.core.Ledger`: one storage transaction
that checks floors, appends entries to the Merkle log and stores everything.

Kept apart from ``core.py`` only for size; it is the ledger's write logic, run
by ``Ledger._post`` inside its retry loop. Why it looks the way it does: a write
validates everything it can before taking the storage lock
(:mod:`sardis_ledger._requests`), then does the least possible work inside it
(one read of the touched accounts and the tree head, one insert per table), and
returns entries and receipts that are built only when read.
"""

from __future__ import annotations

import hashlib
from decimal import Decimal
from functools import partial
from typing import TYPE_CHECKING

from . import merkle
from ._proofs import CommitProofs
from ._requests import Leg, Request, id_prefix, id_suffix, now_iso
from .amounts import MAX_MINOR_UNITS, from_minor, minor_units
from .errors import (
    AccountNotFoundError,
    AlreadyReversedError,
    AssetMismatchError,
    BatchNotFoundError,
    IdempotencyConflictError,
    InsufficientBalanceError,
    IntegrityError,
    ValidationError,
)
from .models import LazyBatch, LazyReceipt, LedgerBatch, LedgerEntry, LedgerEntryType
from .records import AccountRow, BatchRow, EntryRow, HeadRow, leaf_bytes, parse_metadata, parse_ts
from .storage.base import Transaction

if TYPE_CHECKING:
    from .core import Ledger

_sha256 = hashlib.sha256  # bound once: called per leg on the hot path
_TYPES = {"credit": LedgerEntryType.CREDIT, "debit": LedgerEntryType.DEBIT}
STREAM_ENTRIES = 250
"""Entries a bulk write builds before handing them to the storage (see
:meth:`~sardis_ledger.storage.base.Transaction.send_writes`)."""


class CommitEntries:
    """The entries one write committed, turned into :class:`LedgerEntry` objects
    only when a caller reads a batch's entries (see :class:`LazyBatch`)."""

    __slots__ = ("digests", "leaves", "proofs", "root", "rows", "scales", "ts")

    def __init__(self, rows: list[EntryRow], leaves: list[bytes], digests: list[bytes], scales: dict[str, int],
                 created_at: str, proofs: CommitProofs, root: str) -> None:
        self.rows, self.leaves, self.digests, self.scales = rows, leaves, digests, scales
        self.ts = parse_ts(created_at)
        self.proofs, self.root = proofs, root

    def entries(self, lo: int, hi: int) -> tuple[LedgerEntry, ...]:
        size, root, proofs, ts, scales = self.proofs.size, self.root, self.proofs, self.ts, self.scales
        out = []
        for row, leaf, digest in zip(self.rows[lo:hi], self.leaves[lo:hi], self.digests[lo:hi], strict=True):
            scale = scales[row.asset]
            out.append(LedgerEntry(
                row.entry_id, row.seq + 1, row.batch_id, row.account_id, row.asset,
                from_minor(row.amount, scale), _TYPES[row.direction], from_minor(row.running_balance, scale),
                ts, row.reference, parse_metadata(row.metadata), row.reverses, leaf,
                LazyReceipt(row.seq, size, root, digest, proofs),
            ))
        return tuple(out)


def load_frontier(ledger: Ledger, tx: Transaction, head: HeadRow) -> merkle.Frontier:
    with ledger._frontier_lock:
        cached = ledger._frontier
    if cached is not None and cached[0] == head.size and cached[1] == head.root:
        return cached[2].copy()
    coords = merkle.frontier_coords(head.size)
    nodes = tx.get_nodes(coords)
    try:
        frontier = merkle.Frontier(head.size, [nodes[c] for c in coords])
    except KeyError:
        raise IntegrityError(f"Merkle nodes missing for tree size {head.size}") from None
    if frontier.root() != head.root:
        raise IntegrityError("stored tree head does not match its Merkle nodes; run verify()")
    return frontier


def accounts_of_reversed(ledger: Ledger, requests: list[Request]) -> set[str]:
    """Accounts a rollback will touch, read before any lock is taken so they are
    locked with the others in sorted order, before the tree head (batches never
    change, so this read cannot go stale)."""
    targets = [r.reverses for r in requests if r.reverses is not None]
    if not targets:
        return set()
    out: set[str] = set()
    with ledger.storage.transaction(write=False) as tx:
        for batch_id in targets:
            row = tx.get_batch(batch_id)
            if row is not None:
                out.update(e.account_id for e in tx.entries_by_seq(row.first_seq, row.first_seq + row.count))
    return out


def post_once(
    ledger: Ledger, requests: list[Request], *, retry: bool, extra_ids: set[str] | None = None
) -> list[LedgerBatch]:
    storage = ledger.storage
    seen_scales: dict[str, int] = {}
    with storage.transaction(write=True) as tx:
        if retry and _committed_before(tx, requests):
            return [_stored_result(ledger, tx, r) for r in requests]
        # Lock order: accounts (sorted) first, the tree head last, so the serialised
        # section that appends to the Merkle log is as short as possible.
        ids = {lg.account_id for r in requests for lg in r.legs}
        if extra_ids:
            ids |= extra_ids
        accounts = tx.get_accounts(sorted(ids)) if ids else {}
        head = tx.head()
        frontier = load_frontier(ledger, tx, head)
        before = list(frontier.stack)
        created_at = max(now_iso(), head.updated_at)
        id_head = id_prefix()
        committed_scales = ledger._scales
        balances: dict[str, int] = {}
        new_accounts: list[AccountRow] = []
        entries: list[EntryRow] = []
        digests: list[bytes] = []
        leaves: list[bytes] = []
        batches: list[BatchRow] = []
        spans: dict[str, tuple[int, int]] = {}
        nodes: list[tuple[int, int, bytes]] = []
        results: list[LedgerBatch | Request] = []
        keys_here: dict[str, Request] = {}
        reversed_here: set[str] = set()
        append = frontier.append
        seq = head.size
        sent = (0, 0, 0)  # batches, entries, nodes already handed to the storage
        last_amount: Decimal | None = None
        last_scale = last_units = -1
        for req in requests:
            key = req.idempotency_key
            if key is not None:
                # A key first used earlier in this same write is answered from memory:
                # its rows may already be streamed to the storage, but its receipts
                # belong to the tree this write is still growing.
                earlier = keys_here.get(key)
                if earlier is not None:
                    _same_request(key, earlier.request_hash, req)
                    results.append(req)
                    continue
                prior = tx.find_idempotency(key)
                if prior is not None:
                    _same_request(key, prior.request_hash, req)
                    results.append(ledger._batch_from_row(tx, prior, replayed=True))
                    continue
                keys_here[key] = req
            reverses = req.reverses
            if reverses is not None:
                if reverses in spans:
                    # Rows of this write may or may not be streamed yet; never let that decide.
                    raise ValidationError(
                        f"batch {reverses!r} is written by this same call; reverse it in a later one",
                        batch_id=reverses,
                    )
                req.legs = reversal_legs(ledger, tx, reverses, reversed_here, seen_scales)
                missing = {lg.account_id for lg in req.legs} - accounts.keys()
                if missing:
                    accounts.update(tx.get_accounts(sorted(missing)))
            first = seq
            batch_id = req.batch_id
            req_asset: str | None = None
            for lg in req.legs:
                aid = lg.account_id
                acct = accounts.get(aid)
                if acct is None:
                    if lg.direction == "debit":
                        raise AccountNotFoundError(aid, f"account {aid!r} does not exist: nothing to debit")
                    code = lg.asset or req_asset or ledger.default_asset.code
                    ledger._write_scale(tx, code, seen_scales)
                    acct = accounts[aid] = AccountRow(aid, code, 0, 0, "{}", created_at)
                    new_accounts.append(acct)
                asset = acct.asset
                if lg.asset is not None and lg.asset != asset:
                    raise AssetMismatchError(
                        f"account {aid!r} holds {asset}, not {lg.asset}", account_id=aid, asset=asset
                    )
                if req.same_asset:
                    if req_asset is None:
                        req_asset = asset
                    elif asset != req_asset:
                        raise AssetMismatchError(
                            f"a transfer moves one asset: {req.legs[0].account_id!r} holds {req_asset},"
                            f" {aid!r} holds {asset}",
                            account_id=aid, asset=asset,
                        )
                scale = committed_scales.get(asset)
                if scale is None:
                    scale = ledger._write_scale(tx, asset, seen_scales)
                amount = lg.amount
                if amount is last_amount and scale == last_scale:
                    units = last_units
                else:
                    units = minor_units(amount, scale)
                    last_amount, last_scale, last_units = amount, scale, units
                current = balances.get(aid)
                if current is None:
                    current = acct.balance
                if lg.direction == "debit":
                    new = current - units
                    if new < -acct.overdraft_limit:
                        raise InsufficientBalanceError(
                            aid, amount, from_minor(current + acct.overdraft_limit, scale)
                        )
                else:
                    new = current + units
                    if new > MAX_MINOR_UNITS:
                        raise ValidationError(f"balance of {aid!r} would exceed the maximum", account_id=aid)
                balances[aid] = new
                row = EntryRow(
                    seq, id_head + id_suffix(), batch_id, aid, asset, units, lg.direction, new,
                    created_at, lg.reference, lg.metadata, reverses,
                )
                leaf = leaf_bytes(row, scale)
                digest = _sha256(b"\x00" + leaf).digest()
                entries.append(row)
                leaves.append(leaf)
                digests.append(digest)
                nodes += append(digest)
                seq += 1
            batches.append(BatchRow(
                batch_id, first, seq - first, created_at, reverses, req.reason, key, req.request_hash,
            ))
            spans[batch_id] = (first - head.size, seq - head.size)
            results.append(req)
            if len(entries) - sent[1] >= STREAM_ENTRIES:
                # A bulk write hands finished rows to the storage as it goes (a
                # client/server backend inserts them while the rest is built).
                sent = _hand_over(tx, batches, entries, nodes, sent)
                tx.send_writes()
        if entries or batches:
            if new_accounts:
                tx.insert_accounts(new_accounts)
            tx.update_balances(balances)
            _hand_over(tx, batches, entries, nodes, sent)
            root = frontier.root()
            tx.set_head(HeadRow(seq, root, created_at))
            if head.size // ledger.checkpoint_interval != seq // ledger.checkpoint_interval:
                tx.insert_checkpoint(seq, tx.all_balances())
        else:
            root = head.root
    # Committed. Remember what is now known to be stored.
    with ledger._frontier_lock:
        ledger._frontier = (seq, root, frontier)
    if seen_scales:
        ledger._scales.update(seen_scales)
    commit = CommitEntries(entries, leaves, digests, dict(ledger._scales), created_at,
                            CommitProofs(storage, seq, before, nodes), root.hex())
    return _results(results, spans, commit, keys_here)



def _hand_over(
    tx: Transaction, batches: list[BatchRow], entries: list[EntryRow], nodes: list[tuple[int, int, bytes]],
    sent: tuple[int, int, int],
) -> tuple[int, int, int]:
    """Give the storage the rows built since ``sent``; what is handed over now."""
    if len(batches) > sent[0]:
        tx.insert_batches(batches[sent[0]:])
    if len(entries) > sent[1]:
        tx.insert_entries(entries[sent[1]:])
    if len(nodes) > sent[2]:
        tx.insert_nodes(nodes[sent[2]:])
    return len(batches), len(entries), len(nodes)


def _same_request(key: str, stored_hash: str | None, req: Request) -> None:
    if stored_hash != req.request_hash:
        raise IdempotencyConflictError(f"idempotency key {key!r} was used for a different request", idempotency_key=key)


def _committed_before(tx: Transaction, requests: list[Request]) -> bool:
    """Whether an earlier attempt of this write committed (its outcome was unknown).
    That attempt stored a batch for every request except idempotent replays, which
    store nothing: the first request found, or not found and without a key, decides."""
    for r in requests:
        if tx.get_batch(r.batch_id) is not None:
            return True
        if r.idempotency_key is None:
            return False
    return False


def _stored_result(ledger: Ledger, tx: Transaction, req: Request) -> LedgerBatch:
    """What the committed attempt returned for ``req``: its batch, or the batch its key replayed."""
    row = tx.get_batch(req.batch_id)
    if row is not None:
        return ledger._batch_from_row(tx, row)
    prior = tx.find_idempotency(req.idempotency_key) if req.idempotency_key is not None else None
    if prior is None:
        raise IntegrityError(f"batch {req.batch_id!r} of a committed write is missing")
    return ledger._batch_from_row(tx, prior, replayed=True)


def _results(
    results: list[LedgerBatch | Request],
    spans: dict[str, tuple[int, int]],
    commit: CommitEntries,
    keys_here: dict[str, Request],
) -> list[LedgerBatch]:
    ts = commit.ts
    out: list[LedgerBatch] = []
    for item in results:
        if isinstance(item, LedgerBatch):
            out.append(item)
            continue
        first = item
        if item.idempotency_key is not None and keys_here.get(item.idempotency_key) is not item:
            first = keys_here[item.idempotency_key]  # a key repeated in this same bulk call
        lo, hi = spans[first.batch_id]
        out.append(LazyBatch(
            first.batch_id, partial(commit.entries, lo, hi), ts, first.reverses, first.reason,
            first.idempotency_key, first is not item,
        ))
    return out


def reversal_legs(
    ledger: Ledger, tx: Transaction, batch_id: str, reversed_here: set[str], seen_scales: dict[str, int]
) -> list[Leg]:
    original = tx.get_batch(batch_id)
    if original is None:
        raise BatchNotFoundError(f"batch {batch_id!r} does not exist", batch_id=batch_id)
    by = tx.find_reversal(batch_id)
    if by is not None or batch_id in reversed_here:
        raise AlreadyReversedError(f"batch {batch_id!r} was already reversed", batch_id=batch_id, reversed_by=by)
    reversed_here.add(batch_id)
    legs = []
    for row in tx.entries_by_seq(original.first_seq, original.first_seq + original.count):
        scale = ledger._write_scale(tx, row.asset, seen_scales)
        legs.append(Leg(
            row.account_id, from_minor(row.amount, scale), "debit" if row.direction == "credit" else "credit",
            row.reference, row.metadata, row.asset,
        ))
    if not legs:
        raise ValidationError(f"batch {batch_id!r} has no entries to reverse")
    return legs
