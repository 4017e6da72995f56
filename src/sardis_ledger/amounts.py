"""Exact money: parsing and validating amounts, and converting to minor units.

Storage keeps integers of the asset's smallest unit so that every backend
compares and sums exactly; the API speaks ``Decimal``. Floats are refused
outright (invariant 5): a float has already rounded the value the caller meant.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from .errors import ValidationError

__all__ = [
    "MAX_MINOR_UNITS",
    "from_minor",
    "parse_amount",
    "to_minor",
    "validate_account_id",
    "validate_asset_code",
]

MAX_MINOR_UNITS = 10**18
"""Largest amount or balance magnitude in minor units; fits a signed 64-bit integer
with room to add two of them, so no backend ever overflows."""

_ACCOUNT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}")
_ASSET = re.compile(r"[A-Z][A-Z0-9_]{0,15}")


def parse_amount(
    value: object, scale: int | None, *, field: str = "amount", allow_zero: bool = False
) -> Decimal:
    """A finite, positive amount with at most ``scale`` decimals, or ValidationError.

    ``scale=None`` checks everything but the decimal places (the caller does not
    know the asset yet and checks them later)."""
    if isinstance(value, bool) or isinstance(value, float):
        raise ValidationError(
            f"{field} must be a Decimal, an integer or a decimal string, not {type(value).__name__}"
            " (floats cannot represent money exactly)",
            field=field,
        )
    if isinstance(value, int):
        amount = Decimal(value)
    elif isinstance(value, Decimal):
        amount = value
    elif isinstance(value, str):
        text = value.strip()
        if not text or len(text) > 64:
            raise ValidationError(f"{field} {value[:40]!r} is not a decimal number", field=field)
        try:
            amount = Decimal(text)
        except InvalidOperation:
            raise ValidationError(f"{field} {value[:40]!r} is not a decimal number", field=field) from None
    else:
        raise ValidationError(f"{field} must be a Decimal, an integer or a decimal string", field=field)
    if not amount.is_finite():
        raise ValidationError(f"{field} must be finite, got {amount}", field=field)
    if amount < 0 or (amount == 0 and not allow_zero):
        raise ValidationError(f"{field} must be positive, got {amount}", field=field)
    if amount.adjusted() > 18 or (amount != 0 and amount.adjusted() < -40):
        raise ValidationError(f"{field} {amount} is out of range", field=field)
    if scale is None:
        return amount
    exponent = amount.as_tuple().exponent
    assert isinstance(exponent, int)
    if exponent < -scale and amount != amount.quantize(Decimal(1).scaleb(-scale)):
        raise ValidationError(
            f"{field} {amount} has more than {scale} decimal places", field=field, scale=scale
        )
    if to_minor(amount, scale) > MAX_MINOR_UNITS:
        raise ValidationError(f"{field} {amount} is too large", field=field)
    return amount


def to_minor(amount: Decimal, scale: int) -> int:
    return int(amount.scaleb(scale))


def from_minor(units: int, scale: int) -> Decimal:
    value = Decimal(units).scaleb(-scale)
    if units % (10**scale) == 0:
        return value.quantize(Decimal(1))
    return value.normalize()


def validate_account_id(account_id: object, *, field: str = "account_id") -> str:
    if not isinstance(account_id, str) or not _ACCOUNT_ID.fullmatch(account_id):
        shown = account_id[:40] if isinstance(account_id, str) else type(account_id).__name__
        raise ValidationError(
            f"{field} {shown!r} is not valid: use 1-128 characters of letters, digits and _ . : @ -,"
            " starting with a letter or digit",
            field=field,
        )
    return account_id


def validate_asset_code(code: object) -> str:
    if not isinstance(code, str) or not _ASSET.fullmatch(code):
        raise ValidationError(
            "asset code must be 1-16 upper-case letters, digits or _, starting with a letter",
            field="asset",
        )
    return code
