"""Record shapes and input checks shared by the service and its holds.

``transfer_record`` is the one definition of what a transfer looks like to
callers (Python, CLI and HTTP alike).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sardis_ledger import LedgerBatch
from sardis_ledger.errors import ValidationError, json_amount

__all__ = [
    "DEFAULT_HOLD_TIMEOUT",
    "HOLD_PREFIX",
    "MAX_HOLD_TIMEOUT",
    "RESERVED_PREFIXES",
    "SETTLE_KINDS",
    "check_job_id",
    "check_timeout",
    "expiry_key",
    "iso",
    "meta_of",
    "note_meta",
    "transfer_record",
    "user_key",
]

RESERVED_PREFIXES = ("hold:", "sys:")
"""Account id prefixes the service uses internally; users cannot create them."""

HOLD_PREFIX = "hold:"
DEFAULT_HOLD_TIMEOUT = 300.0
"""Seconds a hold reserves funds when the caller names no timeout."""
MAX_HOLD_TIMEOUT = 30 * 86400.0
SETTLE_KINDS = {"hold_capture": "captured", "hold_void": "voided", "hold_expire": "expired"}


def iso(ts: datetime) -> str:
    return ts.isoformat().replace("+00:00", "Z")


def meta_of(batch: LedgerBatch) -> dict[str, Any]:
    return dict(batch.entries[0].metadata) if batch.entries else {}


def transfer_record(batch: LedgerBatch) -> dict[str, Any]:
    """The seed's transfer shape for an engine batch, plus evidence.

    ``from_account`` is the debited account, ``to_account`` the first credited one
    and ``amount`` what it received (for a hold capture: the captured part; the
    rest, returned to the payer, is ``released``).
    """
    debit = next((e for e in batch.entries if e.entry_type.value == "debit"), None)
    credit = next((e for e in batch.entries if e.entry_type.value == "credit"), None)
    first = batch.entries[0] if batch.entries else None
    meta = meta_of(batch)
    kind = meta.get("kind", "transfer" if debit and credit else "credit" if credit else "debit")
    paid = credit or first
    amount = paid.amount if paid is not None else Decimal(0)
    record: dict[str, Any] = {
        "id": batch.batch_id,
        "timestamp": iso(batch.created_at),
        "from_account": debit.account_id if debit else None,
        "to_account": credit.account_id if credit else None,
        "amount": json_amount(amount),
        "job_id": meta.get("job_id") if kind == "refund" else (first.reference if first else None),
        "note": meta.get("note"),
        "kind": kind,
        "reverses": batch.reverses or meta.get("refunds"),
        "sequence": first.sequence if first else None,
        "merkle_root": batch.merkle_root,
    }
    if kind in SETTLE_KINDS:
        record["hold_id"] = meta.get("hold_id")
        rest = sum((e.amount for e in batch.entries if e.entry_type.value == "credit"), Decimal(0)) - amount
        if kind != "hold_capture":
            rest = amount
        record["released"] = json_amount(rest)
    elif kind == "hold":
        record["hold_id"] = meta.get("hold_id")
    return record


def note_meta(note: object, name: str = "note") -> dict[str, Any]:
    if note is None:
        return {}
    if not isinstance(note, str) or len(note) > 256 or any(ord(c) < 32 for c in note):
        raise ValidationError(f"{name} must be a string of at most 256 printable characters", field=name)
    return {"note": note}


def check_job_id(job_id: object) -> str | None:
    if job_id is None:
        return None
    if not isinstance(job_id, str) or not job_id or len(job_id) > 256 or any(ord(c) < 32 for c in job_id):
        raise ValidationError("job_id must be 1-256 printable characters", field="job_id")
    return job_id


def user_key(key: object) -> str | None:
    """Caller-chosen idempotency keys live in their own namespace, so no caller can
    pre-empt a key the service derives itself (``job:``, ``hold:<id>:settle``…)."""
    if key is None:
        return None
    if not isinstance(key, str) or not 1 <= len(key) <= 200 or any(ord(c) < 32 for c in key):
        raise ValidationError("idempotency key must be 1-200 printable characters", field="idempotency_key")
    return f"idem:{key}"


def check_timeout(value: object, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        raise ValidationError("timeout must be a number of seconds", field="timeout")
    seconds = float(value)
    if not math.isfinite(seconds) or not 0 < seconds <= MAX_HOLD_TIMEOUT:
        raise ValidationError(f"timeout must be within (0, {MAX_HOLD_TIMEOUT:g}] seconds", field="timeout")
    return seconds


def expiry_key(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y%m%dT%H%M%S%f")
