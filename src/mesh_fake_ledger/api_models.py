"""Request and response models of the HTTP API (the OpenAPI document is built from them).

Amounts are exact: requests may send an integer, a decimal string, or a JSON
number that the API parses as a decimal (never through a float), and every
amount is checked by the engine's own parser. Responses carry amounts as
integers when whole and decimal strings otherwise. Request models forbid
unknown fields, so a typo is a 422 instead of a silently ignored field.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, WithJsonSchema

from sardis_ledger.amounts import parse_amount

from .ledger_service import MAX_HOLD_TIMEOUT

__all__ = [
    "AccountCreateIn",
    "AccountOut",
    "Amount",
    "AmountOut",
    "BalanceOut",
    "CanPayOut",
    "CaptureIn",
    "CreditIn",
    "EnsureIn",
    "ErrorOut",
    "HealthOut",
    "HoldIn",
    "HoldOut",
    "PaymentRequiredOut",
    "RefundIn",
    "ReleasedOut",
    "TransferIn",
    "TransferOut",
]

_AMOUNT_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "integer", "minimum": 0},
        {"type": "string", "pattern": r"^[0-9]{1,19}(\.[0-9]{1,18})?$"},
        {"type": "number", "minimum": 0},
    ],
    "description": "Token amount: an integer, a decimal string such as \"2.5\", or an exact JSON number."
    " At most 6 decimal places.",
    "examples": [10, "2.5"],
}


def _amount(value: object) -> Decimal:
    return parse_amount(value, None)


def _amount_or_zero(value: object) -> Decimal:
    return parse_amount(value, None, field="initial_balance", allow_zero=True)


def _seconds(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, Decimal, float)):
        raise ValueError("timeout must be a number of seconds")
    seconds = float(value)
    if not 0 < seconds <= MAX_HOLD_TIMEOUT:
        raise ValueError(f"timeout must be within (0, {MAX_HOLD_TIMEOUT:g}] seconds")
    return seconds


Amount = Annotated[Decimal, PlainValidator(_amount), WithJsonSchema(_AMOUNT_SCHEMA)]
AmountOrZero = Annotated[Decimal, PlainValidator(_amount_or_zero), WithJsonSchema(_AMOUNT_SCHEMA)]
Seconds = Annotated[
    float,
    PlainValidator(_seconds),
    WithJsonSchema({"type": "number", "exclusiveMinimum": 0, "maximum": MAX_HOLD_TIMEOUT,
                    "description": "Seconds until the hold expires and its funds return to the payer."}),
]
AmountOut = Annotated[int | str, Field(description="Integer when whole, else an exact decimal string.")]
AccountId = Annotated[str, Field(min_length=1, max_length=128, examples=["alice"])]
Text = Annotated[str, Field(max_length=256)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class EnsureIn(_In):
    initial_balance: AmountOrZero = Decimal(0)
    meta: dict[str, Any] | None = None


class AccountCreateIn(_In):
    account_id: AccountId
    initial_balance: AmountOrZero = Decimal(0)
    meta: dict[str, Any] | None = None


class CreditIn(_In):
    amount: Amount
    reason: Text | None = None


class TransferIn(_In):
    from_account: AccountId
    to_account: AccountId | None = Field(None, description="Receiver; default: the provider account.")
    amount: Amount
    job_id: Text | None = Field(None, description="Charges are idempotent by job id.")
    note: Text | None = None


class RefundIn(_In):
    amount: Amount | None = Field(None, description="Default: all that is not refunded yet.")
    reason: Text | None = None


class HoldIn(_In):
    payer: AccountId
    amount: Amount
    receiver: AccountId | None = Field(None, description="Who a capture pays; default: the provider account.")
    job_id: Text | None = Field(None, description="Holds are idempotent by job id.")
    timeout: Seconds | None = None
    note: Text | None = None


class CaptureIn(_In):
    amount: Amount | None = Field(None, description="Default: the whole hold. The rest returns to the payer.")


class AccountOut(BaseModel):
    id: str
    balance: AmountOut
    created_at: str
    meta: dict[str, Any]


class BalanceOut(BaseModel):
    account_id: str
    balance: AmountOut


class CanPayOut(BaseModel):
    account_id: str
    amount: AmountOut
    balance: AmountOut
    can_pay: bool


class TransferOut(BaseModel):
    id: str
    timestamp: str
    from_account: str | None
    to_account: str | None
    amount: AmountOut
    job_id: str | None
    note: str | None
    kind: str = Field(description="transfer, credit, initial_balance, hold, hold_capture, hold_void,"
                                  " hold_expire or refund")
    reverses: str | None = Field(description="For a refund: the transfer it reverses.")
    sequence: int | None
    merkle_root: str | None
    hold_id: str | None = None
    released: AmountOut | None = None


class HoldOut(BaseModel):
    hold_id: str
    payer: str
    receiver: str
    amount: AmountOut
    job_id: str | None
    note: str | None
    status: str = Field(description="open, captured, voided or expired")
    created_at: str
    expires_at: str
    captured: AmountOut
    released: AmountOut
    hold_transfer_id: str
    settlement_id: str | None
    settled_at: str | None


class ReleasedOut(BaseModel):
    released: int


class HealthOut(BaseModel):
    status: str


class ErrorOut(BaseModel):
    """Every error: a stable machine-readable ``error`` code, a message, and details."""

    model_config = ConfigDict(extra="allow")
    error: str
    message: str


class PaymentRequiredOut(ErrorOut):
    required_tokens: AmountOut
    current_balance: AmountOut
    account_id: str
