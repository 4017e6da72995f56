"""Rows as the storage layer holds them: integers of minor units, ISO timestamps.

These are the only shapes that cross the engine/storage boundary, so a backend
needs to know nothing about Decimal, Merkle trees or validation. ``leaf_bytes``
is the single definition of an entry's canonical form (the Merkle leaf).
"""

from __future__ import annotations

from dataclasses import dataclass

from .amounts import from_minor

__all__ = ["AccountRow", "BatchRow", "EntryRow", "HeadRow", "leaf_bytes"]


@dataclass(slots=True)
class AccountRow:
    account_id: str
    asset: str
    balance: int
    overdraft_limit: int
    metadata: str
    created_at: str


@dataclass(slots=True)
class EntryRow:
    seq: int
    entry_id: str
    batch_id: str
    account_id: str
    asset: str
    amount: int
    direction: str
    running_balance: int
    created_at: str
    reference: str | None
    metadata: str
    reverses: str | None


@dataclass(slots=True)
class BatchRow:
    batch_id: str
    first_seq: int
    count: int
    created_at: str
    reverses: str | None
    reason: str | None
    idempotency_key: str | None
    request_hash: str | None


@dataclass(slots=True)
class HeadRow:
    size: int
    root: bytes
    updated_at: str


def _q(text: str | None) -> str:
    if text is None:
        return "null"
    # Account ids, assets and timestamps are validated ASCII; references and ids are
    # escaped by json rules so the leaf is always valid JSON.
    import json

    return json.dumps(text, ensure_ascii=True)


def leaf_bytes(row: EntryRow, scale: int) -> bytes:
    """Canonical JSON of an entry: keys sorted, no spaces, amounts as decimal strings.

    Built by hand (not json.dumps of a dict) because it sits on the hot write path;
    tests check it equals the sorted-keys json.dumps of the same fields.
    """
    return (
        '{"account_id":%s,"amount":"%s","asset":%s,"batch_id":%s,"created_at":%s,'
        '"entry_id":%s,"entry_type":%s,"metadata":%s,"reference":%s,"reverses":%s,'
        '"running_balance":"%s","sequence":%d,"v":1}'
        % (
            _q(row.account_id),
            from_minor(row.amount, scale),
            _q(row.asset),
            _q(row.batch_id),
            _q(row.created_at),
            _q(row.entry_id),
            _q(row.direction),
            row.metadata,
            _q(row.reference),
            _q(row.reverses),
            from_minor(row.running_balance, scale),
            row.seq + 1,
        )
    ).encode("ascii")
