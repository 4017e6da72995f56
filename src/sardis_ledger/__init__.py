"""sardis_ledger: an append-only, tamper-evident ledger engine.

Public API re-exported here; modules are implementation detail (as in httpx).
See ``errors`` for the exception tree.
"""

from __future__ import annotations

from .core import Ledger, default_database_url
from .engine import LedgerEngine
from .errors import (
    AccountExistsError,
    AccountNotFoundError,
    AlreadyReversedError,
    AssetMismatchError,
    AuthError,
    BatchNotFoundError,
    HoldError,
    IdempotencyConflictError,
    InsufficientBalanceError,
    IntegrityError,
    LedgerError,
    LockTimeoutError,
    PaymentRequiredError,
    ProofVerificationError,
    RetryableStorageError,
    StorageError,
    ValidationError,
)
from .locks import LockManager
from .models import (
    DEFAULT_ASSET,
    Account,
    Asset,
    BalanceSnapshot,
    EntrySpec,
    LedgerBatch,
    LedgerEntry,
    LedgerEntryType,
    Page,
    Receipt,
    TreeHead,
    VerifyReport,
)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_ASSET",
    "Account",
    "AccountExistsError",
    "AccountNotFoundError",
    "AlreadyReversedError",
    "Asset",
    "AssetMismatchError",
    "AuthError",
    "BalanceSnapshot",
    "BatchNotFoundError",
    "EntrySpec",
    "HoldError",
    "IdempotencyConflictError",
    "InsufficientBalanceError",
    "IntegrityError",
    "Ledger",
    "LedgerBatch",
    "LedgerEngine",
    "LedgerEntry",
    "LedgerEntryType",
    "LedgerError",
    "LockManager",
    "LockTimeoutError",
    "Page",
    "PaymentRequiredError",
    "ProofVerificationError",
    "Receipt",
    "RetryableStorageError",
    "StorageError",
    "TreeHead",
    "ValidationError",
    "VerifyReport",
    "__version__",
    "default_database_url",
]
