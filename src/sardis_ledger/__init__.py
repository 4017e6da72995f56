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
    EntryNotFoundError,
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
from .evidence import AsyncEvidence, AuditReport, Evidence
from .hybrid import (
    CrossCheckReport,
    HybridConfig,
    HybridEntry,
    HybridLedger,
    HybridReceipt,
    create_hybrid_ledger,
)
from .immutable import (
    AuditReceipt,
    AuditTrail,
    ImmutableConfig,
    VerificationResult,
    VerificationStatus,
    create_audit_trail,
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
from .reconciliation import (
    ChainProvider,
    ChainProviderError,
    ChainTransfer,
    Discrepancy,
    DiscrepancyType,
    ReconciliationEngine,
    ReconciliationMatch,
    ReconciliationReport,
)
from .signing import Keyring
from .verifier import SignedTreeHead, TreeHeadTracker, VerificationError

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_ASSET",
    "Account",
    "AccountExistsError",
    "AccountNotFoundError",
    "AlreadyReversedError",
    "Asset",
    "AssetMismatchError",
    "AsyncEvidence",
    "AuditReceipt",
    "AuditReport",
    "AuditTrail",
    "AuthError",
    "BalanceSnapshot",
    "BatchNotFoundError",
    "ChainProvider",
    "ChainProviderError",
    "ChainTransfer",
    "CrossCheckReport",
    "Discrepancy",
    "DiscrepancyType",
    "EntryNotFoundError",
    "EntrySpec",
    "Evidence",
    "HoldError",
    "HybridConfig",
    "HybridEntry",
    "HybridLedger",
    "HybridReceipt",
    "IdempotencyConflictError",
    "ImmutableConfig",
    "InsufficientBalanceError",
    "IntegrityError",
    "Keyring",
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
    "ReconciliationEngine",
    "ReconciliationMatch",
    "ReconciliationReport",
    "RetryableStorageError",
    "SignedTreeHead",
    "StorageError",
    "TreeHead",
    "TreeHeadTracker",
    "ValidationError",
    "VerificationError",
    "VerificationResult",
    "VerificationStatus",
    "VerifyReport",
    "__version__",
    "create_audit_trail",
    "create_hybrid_ledger",
    "default_database_url",
]
