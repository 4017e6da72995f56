"""Random credits, debits, transfers, batches, rollbacks and retries against a
reference model, on every backend of the ``backend_url`` fixture.

The model is a dict of balances and a list of batches; after every step each
balance, the log size and the floors must agree with it, and the audit must pass
at the end of each run. Every run uses account ids with a fresh prefix, so one
database serves all runs (PostgreSQL creates one database per test, not per run).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from sardis_ledger import (
    AccountNotFoundError,
    AlreadyReversedError,
    InsufficientBalanceError,
    Ledger,
    LedgerBatch,
    LedgerEntry,
    LedgerError,
)

ACCOUNTS = ["a", "b", "c", "d"]
OVERDRAFT = {"d": Decimal(50)}  # one account may go below zero, to its limit
amounts = st.one_of(
    st.integers(min_value=1, max_value=200).map(Decimal),
    st.integers(min_value=1, max_value=200_000_000).map(lambda u: Decimal(u).scaleb(-6)),
)
accounts = st.sampled_from(ACCOUNTS)
directions = st.sampled_from(["credit", "debit"])
_runs = itertools.count()


@dataclass
class Posted:
    batch_id: str
    legs: list[tuple[str, Decimal]]  # (local account, signed delta) in order
    key: str | None
    spec: object


def run_machine(url: str, examples: int = 30, steps: int = 25) -> None:
    ledger = Ledger(url)

    class LedgerMachine(RuleBasedStateMachine):
        batches = Bundle("batches")

        def __init__(self) -> None:
            super().__init__()
            self.prefix = f"sm{next(_runs)}x{id(self) % 9973}_"
            self.balances: dict[str, Decimal] = {}
            self.reversed: set[str] = set()
            self.start = ledger.tree_head().tree_size
            self.entries = 0
            self.keys = itertools.count()

        def acct(self, name: str) -> str:
            return self.prefix + name

        @initialize()
        def open_overdraft_account(self) -> None:
            for name, limit in OVERDRAFT.items():
                ledger.create_account(self.acct(name), overdraft_limit=limit)
                self.balances[name] = Decimal(0)

        # -- the model ------------------------------------------------------------

        def expect(self, legs: list[tuple[str, Decimal]]) -> type[LedgerError] | None:
            """The error the ledger must raise for these legs, or None: legs apply in order."""
            trial = dict(self.balances)
            for name, delta in legs:
                if name not in trial:
                    if delta < 0:
                        return AccountNotFoundError
                    trial[name] = Decimal(0)
                if trial[name] + delta < -OVERDRAFT.get(name, Decimal(0)):
                    return InsufficientBalanceError
                trial[name] += delta
            return None

        def apply(self, legs: list[tuple[str, Decimal]]) -> None:
            for name, delta in legs:
                self.balances[name] = self.balances.get(name, Decimal(0)) + delta
            self.entries += len(legs)

        def post(
            self, legs: list[tuple[str, Decimal]], write: Callable[[], LedgerBatch | LedgerEntry], spec: object,
            key: str | None,
        ) -> Posted | None:
            error = self.expect(legs)
            if error is not None:
                size = ledger.tree_head().tree_size
                try:
                    write()
                except error:
                    assert ledger.tree_head().tree_size == size
                    return None
                raise AssertionError(f"expected {error.__name__} for {legs}")
            written = write()  # a batch, or the entry of a one-leg write: both name their batch
            self.apply(legs)
            return Posted(written.batch_id, legs, key, spec)

        # -- rules ----------------------------------------------------------------

        @rule(target=batches, name=accounts, amount=amounts, direction=directions, keyed=st.booleans())
        def entry(self, name: str, amount: Decimal, direction: str, keyed: bool) -> Posted | None:
            key = f"{self.prefix}k{next(self.keys)}" if keyed else None
            delta = amount if direction == "credit" else -amount
            return self.post(
                [(name, delta)],
                lambda: ledger.create_entry(self.acct(name), amount, direction, idempotency_key=key),
                ("entry", name, amount, direction), key,
            )

        @rule(target=batches, src=accounts, dst=accounts, amount=amounts)
        def transfer(self, src: str, dst: str, amount: Decimal) -> Posted | None:
            if src == dst:
                return None
            return self.post(
                [(src, -amount), (dst, amount)],
                lambda: ledger.transfer(self.acct(src), self.acct(dst), amount),
                None, None,
            )

        @rule(target=batches, legs=st.lists(st.tuples(accounts, amounts, directions), min_size=1, max_size=5))
        def batch(self, legs: list[tuple[str, Decimal, str]]) -> Posted | None:
            spec = [{"account_id": self.acct(n), "amount": a, "entry_type": d} for n, a, d in legs]
            return self.post(
                [(n, a if d == "credit" else -a) for n, a, d in legs], lambda: ledger.create_batch(spec), None, None
            )

        @rule(posted=batches, reason=st.sampled_from(["refund", "error", "Customer requested refund"]))
        def rollback(self, posted: Posted | None, reason: str) -> None:
            if posted is None:
                return
            if posted.batch_id in self.reversed:
                try:
                    ledger.rollback_batch(posted.batch_id, reason)
                except AlreadyReversedError:
                    return
                raise AssertionError("a second rollback was accepted")
            legs = [(name, -delta) for name, delta in posted.legs]
            if self.expect(legs) is not None:
                try:
                    ledger.rollback_batch(posted.batch_id, reason)
                except InsufficientBalanceError:
                    return
                raise AssertionError("a rollback that overdraws was accepted")
            reversal = ledger.rollback_batch(posted.batch_id, reason)
            assert reversal.reverses == posted.batch_id
            assert [e.amount for e in reversal.entries] == [abs(d) for _, d in legs]
            self.apply(legs)
            self.reversed.add(posted.batch_id)

        @rule(posted=batches)
        def retry(self, posted: Posted | None) -> None:
            """An exact retry with the same key returns the original and writes nothing."""
            if posted is None or posted.key is None:
                return
            _, name, amount, direction = posted.spec  # type: ignore[misc]
            again = ledger.create_entry(self.acct(name), amount, direction, idempotency_key=posted.key)
            assert again.batch_id == posted.batch_id

        # -- invariants -----------------------------------------------------------

        @invariant()
        def balances_match_the_model(self) -> None:
            for name, expected in self.balances.items():
                assert ledger.get_balance(self.acct(name)) == expected, name
                assert expected >= -OVERDRAFT.get(name, Decimal(0))

        @invariant()
        def log_grew_by_the_entries_written(self) -> None:
            assert ledger.tree_head().tree_size == self.start + self.entries

        def teardown(self) -> None:
            report = ledger.verify()
            assert report.ok, report.problems

    try:
        run_state_machine_as_test(
            LedgerMachine,
            settings=settings(
                max_examples=examples, stateful_step_count=steps, deadline=None,
                suppress_health_check=[HealthCheck.too_slow], database=None,
            ),
        )
    finally:
        ledger.close()


def test_random_operations_match_the_model(backend_url: str) -> None:
    run_machine(backend_url)
