"""The one exception tree of the ledger. Every error a caller can see is here.

::

    LedgerError                      (base; ``code`` is a stable machine-readable string)
    ├── ValidationError              bad input: amount, account id, entry spec, metadata
    │   └── AssetMismatchError       a leg's asset differs from its account's
    ├── AccountNotFoundError         debit or read of an account that does not exist
    ├── AccountExistsError           explicit creation of an id already taken
    ├── InsufficientBalanceError     a debit would take an account below its floor
    │   └── PaymentRequiredError     (mesh face) the payer cannot pay: HTTP 402
    ├── BatchNotFoundError           rollback or lookup of an unknown batch
    ├── EntryNotFoundError           lookup of an unknown entry id
    ├── AlreadyReversedError         second rollback of the same batch
    ├── IdempotencyConflictError     same idempotency key, different request
    ├── HoldError                    hold not found, expired, or already settled
    ├── LockTimeoutError             an account lock was not granted in time
    ├── AuthError                    (HTTP) missing/invalid key or scope
    ├── StorageError                 the backing store failed (I/O, connection)
    │   ├── RetryableStorageError    deadlock, serialization failure, lost connection:
    │   │                            the engine retries these itself
    │   └── IntegrityError           stored history does not verify
    ├── ProofVerificationError       a receipt, proof or signed head does not verify
    └── ChainProviderError           (reconciliation) the chain's JSON-RPC endpoint failed

Each exception carries ``code`` and ``to_json()`` so the HTTP layer and the CLI
map them in one place and a remote client can rebuild the same exception type.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, ClassVar

__all__ = [
    "AccountExistsError",
    "AccountNotFoundError",
    "AlreadyReversedError",
    "AssetMismatchError",
    "AuthError",
    "BatchNotFoundError",
    "EntryNotFoundError",
    "HoldError",
    "IdempotencyConflictError",
    "InsufficientBalanceError",
    "IntegrityError",
    "LedgerError",
    "LockTimeoutError",
    "PaymentRequiredError",
    "ProofVerificationError",
    "RetryableStorageError",
    "StorageError",
    "ValidationError",
    "error_from_json",
    "json_amount",
]


def json_amount(value: Decimal) -> int | str:
    """Amounts in JSON: an integer when whole, else an exact decimal string (never a float)."""
    return int(value) if value == value.to_integral_value() else format(value, "f")


def _jsonable(value: Any) -> Any:
    if isinstance(value, Decimal):
        return json_amount(value)
    return value


class LedgerError(Exception):
    code: ClassVar[str] = "ledger_error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.code, "message": self.message}
        body.update({k: _jsonable(v) for k, v in self.details.items()})
        return body


class ValidationError(LedgerError, ValueError):
    code = "invalid_request"


class AssetMismatchError(ValidationError):
    code = "asset_mismatch"


class AccountNotFoundError(LedgerError, KeyError):
    code = "account_not_found"

    def __init__(self, account_id: str, message: str | None = None) -> None:
        super().__init__(message or f"account {account_id!r} does not exist", account_id=account_id)
        self.account_id = account_id

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.message


class AccountExistsError(LedgerError):
    code = "account_exists"


class InsufficientBalanceError(LedgerError):
    code = "insufficient_balance"

    def __init__(
        self,
        account_id: str,
        required: Decimal,
        balance: Decimal,
        message: str | None = None,
    ) -> None:
        super().__init__(
            message
            or f"account {account_id!r} has {_fmt(balance)}, which does not cover {_fmt(required)}",
            account_id=account_id,
            required=required,
            balance=balance,
        )
        self.account_id = account_id
        self.required = required
        self.balance = balance


def _fmt(value: Decimal) -> str:
    return str(_jsonable(value))


class PaymentRequiredError(InsufficientBalanceError):
    """The payer cannot pay for a job: services answer HTTP 402 with ``to_json()``.

    ``PaymentRequiredError(required=..., balance=..., account_id=...)`` as in the
    mesh seed; it is an :class:`InsufficientBalanceError`, so either catch works.
    """

    code = "payment_required"

    def __init__(
        self,
        required: Decimal | int | str,
        balance: Decimal | int | str,
        account_id: str,
        message: str | None = None,
    ) -> None:
        req, bal = Decimal(str(required)), Decimal(str(balance))
        super().__init__(
            account_id,
            req,
            bal,
            message or f"payment required: {_fmt(req)} tokens, account {account_id!r} has {_fmt(bal)}",
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "error": self.code,
            "message": self.message,
            "required_tokens": _jsonable(self.required),
            "current_balance": _jsonable(self.balance),
            "account_id": self.account_id,
        }


class BatchNotFoundError(LedgerError):
    code = "batch_not_found"


class EntryNotFoundError(LedgerError):
    code = "entry_not_found"


class AlreadyReversedError(LedgerError):
    code = "already_reversed"


class IdempotencyConflictError(LedgerError):
    code = "idempotency_conflict"


class HoldError(LedgerError):
    code = "hold_error"


class LockTimeoutError(LedgerError, TimeoutError):
    code = "lock_timeout"


class AuthError(LedgerError):
    code = "unauthorized"


class StorageError(LedgerError):
    code = "storage_error"


class RetryableStorageError(StorageError):
    """Transient: the transaction was rolled back (or its commit outcome is unknown)
    and may be retried. Raised by backends, handled inside the engine."""

    code = "storage_retryable"


class IntegrityError(StorageError):
    code = "integrity_error"


class ProofVerificationError(LedgerError):
    code = "proof_invalid"


def _all_subclasses(cls: type[LedgerError]) -> list[type[LedgerError]]:
    out = [cls]
    for sub in cls.__subclasses__():
        out.extend(_all_subclasses(sub))
    return out


def error_from_json(body: dict[str, Any]) -> LedgerError:
    """Rebuild the exception a server raised from its JSON body (remote clients)."""
    code = body.get("error", "ledger_error")
    message = str(body.get("message", code))
    details = {k: v for k, v in body.items() if k not in ("error", "message")}
    by_code = {c.code: c for c in _all_subclasses(LedgerError)}
    cls = by_code.get(code, LedgerError)
    if issubclass(cls, PaymentRequiredError):
        return cls(
            details.get("required_tokens", details.get("required", 0)),
            details.get("current_balance", details.get("balance", 0)),
            str(details.get("account_id", "")),
            message,
        )
    if issubclass(cls, InsufficientBalanceError):
        err: LedgerError = cls.__new__(cls)
        LedgerError.__init__(err, message, **details)
        err.account_id = details.get("account_id", "")  # type: ignore[attr-defined]
        err.required = Decimal(str(details.get("required", details.get("required_tokens", 0))))  # type: ignore[attr-defined]
        err.balance = Decimal(str(details.get("balance", details.get("current_balance", 0))))  # type: ignore[attr-defined]
        return err
    if issubclass(cls, AccountNotFoundError):
        return cls(str(details.get("account_id", "")), message)
    return cls(message, **details)
