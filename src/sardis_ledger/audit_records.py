"""The audit trail's records, receipts, verification results and configuration.

Plain data, kept apart from :mod:`sardis_ledger.immutable` (the store and its
proofs) so each module stays small; ``immutable`` re-exports every name here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any

from .errors import ValidationError
from .models import Receipt
from .signing import SignedTreeHead

__all__ = [
    "AuditReceipt",
    "AuditRecord",
    "ImmutableConfig",
    "VerificationResult",
    "VerificationStatus",
    "audit_leaf",
]

_MAX_DATA = 64 * 1024


class VerificationStatus(StrEnum):
    VERIFIED = "verified"
    TAMPERED = "tampered"
    MISSING = "missing"
    UNVERIFIABLE = "unverifiable"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class ImmutableConfig:
    """Where the audit trail lives; see the module docstring for the exact rules."""

    host: str = "localhost"
    port: int = 3322
    database: str = "sardis_audit"
    url: str | None = None
    backend: str = "auto"
    directory: str | None = None
    username: str | None = None
    password: str | None = None
    key_dir: str | None = None
    """Signing keys and heads log; default as for a ledger at the same URL."""
    sign_writes: bool = True
    """Sign (and log) the new tree head on every write, so even the newest record
    is covered by a signature. Off: heads are signed on ``verify`` and on request."""

    def store_url(self) -> str:
        if self.url:
            return self.url
        backend = self.backend.lower()
        if backend == "immudb":
            raise ValidationError(
                "no immudb adapter ships with sardis-ledger: the audit trail is its own append-only log in "
                "SQLite (default) or PostgreSQL (backend='postgresql' or url='postgresql://…')", field="backend",
            )
        if backend == "postgresql":
            from urllib.parse import quote

            auth = ""
            if self.username:
                auth = quote(self.username, safe="")
                if self.password:
                    auth += ":" + quote(self.password, safe="")
                auth += "@"
            return f"postgresql://{auth}{self.host}:{self.port}/{self.database}"
        if backend not in ("auto", "sqlite"):
            raise ValidationError(f"unknown audit backend {self.backend!r}", field="backend")
        if not self.database or "/" in self.database or self.database.startswith("."):
            raise ValidationError("database must be a plain name (the SQLite file's stem)", field="database")
        directory = Path(self.directory or os.environ.get("LEDGER_AUDIT_DIR") or ".")
        name = self.database if self.database.endswith(".db") else f"{self.database}.db"
        return f"sqlite:///{directory / name}"


@dataclass(frozen=True, slots=True)
class AuditRecord:
    tx: int
    entry_id: str
    ref_seq: int | None
    data_json: str
    created_at: str

    @property
    def data(self) -> Any:
        return json.loads(self.data_json)

    @property
    def leaf(self) -> bytes:
        return audit_leaf(self.tx, self.entry_id, self.ref_seq, self.data_json, self.created_at)


def audit_leaf(tx: int, entry_id: str, ref_seq: int | None, data_json: str, created_at: str) -> bytes:
    """Canonical JSON of an audit record (keys sorted; ``data_json`` is canonical already)."""
    ref = "null" if ref_seq is None else str(int(ref_seq))
    return (
        f'{{"created_at":{json.dumps(created_at)},"data":{data_json},"entry_id":{json.dumps(entry_id)},'
        f'"ref_seq":{ref},"tx":{int(tx)},"v":1}}'
    ).encode("ascii")


@dataclass(frozen=True, slots=True)
class AuditReceipt:
    """What a write returns: the transaction id, when, and the Merkle proof."""

    entry_id: str
    tx_id: int
    timestamp: datetime
    merkle_proof: Receipt
    leaf: bytes
    signed_tree_head: SignedTreeHead | None = None

    def verify(self) -> bool:
        return self.merkle_proof.verify(self.leaf)

    def to_dict(self) -> dict[str, Any]:
        return {
            "entry_id": self.entry_id,
            "tx_id": self.tx_id,
            "timestamp": self.timestamp.isoformat().replace("+00:00", "Z"),
            "merkle_proof": self.merkle_proof.to_dict(),
            "leaf": self.leaf.decode(),
            "signed_tree_head": self.signed_tree_head.to_dict() if self.signed_tree_head else None,
        }


@dataclass(frozen=True, slots=True)
class VerificationResult:
    entry_id: str
    status: VerificationStatus
    message: str
    tx_id: int | None = None
    proof: Receipt | None = None
    signed_tree_head: SignedTreeHead | None = None

    @property
    def verified(self) -> bool:
        return self.status is VerificationStatus.VERIFIED

    def to_dict(self) -> dict[str, Any]:
        return {
            "entry_id": self.entry_id,
            "status": self.status.value,
            "message": self.message,
            "tx_id": self.tx_id,
            "proof": self.proof.to_dict() if self.proof else None,
            "signed_tree_head": self.signed_tree_head.to_dict() if self.signed_tree_head else None,
        }


def _json_default(value: object) -> object:
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError("non-finite Decimal")
        return format(value, "f")
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _canonical_data(data: object) -> str:
    if not isinstance(data, Mapping):
        raise ValidationError("audit data must be a JSON object (a mapping)", field="data")
    try:
        text = json.dumps(dict(data), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False,
                          default=_json_default)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"audit data must be JSON-serialisable: {exc}", field="data") from None
    if len(text) > _MAX_DATA:
        raise ValidationError(f"audit data exceeds {_MAX_DATA} bytes", field="data")
    return text


def _check_entry_id(entry_id: object) -> str:
    if not isinstance(entry_id, str) or not entry_id or len(entry_id) > 256 or any(ord(c) < 32 for c in entry_id):
        raise ValidationError("entry_id must be 1-256 printable characters", field="entry_id")
    return entry_id


def _now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
