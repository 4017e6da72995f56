"""Review findings on write retries after a commit whose outcome was unknown."""

from __future__ import annotations

import psycopg
import pytest

from sardis_ledger import Ledger
from sardis_ledger._requests import transfer_request
from sardis_ledger.storage.postgresql import PostgresStorage, PostgresTransaction

pytestmark = pytest.mark.postgres


class _LostCommitAnswer(PostgresStorage):
    """Commits for real, then behaves as if the connection died before the answer."""

    lose_next = 0

    def _commit(self, tx: PostgresTransaction) -> None:
        super()._commit(tx)
        if self.lose_next:
            self.lose_next -= 1
            tx.conn.close()
            raise psycopg.OperationalError("server closed the connection unexpectedly")


def test_lost_commit_of_a_bulk_write_that_starts_with_a_replay_is_not_applied_twice(pg_url: str) -> None:
    """The retry must recognise its own commit even when the first request of the
    write was an idempotent replay (which stores no batch of its own)."""
    storage = _LostCommitAnswer(pg_url)
    with Ledger(storage=storage) as ledger:
        ledger.create_entry("alice", 100, "credit")
        first = ledger.transfer("alice", "bob", 10, idempotency_key="k1")
        replay = transfer_request("alice", "bob", 10, None, None).keyed("k1")
        fresh = transfer_request("alice", "carol", 5, None, None)
        again = transfer_request("alice", "bob", 10, None, None).keyed("k1")
        storage.lose_next = 1
        out = ledger._post([replay, fresh, again])
        assert storage.lose_next == 0
        assert ledger.get_balance("carol") == 5  # once, not twice
        assert ledger.get_balance("alice") == 85
        assert len(out) == 3
        assert out[0].batch_id == first.batch_id
        assert out[0].replayed
        assert out[1].batch_id == fresh.batch_id
        assert not out[1].replayed
        assert [e.account_id for e in out[1].entries] == ["alice", "carol"]
        assert out[2].batch_id == first.batch_id
        assert out[2].replayed
        assert ledger.verify().ok
