"""Child processes for the concurrency and crash tests (run as a script, not collected).

``python engine_workers.py contend URL WORKER OPS`` races other workers for the
same accounts and prints one JSON line of what it got done.

``python engine_workers.py write URL`` appends batches until killed, printing
``ack <batch_id> <legs>`` only after each write has returned (committed).
"""

from __future__ import annotations

import json
import random
import sys
from decimal import Decimal

from sardis_ledger import InsufficientBalanceError, Ledger


def contend(url: str, worker: int, ops: int) -> None:
    rng = random.Random(worker)
    done = {"worker": worker, "spent": 0, "refused": 0, "credited": 0, "moved": 0, "entries": 0}
    with Ledger(url) as ledger:
        for i in range(ops):
            kind = i % 3
            if kind == 0:  # everyone spends from one small account: no overspend
                try:
                    ledger.create_entry("shared", 1, "debit")
                    done["spent"] += 1
                    done["entries"] += 1
                except InsufficientBalanceError:
                    done["refused"] += 1
            elif kind == 1:  # everyone credits one hot account: no lost update
                ledger.create_entry("hot", 1, "credit")
                done["credited"] += 1
                done["entries"] += 1
            else:  # transfers inside a closed group: conservation
                src, dst = rng.sample(["g0", "g1", "g2", "g3"], 2)
                try:
                    ledger.transfer(src, dst, Decimal(rng.randint(1, 30)))
                    done["moved"] += 1
                    done["entries"] += 2
                except InsufficientBalanceError:
                    done["refused"] += 1
    print(json.dumps(done), flush=True)


def write_until_killed(url: str) -> None:
    rng = random.Random()
    with Ledger(url) as ledger:
        for n in range(10**9):
            legs = rng.randint(2, 6)
            spec = [{"account_id": f"w{rng.randint(0, 9)}", "amount": rng.randint(1, 9), "entry_type": "credit"}
                    for _ in range(legs)]
            # a larger commit now and then: more time spent inside COMMIT, and more
            # entries than a bulk write builds before streaming them to the server
            batches = ledger.post_many([spec] * 100) if n % 4 == 3 else [ledger.create_batch(spec)]
            for b in batches:
                sys.stdout.write(f"ack {b.batch_id} {len(b.entries)}\n")
            sys.stdout.flush()


if __name__ == "__main__":
    if sys.argv[1] == "contend":
        contend(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif sys.argv[1] == "write":
        write_until_killed(sys.argv[2])
    else:
        raise SystemExit(f"unknown mode {sys.argv[1]!r}")
