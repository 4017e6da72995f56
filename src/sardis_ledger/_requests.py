"""Write requests as the ledger receives them: validated before any storage work.

Private to :mod:`sardis_ledger.core`. Everything a caller can get wrong (amounts,
ids, entry types, text, metadata, unknown fields) is refused here with a
:class:`~sardis_ledger.errors.ValidationError` before a transaction begins, so
bad input never holds a lock and never writes anything. What needs the stored
state (the asset's scale, balances, whether a batch exists) is checked inside the
transaction by the core.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from .amounts import canonical_amount, parse_amount, validate_account_id, validate_asset_code
from .errors import ValidationError
from .models import EntrySpec, LedgerEntryType, canonical_json

__all__ = [
    "MAX_BATCH_LEGS",
    "MAX_METADATA_BYTES",
    "MAX_TEXT",
    "Leg",
    "Request",
    "batch_request",
    "check_key",
    "check_metadata",
    "check_text",
    "iso",
    "leg",
    "new_id",
    "now_iso",
    "transfer_request",
]

MAX_BATCH_LEGS = 10_000
MAX_TEXT = 256
MAX_METADATA_BYTES = 16_384

# -- ids ---------------------------------------------------------------------------
#
# Batch and entry ids are 32 hex digits: milliseconds since the epoch, a random
# per-process node, and a per-process counter. Time-ordered ids are appended at the
# right edge of their unique indexes (random UUIDs scatter inserts over the whole
# index and, on a large ledger, over the disk); the random node keeps processes and
# hosts apart, and is drawn again in a forked child.

_ID_MASK = (1 << 40) - 1
_node = secrets.randbits(40)
_counter = itertools.count(secrets.randbits(32))


def _reseed() -> None:
    global _node, _counter
    _node = secrets.randbits(40)
    _counter = itertools.count(secrets.randbits(32))


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reseed)


_prefix: tuple[int, int, str] = (-1, -1, "")


def id_prefix() -> str:
    """The time-and-node part of ids made now; append :func:`id_suffix` for each id.
    (The text is kept for the current millisecond: a bulk write makes thousands.)"""
    global _prefix
    ms = time.time_ns() // 1_000_000
    cached = _prefix
    if cached[0] != ms or cached[1] != _node:
        cached = _prefix = (ms, _node, f"{ms:012x}{_node:010x}")
    return cached[2]


def id_suffix() -> str:
    return f"{next(_counter) & _ID_MASK:010x}"


def new_id() -> str:
    return id_prefix() + id_suffix()


# -- timestamps ----------------------------------------------------------------------


_second: tuple[int, str] = (-1, "")


def now_iso() -> str:
    """The current UTC time as the ledger stores it (``2024-05-01T12:00:00.123456Z``).
    strftime costs more than the rest of a small write's validation, so the text of
    the current second is kept and only the microseconds are formatted."""
    global _second
    sec, frac = divmod(time.time_ns(), 1_000_000_000)
    cached = _second  # one read of an immutable pair: safe against other threads
    if cached[0] != sec:
        cached = _second = (sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)))
    return f"{cached[1]}.{frac // 1000:06d}Z"


def iso(ts: datetime, name: str = "at") -> str:
    if ts.tzinfo is None:
        raise ValidationError(f"{name} must be timezone-aware (use datetime.now(UTC))", field=name)
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# -- text and metadata ---------------------------------------------------------------


def check_text(value: object, name: str) -> str | None:
    """Optional free text (references, reasons): printable, bounded, encodable.
    Control characters and lone surrogates are refused: they cannot be stored by
    every backend, and a reference is something people read."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValidationError(f"{name} must be a string", field=name)
    if len(value) > MAX_TEXT or _UNPRINTABLE(value):
        raise ValidationError(f"{name} must be at most {MAX_TEXT} printable characters", field=name)
    return value


_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]").search


def check_key(key: object) -> str | None:
    if key is None:
        return None
    if not isinstance(key, str) or not key or len(key) > MAX_TEXT or _UNPRINTABLE(key):
        raise ValidationError(f"idempotency key must be 1-{MAX_TEXT} characters", field="idempotency_key")
    return key


def check_metadata(value: object) -> str:
    """Metadata as canonical JSON text (what the leaf embeds), or ValidationError."""
    if value is None:
        return "{}"
    if not isinstance(value, Mapping):
        raise ValidationError("metadata must be a JSON object", field="metadata")
    if not value:
        return "{}"
    try:
        text = canonical_json(dict(value))
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValidationError(f"metadata must be JSON-serialisable: {str(exc)[:100]}", field="metadata") from None
    if len(text) > MAX_METADATA_BYTES:
        raise ValidationError(f"metadata exceeds {MAX_METADATA_BYTES} bytes", field="metadata")
    return text


def entry_type(value: object) -> str:
    if isinstance(value, LedgerEntryType):
        return value.value
    if isinstance(value, str):
        low = value.lower()
        if low in ("credit", "debit"):
            return low
    raise ValidationError("entry_type must be 'credit' or 'debit'", field="entry_type")


# -- requests ------------------------------------------------------------------------


@dataclass(slots=True)
class Leg:
    account_id: str
    amount: Decimal
    direction: str
    reference: str | None
    metadata: str
    asset: str | None


@dataclass(slots=True)
class Request:
    """One batch to append (or, with ``reverses``, the reversal of one).

    ``batch_id`` is fixed when the request is made, before any attempt, so a retry
    after a commit of unknown outcome can find what the first attempt wrote."""

    legs: list[Leg]
    idempotency_key: str | None = None
    reverses: str | None = None
    reason: str | None = None
    batch_id: str = field(default_factory=new_id)
    request_hash: str | None = None
    same_asset: bool = False
    """A transfer: both legs move the same asset (a new receiver takes the sender's)."""

    def keyed(self, key: object) -> Request:
        self.idempotency_key = check_key(key)
        if self.idempotency_key is not None:
            self.request_hash = request_hash(self)
        return self


_SPEC_KEYS = frozenset({"account_id", "amount", "entry_type", "reference", "metadata", "asset"})


def leg(
    account_id: object,
    amount: object,
    direction: object,
    reference: object = None,
    metadata: object = None,
    asset: object = None,
) -> Leg:
    return Leg(
        validate_account_id(account_id),
        parse_amount(amount, None),
        entry_type(direction),
        check_text(reference, "reference"),
        check_metadata(metadata),
        None if asset is None else validate_asset_code(asset),
    )


def _leg_from_spec(spec: object, position: int) -> Leg:
    if isinstance(spec, EntrySpec):
        return leg(spec.account_id, spec.amount, spec.entry_type, spec.reference, spec.metadata, spec.asset)
    if not isinstance(spec, Mapping):
        raise ValidationError(f"batch entry {position} must be a mapping or an EntrySpec")
    unknown = [str(k) for k in spec if k not in _SPEC_KEYS]
    if unknown:
        shown = ", ".join(sorted(repr(k[:40]) for k in unknown)[:5])
        raise ValidationError(f"batch entry {position} has unknown fields: {shown}", fields=sorted(unknown)[:20])
    missing = sorted({"account_id", "amount", "entry_type"} - set(spec))
    if missing:
        raise ValidationError(f"batch entry {position} is missing {', '.join(missing)}")
    return leg(
        spec["account_id"], spec["amount"], spec["entry_type"], spec.get("reference"), spec.get("metadata"),
        spec.get("asset"),
    )


def batch_request(entries: object) -> Request:
    if isinstance(entries, (str, bytes, Mapping)) or not isinstance(entries, Sequence):
        raise ValidationError("a batch is a list of entries")
    if not entries:
        raise ValidationError("a batch needs at least one entry")
    if len(entries) > MAX_BATCH_LEGS:
        raise ValidationError(f"a batch has at most {MAX_BATCH_LEGS} entries")
    return Request([_leg_from_spec(s, i) for i, s in enumerate(entries)])


def transfer_request(src: object, dst: object, amount: object, reference: object, metadata: object) -> Request:
    source = validate_account_id(src, field="from_account")
    target = validate_account_id(dst, field="to_account")
    if source == target:
        raise ValidationError("a transfer needs two different accounts", field="to_account")
    value = parse_amount(amount, None)
    ref = check_text(reference, "reference")
    meta = check_metadata(metadata)
    return Request(
        [Leg(source, value, "debit", ref, meta, None), Leg(target, value, "credit", ref, meta, None)],
        same_asset=True,
    )


def request_hash(req: Request) -> str:
    """What an idempotency key is bound to: the request's content, not its batch id."""
    body: dict[str, Any] = {
        "legs": [
            [lg.account_id, canonical_amount(lg.amount), lg.direction, lg.reference, lg.metadata, lg.asset]
            for lg in req.legs
        ],
        "reverses": req.reverses,
        "reason": req.reason,
    }
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()
