"""Exact money: parsing and validating amounts, and converting to minor units.

Storage keeps integers of the asset's smallest unit so that every backend
compares and sums exactly; the API speaks ``Decimal``. Floats are refused
outright (invariant 5): a float has already rounded the value the caller meant.

Every Decimal operation here runs in a private context with enough precision for
any accepted amount, so a caller who lowered ``decimal.getcontext().prec`` (or set
traps) can never make the ledger round a balance.
"""

from __future__ import annotations

import re
from decimal import Context, Decimal, DivisionByZero, InvalidOperation, Overflow

from .errors import ValidationError

__all__ = [
    "MAX_MINOR_UNITS",
    "canonical_amount",
    "format_minor",
    "from_minor",
    "minor_units",
    "parse_amount",
    "to_minor",
    "validate_account_id",
    "validate_asset_code",
]

MAX_MINOR_UNITS = 10**18
"""Largest amount or balance magnitude in minor units; fits a signed 64-bit integer
with room to add two of them, so no backend ever overflows."""

MAX_DIGITS = 60
"""Significant digits an accepted amount may carry (before trailing zeros are dropped)."""

_CTX = Context(prec=MAX_DIGITS + 40, traps=[InvalidOperation, Overflow, DivisionByZero])
_ACCOUNT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}")
_ASSET = re.compile(r"[A-Z][A-Z0-9_]{0,15}")
_DECIMAL_TEXT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,4})?").fullmatch
_POW10 = [10**i for i in range(19)]


def _refuse(field: str, message: str, **details: object) -> ValidationError:
    return ValidationError(f"{field} {message}", field=field, **details)


def parse_amount(
    value: object, scale: int | None, *, field: str = "amount", allow_zero: bool = False
) -> Decimal:
    """A finite, positive amount with at most ``scale`` decimals, or ValidationError.

    ``scale=None`` checks everything but the decimal places (the caller does not
    know the asset yet and checks them later with :func:`minor_units`)."""
    if type(value) is int:  # the common case first; bool is a subclass of int, refused below
        if value <= 0 and not (allow_zero and value == 0):
            raise _refuse(field, f"must be positive, got {value}")
        if value > MAX_MINOR_UNITS:
            raise _refuse(field, f"{value} is out of range")
        amount = Decimal(value)
    else:
        amount = _to_decimal(value, field)
        if not amount.is_finite():
            raise _refuse(field, f"must be finite, got {amount}")
        if amount < 0 or (amount == 0 and not allow_zero):
            raise _refuse(field, f"must be positive, got {amount}")
        if amount != 0 and not -40 <= amount.adjusted() <= 18:
            raise _refuse(field, f"{amount} is out of range")
        if len(amount.as_tuple().digits) > MAX_DIGITS:
            raise _refuse(field, f"has more than {MAX_DIGITS} digits")
    if scale is not None:
        minor_units(amount, scale, field)
    return amount


def _to_decimal(value: object, field: str) -> Decimal:
    if isinstance(value, (bool, float)):
        raise _refuse(
            field,
            f"must be a Decimal, an integer or a decimal string, not {type(value).__name__}"
            " (floats cannot represent money exactly)",
        )
    if isinstance(value, Decimal):
        return value
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, str):
        text = value.strip()
        # Plain decimal notation only: Decimal() would also take "1_000", "NaN", "Infinity".
        if len(text) <= 64 and _DECIMAL_TEXT(text):
            return Decimal(text)
        raise _refuse(field, f"{value[:40]!r} is not a decimal number")
    raise _refuse(field, "must be a Decimal, an integer or a decimal string")


def minor_units(amount: Decimal, scale: int, field: str = "amount") -> int:
    """``amount`` in minor units of an asset with ``scale`` decimals, exactly, or
    ValidationError if it has more decimals than the asset or is too large."""
    scaled = amount.scaleb(scale, _CTX)
    units = int(scaled)
    if units != scaled:
        raise ValidationError(
            f"{field} {amount} has more than {scale} decimal places", field=field, scale=scale
        )
    if units > MAX_MINOR_UNITS:
        raise _refuse(field, f"{amount} is too large")
    return units


def to_minor(amount: Decimal, scale: int) -> int:
    """Minor units of an amount already known to fit the scale (truncates otherwise)."""
    return int(amount.scaleb(scale, _CTX))


def from_minor(units: int, scale: int) -> Decimal:
    """The Decimal a caller sees: whole amounts without a fraction, others without
    trailing zeros (``100``, ``100.5``), whatever the current decimal context."""
    if scale == 0:
        return Decimal(units)
    whole, frac = divmod(units, _POW10[scale])
    if frac == 0:
        return Decimal(whole)
    return Decimal(units).scaleb(-scale, _CTX).normalize(_CTX)


def format_minor(units: int, scale: int) -> str:
    """Plain decimal text of a minor-unit amount, never in exponent notation:
    ``format(from_minor(units, scale), "f")``, computed with integers because it
    sits on the write path (every entry's leaf has two of them)."""
    if scale == 0:
        return str(units)
    sign = ""
    if units < 0:
        sign, units = "-", -units
    whole, frac = divmod(units, _POW10[scale])
    if frac == 0:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{frac:0{scale}d}".rstrip("0")


def canonical_amount(amount: Decimal) -> str:
    """One text per value (``1``, ``1.0`` and ``1.00`` agree), for request hashes."""
    return format(amount.normalize(_CTX), "f")


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
