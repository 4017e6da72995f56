"""Rows as the storage layer holds them: integers of minor units, ISO timestamps.

These are the only shapes that cross the engine/storage boundary, so a backend
needs to know nothing about Decimal, Merkle trees or validation. ``leaf_bytes``
is the single definition of an entry's canonical form (the Merkle leaf).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .amounts import format_minor

__all__ = ["AccountRow", "BatchRow", "EntryRow", "HeadRow", "leaf_bytes", "parse_metadata", "parse_ts"]


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


# Printable ASCII except '"' and '\': text JSON writes unchanged between quotes.
_VERBATIM = re.compile(r'[ !#-\[\]-~]*').fullmatch


def _q(text: str | None) -> str:
    """``json.dumps(text, ensure_ascii=True)``, without its cost for the ids,
    timestamps and codes that need no escaping (nearly every field)."""
    if text is None:
        return "null"
    if _VERBATIM(text):
        return f'"{text}"'
    return json.dumps(text, ensure_ascii=True)


def leaf_bytes(row: EntryRow, scale: int) -> bytes:
    """Canonical JSON of an entry: keys sorted, no spaces, ASCII only, amounts as
    plain decimal strings (no exponent, no trailing zeros).

    Built by hand (not json.dumps of a dict) because it sits on the hot write path;
    tests check it equals the sorted-keys json.dumps of the same fields. Every text
    field is JSON-quoted, so no stored value can spill into its neighbour; metadata
    is already canonical JSON (``verify`` checks that too).
    """
    if _VERBATIM(row.account_id + row.asset + row.batch_id + row.created_at + row.entry_id + row.direction):
        # One check covers the six fields that never need escaping when written by
        # the engine; anything else (a tampered row) takes the general path below.
        head = (
            f'{{"account_id":"{row.account_id}","amount":"{format_minor(row.amount, scale)}",'
            f'"asset":"{row.asset}","batch_id":"{row.batch_id}","created_at":"{row.created_at}",'
            f'"entry_id":"{row.entry_id}","entry_type":"{row.direction}"'
        )
    else:
        head = (
            f'{{"account_id":{_q(row.account_id)},"amount":"{format_minor(row.amount, scale)}",'
            f'"asset":{_q(row.asset)},"batch_id":{_q(row.batch_id)},"created_at":{_q(row.created_at)},'
            f'"entry_id":{_q(row.entry_id)},"entry_type":{_q(row.direction)}'
        )
    return (
        f'{head},"metadata":{row.metadata},"reference":{_q(row.reference)},"reverses":{_q(row.reverses)},'
        f'"running_balance":"{format_minor(row.running_balance, scale)}","sequence":{row.seq + 1},"v":1}}'
    ).encode("ascii")


def parse_ts(text: str) -> datetime:
    """A stored ``created_at`` back to an aware datetime."""
    return datetime.fromisoformat(text)


def parse_metadata(text: str) -> dict[str, Any]:
    """Stored canonical metadata back to a dict (most entries have none)."""
    if text == "{}":
        return {}
    value: dict[str, Any] = json.loads(text)
    return value
