"""mesh_fake_ledger: the compute-token ledger of the mesh, built on sardis_ledger.

Public names are re-exported here: :class:`LedgerService` (in-process),
:class:`LedgerClient` / :class:`AsyncLedgerClient` (the same operations locally
or over the HTTP API in :mod:`mesh_fake_ledger.api`). The 402 integration for
FastAPI services is :mod:`mesh_fake_ledger.payments` (imported on demand, as is
the API, so the library does not load FastAPI unless asked). Errors come from
the one tree in :mod:`sardis_ledger.errors`.
"""

from __future__ import annotations

from sardis_ledger.errors import (
    AccountExistsError,
    AccountNotFoundError,
    AlreadyReversedError,
    AuthError,
    BatchNotFoundError,
    HoldError,
    IdempotencyConflictError,
    InsufficientBalanceError,
    LedgerError,
    PaymentRequiredError,
    StorageError,
    ValidationError,
)

from .client import AsyncLedgerClient, LedgerClient
from .ledger_service import LedgerConfig, LedgerService

__all__ = [
    "AccountExistsError",
    "AccountNotFoundError",
    "AlreadyReversedError",
    "AsyncLedgerClient",
    "AuthError",
    "BatchNotFoundError",
    "HoldError",
    "IdempotencyConflictError",
    "InsufficientBalanceError",
    "LedgerClient",
    "LedgerConfig",
    "LedgerError",
    "LedgerService",
    "PaymentRequiredError",
    "StorageError",
    "ValidationError",
]
