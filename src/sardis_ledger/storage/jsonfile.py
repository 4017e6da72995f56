"""JSON-file storage: the mesh seed's inspectable ``ledger.json``, safe to share.

Why this backend looks the way it does: the seed promises a JSON file a person
can open and read (``accounts`` and ``transfers`` in its documented shape), and
the ledger promises that nothing acknowledged is lost and that several
processes may share the file. A single JSON document rewritten on every write
keeps the first promise but costs time proportional to the whole history, so
old history is *sealed* into immutable segment files and only recent records
stay in ``ledger.json``. The full format is in ``docs/json-format.md``.

Layout (``X`` is the ledger file's name, e.g. ``ledger.json``)::

    X            the head document, rewritten atomically on every write:
                 {"format": "sardis-ledger-json", "version": 1,
                  "ledger_id": "<hex>", "generation": <n>,          <- first line
                  "accounts": {"alice": {"balance": 90, "created_at": "…Z", "meta": {},
                                         "asset": "TOKEN", "overdraft_limit": 0}, …},
                  "transfers": [<unsealed transfer records, oldest first>],
                  "segments": {"directory": "X.d", "count": k, "sealed_entries": …,
                               "sealed_transfers": …, "last_sha256": "<hex>"},
                  "tree_head": {"size": …, "root": "<hex>", "updated_at": "…Z"},
                  "assets": {"TOKEN": 6}}
    X.d/segment-000001.json … segment-<k>.json
                 sealed transfer records, oldest first; each file is valid JSON,
                 never rewritten once the head lists it, and carries the SHA-256
                 of its predecessor ("previous_sha256"), so the head's
                 ``last_sha256`` pins the whole chain with O(1) bytes.
    X.lock       the inter-process lock (``filelock``; flock, released by the
                 kernel when a holder dies).

A transfer record is one engine batch in the seed's shape (``id``,
``timestamp``, ``from_account`` = the debit leg, ``to_account`` = the credit
leg, ``amount``, ``job_id`` = the reference, ``note`` = ``metadata["note"]``;
a one-leg credit has ``from_account: null``) plus what the engine needs:
``sequence``, ``reverses``, ``reason``, ``idempotency_key``,
``request_hash``, the ``entries`` (legs with running balances and metadata),
the ``merkle`` nodes its leaves completed (one hex string, in creation order:
each leaf, then the parents it closes), and the balance ``checkpoint``
written with it, if any. Every amount is a JSON integer when whole and an exact
decimal string otherwise, in token units (never minor units, never floats).

Writes: take the file lock; if the first line's ``(ledger_id, generation)``
differs from ours another process wrote, so reload incrementally (parse the
head, read only segments sealed since, index only records we lack: history is
append-only, so what is loaded never changes); apply; then write new segments
and the head each as temp file + fsync + ``os.replace`` + fsync of the
directory. A write costs O(accounts + unsealed tail), independent of history.
A failed transaction is undone in memory exactly (an undo log plus truncation
marks on the append-only indexes) and the disk is untouched, unless the failure
came after the head was replaced; that is reported as
:class:`~sardis_ledger.errors.RetryableStorageError` (outcome unknown), which
the engine resolves by finding its batch on retry. Reads are served from the
in-memory index after checking the generation (a 128-byte read).

Not supported: editing the files by hand while processes use them (nothing
takes the lock for a text editor), and network filesystems without ``flock``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import uuid
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from ..errors import IntegrityError, RetryableStorageError, StorageError, ValidationError
from ..records import AccountRow, HeadRow
from ._json_index import HASH_SIZE, Index, JSONTransaction, Undo
from ._json_records import Rec, account_text, created_by, dumps, load_account, load_record, render_record
from .base import Storage, Transaction

__all__ = ["JSONFileStorage"]

FORMAT = "sardis-ledger-json"
SEGMENT_FORMAT = "sardis-ledger-json-segment"
VERSION = 1
_PREFIX = re.compile(
    rb'\{"format": "sardis-ledger-json", "version": (\d+), "ledger_id": "([0-9a-f]{32})", "generation": (\d+)'
)


_instances: weakref.WeakSet[JSONFileStorage] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for storage in list(_instances):
        storage._new_locks()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # pragma: no cover - platforms without directory fds (Windows)
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes) -> None:
    """Write a complete temp file and fsync it; the caller renames it into place."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(slots=True)
class _Sealed:
    count: int = 0
    entries: int = 0
    transfers: int = 0
    last_sha256: str | None = None


@dataclass(slots=True)
class _Plan:
    """Everything a commit will publish, computed before touching the disk."""

    tail: list[Rec]
    sealed: _Sealed
    segments: list[tuple[str, bytes]]
    account_texts: dict[str, str]
    generation: int


class JSONFileStorage(Storage):
    """A ledger in ``path`` (a ``.json`` file) plus sealed segments in ``path.d/``.

    ``segment_transfers`` and ``segment_bytes`` bound the unsealed tail kept in
    the head document (and so the cost of a write); ``lock_timeout`` bounds the
    wait for another process's write.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        segment_transfers: int = 500,
        segment_bytes: int = 512 * 1024,
        lock_timeout: float = 60.0,
    ) -> None:
        self.url = os.fspath(path)
        self.path = Path(self.url).absolute()
        if segment_transfers < 1 or segment_bytes < 1:
            raise ValidationError("segment sizes must be positive")
        self.segment_transfers = segment_transfers
        self.segment_bytes = segment_bytes
        self.lock_timeout = lock_timeout
        self.segment_dir = self.path.with_name(self.path.name + ".d")
        self._tmp = self.path.with_name(self.path.name + ".tmp")
        self._new_locks()
        _instances.add(self)
        self._reset()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create directory for {self.url!r}: {exc}") from exc
        with self._locked():
            if self._read_prefix() is None and self._is_blank():
                self._create()
            self._refresh()

    def _new_locks(self) -> None:
        """Fresh locks; also in a forked child, where filelock refuses an inherited lock
        and a copied mutex may be held by a parent thread that does not exist here."""
        self._mutex = threading.RLock()
        self._flock = FileLock(
            str(self.path.with_name(self.path.name + ".lock")), thread_local=False, poll_interval=0.002,
            fallback_to_soft=False,
        )

    def _reset(self) -> None:
        self._ix = Index()
        self._ledger_id = ""
        self._generation = -1
        self._tail: list[Rec] = []
        self._sealed = _Sealed()
        self._account_texts: dict[str, str] = {}

    # ------------------------------------------------------------------ locking

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._mutex:
            try:
                self._flock.acquire(timeout=self.lock_timeout)
            except Timeout:
                raise StorageError(
                    f"timed out after {self.lock_timeout}s waiting for the lock on {self.url!r}"
                ) from None
            except OSError as exc:
                raise StorageError(f"cannot lock {self.url!r}: {exc}") from exc
            try:
                yield
            finally:
                self._flock.release()

    @contextmanager
    def transaction(self, *, write: bool) -> Iterator[Transaction]:
        if not write:
            with self._mutex:
                self._refresh()
                tx = JSONTransaction(self._ix, False)
                try:
                    yield tx
                finally:
                    tx._closed = True
            return
        with self._locked():
            self._refresh()
            tx = JSONTransaction(self._ix, True)
            undo = tx._undo
            assert undo is not None
            try:
                yield tx
                tx._closed = True
                if self._ix.mark() != undo.mark or undo.accounts or undo.assets is not None or undo.head is not None:
                    self._commit(undo)
            except Exception:
                tx._closed = True
                undo.restore(self._ix)  # a no-op when _commit already restored
                raise
            except BaseException:
                # An interrupt can land anywhere, even inside a restore: drop memory, reload from the file.
                tx._closed = True
                self._reset()
                raise

    # ------------------------------------------------------------------ reading

    def _read_prefix(self) -> tuple[str, int] | None:
        """``(ledger_id, generation)`` from the head's first bytes, or None if the
        file is missing, empty or not in our layout."""
        try:
            with open(self.path, "rb") as f:
                head = f.read(160)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"cannot read {self.url!r}: {exc}") from exc
        m = _PREFIX.match(head)
        if m is None:
            return None
        return m.group(2).decode(), int(m.group(3))

    def _is_blank(self) -> bool:
        """True when there is no ledger yet: no file, an empty file, or a JSON
        object with no accounts, transfers or format (``{}``). Anything else is
        left alone: ours (reformatted by hand) loads, a foreign file is refused."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return True
        except OSError as exc:
            raise StorageError(f"cannot read {self.url!r}: {exc}") from exc
        if not data.strip():
            return True
        try:
            doc = json.loads(data)
        except ValueError:
            return False
        return isinstance(doc, dict) and not (doc.get("accounts") or doc.get("transfers") or "format" in doc)

    def _create(self) -> None:
        self._ledger_id = uuid.uuid4().hex
        self._generation = 0
        data = self._head_text(0, {}, [], _Sealed()).encode("ascii")
        _write_file(self._tmp, data)
        os.replace(self._tmp, self.path)
        _fsync_dir(self.path.parent)
        self._reset()

    def _refresh(self) -> None:
        """Make memory match the file if another process (or a lost commit) moved it."""
        prefix = self._read_prefix()
        if prefix is not None and prefix == (self._ledger_id, self._generation):
            return
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            raise StorageError(f"ledger file {self.url!r} has disappeared") from None
        except OSError as exc:
            raise StorageError(f"cannot read {self.url!r}: {exc}") from exc
        try:
            doc = json.loads(data)
        except ValueError as exc:
            raise IntegrityError(f"{self.url!r} is not valid JSON: {exc}") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise StorageError(
                f"{self.url!r} is not a sardis ledger JSON file (no \"format\": \"{FORMAT}\"); "
                "refusing to overwrite it. Move it aside or use another path."
            )
        if doc.get("version") != VERSION:
            raise StorageError(f"{self.url!r} has format version {doc.get('version')!r}; this build reads {VERSION}")
        try:
            self._load(doc)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            self._reset()
            raise IntegrityError(f"{self.url!r}: malformed head document ({type(exc).__name__}: {exc})") from None
        except BaseException:
            # Anything else (IntegrityError, KeyboardInterrupt, MemoryError) may have left a
            # record half indexed; the next use reloads from scratch.
            self._reset()
            raise

    def _load(self, doc: dict[str, Any]) -> None:
        ledger_id, generation = doc["ledger_id"], doc["generation"]
        ix = self._ix
        if ledger_id != self._ledger_id or generation < self._generation or doc["tree_head"]["size"] < len(ix.entries):
            self._reset()
            ix = self._ix
        have = len(ix.entries)
        # Assets and accounts are small and mutable: rebuilt whole from the head.
        ix.assets = {str(k): int(v) for k, v in doc["assets"].items()}
        accounts: dict[str, AccountRow] = {}
        texts: dict[str, str] = {}
        for account_id, a in doc["accounts"].items():
            accounts[account_id] = load_account(account_id, a, ix.assets, f"{self.url}: account {account_id!r}")
            texts[account_id] = dumps(a)
        ix.accounts = accounts
        ix.account_ids = sorted(accounts)
        seg = doc["segments"]
        sealed = _Sealed(seg["count"], seg["sealed_entries"], seg["sealed_transfers"], seg["last_sha256"])
        if sealed.count < self._sealed.count:
            raise IntegrityError(f"{self.url!r}: segment count went backwards")
        if sealed.entries > have:
            self._load_segments(ledger_id, sealed, have)
        # else: anything sealed since our last look was sealed from records we hold.
        old_texts = {r.first_seq: r for r in self._tail}
        tail: list[Rec] = []
        for i, rec in enumerate(doc["transfers"]):
            first = rec["sequence"] - 1
            known = old_texts.get(first)
            if first < len(ix.entries):
                tail.append(known if known is not None else Rec(first, len(rec["entries"]), dumps(rec)))
                continue
            start, count = load_record(ix, rec, f"{self.url}: transfers[{i}]")
            tail.append(Rec(start, count, dumps(rec)))
        th = doc["tree_head"]
        ix.head = HeadRow(th["size"], bytes.fromhex(th["root"]), th["updated_at"])
        if ix.head.size != len(ix.entries):
            raise IntegrityError(f"{self.url!r}: tree head says {ix.head.size} entries, files hold {len(ix.entries)}")
        self._tail = tail
        self._sealed = sealed
        self._account_texts = texts
        self._ledger_id, self._generation = ledger_id, generation

    def _segment_path(self, number: int) -> Path:
        return self.segment_dir / f"segment-{number:06d}.json"

    def _load_segments(self, ledger_id: str, sealed: _Sealed, have: int) -> None:
        """Read the segments we have not read, indexing records beyond ``have``;
        each file's hash must chain to the next, and the last to the head."""
        start = self._sealed.count + 1
        prev = self._sealed.last_sha256
        for number in range(start, sealed.count + 1):
            path = self._segment_path(number)
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise IntegrityError(f"segment {path} listed in {self.url!r} cannot be read: {exc}") from None
            digest = hashlib.sha256(data).hexdigest()
            try:
                seg = json.loads(data)
            except ValueError as exc:
                raise IntegrityError(f"segment {path} is not valid JSON: {exc}") from None
            if (
                not isinstance(seg, dict) or seg.get("format") != SEGMENT_FORMAT
                or seg.get("ledger_id") != ledger_id or seg.get("segment") != number
            ):
                raise IntegrityError(f"segment {path} does not belong to this ledger")
            if seg.get("previous_sha256") != prev:
                raise IntegrityError(f"segment {path} does not chain to segment {number - 1} (modified or replaced?)")
            prev = digest
            for i, rec in enumerate(seg["transfers"]):
                if rec["sequence"] - 1 < have:
                    continue
                load_record(self._ix, rec, f"{path}: transfers[{i}]")
        if prev != sealed.last_sha256:
            raise IntegrityError(f"the last segment's SHA-256 does not match {self.url!r} (modified or replaced?)")

    # ------------------------------------------------------------------ writing

    def _head_text(self, generation: int, accounts: Mapping[str, str], tail: Sequence[Rec], sealed: _Sealed) -> str:
        ix = self._ix
        parts = [
            f'{{"format": "{FORMAT}", "version": {VERSION}, "ledger_id": "{self._ledger_id}",'
            f' "generation": {generation},\n',
            '"accounts": {',
            ",".join(f"\n  {dumps(a)}: {t}" for a, t in accounts.items()),
            '\n},\n"transfers": [',
            ",".join("\n  " + r.text for r in tail),
            '\n],\n"segments": ',
            dumps({
                "directory": self.segment_dir.name, "count": sealed.count, "sealed_entries": sealed.entries,
                "sealed_transfers": sealed.transfers, "last_sha256": sealed.last_sha256,
            }),
            ',\n"tree_head": ',
            dumps({"size": ix.head.size, "root": ix.head.root.hex(), "updated_at": ix.head.updated_at}),
            ',\n"assets": ',
            dumps(ix.assets),
            "\n}\n",
        ]
        return "".join(parts)

    def _segment_text(self, number: int, previous: str | None, records: Sequence[Rec]) -> str:
        first = records[0].first_seq + 1
        last = records[-1].first_seq + records[-1].count
        body = ",".join("\n  " + r.text for r in records)
        return (
            f'{{"format": "{SEGMENT_FORMAT}", "version": {VERSION}, "ledger_id": "{self._ledger_id}",'
            f' "segment": {number}, "previous_sha256": {dumps(previous)},'
            f' "first_sequence": {first}, "last_sequence": {last},\n"transfers": [{body}\n]\n}}\n'
        )

    def _plan(self, undo: Undo) -> _Plan:
        """Encode what this transaction added, and seal old records if the tail is
        full. Pure: nothing on disk or in the published state changes here."""
        ix, mark = self._ix, undo.mark
        new_batches = ix.batches[mark.batches :]
        # Merkle nodes go with the record holding their last leaf (where they were completed).
        node_at: dict[int, list[tuple[int, int, bytes]]] = {}
        for level, buf in enumerate(ix.nodes):
            start = mark.nodes[level] if level < len(mark.nodes) else 0
            for index in range(start, len(buf) // HASH_SIZE):
                last = ((index + 1) << level) - 1
                digest = bytes(buf[index * HASH_SIZE : (index + 1) * HASH_SIZE])
                node_at.setdefault(last, []).append((level, index, digest))
        cps = dict(zip(ix.cp_seqs[mark.checkpoints :], ix.cp_balances[mark.checkpoints :], strict=True))
        records: list[Rec] = []
        pos = mark.entries
        for b in new_batches:
            entries = ix.entries[pos : pos + b.count]
            if b.first_seq != pos or len(entries) != b.count or any(e.batch_id != b.batch_id for e in entries):
                raise StorageError(f"batch {b.batch_id!r} does not cover the next {b.count} entries")
            nodes = []
            for leaf in range(pos, pos + b.count):
                made = sorted(node_at.pop(leaf, ()))
                if [(lv, ix_) for lv, ix_, _ in made] != created_by(leaf):
                    raise StorageError(f"the Merkle nodes completed by leaf {leaf} were not all inserted")
                nodes += made
            cp_seq = next((s for s in cps if pos < s <= pos + b.count), None)
            checkpoint = (cp_seq, cps.pop(cp_seq)) if cp_seq is not None else None
            records.append(Rec(pos, b.count, render_record(ix, b, entries, nodes, checkpoint)))
            pos += b.count
        if pos != len(ix.entries):
            raise StorageError("entries were inserted without their batch")
        if node_at or cps:
            raise StorageError("Merkle nodes or checkpoints were inserted without the entries they cover")
        texts = dict(self._account_texts)
        for account_id in undo.accounts:
            row = ix.accounts.get(account_id)
            if row is None:
                texts.pop(account_id, None)
            else:
                texts[account_id] = account_text(row, ix.assets[row.asset])
        tail = self._tail + records
        sealed = replace(self._sealed)
        segments: list[tuple[str, bytes]] = []
        tail_bytes = sum(len(r.text) for r in tail)
        while tail and (len(tail) >= self.segment_transfers or tail_bytes >= self.segment_bytes):
            take, size = 0, 0
            while take < len(tail) and take < self.segment_transfers and size < self.segment_bytes:
                size += len(tail[take].text)
                take += 1
            sealing, tail, tail_bytes = tail[:take], tail[take:], tail_bytes - size
            data = self._segment_text(sealed.count + 1, sealed.last_sha256, sealing).encode("ascii")
            sealed.count += 1
            sealed.entries = sealing[-1].first_seq + sealing[-1].count
            sealed.transfers += take
            sealed.last_sha256 = hashlib.sha256(data).hexdigest()
            segments.append((self._segment_path(sealed.count).name, data))
        return _Plan(tail, sealed, segments, texts, self._generation + 1)

    def _commit(self, undo: Undo) -> None:
        """Publish the transaction: new segments first (each complete and synced
        before the head that lists it), then the head by atomic replace."""
        try:
            plan = self._plan(undo)
        except BaseException:
            undo.restore(self._ix)
            raise
        published = False
        try:
            if plan.segments:
                if not self.segment_dir.is_dir():
                    self.segment_dir.mkdir()
                    _fsync_dir(self.path.parent)
                for name, data in plan.segments:
                    tmp = self.segment_dir / (name + ".tmp")
                    _write_file(tmp, data)
                    os.replace(tmp, self.segment_dir / name)
                _fsync_dir(self.segment_dir)
            head = self._head_text(plan.generation, plan.account_texts, plan.tail, plan.sealed)
            _write_file(self._tmp, head.encode("ascii"))
            os.replace(self._tmp, self.path)
            published = True
            _fsync_dir(self.path.parent)
        except BaseException as exc:
            # Memory goes back to the state before the transaction. If the new head
            # was already published, the next refresh sees its generation and loads it.
            undo.restore(self._ix)
            if not isinstance(exc, Exception):
                raise
            if published:
                raise RetryableStorageError(
                    f"{self.url!r} was replaced but the directory sync failed; outcome unknown: {exc}"
                ) from exc
            raise StorageError(f"cannot write {self.url!r}: {exc}") from exc
        self._tail = plan.tail
        self._sealed = plan.sealed
        self._account_texts = plan.account_texts
        self._generation = plan.generation

    def close(self) -> None:
        """Drop the in-memory index; the next use reloads from disk."""
        with self._mutex:
            self._reset()
