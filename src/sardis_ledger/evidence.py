"""Evidence for clients, and the full audit: one place every interface calls.

:class:`Evidence` wraps a :class:`~sardis_ledger.core.Ledger` with its signing
keys and gives what a client needs to check the ledger without trusting it:
the latest signed tree head, an inclusion bundle for an entry or a transfer at
a tree size (with the consistency proof from that size to the signed head, so
the bundle is checkable on its own), a consistency proof between two sizes,
and the public keyring. :class:`AsyncEvidence` is the same for asyncio callers
(``AsyncEvidence.for_engine(engine)``); the HTTP router and the CLI use these,
so every interface answers alike. :func:`sardis_ledger.verifier.verify_inclusion_bundle`
checks a bundle offline.

:meth:`Evidence.verify` is the whole-ledger audit: the core ``Ledger.verify``
(every leaf and stored node, the root, running balances, floors, account
balances, conservation), plus what only this layer knows: rows stored beyond
the tree head, every signed head the server issued (signature, and that the
store still contains it: a rolled-back store is behind its heads log), and
optionally the ledger against its audit store (:mod:`sardis_ledger.hybrid`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import merkle
from .errors import BatchNotFoundError, IntegrityError, LedgerError, ValidationError
from .models import LedgerEntry, TreeHead, VerifyReport
from .records import leaf_bytes
from .signing import LEDGER_ORIGIN, HeadLog, Keyring, SignedTreeHead, TreeHeadSigner
from .verifier import VerificationError, verify_signed_tree_head

if TYPE_CHECKING:
    from .core import Ledger
    from .engine import LedgerEngine
    from .hybrid import CrossCheckReport
    from .immutable import AuditLog

__all__ = ["AsyncEvidence", "AuditReport", "Evidence"]

Progress = Callable[[int, int], None]


@dataclass(slots=True)
class AuditReport(VerifyReport):
    """Outcome of a full audit: the core report plus what only the evidence layer
    checks (signed heads, the audit store). ``first_bad_sequence`` names the first
    bad entry (1-based) when one can be named; ``problems`` says what was found."""

    signed_heads_checked: int = 0
    audit_store_checked: bool = False
    signed_tree_head: SignedTreeHead | None = None

    def absorb(self, other: VerifyReport | CrossCheckReport, prefix: str = "", *, sequences: bool = True) -> None:
        """Take in another report's problems; ``sequences=False`` when its numbers
        are not ledger sequences (the audit store's transaction ids)."""
        for message in other.problems:
            self.fail(prefix + message)
        if sequences and other.first_bad_sequence is not None:
            self.fail_silently(other.first_bad_sequence)
        if not other.ok:
            self.ok = False

    def fail_silently(self, sequence: int) -> None:
        self.ok = False
        if self.first_bad_sequence is None or sequence < self.first_bad_sequence:
            self.first_bad_sequence = sequence

    def to_dict(self) -> dict[str, Any]:
        return {
            **VerifyReport.to_dict(self),
            "signed_heads_checked": self.signed_heads_checked,
            "audit_store_checked": self.audit_store_checked,
            "signed_tree_head": self.signed_tree_head.to_dict() if self.signed_tree_head else None,
        }


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValidationError(f"{name} must be a non-negative integer", field=name)
    return value


class Evidence:
    """Signed heads, proofs and the full audit for one ledger.

    ``keyring`` defaults to :meth:`Keyring.for_database` of the ledger's URL.
    """

    def __init__(self, ledger: Ledger, keyring: Keyring | None = None, *, head_log: HeadLog | None = None,
                 origin: str = LEDGER_ORIGIN) -> None:
        self.ledger = ledger
        self.keyring = keyring if keyring is not None else Keyring.for_database(ledger.database_url)
        self.head_log = head_log if head_log is not None else HeadLog.for_store(self.keyring, origin,
                                                                                 ledger.database_url)
        self.signer = TreeHeadSigner(ledger, self.keyring, self.head_log, origin=origin)

    @property
    def origin(self) -> str:
        return self.signer.origin

    def signed_tree_head(self) -> SignedTreeHead:
        return self.signer.signed_tree_head()

    def public_keyring(self) -> dict[str, Any]:
        return self.keyring.public_keyring()

    # -- proofs ------------------------------------------------------------------

    def _entries_for(self, ref: int | str, kind: str) -> tuple[list[LedgerEntry], str | None]:
        """Entries a reference names: a sequence number, a batch (transfer) id or an
        entry id. ``kind="auto"`` reads a string of digits as a sequence number."""
        if kind not in ("auto", "sequence", "transfer", "entry"):
            raise ValidationError("kind must be auto, sequence, transfer or entry", field="kind")
        if kind in ("auto", "sequence") and isinstance(ref, str) and ref.isdigit() and len(ref) < 19:
            ref = int(ref)
        if kind == "sequence" and not isinstance(ref, int):
            raise ValidationError("a sequence number is a positive integer", field="sequence")
        if isinstance(ref, int) and not isinstance(ref, bool):
            if kind not in ("auto", "sequence"):
                raise ValidationError(f"a {kind} id is a string", field=kind)
            if ref < 1:
                raise ValidationError("sequence numbers start at 1", field="sequence")
            page = self.ledger.list_entries(since=ref, until=ref, limit=1)
            if not page.items or page.items[0].sequence != ref:
                raise ValidationError(f"entry {ref} does not exist", field="sequence")
            return list(page.items), None
        if not isinstance(ref, str) or not ref or len(ref) > 256:
            raise ValidationError("give a sequence number, a transfer (batch) id or an entry id", field="ref")
        if kind in ("auto", "transfer"):
            page = self.ledger.list_entries(batch_id=ref, limit=10_000)
            if page.items:
                return list(page.items), ref
            if kind == "transfer":
                raise BatchNotFoundError(f"transfer {ref!r} does not exist", batch_id=ref)
        return [self.ledger.get_entry(ref)], None

    def inclusion_proof(self, ref: int | str, tree_size: int | None = None, *, kind: str = "auto") -> dict[str, Any]:
        """A self-contained inclusion bundle for ``ref`` (see :meth:`_entries_for`) in the
        tree of ``tree_size`` (default: the signed head's size). See
        :mod:`sardis_ledger.verifier` for the format."""
        sth = self.signed_tree_head()
        size = sth.tree_size if tree_size is None else _positive_int(tree_size, "tree_size")
        if not 1 <= size <= sth.tree_size:
            raise ValidationError(f"tree size must be within 1..{sth.tree_size} (the signed head)", field="tree_size")
        entries, transfer_id = self._entries_for(ref, kind)
        items = []
        root = ""
        for entry in entries:
            if entry.sequence > size:
                raise ValidationError(f"entry {entry.sequence} is not in the tree of size {size}", field="tree_size")
            receipt = self.ledger.receipt(entry.sequence, size)
            if receipt.leaf_hash != entry.leaf_hash:
                raise IntegrityError(f"entry {entry.sequence}: stored leaf does not match its fields; run verify",
                                     first_bad_sequence=entry.sequence)
            root = receipt.root
            items.append({
                "sequence": entry.sequence,
                "leaf_index": receipt.leaf_index,
                "entry_id": entry.entry_id,
                "batch_id": entry.batch_id,
                "leaf": entry.leaf.decode("ascii"),
                "leaf_hash": receipt.leaf_hash,
                "inclusion_proof": list(receipt.inclusion_proof),
            })
        return {
            "origin": self.origin,
            "transfer_id": transfer_id,
            "tree_size": size,
            "root": root,
            "entries": items,
            "signed_tree_head": sth.to_dict(),
            "consistency_proof": self.ledger.consistency_proof(size, sth.tree_size),
        }

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> dict[str, Any]:
        """Proof that the tree of ``old_size`` is a prefix of ``new_size`` (default:
        the signed head), with both roots and the signed head."""
        sth = self.signed_tree_head()
        old = _positive_int(old_size, "old")
        new = sth.tree_size if new_size is None else _positive_int(new_size, "new")
        if not old <= new <= sth.tree_size:
            raise ValidationError(f"sizes must satisfy old <= new <= {sth.tree_size} (the signed head)", field="new")
        return {
            "origin": self.origin,
            "old_size": old,
            "new_size": new,
            "old_root": self.ledger.root_at(old),
            "new_root": self.ledger.root_at(new),
            "proof": self.ledger.consistency_proof(old, new),
            "signed_tree_head": sth.to_dict(),
        }

    # -- the full audit ------------------------------------------------------------

    def verify(self, progress: Progress | None = None, *, audit: AuditLog | None = None,
               sign: bool = True) -> AuditReport:
        """Audit everything (see module docs). When the ledger verifies and ``sign``
        is set, its current head is signed, pinning the verified state."""
        core = self.ledger.verify(progress)
        report = AuditReport(entries_checked=core.entries_checked, tree_size=core.tree_size, root=core.root)
        report.absorb(core)
        if not core.ok:
            located = self._first_bad_entry()
            if located is not None:
                report.first_bad_sequence = located
        # The ledger may have grown while it was read: later checks use the head as it is now.
        head = self._check_beyond_head(report)
        if head.tree_size < core.tree_size:
            report.fail(f"the tree head went back from {core.tree_size} to {head.tree_size} during the audit",
                        head.tree_size + 1)
        self._check_signed_heads(report, head)
        if audit is not None:
            from .hybrid import cross_check

            report.absorb(audit.verify_all(), "audit store: ", sequences=False)
            report.absorb(cross_check(self.ledger, audit))
            report.audit_store_checked = True
        if report.ok and sign:
            try:
                report.signed_tree_head = self.signed_tree_head()
            except IntegrityError as exc:  # the ledger moved on to something inconsistent meanwhile
                report.fail(exc.message)
        return report

    def _first_bad_entry(self, chunk: int = 20_000) -> int | None:
        """The first entry whose own evidence is wrong: a gap in the sequence, fields
        that no longer hash to the stored leaf, or a running balance that does not
        follow from the entries before it. Run only after a failed audit.

        Why a second look: the core audit also compares every interior Merkle node,
        and a node above a tampered leaf mismatches too; it attributes such a node
        to the first entry under it, so tampering entry 7 of 8 reports entry 1.
        Interior-node problems stay in ``problems``; the entry named is this one
        when there is one.
        """
        running: dict[str, int] = {}
        expected = 0
        with self.ledger.storage.transaction(write=False) as tx:
            size = tx.head().size
            scales = tx.assets()
        for start in range(0, size, chunk):
            end = min(start + chunk, size)
            with self.ledger.storage.transaction(write=False) as tx:
                rows = tx.entries_by_seq(start, end)
                leaves = dict(tx.node_range(0, start, end - 1))
            for row in rows:
                if row.seq != expected:
                    return expected + 1
                try:
                    leaf = merkle.hash_leaf(leaf_bytes(row, scales[row.asset]))
                except (KeyError, UnicodeEncodeError, ValueError, TypeError):
                    return row.seq + 1
                prev = running.get(row.account_id, 0)
                delta = row.amount if row.direction == "credit" else -row.amount
                if leaves.get(row.seq) != leaf or prev + delta != row.running_balance:
                    return row.seq + 1
                running[row.account_id] = prev + delta
                expected += 1
        return expected + 1 if expected < size else None

    def _check_beyond_head(self, report: AuditReport) -> TreeHead:
        """Rows past the head are invisible to a walk up to the head; look for them."""
        with self.ledger.storage.transaction(write=False) as tx:
            row = tx.head()
            size = row.size
            extra = tx.entries_by_seq(size, size + 1)
        head = TreeHead(size, row.root.hex(), self.ledger.tree_head().timestamp)
        if extra:
            seq = extra[0].seq + 1
            report.fail(f"entry {seq} is stored beyond the tree head of size {size} (a row was inserted, "
                        "or the tree head was rolled back)", seq)
        return head

    def _check_signed_heads(self, report: AuditReport, head: TreeHead) -> None:
        keys = self.keyring.public_keys()
        roots: dict[int, str] = {head.tree_size: head.root}
        for number, item in self.head_log.entries():
            if isinstance(item, str):
                report.fail("heads log: " + item)
                continue
            report.signed_heads_checked += 1
            where = f"signed tree head of size {item.tree_size} (heads log line {number})"
            try:
                verify_signed_tree_head(item, keys, origin=self.origin)
            except VerificationError as exc:
                report.fail(f"{where}: {exc.message}")
                continue
            if item.tree_size > head.tree_size:
                report.fail(f"{where}: the store has only {head.tree_size} entries; it was rolled back or "
                            "truncated after this head was signed", head.tree_size + 1)
                continue
            root = roots.get(item.tree_size)
            if root is None:
                try:
                    root = roots[item.tree_size] = self.ledger.root_at(item.tree_size)
                except LedgerError as exc:
                    report.fail(f"{where}: cannot recompute the root: {exc.message}")
                    continue
            if root != item.root:
                report.fail(f"{where}: the store's root at that size differs: history was rewritten")


class AsyncEvidence:
    """:class:`Evidence` for asyncio callers; each call runs in a worker thread."""

    def __init__(self, evidence: Evidence) -> None:
        self.sync = evidence

    @classmethod
    def for_engine(cls, engine: LedgerEngine, keyring: Keyring | None = None) -> AsyncEvidence:
        return cls(Evidence(engine.sync, keyring))

    async def signed_tree_head(self) -> SignedTreeHead:
        return await asyncio.to_thread(self.sync.signed_tree_head)

    async def inclusion_proof(self, ref: int | str, tree_size: int | None = None, *,
                              kind: str = "auto") -> dict[str, Any]:
        return await asyncio.to_thread(self.sync.inclusion_proof, ref, tree_size, kind=kind)

    async def consistency_proof(self, old_size: int, new_size: int | None = None) -> dict[str, Any]:
        return await asyncio.to_thread(self.sync.consistency_proof, old_size, new_size)

    async def verify(self, progress: Progress | None = None, *, audit: AuditLog | None = None) -> AuditReport:
        return await asyncio.to_thread(self.sync.verify, progress, audit=audit)

    def public_keyring(self) -> dict[str, Any]:
        return self.sync.public_keyring()
