"""The ledger: the one implementation of its semantics, synchronous.

Everything else is a face on this class: :class:`~sardis_ledger.engine.LedgerEngine`
runs these methods in a worker thread for asyncio callers, and
``mesh_fake_ledger`` calls them directly. Storage backends only keep rows; every
rule (floors, atomic batches, idempotency, Merkle appends, checkpoints) is here.

Sequences are 1-based: entry ``n`` is leaf ``n - 1`` of the Merkle log, and the
state "at sequence n" is the state after the first ``n`` entries, which is also
what a tree head of size ``n`` commits to.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from . import merkle
from .amounts import (
    MAX_MINOR_UNITS,
    from_minor,
    parse_amount,
    to_minor,
    validate_account_id,
    validate_asset_code,
)
from .errors import (
    AccountExistsError,
    AccountNotFoundError,
    AlreadyReversedError,
    AssetMismatchError,
    BatchNotFoundError,
    IdempotencyConflictError,
    InsufficientBalanceError,
    IntegrityError,
    ProofVerificationError,
    RetryableStorageError,
    ValidationError,
)
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
    canonical_json,
)
from .records import AccountRow, BatchRow, EntryRow, HeadRow, leaf_bytes
from .storage import Storage, open_storage
from .storage.base import EntryQuery, Transaction

__all__ = ["Ledger", "default_database_url"]

MAX_BATCH_LEGS = 10_000
MAX_TEXT = 256
MAX_METADATA_BYTES = 16_384
_AMOUNT_PARSE_SCALE = None  # the account's asset scale is checked in the transaction


def default_database_url() -> str:
    """``LEDGER_DATABASE_URL`` if set, else an embedded SQLite file in the working directory."""
    return os.environ.get("LEDGER_DATABASE_URL") or "sqlite:///ledger.db"


def _now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _iso(ts: datetime) -> str:
    if ts.tzinfo is None:
        raise ValidationError("timestamps must be timezone-aware (use datetime.now(UTC))", field="at")
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_ts(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _check_text(value: object, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValidationError(f"{name} must be a string", field=name)
    if len(value) > MAX_TEXT or any(ord(ch) < 32 for ch in value):
        raise ValidationError(f"{name} must be at most {MAX_TEXT} printable characters", field=name)
    return value


def _check_metadata(value: object) -> str:
    if value is None:
        return "{}"
    if not isinstance(value, Mapping):
        raise ValidationError("metadata must be a JSON object", field="metadata")
    try:
        text = canonical_json(dict(value))
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"metadata must be JSON-serialisable: {exc}", field="metadata") from None
    if len(text) > MAX_METADATA_BYTES:
        raise ValidationError(f"metadata exceeds {MAX_METADATA_BYTES} bytes", field="metadata")
    return text


def _entry_type(value: object) -> LedgerEntryType:
    if isinstance(value, LedgerEntryType):
        return value
    if isinstance(value, str):
        try:
            return LedgerEntryType(value.lower())
        except ValueError:
            pass
    raise ValidationError("entry_type must be 'credit' or 'debit'", field="entry_type")


@dataclass(slots=True)
class _Leg:
    account_id: str
    amount: Decimal
    direction: str
    reference: str | None
    metadata: str
    asset: str | None


@dataclass(slots=True)
class _Request:
    legs: list[_Leg]
    idempotency_key: str | None = None
    reverses: str | None = None
    reason: str | None = None
    batch_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    request_hash: str | None = None


_SPEC_KEYS = frozenset({"account_id", "amount", "entry_type", "reference", "metadata", "asset"})


def _leg(
    account_id: object,
    amount: object,
    entry_type: object,
    reference: object = None,
    metadata: object = None,
    asset: object = None,
) -> _Leg:
    return _Leg(
        validate_account_id(account_id),
        parse_amount(amount, _AMOUNT_PARSE_SCALE),
        _entry_type(entry_type).value,
        _check_text(reference, "reference"),
        _check_metadata(metadata),
        None if asset is None else validate_asset_code(asset),
    )


def _leg_from_spec(spec: object) -> _Leg:
    if isinstance(spec, EntrySpec):
        return _leg(spec.account_id, spec.amount, spec.entry_type, spec.reference, spec.metadata, spec.asset)
    if not isinstance(spec, Mapping):
        raise ValidationError("each batch entry must be a mapping or an EntrySpec")
    unknown = set(spec) - _SPEC_KEYS
    if unknown:
        raise ValidationError(f"unknown entry fields: {', '.join(sorted(map(str, unknown)))}")
    missing = {"account_id", "amount", "entry_type"} - set(spec)
    if missing:
        raise ValidationError(f"missing entry fields: {', '.join(sorted(missing))}")
    return _leg(**spec)


def _request_hash(req: _Request) -> str:
    body = {
        "legs": [
            [leg.account_id, format(leg.amount.normalize(), "f"), leg.direction, leg.reference, leg.metadata, leg.asset]
            for leg in req.legs
        ],
        "reverses": req.reverses,
        "reason": req.reason,
    }
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()


class Ledger:
    """A ledger on one storage backend. Thread-safe; many processes may share a
    SQLite file or a PostgreSQL database.

    ``database_url`` chooses the backend (``memory://``, ``sqlite:///path.db``,
    ``postgresql://…``, ``path.json``); without one, ``LEDGER_DATABASE_URL`` or
    ``sqlite:///ledger.db``.
    """

    def __init__(
        self,
        database_url: str | None = None,
        *,
        storage: Storage | None = None,
        default_asset: Asset = DEFAULT_ASSET,
        checkpoint_interval: int = 4096,
    ) -> None:
        self.storage = storage if storage is not None else open_storage(database_url or default_database_url())
        self.default_asset = default_asset
        self.checkpoint_interval = checkpoint_interval
        self._scales: dict[str, int] = {}
        self._frontier: tuple[int, bytes, merkle.Frontier] | None = None
        self._frontier_lock = threading.Lock()

    @property
    def database_url(self) -> str:
        return self.storage.url

    def close(self) -> None:
        self.storage.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ assets

    def _scale(self, tx: Transaction, code: str) -> int:
        scale = self._scales.get(code)
        if scale is None:
            self._scales = tx.assets()
            scale = self._scales.get(code)
            if scale is None:
                if code != self.default_asset.code:
                    raise ValidationError(f"unknown asset {code!r}; register it first", field="asset")
                tx.insert_asset(code, self.default_asset.scale)
                scale = self.default_asset.scale
                # Not cached until committed: the insert may roll back.
        return scale

    def register_asset(self, code: str, scale: int) -> Asset:
        validate_asset_code(code)
        if isinstance(scale, bool) or not isinstance(scale, int) or not 0 <= scale <= 18:
            raise ValidationError("scale must be an integer from 0 to 18", field="scale")
        with self.storage.transaction(write=True) as tx:
            existing = tx.assets()
            if code in existing:
                if existing[code] != scale:
                    raise ValidationError(f"asset {code} already has scale {existing[code]}", field="scale")
            else:
                tx.insert_asset(code, scale)
        self._scales = {}
        return Asset(code, scale)

    def get_asset(self, code: str) -> Asset:
        with self.storage.transaction(write=False) as tx:
            scales = tx.assets()
        if code not in scales:
            if code == self.default_asset.code:
                return self.default_asset
            raise ValidationError(f"unknown asset {code!r}", field="asset")
        return Asset(code, scales[code])

    # ---------------------------------------------------------------- accounts

    def _account(self, row: AccountRow, scale: int) -> Account:
        return Account(
            account_id=row.account_id,
            asset=row.asset,
            balance=from_minor(row.balance, scale),
            overdraft_limit=from_minor(row.overdraft_limit, scale),
            metadata=json.loads(row.metadata),
            created_at=_parse_ts(row.created_at),
        )

    def create_account(
        self,
        account_id: str,
        *,
        asset: str | None = None,
        overdraft_limit: Decimal | int | str = 0,
        metadata: Mapping[str, Any] | None = None,
        exist_ok: bool = False,
    ) -> Account:
        """Create an account explicitly (credits create default-asset accounts implicitly).

        With ``exist_ok`` an existing account is returned unchanged when its asset
        and overdraft limit match what was asked, and refused otherwise.
        """
        validate_account_id(account_id)
        code = validate_asset_code(asset) if asset is not None else self.default_asset.code
        limit = parse_amount(overdraft_limit, _AMOUNT_PARSE_SCALE, field="overdraft_limit", allow_zero=True)
        meta = _check_metadata(metadata)
        with self.storage.transaction(write=True) as tx:
            scale = self._scale(tx, code)
            limit_minor = self._minor(limit, scale, "overdraft_limit")
            existing = tx.get_accounts([account_id]).get(account_id)
            if existing is not None:
                if not exist_ok:
                    raise AccountExistsError(f"account {account_id!r} already exists", account_id=account_id)
                if existing.asset != code or existing.overdraft_limit != limit_minor:
                    raise AccountExistsError(
                        f"account {account_id!r} exists with different asset or overdraft limit",
                        account_id=account_id,
                    )
                return self._account(existing, scale)
            row = AccountRow(account_id, code, 0, limit_minor, meta, _now_iso())
            tx.insert_accounts([row])
        return self._account(row, scale)

    def get_account(self, account_id: str) -> Account:
        validate_account_id(account_id)
        with self.storage.transaction(write=False) as tx:
            row = tx.get_accounts([account_id]).get(account_id)
            if row is None:
                raise AccountNotFoundError(account_id)
            return self._account(row, self._scale_ro(tx, row.asset))

    def account_exists(self, account_id: str) -> bool:
        validate_account_id(account_id)
        with self.storage.transaction(write=False) as tx:
            return account_id in tx.get_accounts([account_id])

    def list_accounts(self, *, prefix: str | None = None, after: str | None = None, limit: int = 100) -> list[Account]:
        limit = _check_limit(limit)
        with self.storage.transaction(write=False) as tx:
            rows = tx.list_accounts(prefix, after, limit)
            return [self._account(r, self._scale_ro(tx, r.asset)) for r in rows]

    def _scale_ro(self, tx: Transaction, code: str) -> int:
        scale = self._scales.get(code)
        if scale is None:
            self._scales = tx.assets()
            scale = self._scales.get(code, self.default_asset.scale if code == self.default_asset.code else None)
            if scale is None:
                raise IntegrityError(f"asset {code!r} is used but not registered")
        return scale

    @staticmethod
    def _minor(amount: Decimal, scale: int, name: str = "amount") -> int:
        exponent = amount.as_tuple().exponent
        if isinstance(exponent, int) and exponent < -scale and amount != amount.quantize(Decimal(1).scaleb(-scale)):
            raise ValidationError(f"{name} {amount} has more than {scale} decimal places", field=name, scale=scale)
        units = to_minor(amount, scale)
        if units > MAX_MINOR_UNITS:
            raise ValidationError(f"{name} {amount} is too large", field=name)
        return units

    # ---------------------------------------------------------------- balances

    def get_balance(self, account_id: str, at: datetime | int | None = None) -> Decimal:
        """Current balance, or the balance as of ``at`` (a timezone-aware datetime,
        or a sequence number: the state after that entry). Accounts that never
        had an entry have balance 0."""
        validate_account_id(account_id)
        with self.storage.transaction(write=False) as tx:
            row = tx.get_accounts([account_id]).get(account_id)
            if row is None:
                return Decimal(0)
            scale = self._scale_ro(tx, row.asset)
            if at is None:
                return from_minor(row.balance, scale)
            size = self._size_at(tx, at)
            last = tx.last_entry_before(account_id, size)
            return from_minor(last.running_balance if last else 0, scale)

    def _size_at(self, tx: Transaction, at: datetime | int) -> int:
        if isinstance(at, bool) or not isinstance(at, (int, datetime)):
            raise ValidationError("at must be a datetime or a sequence number", field="at")
        if isinstance(at, int):
            if at < 0:
                raise ValidationError("sequence must not be negative", field="at")
            return min(at, tx.head().size)
        return tx.seq_after_time(_iso(at))

    def snapshot(self, at: datetime | int | None = None) -> BalanceSnapshot:
        """Every balance as of ``at``: the nearest checkpoint, then at most one
        checkpoint interval of entries replayed on top of it."""
        with self.storage.transaction(write=False) as tx:
            size = tx.head().size if at is None else self._size_at(tx, at)
            cp = tx.checkpoint_at_or_before(size)
            start, balances = cp if cp else (0, {})
            for row in tx.entries_by_seq(start, size):
                delta = row.amount if row.direction == "credit" else -row.amount
                balances[row.account_id] = balances.get(row.account_id, 0) + delta
            assets = {r.account_id: r.asset for r in _all_accounts(tx) if r.account_id in balances}
            out = {a: from_minor(b, self._scale_ro(tx, assets.get(a, self.default_asset.code))) for a, b in balances.items()}
        return BalanceSnapshot(size, out, assets)

    # ------------------------------------------------------------------ writes

    def create_entry(
        self,
        account_id: str,
        amount: Decimal | int | str,
        entry_type: LedgerEntryType | str,
        reference: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        *,
        asset: str | None = None,
        idempotency_key: str | None = None,
    ) -> LedgerEntry:
        """Append one credit or debit. A credit to an unknown account creates it."""
        req = _Request([_leg(account_id, amount, entry_type, reference, metadata, asset)])
        return self._post([self._keyed(req, idempotency_key)])[0].entries[0]

    def create_batch(
        self, entries: Sequence[Mapping[str, Any] | EntrySpec], *, idempotency_key: str | None = None
    ) -> LedgerBatch:
        """Append several legs atomically: all are written, or none is."""
        return self._post([self._keyed(self._batch_request(entries), idempotency_key)])[0]

    def transfer(
        self,
        from_account: str,
        to_account: str,
        amount: Decimal | int | str,
        *,
        reference: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> LedgerBatch:
        """A two-leg batch: debit ``from_account``, credit ``to_account``."""
        req = self._transfer_request(from_account, to_account, amount, reference, metadata)
        return self._post([self._keyed(req, idempotency_key)])[0]

    def post_many(self, batches: Iterable[Sequence[Mapping[str, Any] | EntrySpec]]) -> list[LedgerBatch]:
        """Several batches in one storage transaction (bulk loads): all commit or none."""
        return self._post([self._batch_request(b) for b in batches])

    def transfer_many(
        self, transfers: Iterable[tuple[str, str, Decimal | int | str]], *, reference: str | None = None
    ) -> list[LedgerBatch]:
        """Many transfers in one storage transaction: all commit or none."""
        return self._post([self._transfer_request(f, t, a, reference, None) for f, t, a in transfers])

    def rollback_batch(self, batch_id: str, reason: str, *, idempotency_key: str | None = None) -> LedgerBatch:
        """Append the compensating batch of ``batch_id``. The original stays; a batch
        can be reversed once; a reversal that would overdraw an account is refused."""
        if not isinstance(batch_id, str) or not batch_id or len(batch_id) > MAX_TEXT:
            raise ValidationError("batch_id must be a non-empty string", field="batch_id")
        req = _Request([], reverses=batch_id, reason=_check_text(reason, "reason"))
        return self._post([self._keyed(req, idempotency_key)])[0]

    def _batch_request(self, entries: Sequence[Mapping[str, Any] | EntrySpec]) -> _Request:
        if isinstance(entries, (str, bytes, Mapping)) or not isinstance(entries, Sequence):
            raise ValidationError("a batch is a list of entries")
        if not entries:
            raise ValidationError("a batch needs at least one entry")
        if len(entries) > MAX_BATCH_LEGS:
            raise ValidationError(f"a batch has at most {MAX_BATCH_LEGS} entries")
        return _Request([_leg_from_spec(s) for s in entries])

    def _transfer_request(
        self, src: object, dst: object, amount: object, reference: object, metadata: object
    ) -> _Request:
        if src == dst:
            raise ValidationError("a transfer needs two different accounts")
        value = parse_amount(amount, _AMOUNT_PARSE_SCALE)
        ref = _check_text(reference, "reference")
        meta = _check_metadata(metadata)
        return _Request([
            _Leg(validate_account_id(src, field="from_account"), value, "debit", ref, meta, None),
            _Leg(validate_account_id(dst, field="to_account"), value, "credit", ref, meta, None),
        ])

    @staticmethod
    def _keyed(req: _Request, key: object) -> _Request:
        if key is not None:
            if not isinstance(key, str) or not key or len(key) > MAX_TEXT:
                raise ValidationError(f"idempotency key must be 1-{MAX_TEXT} characters", field="idempotency_key")
            req.idempotency_key = key
            req.request_hash = _request_hash(req)
        return req

    def _load_frontier(self, tx: Transaction, head: HeadRow) -> merkle.Frontier:
        with self._frontier_lock:
            cached = self._frontier
        if cached is not None and cached[0] == head.size and cached[1] == head.root:
            return cached[2].copy()
        coords = merkle.frontier_coords(head.size)
        nodes = tx.get_nodes(coords)
        try:
            frontier = merkle.Frontier(head.size, [nodes[c] for c in coords])
        except KeyError:
            raise IntegrityError(f"Merkle nodes missing for tree size {head.size}") from None
        if frontier.root() != head.root:
            raise IntegrityError("stored tree head does not match its Merkle nodes; run verify()")
        return frontier

    max_attempts = 20

    def _post(self, requests: list[_Request]) -> list[LedgerBatch]:
        """Run a write, retrying transient storage failures. Batch ids are fixed
        before the first attempt, so when a commit's outcome was unknown (the
        connection died during COMMIT) the retry finds the batch and returns it
        instead of writing it twice."""
        for attempt in range(self.max_attempts):
            try:
                return self._post_once(requests, retry=attempt > 0)
            except RetryableStorageError:
                if attempt == self.max_attempts - 1:
                    raise
                time.sleep(min(0.2, 0.002 * 2**attempt) * random.random())
        raise AssertionError("unreachable")

    def _post_once(self, requests: list[_Request], *, retry: bool) -> list[LedgerBatch]:
        with self.storage.transaction(write=True) as tx:
            if retry and requests:
                done = tx.get_batch(requests[0].batch_id)
                if done is not None:
                    return [self._batch_from_row(tx, b) for r in requests if (b := tx.get_batch(r.batch_id))]
            # Lock order: accounts (sorted) first, the tree head last, so the serialised
            # section that appends to the Merkle log is as short as possible.
            ids = {leg.account_id for r in requests for leg in r.legs}
            rows = tx.get_accounts(sorted(ids)) if ids else {}
            head = tx.head()
            frontier = self._load_frontier(tx, head)
            before = {(lv, ix): h for lv, ix, h in frontier.stack}
            created_at = max(_now_iso(), head.updated_at)
            results: list[LedgerBatch | _Request] = []
            balances: dict[str, int] = {}
            new_accounts: dict[str, AccountRow] = {}
            entries: list[EntryRow] = []
            batches: list[BatchRow] = []
            nodes: list[tuple[int, int, bytes]] = []
            keys_here: dict[str, _Request] = {}
            reversed_here: set[str] = set()
            seq = head.size
            for req in requests:
                if req.idempotency_key is not None:
                    prior = tx.find_idempotency(req.idempotency_key)
                    if prior is not None or req.idempotency_key in keys_here:
                        prior_hash = prior.request_hash if prior else keys_here[req.idempotency_key].request_hash
                        if prior_hash != req.request_hash:
                            raise IdempotencyConflictError(
                                f"idempotency key {req.idempotency_key!r} was used for a different request",
                                idempotency_key=req.idempotency_key,
                            )
                        results.append(self._batch_from_row(tx, prior, replayed=True) if prior else req)
                        continue
                    keys_here[req.idempotency_key] = req
                if req.reverses is not None:
                    req.legs = self._reversal_legs(tx, req.reverses, reversed_here)
                    missing = {leg.account_id for leg in req.legs} - rows.keys() - new_accounts.keys()
                    rows.update(tx.get_accounts(sorted(missing)) if missing else {})
                first = seq
                for leg in req.legs:
                    acct = rows.get(leg.account_id) or new_accounts.get(leg.account_id)
                    if acct is None:
                        if leg.direction == "debit":
                            raise InsufficientBalanceError(leg.account_id, leg.amount, Decimal(0))
                        code = leg.asset or self.default_asset.code
                        self._scale(tx, code)
                        acct = AccountRow(leg.account_id, code, 0, 0, "{}", created_at)
                        new_accounts[leg.account_id] = acct
                    if leg.asset is not None and leg.asset != acct.asset:
                        raise AssetMismatchError(
                            f"account {acct.account_id!r} holds {acct.asset}, not {leg.asset}",
                            account_id=acct.account_id,
                        )
                    scale = self._scale(tx, acct.asset)
                    units = self._minor(leg.amount, scale)
                    current = balances.get(acct.account_id, acct.balance)
                    if leg.direction == "debit":
                        new = current - units
                        if new < -acct.overdraft_limit:
                            raise InsufficientBalanceError(
                                acct.account_id, leg.amount, from_minor(current + acct.overdraft_limit, scale)
                            )
                    else:
                        new = current + units
                        if new > MAX_MINOR_UNITS:
                            raise ValidationError(f"balance of {acct.account_id!r} would exceed the maximum")
                    balances[acct.account_id] = new
                    row = EntryRow(
                        seq, uuid.uuid4().hex, req.batch_id, acct.account_id, acct.asset, units,
                        leg.direction, new, created_at, leg.reference, leg.metadata, req.reverses,
                    )
                    entries.append(row)
                    nodes.extend(frontier.append(merkle.hash_leaf(leaf_bytes(row, scale))))
                    seq += 1
                batches.append(BatchRow(
                    req.batch_id, first, seq - first, created_at, req.reverses, req.reason,
                    req.idempotency_key, req.request_hash,
                ))
                results.append(req)
            if entries or batches:
                if new_accounts:
                    tx.insert_accounts(list(new_accounts.values()))
                tx.update_balances(balances)
                for b in batches:
                    tx.insert_batch(b)
                tx.insert_entries(entries)
                tx.insert_nodes(nodes)
                root = frontier.root()
                tx.set_head(HeadRow(seq, root, created_at))
                if head.size // self.checkpoint_interval != seq // self.checkpoint_interval:
                    tx.insert_checkpoint(seq, tx.all_balances())
            else:
                root = head.root
            scales = {a: self._scale(tx, r.asset) for a, r in {**rows, **new_accounts}.items()}
            known = dict(before)
            known.update({(lv, ix): h for lv, ix, h in nodes})

            def node(level: int, index: int) -> bytes:
                h = known.get((level, index))
                if h is None:
                    known.update(tx.get_nodes([(level, index)]))
                    h = known[(level, index)]
                return h

            by_batch: dict[str, list[LedgerEntry]] = {}
            for row in entries:
                by_batch.setdefault(row.batch_id, []).append(
                    self._entry(row, scales[row.account_id], self._receipt_from(row, seq, root, node, scales))
                )
            out: list[LedgerBatch] = []
            for item in results:
                if isinstance(item, LedgerBatch):
                    out.append(item)
                elif item.batch_id in by_batch or item.reverses is not None or item.legs:
                    out.append(LedgerBatch(
                        item.batch_id, tuple(by_batch.get(item.batch_id, ())), _parse_ts(created_at),
                        item.reverses, item.reason, item.idempotency_key,
                    ))
                else:  # a duplicate key inside this same bulk call
                    first_req = keys_here[item.idempotency_key or ""]
                    out.append(LedgerBatch(
                        first_req.batch_id, tuple(by_batch.get(first_req.batch_id, ())), _parse_ts(created_at),
                        None, None, first_req.idempotency_key, replayed=True,
                    ))
        with self._frontier_lock:
            self._frontier = (seq, root, frontier)
        if entries:
            self._scales.update({r.asset: scales[r.account_id] for r in entries})
        return out

    def _reversal_legs(self, tx: Transaction, batch_id: str, reversed_here: set[str]) -> list[_Leg]:
        original = tx.get_batch(batch_id)
        if original is None:
            raise BatchNotFoundError(f"batch {batch_id!r} does not exist", batch_id=batch_id)
        by = tx.find_reversal(batch_id)
        if by is not None or batch_id in reversed_here:
            raise AlreadyReversedError(f"batch {batch_id!r} was already reversed", batch_id=batch_id, reversed_by=by)
        reversed_here.add(batch_id)
        legs = []
        for row in tx.entries_by_seq(original.first_seq, original.first_seq + original.count):
            scale = self._scale(tx, row.asset)
            legs.append(_Leg(
                row.account_id, from_minor(row.amount, scale), "debit" if row.direction == "credit" else "credit",
                row.reference, row.metadata, row.asset,
            ))
        if not legs:
            raise ValidationError(f"batch {batch_id!r} has no entries to reverse")
        return legs

    # ------------------------------------------------------------------- reads

    def _entry(self, row: EntryRow, scale: int, receipt: Receipt | None) -> LedgerEntry:
        return LedgerEntry(
            entry_id=row.entry_id,
            sequence=row.seq + 1,
            batch_id=row.batch_id,
            account_id=row.account_id,
            asset=row.asset,
            amount=from_minor(row.amount, scale),
            entry_type=LedgerEntryType(row.direction),
            running_balance=from_minor(row.running_balance, scale),
            created_at=_parse_ts(row.created_at),
            reference=row.reference,
            metadata=json.loads(row.metadata),
            reverses=row.reverses,
            leaf=leaf_bytes(row, scale),
            receipt=receipt,
        )

    @staticmethod
    def _receipt_from(
        row: EntryRow, size: int, root: bytes, node: merkle.NodeGetter, scales: Mapping[str, int]
    ) -> Receipt:
        proof = merkle.inclusion_proof(row.seq, size, node)
        return Receipt(
            leaf_index=row.seq,
            tree_size=size,
            leaf_hash=merkle.hash_leaf(leaf_bytes(row, scales[row.account_id])).hex(),
            root=root.hex(),
            inclusion_proof=tuple(p.hex() for p in proof),
        )

    def _stored_node_getter(self, tx: Transaction, fn: Callable[[merkle.NodeGetter], object]) -> merkle.NodeGetter:
        coords = merkle.needed_nodes(fn)
        nodes = tx.get_nodes(coords)
        missing = coords - nodes.keys()
        if missing:
            raise IntegrityError(f"Merkle nodes missing: {sorted(missing)[:3]}")
        return lambda level, index: nodes[(level, index)]

    def _rows_to_entries(self, tx: Transaction, rows: Sequence[EntryRow], with_receipts: bool) -> list[LedgerEntry]:
        if not rows:
            return []
        head = tx.head()
        out = []
        for row in rows:
            scale = self._scale_ro(tx, row.asset)
            receipt = self._receipt_tx(tx, row, head, scale) if with_receipts else None
            out.append(self._entry(row, scale, receipt))
        return out

    def _receipt_tx(self, tx: Transaction, row: EntryRow, head: HeadRow, scale: int) -> Receipt:
        size = head.size

        def plan(node: merkle.NodeGetter) -> object:
            merkle.inclusion_proof(row.seq, size, node)
            return merkle.tree_root(size, node)

        getter = self._stored_node_getter(tx, plan)
        proof = merkle.inclusion_proof(row.seq, size, getter)
        return Receipt(
            row.seq, size, merkle.hash_leaf(leaf_bytes(row, scale)).hex(), head.root.hex(),
            tuple(p.hex() for p in proof),
        )

    def _batch_from_row(self, tx: Transaction, batch: BatchRow, *, replayed: bool = False) -> LedgerBatch:
        rows = tx.entries_by_seq(batch.first_seq, batch.first_seq + batch.count)
        return LedgerBatch(
            batch.batch_id, tuple(self._rows_to_entries(tx, rows, True)), _parse_ts(batch.created_at),
            batch.reverses, batch.reason, batch.idempotency_key, replayed,
        )

    def get_batch(self, batch_id: str) -> LedgerBatch:
        with self.storage.transaction(write=False) as tx:
            batch = tx.get_batch(batch_id)
            if batch is None:
                raise BatchNotFoundError(f"batch {batch_id!r} does not exist", batch_id=batch_id)
            return self._batch_from_row(tx, batch)

    def reversal_of(self, batch_id: str) -> str | None:
        with self.storage.transaction(write=False) as tx:
            return tx.find_reversal(batch_id)

    def get_entry(self, entry_id: str) -> LedgerEntry:
        with self.storage.transaction(write=False) as tx:
            row = tx.get_entry(entry_id)
            if row is None:
                raise ValidationError(f"entry {entry_id!r} does not exist", field="entry_id")
            return self._rows_to_entries(tx, [row], True)[0]

    def list_entries(
        self,
        *,
        account_id: str | None = None,
        batch_id: str | None = None,
        reference: str | None = None,
        since: datetime | int | None = None,
        until: datetime | int | None = None,
        cursor: int | None = None,
        limit: int = 100,
        descending: bool = False,
        with_receipts: bool = False,
    ) -> Page:
        """Entries matching every given filter, in sequence order. ``since``/``until``
        are datetimes (inclusive) or sequence numbers (inclusive); pass the page's
        ``next_cursor`` back as ``cursor`` for the next page. Each page is one
        indexed range scan, however large the ledger."""
        limit = _check_limit(limit)
        if account_id is not None:
            validate_account_id(account_id)
        with self.storage.transaction(write=False) as tx:
            lo, hi = 0, tx.head().size
            if batch_id is not None:
                batch = tx.get_batch(batch_id)
                if batch is None:
                    return Page((), None)
                lo, hi = batch.first_seq, batch.first_seq + batch.count
            if since is not None:
                lo = max(lo, self._since(tx, since))
            if until is not None:
                hi = min(hi, self._size_at(tx, until))
            if cursor is not None:
                if isinstance(cursor, bool) or not isinstance(cursor, int) or cursor < 1:
                    raise ValidationError("cursor must be a positive sequence number", field="cursor")
                if descending:
                    hi = min(hi, cursor - 1)
                else:
                    lo = max(lo, cursor - 1)
            rows = tx.query_entries(EntryQuery(account_id, reference, lo, hi, limit + 1, descending))
            more = len(rows) > limit
            rows = rows[:limit]
            items = self._rows_to_entries(tx, rows, with_receipts)
        next_cursor = None
        if more and rows:
            next_cursor = rows[-1].seq + 2 if not descending else rows[-1].seq + 1
        return Page(tuple(items), next_cursor)

    def _since(self, tx: Transaction, since: datetime | int) -> int:
        """Index of the first entry at or after ``since``."""
        if isinstance(since, int) and not isinstance(since, bool):
            if since < 1:
                raise ValidationError("sequence numbers start at 1", field="since")
            return since - 1
        if not isinstance(since, datetime):
            raise ValidationError("since must be a datetime or a sequence number", field="since")
        # entries strictly before `since`
        ts = _iso(since)
        lo, hi = 0, tx.head().size
        while lo < hi:
            mid = (lo + hi) // 2
            rows = tx.entries_by_seq(mid, mid + 1)
            if rows and rows[0].created_at < ts:
                lo = mid + 1
            else:
                hi = mid
        return lo

    # ---------------------------------------------------------------- evidence

    def tree_head(self) -> TreeHead:
        with self.storage.transaction(write=False) as tx:
            head = tx.head()
        return TreeHead(head.size, head.root.hex(), _parse_ts(head.updated_at) if head.updated_at else datetime.fromtimestamp(0, UTC))

    def receipt(self, sequence: int, tree_size: int | None = None) -> Receipt:
        """Inclusion proof for entry ``sequence`` in the tree of ``tree_size`` (default: now)."""
        with self.storage.transaction(write=False) as tx:
            head = tx.head()
            size = head.size if tree_size is None else tree_size
            if isinstance(sequence, bool) or not isinstance(sequence, int) or not 1 <= sequence <= size:
                raise ValidationError(f"sequence must be within 1..{size}", field="sequence")
            if size > head.size or size < 1:
                raise ValidationError(f"tree size must be within 1..{head.size}", field="tree_size")
            rows = tx.entries_by_seq(sequence - 1, sequence)
            if not rows:
                raise IntegrityError(f"entry {sequence} is missing")
            row = rows[0]
            scale = self._scale_ro(tx, row.asset)

            def plan(node: merkle.NodeGetter) -> object:
                merkle.inclusion_proof(row.seq, size, node)
                return merkle.tree_root(size, node)

            getter = self._stored_node_getter(tx, plan)
            proof = merkle.inclusion_proof(row.seq, size, getter)
            root = merkle.tree_root(size, getter)
            if size == head.size and root != head.root:
                raise IntegrityError("stored tree head does not match its Merkle nodes; run verify()")
        return Receipt(
            row.seq, size, merkle.hash_leaf(leaf_bytes(row, scale)).hex(), root.hex(), tuple(p.hex() for p in proof)
        )

    def root_at(self, tree_size: int) -> str:
        with self.storage.transaction(write=False) as tx:
            head = tx.head()
            if isinstance(tree_size, bool) or not isinstance(tree_size, int) or not 0 <= tree_size <= head.size:
                raise ValidationError(f"tree size must be within 0..{head.size}", field="tree_size")
            getter = self._stored_node_getter(tx, lambda node: merkle.tree_root(tree_size, node))
            return merkle.tree_root(tree_size, getter).hex()

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[str]:
        with self.storage.transaction(write=False) as tx:
            head = tx.head()
            new = head.size if new_size is None else new_size
            for v in (old_size, new):
                if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= head.size:
                    raise ValidationError(f"tree sizes must be within 0..{head.size}", field="tree_size")
            if old_size > new:
                raise ValidationError("old size must not exceed new size", field="tree_size")
            getter = self._stored_node_getter(tx, lambda node: merkle.consistency_proof(old_size, new, node))
            return [p.hex() for p in merkle.consistency_proof(old_size, new, getter)]

    def verify_receipt(self, entry: LedgerEntry) -> bool:
        """Check an entry's receipt against its own bytes and the current log."""
        if entry.receipt is None:
            raise ProofVerificationError("entry has no receipt")
        if not entry.receipt.verify(entry.leaf):
            return False
        return self.root_at(entry.receipt.tree_size) == entry.receipt.root

    def verify(self, progress: Callable[[int, int], None] | None = None, *, chunk: int = 20_000) -> VerifyReport:
        """Audit the whole store: every leaf hash and stored Merkle node, the root,
        running balances and floors, account balances, and conservation per asset.
        Names the first bad entry it finds."""
        report = VerifyReport()
        with self.storage.transaction(write=False) as tx:
            head = tx.head()
            scales = tx.assets()
            accounts = {r.account_id: r for r in _all_accounts(tx)}
        report.tree_size = head.size
        report.root = head.root.hex()
        frontier = merkle.Frontier()
        running: dict[str, int] = {}
        issued: dict[str, int] = {}
        expected_seq = 0
        pending_nodes: dict[tuple[int, int], bytes] = {}
        for start in range(0, head.size, chunk):
            end = min(start + chunk, head.size)
            with self.storage.transaction(write=False) as tx:
                rows = tx.entries_by_seq(start, end)
                stored: dict[tuple[int, int], bytes] = {}
                for level in range(0, max(1, end.bit_length()) + 1):
                    lo = ((start + 1 + (1 << level) - 1) >> level) - 1
                    hi = (end >> level) - 1
                    if hi >= lo:
                        stored.update({(level, i): h for i, h in tx.node_range(level, max(lo, 0), hi)})
            for row in rows:
                if row.seq != expected_seq:
                    report.fail(f"entry sequence {expected_seq + 1} is missing (found {row.seq + 1})", expected_seq + 1)
                    expected_seq = row.seq
                scale = scales.get(row.asset)
                if scale is None:
                    report.fail(f"entry {row.seq + 1} uses unregistered asset {row.asset!r}", row.seq + 1)
                    scale = 0
                prev = running.get(row.account_id, 0)
                delta = row.amount if row.direction == "credit" else -row.amount
                if row.amount <= 0 or row.direction not in ("credit", "debit"):
                    report.fail(f"entry {row.seq + 1} has an invalid amount or type", row.seq + 1)
                if prev + delta != row.running_balance:
                    report.fail(
                        f"entry {row.seq + 1}: running balance {row.running_balance} != {prev} + {delta}", row.seq + 1
                    )
                acct = accounts.get(row.account_id)
                if acct is None:
                    report.fail(f"entry {row.seq + 1}: account {row.account_id!r} does not exist", row.seq + 1)
                elif row.running_balance < -acct.overdraft_limit:
                    report.fail(f"entry {row.seq + 1}: {row.account_id!r} is below its floor", row.seq + 1)
                running[row.account_id] = prev + delta
                issued[row.asset] = issued.get(row.asset, 0) + delta
                for level, index, h in frontier.append(merkle.hash_leaf(leaf_bytes(row, scale))):
                    pending_nodes[(level, index)] = h
                expected_seq += 1
                report.entries_checked += 1
            for coord, h in pending_nodes.items():
                got = stored.get(coord)
                if got != h:
                    seq = (coord[1] << coord[0]) + 1
                    what = "leaf hash" if coord[0] == 0 else f"Merkle node {coord}"
                    report.fail(f"entry {seq}: stored {what} does not match the entry's contents", seq)
            pending_nodes.clear()
            if progress is not None:
                progress(end, head.size)
        if expected_seq != head.size:
            report.fail(f"tree head claims {head.size} entries, store has {expected_seq}", expected_seq + 1)
        if frontier.root() != head.root:
            report.fail("stored tree head root does not match the entries", report.first_bad_sequence)
        totals: dict[str, int] = {}
        for acct in accounts.values():
            if acct.balance != running.get(acct.account_id, 0):
                report.fail(
                    f"account {acct.account_id!r}: balance {acct.balance} != sum of its entries "
                    f"{running.get(acct.account_id, 0)}"
                )
            totals[acct.asset] = totals.get(acct.asset, 0) + acct.balance
        for asset in set(totals) | set(issued):
            if totals.get(asset, 0) != issued.get(asset, 0):
                report.fail(f"asset {asset}: balances sum to {totals.get(asset, 0)}, issued minus redeemed is "
                            f"{issued.get(asset, 0)}")
        return report

    def require_valid(self) -> VerifyReport:
        report = self.verify()
        if not report.ok:
            raise IntegrityError("ledger does not verify: " + "; ".join(report.problems[:3]),
                                 first_bad_sequence=report.first_bad_sequence)
        return report


def _all_accounts(tx: Transaction) -> Iterable[AccountRow]:
    after: str | None = None
    while True:
        rows = tx.list_accounts(None, after, 10_000)
        if not rows:
            return
        yield from rows
        after = rows[-1].account_id


def _check_limit(limit: object) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 10_000:
        raise ValidationError("limit must be an integer from 1 to 10000", field="limit")
    return limit
