"""mesh_fake_ledger: the compute-token ledger of the mesh, built on sardis_ledger.

Public names are re-exported here. Errors come from the one tree in
:mod:`sardis_ledger.errors`.
"""

from __future__ import annotations

from sardis_ledger.errors import (
    AccountExistsError,
    AccountNotFoundError,
    IdempotencyConflictError,
    InsufficientBalanceError,
    LedgerError,
    PaymentRequiredError,
    ValidationError,
)

from .ledger_service import LedgerConfig, LedgerService

__all__ = [
    "AccountExistsError",
    "AccountNotFoundError",
    "IdempotencyConflictError",
    "InsufficientBalanceError",
    "LedgerConfig",
    "LedgerError",
    "LedgerService",
    "PaymentRequiredError",
    "ValidationError",
]
