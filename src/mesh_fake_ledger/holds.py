"""Holds (two-phase, pay-per-job) and refunds: methods of :class:`LedgerService`.

A hold moves the reserved amount from the payer to an escrow account
``hold:<hold_id>`` in one engine batch, so the reservation is in the Merkle log
and works on every backend. Settling (capture, void, expiry) is one more batch
that empties the escrow, keyed ``hold:<id>:settle``: the engine lets that key
commit once, so two settlements racing in different processes cannot both
succeed (the loser gets HoldError "already settled"). Hold ids start with
their expiry time, so the escrow accounts of expired holds form one contiguous
key range that the service sweeps lazily before balance, charge and hold
operations: a payer's balance reflects expiry without any background job.

Refunds are compensating transfers that name the transfer they reverse.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import threading
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from sardis_ledger import Ledger, LedgerBatch
from sardis_ledger.amounts import parse_amount
from sardis_ledger.errors import (
    AlreadyReversedError,
    HoldError,
    IdempotencyConflictError,
    InsufficientBalanceError,
    LedgerError,
    PaymentRequiredError,
    StorageError,
    ValidationError,
    json_amount,
)

from ._records import (
    HOLD_PREFIX,
    SETTLE_KINDS,
    check_job_id,
    check_timeout,
    expiry_key,
    iso,
    meta_of,
    note_meta,
    transfer_record,
    user_key,
)

if TYPE_CHECKING:
    from .ledger_service import LedgerConfig

__all__ = ["HoldsAndRefunds"]

_HOLD_ID = re.compile(r"\d{8}T\d{12}-[0-9a-f]{20}")
_TRANSFER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
_REFUNDABLE = ("transfer", "hold_capture")
_SWEEP_SKEW = 60.0
"""Seconds by which a hold may commit after a sweep passed its expiry key (slow
commit, clock skew between hosts); the sweep re-reads that window now and then."""
_SWEEP_DEEP_EVERY = 10.0
_SWEEP_MIN_INTERVAL = 0.02
"""Lazy sweeps run at most this often (seconds) per process: expired funds return
to payers within this long of expiry, and a busy server does not pay a read per call.
Captures check expiry themselves, exactly."""
_REFUND_ATTEMPTS = 50


class HoldsAndRefunds:
    """Mixin of :class:`~mesh_fake_ledger.LedgerService`; see the module docstring."""

    ledger: Ledger
    config: LedgerConfig

    def _init_holds(self) -> None:
        self._sweep_lock = threading.Lock()
        self._swept_to: str | None = None
        self._last_deep = 0.0
        self._retry_release: set[str] = set()
        self._last_sweep = -_SWEEP_MIN_INTERVAL

    def _user_account(self, account_id: object, field_name: str = "account_id") -> str:
        raise NotImplementedError

    def _ensure_party(self, account_id: str) -> None:
        raise NotImplementedError

    @staticmethod
    def _check_transfer_id(transfer_id: object) -> str:
        if not isinstance(transfer_id, str) or not _TRANSFER_ID.fullmatch(transfer_id):
            raise ValidationError("transfer id must be 1-128 letters, digits or _ . : -", field="transfer_id")
        return transfer_id

    # ------------------------------------------------------------------- holds

    def hold(
        self,
        payer_id: str,
        amount: Decimal | int | str,
        receiver_id: str | None = None,
        job_id: str | None = None,
        *,
        timeout: float | None = None,
        note: str | None = None,
    ) -> dict[str, Any]:
        """Reserve up to ``amount`` of the payer's tokens for a job.

        The funds leave the payer's spendable balance at once (PaymentRequiredError
        when it cannot cover them) and go to the receiver only on :meth:`capture`;
        :meth:`void` or the timeout (seconds, default ``config.hold_timeout``)
        returns them. Idempotent by ``job_id``: a retry returns the same hold; the
        same job with another payer, receiver or amount is refused (409).
        """
        payer = self._user_account(payer_id, "payer_id")
        receiver = self._user_account(
            receiver_id if receiver_id is not None else self.config.default_provider_account, "receiver_id"
        )
        if payer == receiver:
            raise ValidationError("a hold needs two different accounts", field="receiver_id")
        value = parse_amount(amount, None)
        job = check_job_id(job_id)
        seconds = check_timeout(timeout, self.config.hold_timeout)
        meta_note = note_meta(note)
        self._sweep_lazily()
        if job is not None:
            existing = self._hold_for_job(job)
            if existing is not None:
                return self._same_hold(existing, payer, receiver, value)
        self._ensure_party(payer)
        self._ensure_party(receiver)
        expires = datetime.now(UTC) + timedelta(seconds=seconds)
        hold_id = f"{expiry_key(expires)}-{uuid.uuid4().hex[:20]}"
        meta = {
            "kind": "hold", "hold_id": hold_id, "payer": payer, "receiver": receiver,
            "job_id": job, "expires_at": iso(expires), **meta_note,
        }
        key = f"holdjob:{hashlib.sha256(job.encode()).hexdigest()}" if job is not None else None
        try:
            self.ledger.transfer(payer, HOLD_PREFIX + hold_id, value, reference=job, metadata=meta,
                                 idempotency_key=key)
        except PaymentRequiredError:
            raise
        except InsufficientBalanceError as exc:
            raise PaymentRequiredError(required=value, balance=exc.balance, account_id=payer) from None
        except IdempotencyConflictError:
            # The same job was held concurrently: answer with that hold.
            assert job is not None
            existing = self._hold_for_job(job)
            if existing is None:
                raise
            return self._same_hold(existing, payer, receiver, value)
        return self._hold_state(hold_id)

    def _hold_for_job(self, job_id: str) -> dict[str, Any] | None:
        cursor: int | None = None
        for _ in range(1000):
            page = self.ledger.list_entries(reference=job_id, cursor=cursor, limit=100)
            for entry in page.items:
                if entry.account_id.startswith(HOLD_PREFIX) and entry.metadata.get("kind") == "hold":
                    return self._hold_state(entry.account_id[len(HOLD_PREFIX):])
            if page.next_cursor is None:
                return None
            cursor = page.next_cursor
        return None

    @staticmethod
    def _same_hold(existing: dict[str, Any], payer: str, receiver: str, amount: Decimal) -> dict[str, Any]:
        if (existing["payer"], existing["receiver"], Decimal(str(existing["amount"]))) != (payer, receiver, amount):
            raise IdempotencyConflictError(
                f"job {existing['job_id']!r} already has a different hold", hold_id=existing["hold_id"],
                job_id=existing["job_id"],
            )
        return existing

    @staticmethod
    def _check_hold_id(hold_id: object) -> str:
        if not isinstance(hold_id, str) or not _HOLD_ID.fullmatch(hold_id):
            raise ValidationError("not a hold id", field="hold_id")
        return hold_id

    def _hold_state(self, hold_id: str) -> dict[str, Any]:
        """A hold as its escrow account's entries tell it: the opening credit and at
        most one settling debit."""
        page = self.ledger.list_entries(account_id=HOLD_PREFIX + hold_id, limit=10)
        if not page.items:
            raise HoldError(f"hold {hold_id!r} does not exist", reason="not_found", hold_id=hold_id)
        opening = page.items[0]
        meta = opening.metadata
        settle = next((e for e in page.items[1:] if e.entry_type.value == "debit"), None)
        smeta = settle.metadata if settle else {}
        captured = Decimal(str(smeta.get("captured", 0)))
        status = SETTLE_KINDS.get(str(smeta.get("kind")), "open") if settle else "open"
        return {
            "hold_id": hold_id,
            "payer": meta.get("payer"),
            "receiver": meta.get("receiver"),
            "amount": json_amount(opening.amount),
            "job_id": meta.get("job_id"),
            "note": meta.get("note"),
            "status": status,
            "created_at": iso(opening.created_at),
            "expires_at": meta.get("expires_at"),
            "captured": json_amount(captured),
            "released": json_amount(opening.amount - captured) if settle else 0,
            "hold_transfer_id": opening.batch_id,
            "settlement_id": settle.batch_id if settle else None,
            "settled_at": iso(settle.created_at) if settle else None,
        }

    @staticmethod
    def _expired(state: Mapping[str, Any], now: datetime | None = None) -> bool:
        return datetime.fromisoformat(str(state["expires_at"])) <= (now or datetime.now(UTC))

    def _settle(self, state: Mapping[str, Any], kind: str, captured: Decimal) -> None:
        """Empty the escrow in one batch; only one settlement per hold can ever commit."""
        hold_id = str(state["hold_id"])
        total = Decimal(str(state["amount"]))
        meta = {"kind": kind, "hold_id": hold_id, "captured": json_amount(captured),
                "payer": state["payer"], "receiver": state["receiver"]}
        ref = state["job_id"]
        legs: list[dict[str, Any]] = [
            {"account_id": HOLD_PREFIX + hold_id, "amount": total, "entry_type": "debit", "reference": ref,
             "metadata": meta},
        ]
        if captured > 0:
            legs.append({"account_id": state["receiver"], "amount": captured, "entry_type": "credit",
                         "reference": ref, "metadata": meta})
        if total - captured > 0:
            legs.append({"account_id": state["payer"], "amount": total - captured, "entry_type": "credit",
                         "reference": ref, "metadata": meta})
        try:
            self.ledger.create_batch(legs, idempotency_key=f"hold:{hold_id}:settle")
        except IdempotencyConflictError:
            now = self._hold_state(hold_id)
            raise HoldError(
                f"hold {hold_id} was already {now['status']}", reason="already_settled", hold_id=hold_id,
                status=now["status"],
            ) from None

    def get_hold(self, hold_id: str) -> dict[str, Any]:
        """The hold's current state; an open hold past its expiry is released first."""
        state = self._hold_state(self._check_hold_id(hold_id))
        if state["status"] == "open" and self._expired(state):
            self._release(state)
            state = self._hold_state(hold_id)
        return state

    def _release(self, state: Mapping[str, Any]) -> None:
        with contextlib.suppress(HoldError):  # settled meanwhile by someone else: nothing to release
            self._settle(state, "hold_expire", Decimal(0))

    def capture(self, hold_id: str, amount: Decimal | int | str | None = None) -> dict[str, Any]:
        """Pay the receiver ``amount`` (default: all) of an open hold; the rest goes
        back to the payer in the same batch. Retrying the same capture returns the
        hold; a capture after a void, expiry or another capture raises HoldError."""
        state = self._hold_state(self._check_hold_id(hold_id))
        total = Decimal(str(state["amount"]))
        value = total if amount is None else parse_amount(amount, None)
        if value > total:
            raise ValidationError(f"capture {json_amount(value)} exceeds the hold of {json_amount(total)}",
                                  field="amount", hold_amount=total)
        if state["status"] == "captured" and Decimal(str(state["captured"])) == value:
            return state
        if state["status"] != "open":
            raise HoldError(f"hold {hold_id} was already {state['status']}", reason="already_settled",
                            hold_id=hold_id, status=state["status"])
        if self._expired(state):
            self._release(state)
            raise HoldError(f"hold {hold_id} expired at {state['expires_at']}", reason="expired",
                            hold_id=hold_id, status="expired")
        self._settle(state, "hold_capture", value)
        return self._hold_state(hold_id)

    def void(self, hold_id: str) -> dict[str, Any]:
        """Return all of an open hold to the payer. Voiding a voided or expired hold
        returns it unchanged; voiding a captured one raises HoldError."""
        state = self._hold_state(self._check_hold_id(hold_id))
        if state["status"] in ("voided", "expired"):
            return state
        if state["status"] != "open":
            raise HoldError(f"hold {hold_id} was already {state['status']}", reason="already_settled",
                            hold_id=hold_id, status=state["status"])
        if self._expired(state):
            self._release(state)
        else:
            self._settle(state, "hold_void", Decimal(0))
        return self._hold_state(hold_id)

    def _sweep_lazily(self) -> None:
        if time.monotonic() - self._last_sweep >= _SWEEP_MIN_INTERVAL:
            self.release_expired_holds(deep=False)

    def release_expired_holds(self, *, deep: bool = True) -> int:
        """Return the funds of every expired, unsettled hold to its payer; the number
        released. Runs lazily before balance, charge and hold operations, so callers
        never see funds held past expiry; call it explicitly from a timer if you like.

        Hold ids begin with their expiry, so the escrow accounts of expired holds
        are the key range up to "now": each sweep reads only the part of it that
        is new since the last one (the first sweep in a process reads it all), and
        ``deep`` sweeps re-read the last minute for holds that committed late.
        """
        with self._sweep_lock:
            self._last_sweep = time.monotonic()
            now = time.time()
            now_dt = datetime.fromtimestamp(now, UTC)
            hi = HOLD_PREFIX + expiry_key(now_dt) + "~"
            after = self._swept_to
            if after is not None and (deep or now - self._last_deep > _SWEEP_DEEP_EVERY):
                after = min(after, HOLD_PREFIX + expiry_key(now_dt - timedelta(seconds=_SWEEP_SKEW)))
                self._last_deep = now
            elif after is None:
                self._last_deep = now
            candidates = set(self._retry_release)
            size = 16 if after == self._swept_to else 1000  # the usual sweep reads a few rows
            for _ in range(1_000_000):  # bounded: pages of expired escrow accounts
                page = self.ledger.list_accounts(prefix=HOLD_PREFIX, after=after, limit=size)
                for acct in page:
                    if acct.account_id > hi:
                        break
                    if acct.balance > 0:
                        candidates.add(acct.account_id[len(HOLD_PREFIX):])
                if len(page) < size or page[-1].account_id > hi:
                    break
                after = page[-1].account_id
                size = 1000
            released = 0
            failed: set[str] = set()
            for hold_id in sorted(candidates):
                try:
                    state = self._hold_state(hold_id)
                    if state["status"] == "open" and self._expired(state, now_dt):
                        self._settle(state, "hold_expire", Decimal(0))
                        released += 1
                except HoldError:
                    pass  # settled by a racing capture, void or sweep
                except (StorageError, LedgerError):
                    failed.add(hold_id)
            self._retry_release = failed
            self._swept_to = hi if self._swept_to is None else max(self._swept_to, hi)
            return released

    # ----------------------------------------------------------------- refunds

    def _refunds_of(self, transfer_id: str) -> list[LedgerBatch]:
        out: dict[str, LedgerBatch] = {}
        cursor: int | None = None
        for _ in range(10_000):
            page = self.ledger.list_entries(reference=f"refund:{transfer_id}", cursor=cursor, limit=200)
            for entry in page.items:
                # Only refunds: a caller's job id may equal the reference (charge job_id="refund:<id>").
                meta = entry.metadata
                if entry.batch_id not in out and meta.get("kind") == "refund" and meta.get("refunds") == transfer_id:
                    out[entry.batch_id] = self.ledger.get_batch(entry.batch_id)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        return list(out.values())

    def get_refunds(self, transfer_id: str) -> list[dict[str, Any]]:
        """The refunds recorded against a transfer, oldest first."""
        tid = self._check_transfer_id(transfer_id)
        self.ledger.get_batch(tid)
        return [transfer_record(b) for b in self._refunds_of(tid)]

    def refund(
        self,
        transfer_id: str,
        amount: Decimal | int | str | None = None,
        reason: str | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Send back all (default: what is left) or part of a transfer or hold capture,
        from its receiver to its payer, as a new transfer that names the original.

        Refunds of one transfer are numbered: refund ``n`` is committed under the
        engine key ``refund:<transfer_id>:<n>`` after reading refunds 1..n-1, so
        two concurrent refunds collide on the key, the loser re-reads and
        re-checks, and the total refunded can never exceed the original.
        ``idempotency_key`` makes a retried refund return the first one.
        """
        tid = self._check_transfer_id(transfer_id)
        reason_meta = note_meta(reason, "reason")
        requested = None if amount is None else parse_amount(amount, None)
        original = self.ledger.get_batch(tid)
        record = transfer_record(original)
        if record["kind"] not in _REFUNDABLE or record["to_account"] is None:
            raise ValidationError(f"a {record['kind']} cannot be refunded; only transfers and hold captures",
                                  field="transfer_id")
        meta0 = meta_of(original)
        payer = str(meta0.get("payer") if record["kind"] == "hold_capture" else record["from_account"])
        receiver = record["to_account"]
        paid = Decimal(str(record["amount"]))
        if paid <= 0:
            raise ValidationError("nothing was paid by this transfer", field="transfer_id")
        nonce = f"key:{idempotency_key}" if idempotency_key is not None else uuid.uuid4().hex
        if idempotency_key is not None:
            user_key(idempotency_key)
        for _ in range(_REFUND_ATTEMPTS):
            prior = self._refunds_of(tid)
            for batch in prior:
                meta = meta_of(batch)
                if meta.get("nonce") == nonce:
                    done = transfer_record(batch)
                    if requested is not None and Decimal(str(done["amount"])) != requested:
                        raise IdempotencyConflictError(
                            f"idempotency key {idempotency_key!r} was used for a different refund",
                            idempotency_key=idempotency_key,
                        )
                    return done
            refunded = sum((Decimal(str(transfer_record(b)["amount"])) for b in prior), Decimal(0))
            remaining = paid - refunded
            if remaining <= 0:
                raise AlreadyReversedError(f"transfer {tid} was already refunded in full", batch_id=tid)
            value = remaining if requested is None else requested
            if value > remaining:
                raise ValidationError(
                    f"refund {json_amount(value)} exceeds the {json_amount(remaining)} not yet refunded",
                    field="amount", refundable=remaining,
                )
            n = len(prior) + 1
            meta = {"kind": "refund", "refunds": tid, "n": n, "nonce": nonce, "job_id": record["job_id"],
                    **reason_meta}
            try:
                batch = self.ledger.transfer(receiver, payer, value, reference=f"refund:{tid}", metadata=meta,
                                             idempotency_key=f"refund:{tid}:{n}")
            except IdempotencyConflictError:
                continue  # another refund took number n: re-read and re-check
            return transfer_record(batch)
        raise StorageError(f"refund of {tid} kept colliding with concurrent refunds; retry")
