"""``LedgerService``: the mesh's token ledger, a thin face on the sardis engine.

Accounts here are explicit (``create_account``); the engine does the rest.
A *transfer* is one engine batch of two legs (debit payer, credit receiver),
a *credit* is a one-leg issuance batch. Records come back as plain dicts in the
seed's documented shape (``id``, ``timestamp``, ``from_account``,
``to_account``, ``amount``, ``job_id``, ``note``) plus evidence fields, with
amounts as integers when whole and exact decimal strings otherwise.

Pay-per-job without races uses holds (two-phase transfers) and refunds, the
methods of :class:`~mesh_fake_ledger.holds.HoldsAndRefunds` (see there).

Every mutation is committed to storage before the call returns ("saved on every
mutation"), and the service is safe to share between threads; several
processes may share one SQLite, JSON or PostgreSQL ledger.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from sardis_ledger import Ledger
from sardis_ledger.amounts import parse_amount, validate_account_id
from sardis_ledger.errors import (
    AccountNotFoundError,
    IdempotencyConflictError,
    InsufficientBalanceError,
    PaymentRequiredError,
    ValidationError,
    json_amount,
)

from ._records import (
    DEFAULT_HOLD_TIMEOUT,
    MAX_HOLD_TIMEOUT,
    RESERVED_PREFIXES,
    check_job_id,
    iso,
    note_meta,
    transfer_record,
    user_key,
)
from .holds import HoldsAndRefunds

_KNOWN_ACCOUNTS_MAX = 100_000

__all__ = [
    "DEFAULT_HOLD_TIMEOUT",
    "MAX_HOLD_TIMEOUT",
    "RESERVED_PREFIXES",
    "LedgerConfig",
    "LedgerService",
    "transfer_record",
]


def _default_path() -> Path:
    return Path(os.environ.get("LEDGER_PATH", "ledger.json"))


@dataclass(init=False)
class LedgerConfig:
    """Where the ledger lives and how the service behaves.

    Which ledger, first match wins: an explicit ``database_url``; an explicit
    ``ledger_path``; the ``LEDGER_DATABASE_URL`` environment variable;
    ``LEDGER_PATH``; ``ledger.json``. A ``.json`` path keeps the seed's
    inspectable JSON file; ``sqlite:///…`` or ``postgresql://…`` scale past it
    with the same API. An explicit path beats the environment because the
    caller named that ledger. ``hold_timeout`` is the default lifetime of a hold
    in seconds.
    """

    ledger_path: Path
    default_provider_account: str
    auto_create_accounts: bool
    database_url: str | None
    hold_timeout: float

    def __init__(
        self,
        ledger_path: Path | str | None = None,
        default_provider_account: str = "provider",
        auto_create_accounts: bool = False,
        database_url: str | None = None,
        hold_timeout: float = DEFAULT_HOLD_TIMEOUT,
    ) -> None:
        if database_url is None and ledger_path is None:
            database_url = os.environ.get("LEDGER_DATABASE_URL") or None
        self.ledger_path = Path(ledger_path) if ledger_path is not None else _default_path()
        self.default_provider_account = default_provider_account
        self.auto_create_accounts = auto_create_accounts
        self.database_url = database_url
        self.hold_timeout = hold_timeout

    @property
    def url(self) -> str:
        return self.database_url or str(self.ledger_path)


class LedgerService(HoldsAndRefunds):
    """High-level, thread-safe token ledger. ``LedgerService()`` uses ``ledger.json``
    in the working directory (or ``LEDGER_PATH`` / ``LEDGER_DATABASE_URL``)."""

    def __init__(self, config: LedgerConfig | None = None, *, ledger: Ledger | None = None) -> None:
        self.config = config or LedgerConfig()
        self.ledger = ledger if ledger is not None else Ledger(self.config.url)
        self._init_holds()
        self._known_accounts: set[str] = set()
        self._scale: int | None = None

    def close(self) -> None:
        self.ledger.close()

    def __enter__(self) -> LedgerService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- accounts

    def _user_account(self, account_id: object, field_name: str = "account_id") -> str:
        validate_account_id(account_id, field=field_name)
        assert isinstance(account_id, str)
        if account_id.startswith(RESERVED_PREFIXES):
            raise ValidationError(f"account ids starting with {RESERVED_PREFIXES} are reserved", field=field_name)
        return account_id

    def _account_dict(self, account_id: str) -> dict[str, Any]:
        acct = self.ledger.get_account(account_id)
        return {
            "id": acct.account_id,
            "balance": json_amount(acct.balance),
            "created_at": iso(acct.created_at),
            "meta": dict(acct.metadata),
        }

    def _amount(self, value: object, field: str = "amount", *, allow_zero: bool = False) -> Decimal:
        """Validate an amount fully, the asset's decimal places included, before any
        account is looked at or created: bad input is reported as bad input and
        never leaves anything behind. (An asset's scale never changes, so it is
        read once.)"""
        if self._scale is None:
            self._scale = self.ledger.get_asset(self.ledger.default_asset.code).scale
        return parse_amount(value, self._scale, field=field, allow_zero=allow_zero)

    def _initial_amount(self, value: Decimal | int | str) -> Decimal:
        return self._amount(value, "initial_balance", allow_zero=True)

    def create_account(
        self, account_id: str, initial_balance: Decimal | int | str = 0, meta: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Create an account; refuses an id that exists (AccountExistsError)."""
        self._user_account(account_id)
        initial = self._initial_amount(initial_balance)
        self.ledger.create_account(account_id, metadata=meta)
        if initial > 0:
            self.ledger.create_entry(
                account_id, initial, "credit", metadata={"kind": "initial_balance"},
                idempotency_key=f"open:{account_id}",
            )
        return self._account_dict(account_id)

    def create_account_if_missing(
        self, account_id: str, initial_balance: Decimal | int | str = 0, meta: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Create the account unless it exists. The initial balance is granted once,
        when the account is first created, however often (or concurrently) this runs."""
        self._user_account(account_id)
        initial = self._initial_amount(initial_balance)
        self.ledger.create_account(account_id, metadata=meta, exist_ok=True)
        if initial > 0:
            # Keyed by account: a concurrent or repeated call replays instead of granting twice;
            # a later call with a different amount does not change an existing account.
            with contextlib.suppress(IdempotencyConflictError):
                self.ledger.create_entry(
                    account_id, initial, "credit", metadata={"kind": "initial_balance"},
                    idempotency_key=f"open:{account_id}",
                )
        return self._account_dict(account_id)

    def get_account(self, account_id: str) -> dict[str, Any]:
        self._sweep_lazily()
        return self._account_dict(self._user_account(account_id))

    def account_exists(self, account_id: str) -> bool:
        return self.ledger.account_exists(self._user_account(account_id))

    def list_accounts(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        after: str | None = None
        while True:
            page = self.ledger.list_accounts(after=after, limit=1000)
            if not page:
                return out
            for acct in page:
                if not acct.account_id.startswith(RESERVED_PREFIXES):
                    out.append({
                        "id": acct.account_id,
                        "balance": json_amount(acct.balance),
                        "created_at": iso(acct.created_at),
                        "meta": dict(acct.metadata),
                    })
            after = page[-1].account_id

    def _exists(self, account_id: str) -> bool:
        """Whether the account exists. Accounts are never deleted, so one that was
        seen once is remembered (a bounded, per-process set) and costs no read."""
        if account_id in self._known_accounts:
            return True
        if not self.ledger.account_exists(account_id):
            return False
        if len(self._known_accounts) >= _KNOWN_ACCOUNTS_MAX:
            self._known_accounts.clear()
        self._known_accounts.add(account_id)
        return True

    def _require_exists(self, account_id: str) -> None:
        if not self._exists(account_id):
            raise AccountNotFoundError(account_id)

    def _ensure_party(self, account_id: str) -> None:
        if not self._exists(account_id):
            if self.config.auto_create_accounts:
                self.ledger.create_account(account_id, exist_ok=True)
            else:
                raise AccountNotFoundError(account_id)

    def get_balance(self, account_id: str) -> Decimal:
        """The spendable balance: funds reserved by open holds are not in it, and
        holds that have expired are released first, so it reflects expiry."""
        self._user_account(account_id)
        self._sweep_lazily()
        return self.ledger.get_account(account_id).balance

    def require_balance(self, account_id: str, amount: Decimal | int | str) -> bool:
        """True when the account could pay ``amount`` now. Only a hint: another job
        may spend first. Use a hold, or let ``charge`` refuse, for a guarantee."""
        value = parse_amount(amount, None)
        return self.get_balance(account_id) >= value

    # ------------------------------------------------------------------ writes

    def charge(
        self,
        payer_id: str,
        receiver_id: str | None = None,
        amount: Decimal | int | str = 0,
        job_id: str | None = None,
        note: str | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Move ``amount`` from payer to receiver (default: the provider account).

        Raises :class:`PaymentRequiredError` (an InsufficientBalanceError) when the
        payer cannot pay, AccountNotFoundError for unknown accounts. Idempotent by
        ``job_id`` (or ``idempotency_key``): a retried charge returns the first
        record; the same job with a different charge is refused (409).
        """
        receiver = receiver_id if receiver_id is not None else self.config.default_provider_account
        return self.transfer(payer_id, receiver, amount, job_id=job_id, note=note, idempotency_key=idempotency_key)

    def transfer(
        self,
        from_account: str,
        to_account: str,
        amount: Decimal | int | str,
        job_id: str | None = None,
        note: str | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        self._user_account(from_account, "from_account")
        self._user_account(to_account, "to_account")
        value = self._amount(amount)
        job = check_job_id(job_id)
        meta = {"kind": "transfer", **note_meta(note)}
        key = user_key(idempotency_key) or (f"job:{job}" if job is not None else None)
        self._sweep_lazily()
        for acct in (from_account, to_account):
            self._ensure_party(acct)
        try:
            batch = self.ledger.transfer(from_account, to_account, value, reference=job, metadata=meta,
                                         idempotency_key=key)
        except PaymentRequiredError:
            raise
        except InsufficientBalanceError as exc:
            raise PaymentRequiredError(required=value, balance=exc.balance, account_id=exc.account_id) from None
        return transfer_record(batch)

    def credit(
        self,
        account_id: str,
        amount: Decimal | int | str,
        reason: str | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Issue new tokens to an account (an admin operation)."""
        self._user_account(account_id)
        value = self._amount(amount)
        meta = {"kind": "credit", **note_meta(reason, "reason")}
        self._ensure_party(account_id)
        entry = self.ledger.create_entry(account_id, value, "credit", metadata=meta,
                                         idempotency_key=user_key(idempotency_key))
        return transfer_record(self.ledger.get_batch(entry.batch_id))

    # ------------------------------------------------------------------- reads

    def get_transfer(self, transfer_id: str) -> dict[str, Any]:
        return transfer_record(self.ledger.get_batch(self._check_transfer_id(transfer_id)))

    def get_transfers(self, account_id: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Most recent transfers first (credits, holds and refunds included)."""
        if account_id is not None:
            self._user_account(account_id)
            self._require_exists(account_id)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 10_000:
            raise ValidationError("limit must be an integer from 1 to 10000", field="limit")
        out: list[dict[str, Any]] = []
        seen: set[str] = set()
        cursor: int | None = None
        while len(out) < limit:
            page = self.ledger.list_entries(account_id=account_id, cursor=cursor, limit=200, descending=True)
            for entry in page.items:
                if entry.batch_id in seen:
                    continue
                seen.add(entry.batch_id)
                out.append(self.get_transfer(entry.batch_id))
                if len(out) >= limit:
                    break
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        return out
