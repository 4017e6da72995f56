"""``python -m mesh_fake_ledger``: the ledger CLI (see :mod:`mesh_fake_ledger.cli`)."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main(prog_name="python -m mesh_fake_ledger"))
