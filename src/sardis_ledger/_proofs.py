"""Receipts and the full audit: the proof side of :class:`~sardis_ledger.core.Ledger`.

Private to the core. Stored Merkle nodes are immutable once written, so a proof
computed now or later from the same nodes is the same proof: that is what lets a
write return its receipts lazily (:class:`CommitProofs`) and lets ``verify``
recompute everything from the entries and compare.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from . import merkle
from .amounts import validate_account_id
from .errors import IntegrityError
from .models import Receipt, VerifyReport, canonical_json
from .records import AccountRow, EntryRow, leaf_bytes
from .storage.base import Storage, Transaction

if TYPE_CHECKING:
    from .core import Ledger

__all__ = ["CommitProofs", "all_accounts", "receipts_for", "stored_node_getter", "verify_ledger"]


class CommitProofs:
    """Audit paths for the entries of one commit, against the tree it produced.

    Holds the nodes the commit knew (the frontier before it and every node it
    created: every sibling an entry of the commit needs), so a path costs no
    storage read; anything else is read from storage on demand."""

    __slots__ = ("_before", "_created", "_lock", "_nodes", "_partial", "size", "storage")

    def __init__(
        self,
        storage: Storage,
        size: int,
        before: Sequence[tuple[int, int, bytes]],
        created: Sequence[tuple[int, int, bytes]],
    ) -> None:
        self.storage = storage
        self.size = size
        self._before = before
        self._created = created
        self._nodes: dict[tuple[int, int], bytes] | None = None
        self._partial: dict[tuple[int, int], bytes] = {}
        self._lock = threading.Lock()

    def _node(self, level: int, index: int) -> bytes:
        assert self._nodes is not None
        h = self._nodes.get((level, index))
        if h is None:
            with self.storage.transaction(write=False) as tx:
                found = tx.get_nodes([(level, index)])
            if (level, index) not in found:
                raise IntegrityError(f"Merkle node {(level, index)} is missing")
            h = self._nodes[(level, index)] = found[(level, index)]
        return h

    def __call__(self, leaf_index: int) -> tuple[str, ...]:
        with self._lock:
            if self._nodes is None:
                nodes = {(lv, ix): h for lv, ix, h in self._before}
                nodes.update({(lv, ix): h for lv, ix, h in self._created})
                self._nodes = nodes
            path = merkle.inclusion_proof(leaf_index, self.size, self._node)
        return tuple(p.hex() for p in path)


def stored_node_getter(tx: Transaction, plans: Iterable[Callable[[merkle.NodeGetter], object]]) -> merkle.NodeGetter:
    """A node getter holding every stored node the ``plans`` will read, fetched in one query."""
    coords: set[tuple[int, int]] = set()
    for plan in plans:
        coords |= merkle.needed_nodes(plan)
    nodes = tx.get_nodes(coords)
    missing = coords - nodes.keys()
    if missing:
        raise IntegrityError(f"Merkle nodes missing: {sorted(missing)[:3]}")
    return lambda level, index: nodes[(level, index)]


def receipts_for(tx: Transaction, rows: Sequence[EntryRow], size: int, root: bytes,
                 leaves: Sequence[bytes]) -> list[Receipt]:
    """Eager receipts for entries read back from storage (reads are not the hot path)."""
    plans = [_inclusion_plan(row.seq, size) for row in rows]
    getter = stored_node_getter(tx, plans)
    root_hex = root.hex()
    return [
        Receipt(row.seq, size, merkle.hash_leaf(leaf).hex(), root_hex,
                tuple(p.hex() for p in merkle.inclusion_proof(row.seq, size, getter)))
        for row, leaf in zip(rows, leaves, strict=True)
    ]


def _inclusion_plan(index: int, size: int) -> Callable[[merkle.NodeGetter], object]:
    return lambda node: merkle.inclusion_proof(index, size, node)


def all_accounts(tx: Transaction) -> Iterable[AccountRow]:
    after: str | None = None
    for _ in range(1 << 40):  # bounded: each page advances past the last id
        rows = tx.list_accounts(None, after, 10_000)
        if not rows:
            return
        yield from rows
        after = rows[-1].account_id


def _checkpoint_seqs(tx: Transaction, size: int) -> list[int]:
    """Sequence numbers of all stored checkpoints up to ``size``, ascending."""
    seqs: list[int] = []
    at = size
    while at > 0:
        cp = tx.checkpoint_at_or_before(at)
        if cp is None:
            break
        seqs.append(cp[0])
        at = cp[0] - 1
    return seqs[::-1]


def verify_ledger(
    ledger: Ledger, progress: Callable[[int, int], None] | None, chunk: int
) -> VerifyReport:
    """See :meth:`Ledger.verify`."""
    report = VerifyReport()
    storage = ledger.storage
    with storage.transaction(write=False) as tx:
        head = tx.head()
        scales = tx.assets()
        accounts = {r.account_id: r for r in all_accounts(tx)}
        checkpoints = _checkpoint_seqs(tx, head.size)
    report.tree_size = head.size
    report.root = head.root.hex()
    frontier = merkle.Frontier()
    running: dict[str, int] = {}
    issued: dict[str, int] = {}
    expected_seq = 0
    pending_nodes: dict[tuple[int, int], bytes] = {}
    bad_nodes: set[tuple[int, int]] = set()
    # Account ids and metadata strings repeat across entries; each distinct one is
    # checked once (the check is a pure function of the string).
    well_formed: dict[tuple[str, str], bool] = {}
    append, hash_leaf = frontier.append, merkle.hash_leaf
    next_cp = 0
    for start in range(0, head.size, max(1, chunk)):
        end = min(start + chunk, head.size)
        with storage.transaction(write=False) as tx:
            rows = tx.entries_by_seq(start, end)
            stored = tx.nodes_created_by(start, end)
            due = [s for s in checkpoints[next_cp:] if s <= end]
            cps = {s: cp[1] for s in due if (cp := tx.checkpoint_at_or_before(s)) is not None}
        report.entries_checked += len(rows)
        for row in rows:
            seq = row.seq + 1
            if row.seq != expected_seq:
                report.fail(f"entry sequence {expected_seq + 1} is missing (found {seq})", expected_seq + 1)
                expected_seq = row.seq
            scale = scales.get(row.asset)
            if scale is None:
                report.fail(f"entry {seq} uses unregistered asset {row.asset!r}", seq)
                scale = 0
            _check_row(report, row, accounts.get(row.account_id), well_formed)
            prev = running.get(row.account_id, 0)
            delta = row.amount if row.direction == "credit" else -row.amount
            if prev + delta != row.running_balance:
                report.fail(f"entry {seq}: running balance {row.running_balance} != {prev} + {delta}", seq)
            running[row.account_id] = prev + delta
            issued[row.asset] = issued.get(row.asset, 0) + delta
            try:
                leaf = leaf_bytes(row, scale)
            except (UnicodeEncodeError, ValueError, TypeError):
                report.fail(f"entry {seq}: stored fields cannot be encoded as a leaf", seq)
                leaf = b""
            for level, index, h in append(hash_leaf(leaf)):
                pending_nodes[(level, index)] = h
            expected_seq += 1
            if next_cp < len(checkpoints) and checkpoints[next_cp] == expected_seq:
                _check_checkpoint(report, expected_seq, cps.get(expected_seq, {}), running)
                next_cp += 1
        # Bottom up: a node above a bad leaf (or bad node) is wrong because of it and
        # is not reported again, so the report names the entry that changed.
        mismatched = [coord for coord, h in pending_nodes.items() if stored.get(coord) != h]
        for coord in sorted(mismatched):
            level, index = coord
            bad_nodes.add(coord)
            if level and ((level - 1, 2 * index) in bad_nodes or (level - 1, 2 * index + 1) in bad_nodes):
                continue
            first = (index << level) + 1
            if level == 0:
                report.fail(f"entry {first}: stored leaf hash does not match the entry's contents", first)
            else:
                last = min((index + 1) << level, head.size)
                report.fail(f"stored Merkle node {coord} over entries {first}..{last} does not match them", first)
        pending_nodes.clear()
        if progress is not None:
            progress(end, head.size)
    if expected_seq != head.size:
        report.fail(f"tree head claims {head.size} entries, store has {expected_seq}", expected_seq + 1)
    if frontier.root() != head.root:
        report.fail("stored tree head root does not match the entries", report.first_bad_sequence or head.size)
    if next_cp != len(checkpoints):
        report.fail(f"checkpoint at {checkpoints[next_cp]} lies beyond the entries")
    totals: dict[str, int] = {}
    for acct in accounts.values():
        if acct.balance != running.get(acct.account_id, 0):
            report.fail(
                f"account {acct.account_id!r}: balance {acct.balance} != sum of its entries "
                f"{running.get(acct.account_id, 0)}"
            )
        if acct.balance < -acct.overdraft_limit:
            report.fail(f"account {acct.account_id!r} is below its floor")
        totals[acct.asset] = totals.get(acct.asset, 0) + acct.balance
    for asset in sorted(set(totals) | set(issued)):
        if totals.get(asset, 0) != issued.get(asset, 0):
            report.fail(
                f"asset {asset}: balances sum to {totals.get(asset, 0)}, issued minus redeemed is "
                f"{issued.get(asset, 0)}"
            )
    return report


def _check_row(
    report: VerifyReport, row: EntryRow, acct: AccountRow | None, well_formed: dict[tuple[str, str], bool]
) -> None:
    seq = row.seq + 1
    if row.amount <= 0 or row.direction not in ("credit", "debit"):
        report.fail(f"entry {seq} has an invalid amount or type", seq)
    key = (row.account_id, row.metadata)
    canonical = well_formed.get(key)
    if canonical is None:
        try:
            validate_account_id(row.account_id)
            canonical = row.metadata == "{}" or _canonical_object(row.metadata)
        except (ValueError, TypeError, RecursionError):
            canonical = False
        if len(well_formed) < 100_000:
            well_formed[key] = canonical
    if not canonical:
        report.fail(f"entry {seq}: account id or metadata is not in canonical form", seq)
    if acct is None:
        report.fail(f"entry {seq}: account {row.account_id!r} does not exist", seq)
    else:
        if acct.asset != row.asset:
            report.fail(f"entry {seq}: asset {row.asset} differs from its account's {acct.asset}", seq)
        if row.running_balance < -acct.overdraft_limit:
            report.fail(f"entry {seq}: {row.account_id!r} is below its floor", seq)


def _canonical_object(text: str) -> bool:
    meta = json.loads(text)
    return isinstance(meta, dict) and canonical_json(meta) == text


def _check_checkpoint(report: VerifyReport, seq: int, stored: dict[str, int], running: dict[str, int]) -> None:
    # Zero balances are left out on both sides: a checkpoint also lists accounts
    # that were created without entries.
    if {a: b for a, b in running.items() if b} != {a: b for a, b in stored.items() if b}:
        report.fail(f"checkpoint at sequence {seq} does not match the balances of the entries before it")
