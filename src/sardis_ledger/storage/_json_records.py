"""Encoding the JSON backend's records (private).

Why by hand rather than one ``json.dumps`` of the state: each record is encoded
once, when it is committed, and its text is kept, so a write joins strings
instead of re-encoding history. Amounts are token units (an integer when whole,
else an exact decimal string), never minor units or floats; metadata is stored
as an object when that round-trips to the exact bytes the Merkle leaf hashed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from ..amounts import from_minor
from ..errors import IntegrityError, StorageError
from ..records import AccountRow, BatchRow, EntryRow
from ._json_index import HASH_SIZE, Index

__all__ = [
    "Rec",
    "account_text",
    "amount_json",
    "created_by",
    "dumps",
    "load_account",
    "load_record",
    "render_record",
]


def amount_json(units: int, scale: int) -> int | str:
    """Minor units to token units for JSON: an int when whole, else an exact string."""
    if scale == 0:
        return units
    unit = _POW10[scale] if scale < len(_POW10) else int(10**scale)
    if units % unit == 0:
        return units // unit
    return format(from_minor(units, scale), "f")


def _units(value: object, scale: int, what: str) -> int:
    """Token units from JSON back to minor units, refusing anything inexact."""
    if type(value) is int:
        return value * (_POW10[scale] if 0 <= scale < len(_POW10) else int(10**scale))
    if isinstance(value, str):
        try:
            scaled = Decimal(value).scaleb(scale)
        except InvalidOperation:
            scaled = Decimal("NaN")
        if scaled.is_finite() and scaled == scaled.to_integral_value():
            return int(scaled)
    raise IntegrityError(f"{what}: {value!r} is not an exact amount of scale {scale}")


def created_by(leaf: int) -> list[tuple[int, int]]:
    """The Merkle nodes appending leaf ``leaf`` completes, in the order the engine
    stores them: the leaf itself, then each parent it closes."""
    out = [(0, leaf)]
    level, index = 0, leaf
    while index & 1:
        level, index = level + 1, index >> 1
        out.append((level, index))
    return out


_POW10 = [10**i for i in range(19)]
_CACHE_LIMIT = 4096
_fields_cache: dict[tuple[str, str], tuple[dict[str, Any], Any]] = {}
_text_cache: dict[tuple[tuple[str, str | None], ...], str] = {}


def _meta_fields(text: str, key: str) -> tuple[dict[str, Any], Any]:
    """A canonical-JSON metadata string as an object for the file, or verbatim
    under ``<key>_json`` when parsing and re-encoding would not give the same
    bytes (the Merkle leaf embeds them, so they must survive exactly). Also
    returns the parsed value. Memoised: most records repeat a few metadata values."""
    got = _fields_cache.get((text, key))
    if got is not None:
        return got
    try:
        obj = json.loads(text)
    except ValueError:
        obj = None
    fields = {key: obj} if isinstance(obj, dict) and _canonical(obj) == text else {key + "_json": text}
    if len(_fields_cache) >= _CACHE_LIMIT:
        _fields_cache.clear()
    _fields_cache[(text, key)] = (fields, obj)
    return fields, obj


def _meta_text(obj: Mapping[str, Any], key: str, where: str) -> str:
    raw = obj.get(key + "_json")
    if isinstance(raw, str):
        return raw
    value = obj.get(key, {})
    if not isinstance(value, dict):
        raise IntegrityError(f"{where}: {key} must be a JSON object")
    # Memoised only for string values, where equal items mean equal canonical text
    # (1 == 1.0 == True would not).
    if all(type(v) is str or v is None for v in value.values()):
        items = tuple(sorted(value.items()))
        text = _text_cache.get(items)
        if text is None:
            if len(_text_cache) >= _CACHE_LIMIT:
                _text_cache.clear()
            text = _text_cache[items] = _canonical(value)
        return text
    return _canonical(value)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=True, allow_nan=False)


_interned: dict[str, str] = {}


def _intern(text: str) -> str:
    """Share repeated short strings (account ids, assets, metadata) between the
    many rows of a loaded ledger; bounded so odd data cannot grow it forever."""
    got = _interned.get(text)
    if got is not None:
        return got
    if len(text) <= 128 and len(_interned) < 100_000:
        _interned[text] = text
    return text



@dataclass(slots=True)
class Rec:
    """One transfer record of the tail, with its JSON text kept so the head
    document is assembled by joining strings, not by re-encoding history."""

    first_seq: int
    count: int
    text: str


def render_record(
    ix: Index,
    batch: BatchRow,
    entries: Sequence[EntryRow],
    nodes: Sequence[tuple[int, int, bytes]],
    checkpoint: tuple[int, dict[str, int]] | None,
) -> str:
    scales = ix.assets
    debit = next((e for e in entries if e.direction == "debit"), None)
    credit = next((e for e in entries if e.direction == "credit"), None)
    first = entries[0] if entries else None
    note = None
    if first is not None:
        meta = _meta_fields(first.metadata, "metadata")[1]
        note = meta.get("note") if isinstance(meta, dict) else None
    rec: dict[str, Any] = {
        "id": batch.batch_id,
        "timestamp": batch.created_at,
        "from_account": debit.account_id if debit else None,
        "to_account": credit.account_id if credit else None,
        "amount": amount_json(first.amount, scales[first.asset]) if first else 0,
        "job_id": first.reference if first else None,
        "note": note,
        "sequence": batch.first_seq + 1,
        "reverses": batch.reverses,
        "reason": batch.reason,
        "idempotency_key": batch.idempotency_key,
        "request_hash": batch.request_hash,
    }
    legs = []
    for e in entries:
        scale = scales[e.asset]
        leg: dict[str, Any] = {
            "entry_id": e.entry_id,
            "account_id": e.account_id,
            "asset": e.asset,
            "type": e.direction,
            "amount": amount_json(e.amount, scale),
            "running_balance": amount_json(e.running_balance, scale),
            "reference": e.reference,
        }
        leg.update(_meta_fields(e.metadata, "metadata")[0])
        if e.created_at != batch.created_at:
            leg["created_at"] = e.created_at
        if e.reverses != batch.reverses:
            leg["reverses"] = e.reverses
        legs.append(leg)
    rec["entries"] = legs
    rec["merkle"] = b"".join(digest for _, _, digest in nodes).hex()
    if checkpoint is not None:
        seq, balances = checkpoint
        rec["checkpoint"] = {
            "sequence": seq,
            "balances": {a: amount_json(b, scales[ix.accounts[a].asset]) for a, b in balances.items()},
        }
    return dumps(rec)


def load_record(ix: Index, rec: Any, where: str) -> tuple[int, int]:
    """Index one transfer record read from disk; returns (first_seq, count)."""
    try:
        scales = ix.assets
        first = rec["sequence"] - 1
        batch_id = _intern(rec["id"])
        created = _intern(rec["timestamp"])
        reverses = rec.get("reverses")
        legs = rec["entries"]
        ix.add_batch(BatchRow(
            batch_id, first, len(legs), created, reverses, rec.get("reason"),
            rec.get("idempotency_key"), rec.get("request_hash"),
        ))
        for i, leg in enumerate(legs):
            asset = _intern(leg["asset"])
            scale = scales[asset]
            direction = leg["type"]
            if direction not in ("credit", "debit"):
                raise IntegrityError(f"{where}: entry type {direction!r}")
            ix.add_entry(EntryRow(
                first + i, leg["entry_id"], batch_id, _intern(leg["account_id"]), asset,
                _units(leg["amount"], scale, where), _intern(direction),
                _units(leg["running_balance"], scale, where), _intern(leg.get("created_at", created)),
                leg["reference"], _intern(_meta_text(leg, "metadata", where)), leg.get("reverses", reverses),
            ))
        hashes = bytes.fromhex(rec["merkle"])
        coords = [c for leaf in range(first, first + len(legs)) for c in created_by(leaf)]
        if len(hashes) != HASH_SIZE * len(coords):
            raise IntegrityError(f"{where}: merkle holds {len(hashes) // HASH_SIZE} nodes, expected {len(coords)}")
        for i, (level, index) in enumerate(coords):
            ix.add_node(level, index, hashes[i * HASH_SIZE : (i + 1) * HASH_SIZE])
        cp = rec.get("checkpoint")
        if cp is not None:
            ix.add_checkpoint(cp["sequence"], {
                a: _units(b, scales[ix.accounts[a].asset], where) for a, b in cp["balances"].items()
            })
        return first, len(legs)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise IntegrityError(f"{where}: malformed transfer record ({type(exc).__name__}: {exc})") from None
    except StorageError as exc:
        if isinstance(exc, IntegrityError):
            raise
        raise IntegrityError(f"{where}: {exc.message}") from None



def account_text(row: AccountRow, scale: int) -> str:
    """An account in the seed's shape (``balance``, ``created_at``, ``meta``) plus
    the engine's ``asset`` and ``overdraft_limit``."""
    body: dict[str, Any] = {"balance": amount_json(row.balance, scale), "created_at": row.created_at}
    body.update(_meta_fields(row.metadata, "meta")[0])
    body["asset"] = row.asset
    body["overdraft_limit"] = amount_json(row.overdraft_limit, scale)
    return dumps(body)


def load_account(account_id: str, body: Any, assets: Mapping[str, int], where: str) -> AccountRow:
    scale = assets[body["asset"]]
    return AccountRow(
        _intern(account_id), _intern(body["asset"]), _units(body["balance"], scale, where),
        _units(body["overdraft_limit"], scale, where), _meta_text(body, "meta", where), body["created_at"],
    )
