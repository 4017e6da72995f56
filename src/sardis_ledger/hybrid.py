"""The hybrid ledger: every entry in the ledger store *and* in the audit store.

The seed pairs PostgreSQL with immudb. Here the ledger store is any ledger URL
(``postgres_url``: PostgreSQL, or SQLite for one host) and the audit store is
the separate append-only log of :mod:`sardis_ledger.immutable`, chosen from the
seed's ``immudb_*`` fields exactly as :class:`~sardis_ledger.immutable.ImmutableConfig`
chooses (``audit_url`` wins; by default an SQLite file named ``immudb_database``).
An entry's ``receipt`` names both copies: ``pg_id`` is its row id in the ledger
(its sequence number) and ``immudb_tx`` its transaction id in the audit store.

Two stores cannot commit atomically together, so each write runs as:

1. record a *write-ahead intent* in the audit store (if that fails, nothing is written);
2. write the ledger, under an idempotency key the intent names;
3. append the entries to the audit store and delete the intent, in one audit transaction.

A crash after 1 leaves an intent behind. :meth:`HybridLedgerSync.recover` (run
whenever a hybrid ledger is opened) finds the ledger batch by the intent's key
and completes step 3; an intent whose ledger write never committed is dropped
once it is older than ``intent_grace_seconds`` (it may belong to a write still
in flight in another process). Nothing committed to the ledger is silently
lost. :func:`cross_check` compares the two stores entry by entry and reports
every entry present in one and not the other, or different between them.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from .core import Ledger, default_database_url
from .errors import LedgerError, StorageError, ValidationError
from .evidence import AuditReport, Evidence
from .immutable import AuditLog, AuditReceipt, AuditRecord, ImmutableConfig
from .models import EntrySpec, LedgerBatch, LedgerEntry, LedgerEntryType, Receipt
from .signing import Keyring, store_file, store_location

__all__ = [
    "CrossCheckReport",
    "HybridBatch",
    "HybridConfig",
    "HybridEntry",
    "HybridLedger",
    "HybridLedgerSync",
    "HybridReceipt",
    "RecoveryReport",
    "create_hybrid_ledger",
    "cross_check",
]


@dataclass(frozen=True)
class HybridConfig:
    """The seed's fields, plus where the audit store is when no immudb exists.

    ``postgres_url``: the ledger store (any ledger URL; default ``LEDGER_DATABASE_URL``
    or ``sqlite:///ledger.db``). ``audit_url``: the audit store's URL; without it,
    an SQLite file ``<immudb_database>.db`` in ``audit_dir`` (default: beside a
    file ledger, else ``LEDGER_AUDIT_DIR`` or the working directory).
    ``immudb_host``/``immudb_port`` are kept for the seed; no immudb is contacted.
    """

    postgres_url: str | None = None
    immudb_host: str = "localhost"
    immudb_port: int = 3322
    immudb_database: str = "sardis_audit"
    audit_url: str | None = None
    audit_dir: str | None = None
    key_dir: str | None = None
    intent_grace_seconds: float = 30.0

    def ledger_url(self) -> str:
        return self.postgres_url or default_database_url()

    def audit_config(self) -> ImmutableConfig:
        directory = self.audit_dir
        if directory is None and self.audit_url is None:
            path = store_file(self.ledger_url())
            directory = str(path.resolve().parent) if path is not None else None
        return ImmutableConfig(host=self.immudb_host, port=self.immudb_port, database=self.immudb_database,
                               url=self.audit_url, directory=directory, key_dir=self.key_dir)


@dataclass(frozen=True, slots=True)
class HybridReceipt:
    """Where an entry is in each store, with each store's Merkle proof."""

    pg_id: int
    """The entry's row id in the ledger store: its sequence number."""
    immudb_tx: int
    """The entry's transaction id in the audit store."""
    entry_id: str
    ledger: Receipt | None
    audit: AuditReceipt

    def verify(self, leaf: bytes) -> bool:
        """Both proofs check, and the audit copy holds exactly the ledger's leaf."""
        ok = self.audit.verify() and _audit_leaf_text(self.audit.leaf) == leaf.decode()
        return ok and (self.ledger is None or self.ledger.verify(leaf))

    def to_dict(self) -> dict[str, Any]:
        return {
            "pg_id": self.pg_id,
            "immudb_tx": self.immudb_tx,
            "entry_id": self.entry_id,
            "ledger": self.ledger.to_dict() if self.ledger else None,
            "audit": self.audit.to_dict(),
        }


def _audit_leaf_text(audit_leaf: bytes) -> str | None:
    import json

    try:
        data = json.loads(audit_leaf)["data"]
    except (ValueError, KeyError, TypeError):
        return None
    leaf = data.get("leaf") if isinstance(data, dict) else None
    return leaf if isinstance(leaf, str) else None


@dataclass(frozen=True, slots=True)
class HybridEntry:
    """A ledger entry with a receipt naming both stores; other attributes
    (``entry_id``, ``running_balance``, …) are the ledger entry's."""

    entry: LedgerEntry
    receipt: HybridReceipt

    def __getattr__(self, name: str) -> Any:
        return getattr(self.entry, name)

    def to_dict(self) -> dict[str, Any]:
        out = self.entry.to_dict()
        out["receipt"] = self.receipt.to_dict()
        return out


@dataclass(frozen=True, slots=True)
class HybridBatch:
    batch: LedgerBatch
    entries: tuple[HybridEntry, ...]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.batch, name)


@dataclass(slots=True)
class RecoveryReport:
    completed: list[str] = field(default_factory=list)
    """Batch ids copied to the audit store after a crash."""
    abandoned: list[str] = field(default_factory=list)
    """Intents whose ledger write never committed (dropped)."""
    waiting: int = 0
    """Young intents left alone: their writer may still be running."""


@dataclass(slots=True)
class CrossCheckReport:
    ok: bool = True
    ledger_entries: int = 0
    audit_records: int = 0
    missing_in_audit: list[int] = field(default_factory=list)
    missing_in_ledger: list[int] = field(default_factory=list)
    different: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    first_bad_sequence: int | None = None
    repaired: int = 0

    def flag(self, kind: list[int], sequence: int, message: str) -> None:
        self.ok = False
        if len(kind) < 1000:
            kind.append(sequence)
        if len(self.problems) < 100:
            self.problems.append(message)
        if self.first_bad_sequence is None or sequence < self.first_bad_sequence:
            self.first_bad_sequence = sequence

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "ledger_entries": self.ledger_entries, "audit_records": self.audit_records,
            "missing_in_audit": list(self.missing_in_audit), "missing_in_ledger": list(self.missing_in_ledger),
            "different": list(self.different), "problems": list(self.problems),
            "first_bad_sequence": self.first_bad_sequence, "repaired": self.repaired,
        }


def _audit_data(entry: LedgerEntry) -> dict[str, Any]:
    """The audit copy of an entry: its canonical leaf (every field, exactly as the
    ledger hashed it) with its id and sequence; the cross-check compares it whole."""
    return {"entry_id": entry.entry_id, "sequence": entry.sequence, "leaf": entry.leaf.decode("ascii")}


def _ledger_stream(ledger: Ledger, chunk: int) -> Iterator[LedgerEntry]:
    size = ledger.tree_head().tree_size
    for start in range(1, size + 1, chunk):
        yield from ledger.list_entries(since=start, until=min(start + chunk - 1, size), limit=chunk).items


def _audit_stream(audit: AuditLog, chunk: int) -> Iterator[AuditRecord]:
    ref, last_tx = 0, 0
    for _ in range(1 << 40):  # bounded: each round advances past at least one record
        rows = [r for r in audit.records_by_ref(ref, chunk + 1) if not (r.ref_seq == ref and r.tx <= last_tx)]
        if not rows:
            return
        yield from rows
        assert rows[-1].ref_seq is not None
        ref, last_tx = rows[-1].ref_seq, rows[-1].tx


def cross_check(ledger: Ledger, audit: AuditLog, *, repair: bool = False, chunk: int = 5000) -> CrossCheckReport:
    """Compare every ledger entry with its audit copy (records with a ``ref_seq``).

    Reports entries in the ledger but not the audit store, audit records naming
    a ledger entry that does not exist, and copies that differ (entry id or leaf
    bytes). With ``repair``, ledger entries missing from the audit store are
    appended to it; nothing else is ever changed.
    """
    report = CrossCheckReport()
    to_copy: list[LedgerEntry] = []
    entries, records = _ledger_stream(ledger, chunk), _audit_stream(audit, chunk)
    entry, record = next(entries, None), next(records, None)
    while entry is not None or record is not None:
        ref = record.ref_seq if record is not None else None
        if entry is not None and (ref is None or entry.sequence < ref):
            report.ledger_entries += 1
            report.flag(report.missing_in_audit, entry.sequence,
                        f"entry {entry.sequence} ({entry.entry_id}) is in the ledger but not in the audit store")
            if repair:
                to_copy.append(entry)
            entry = next(entries, None)
        elif record is not None and (entry is None or (ref is not None and ref < entry.sequence)):
            report.audit_records += 1
            report.flag(report.missing_in_ledger, ref or 0,
                        f"audit tx {record.tx} records ledger entry {ref} ({record.entry_id}), "
                        "which the ledger does not have")
            record = next(records, None)
        else:
            assert entry is not None
            assert record is not None
            report.audit_records += 1
            if record.entry_id != entry.entry_id or record.data != _audit_data(entry):
                report.flag(report.different, entry.sequence,
                            f"entry {entry.sequence} differs between the ledger and the audit store (audit tx "
                            f"{record.tx})")
            record = next(records, None)
            # a second audit record for the same sequence is compared (and reported) on the next round
            if record is None or record.ref_seq != entry.sequence:
                report.ledger_entries += 1
                entry = next(entries, None)
    if to_copy:
        for i in range(0, len(to_copy), 1000):
            part = to_copy[i:i + 1000]
            audit.append_many([(e.entry_id, _audit_data(e), e.sequence) for e in part])
            report.repaired += len(part)
    return report


class HybridLedgerSync:
    """The hybrid ledger's one implementation (synchronous); :class:`HybridLedger`
    is its asyncio face. Opening it runs :meth:`recover`."""

    def __init__(self, config: HybridConfig | None = None, *, ledger: Ledger | None = None,
                 audit: AuditLog | None = None, recover: bool = True) -> None:
        self.config = config or HybridConfig()
        self.ledger = ledger if ledger is not None else Ledger(self.config.ledger_url())
        if audit is None:
            acfg = self.config.audit_config()
            keyring = Keyring(acfg.key_dir) if acfg.key_dir else None
            audit = AuditLog(acfg.store_url(), keyring=keyring)
        if store_location(audit.url) == store_location(self.ledger.database_url):
            raise ValidationError("the audit store must be a different database from the ledger store",
                                  field="audit_url")
        self.audit = audit
        keyring = Keyring(self.config.key_dir) if self.config.key_dir else None
        self.evidence = Evidence(self.ledger, keyring)
        self.last_recovery: RecoveryReport | None = self.recover() if recover else None

    def close(self) -> None:
        self.ledger.close()
        self.audit.close()

    # -- writes -------------------------------------------------------------------

    def _mirror(self, batch: LedgerBatch, intent_id: str | None) -> HybridBatch:
        receipts = self.audit.append_many(
            [(e.entry_id, _audit_data(e), e.sequence) for e in batch.entries], clear_intent=intent_id
        )
        entries = tuple(
            HybridEntry(e, HybridReceipt(e.sequence, r.tx_id, e.entry_id, e.receipt, r))
            for e, r in zip(batch.entries, receipts, strict=True)
        )
        return HybridBatch(batch, entries)

    def _write(self, op: str, request: Mapping[str, Any], key: str | None,
               call: Callable[[str], LedgerBatch]) -> HybridBatch:
        intent_id = uuid.uuid4().hex
        ikey = key if key is not None else f"hybrid:{intent_id}"
        import json

        body = json.dumps({"op": op, **request}, sort_keys=True, default=str)
        self.audit.add_intent(intent_id, ikey, body)
        try:
            batch = call(ikey)
        except StorageError:
            raise  # outcome unknown: the intent stays for recover()
        except LedgerError:
            self.audit.drop_intent(intent_id)  # refused: nothing was written
            raise
        try:
            return self._mirror(batch, intent_id)
        except StorageError as exc:
            raise StorageError(
                f"batch {batch.batch_id} is committed to the ledger but not yet to the audit store "
                f"({exc.message}); it is copied when the hybrid ledger is next opened or recover() runs",
                batch_id=batch.batch_id,
            ) from exc

    def create_entry(self, account_id: str, amount: Decimal | int | str, entry_type: LedgerEntryType | str,
                     reference: str | None = None, metadata: Mapping[str, Any] | None = None, *,
                     asset: str | None = None, idempotency_key: str | None = None) -> HybridEntry:
        request = {"account_id": account_id, "amount": str(amount), "entry_type": str(entry_type),
                   "reference": reference, "metadata": metadata, "asset": asset}
        batch = self._write("create_entry", request, idempotency_key, lambda key: self.ledger.create_batch(
            [{"account_id": account_id, "amount": amount, "entry_type": entry_type, "reference": reference,
              "metadata": metadata, "asset": asset}], idempotency_key=key))
        return batch.entries[0]

    def create_batch(self, entries: Sequence[Mapping[str, Any] | EntrySpec], *,
                     idempotency_key: str | None = None) -> HybridBatch:
        return self._write("create_batch", {"legs": len(entries)}, idempotency_key,
                           lambda key: self.ledger.create_batch(entries, idempotency_key=key))

    def transfer(self, from_account: str, to_account: str, amount: Decimal | int | str, *,
                 reference: str | None = None, metadata: Mapping[str, Any] | None = None,
                 idempotency_key: str | None = None) -> HybridBatch:
        request = {"from": from_account, "to": to_account, "amount": str(amount), "reference": reference}
        return self._write("transfer", request, idempotency_key, lambda key: self.ledger.transfer(
            from_account, to_account, amount, reference=reference, metadata=metadata, idempotency_key=key))

    def rollback_batch(self, batch_id: str, reason: str, *, idempotency_key: str | None = None) -> HybridBatch:
        return self._write("rollback_batch", {"batch_id": batch_id, "reason": reason}, idempotency_key,
                           lambda key: self.ledger.rollback_batch(batch_id, reason, idempotency_key=key))

    # -- reads --------------------------------------------------------------------

    def get_entry(self, entry_id: str) -> HybridEntry:
        """The entry with both receipts (the audit copy's proof at the audit store's current size)."""
        entry = self.ledger.get_entry(entry_id)
        result = self.audit.verify_entry(entry_id)
        record = self.audit.get(entry_id)
        if record is None or result.proof is None:
            raise StorageError(f"entry {entry_id} is not (provably) in the audit store: {result.message}",
                               entry_id=entry_id, status=result.status.value)
        receipt = AuditReceipt(entry_id, record.tx, datetime.fromisoformat(record.created_at), result.proof,
                               record.leaf, result.signed_tree_head)
        return HybridEntry(entry, HybridReceipt(entry.sequence, record.tx, entry_id, entry.receipt, receipt))

    def get_balance(self, account_id: str, at: datetime | int | None = None) -> Decimal:
        return self.ledger.get_balance(account_id, at)

    # -- consistency of the two stores ----------------------------------------------

    def recover(self) -> RecoveryReport:
        """Finish writes a crash interrupted (see module docs)."""
        report = RecoveryReport()
        cutoff = datetime.now(UTC) - timedelta(seconds=self.config.intent_grace_seconds)
        for intent_id, key, _request, created in self.audit.pending_intents():
            with self.ledger.storage.transaction(write=False) as tx:
                row = tx.find_idempotency(key)
            if row is not None:
                self._mirror(self.ledger.get_batch(row.batch_id), intent_id)
                report.completed.append(row.batch_id)
            elif datetime.fromisoformat(created) < cutoff:
                self.audit.drop_intent(intent_id)
                report.abandoned.append(intent_id)
            else:
                report.waiting += 1
        return report

    def cross_check(self, *, repair: bool = False) -> CrossCheckReport:
        return cross_check(self.ledger, self.audit, repair=repair)

    def verify(self, progress: Callable[[int, int], None] | None = None) -> AuditReport:
        """The full audit of the ledger, its audit store and the two against each other."""
        return self.evidence.verify(progress, audit=self.audit)


class HybridLedger:
    """The seed's async hybrid ledger; each call runs :class:`HybridLedgerSync` in a worker thread."""

    def __init__(self, config: HybridConfig | None = None, *, sync: HybridLedgerSync | None = None) -> None:
        self.sync = sync if sync is not None else HybridLedgerSync(config)

    @property
    def config(self) -> HybridConfig:
        return self.sync.config

    async def create_entry(self, account_id: str, amount: Decimal | int | str, entry_type: LedgerEntryType | str,
                           reference: str | None = None, metadata: Mapping[str, Any] | None = None, *,
                           asset: str | None = None, idempotency_key: str | None = None) -> HybridEntry:
        return await asyncio.to_thread(self.sync.create_entry, account_id, amount, entry_type, reference, metadata,
                                       asset=asset, idempotency_key=idempotency_key)

    async def create_batch(self, entries: Sequence[Mapping[str, Any] | EntrySpec], *,
                           idempotency_key: str | None = None) -> HybridBatch:
        return await asyncio.to_thread(self.sync.create_batch, entries, idempotency_key=idempotency_key)

    async def transfer(self, from_account: str, to_account: str, amount: Decimal | int | str, *,
                       reference: str | None = None, metadata: Mapping[str, Any] | None = None,
                       idempotency_key: str | None = None) -> HybridBatch:
        return await asyncio.to_thread(self.sync.transfer, from_account, to_account, amount, reference=reference,
                                       metadata=metadata, idempotency_key=idempotency_key)

    async def rollback_batch(self, batch_id: str, reason: str, *, idempotency_key: str | None = None) -> HybridBatch:
        return await asyncio.to_thread(self.sync.rollback_batch, batch_id, reason, idempotency_key=idempotency_key)

    async def get_entry(self, entry_id: str) -> HybridEntry:
        return await asyncio.to_thread(self.sync.get_entry, entry_id)

    async def get_balance(self, account_id: str, at: datetime | int | None = None) -> Decimal:
        return await asyncio.to_thread(self.sync.get_balance, account_id, at)

    async def recover(self) -> RecoveryReport:
        return await asyncio.to_thread(self.sync.recover)

    async def cross_check(self, *, repair: bool = False) -> CrossCheckReport:
        return await asyncio.to_thread(self.sync.cross_check, repair=repair)

    async def verify(self, progress: Callable[[int, int], None] | None = None) -> AuditReport:
        return await asyncio.to_thread(self.sync.verify, progress)

    async def close(self) -> None:
        await asyncio.to_thread(self.sync.close)


def create_hybrid_ledger(config: HybridConfig | None = None) -> HybridLedger:
    """The seed's entry point: a :class:`HybridLedger`; any interrupted writes are completed first."""
    return HybridLedger(config)

