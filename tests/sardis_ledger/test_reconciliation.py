"""Blockchain reconciliation against a real JSON-RPC peer on 127.0.0.1.

The peer (``tests/chain_rpc_peer.py``) is an HTTP server speaking the Ethereum
JSON-RPC methods the reconciler uses, with canned Transfer logs; the client
side (httpx, filters, chunking, batching, errors) runs for real. Nothing here
contacts any non-loopback address.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import io
import itertools
import json
import socket
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from chain_rpc_peer import TRANSFER_TOPIC, USDC_BASE, ChainRpcPeer, address, tx_hash
from sardis_ledger import (
    ChainProvider,
    ChainProviderError,
    Ledger,
    LedgerEngine,
    ReconciliationEngine,
    ValidationError,
)

OURS = address(0xA11CE)
THEM = address(0xB0B)
USDC = 1_000_000  # raw units per token (6 decimals)

SEED_BLOCK = '''
from sardis_ledger import ReconciliationEngine, ChainProvider

reconciler = ReconciliationEngine(
    ledger=engine,
    chain_provider=ChainProvider(chain="base"),
)

# Run reconciliation
report = await reconciler.reconcile(
    start_block=1000000,
    end_block=1001000,
)

print(f"Matched: {report.matched_count}")
print(f"Discrepancies: {len(report.discrepancies)}")

for disc in report.discrepancies:
    print(f"  {disc.type}: {disc.description}")
'''
"""The sardis seed's "Blockchain Reconciliation" block, verbatim."""


@pytest.fixture
def peer() -> Iterator[ChainRpcPeer]:
    with ChainRpcPeer(chain_id=8453) as running:
        yield running


@pytest.fixture
def no_env_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SARDIS_CHAIN_RPC_URL", raising=False)


async def _deposit(engine: LedgerEngine, account: str, amount: str, **meta: Any) -> str:
    entry = await engine.create_entry(account_id=account, amount=Decimal(amount), entry_type="credit", metadata=meta)
    return entry.batch_id


def test_the_seed_block_runs_as_written(peer: ChainRpcPeer, monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        monkeypatch.setenv("SARDIS_CHAIN_RPC_URL", peer.url)
        peer.add_transfer(tx_hash(1), log_index=0, block=1_000_100, sender=THEM, receiver=OURS, value=25 * USDC)
        peer.add_transfer(tx_hash(2), log_index=4, block=1_000_200, sender=THEM, receiver=OURS, value=10_500_000)
        peer.add_transfer(tx_hash(3), log_index=1, block=1_000_300, sender=THEM, receiver=OURS, value=7 * USDC)
        peer.add_transfer(tx_hash(9), log_index=0, block=1_002_000, sender=THEM, receiver=OURS, value=1)  # out of range
        async with LedgerEngine("memory://") as engine:
            await _deposit(
                engine, "acc_123", "25", tx_hash=tx_hash(1), log_index=0, chain="base", block_number=1_000_100
            )
            await _deposit(engine, "acc_123", "10", tx_hash=tx_hash(2), block_number=1_000_200)
            await _deposit(engine, "acc_456", "3", tx_hash=tx_hash(4), block_number=1_000_400)
            await engine.create_entry(account_id="acc_456", amount=Decimal(1), entry_type="credit")  # not on chain
            ns: dict[str, Any] = {"engine": engine}
            out = io.StringIO()
            code = compile(SEED_BLOCK, "seed", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
            with contextlib.redirect_stdout(out):
                await eval(code, ns)
        lines = out.getvalue().splitlines()
        assert lines[:2] == ["Matched: 1", "Discrepancies: 3"]
        assert sorted(line.split(":")[0].strip() for line in lines[2:]) == [
            "amount_mismatch", "missing_in_ledger", "missing_on_chain",
        ]
        report = ns["report"]
        by_type = {d.type: d for d in report.discrepancies}
        assert (by_type["amount_mismatch"].ledger_amount, by_type["amount_mismatch"].chain_amount) == (
            Decimal(10), Decimal("10.5"),
        )
        assert by_type["missing_on_chain"].tx_hash == tx_hash(4)
        assert (by_type["missing_in_ledger"].tx_hash, by_type["missing_in_ledger"].log_index) == (tx_hash(3), 1)
        # one eth_getLogs for the range, filtered to the token and the Transfer event
        (flt,) = peer.calls("eth_getLogs")[0]
        assert (flt["fromBlock"], flt["toBlock"], flt["address"]) == (hex(1_000_000), hex(1_001_000), USDC_BASE)

    asyncio.run(scenario())



def test_every_kind_of_difference_and_what_is_left_out(peer: ChainRpcPeer) -> None:
    async def scenario() -> None:
        provider = ChainProvider(chain="base", rpc_url=peer.url)
        add = peer.add_transfer
        add(tx_hash(10), log_index=0, block=500, sender=THEM, receiver=OURS, value=5 * USDC)     # matched, exact
        add(tx_hash(11), log_index=2, block=510, sender=OURS, receiver=THEM, value=2 * USDC)     # matched by tx only
        add(tx_hash(11), log_index=3, block=510, sender=OURS, receiver=THEM, value=1 * USDC)     # ...its sibling log
        add(tx_hash(12), log_index=0, block=520, sender=THEM, receiver=OURS, value=9 * USDC)     # booked twice
        add(tx_hash(13), log_index=0, block=530, sender=THEM, receiver=OURS, value=4 * USDC)     # deposit reversed
        add(tx_hash(14), log_index=0, block=540, sender=THEM, receiver=address(7), value=USDC)   # not our wallets
        add(tx_hash(15), log_index=0, block=550, sender=THEM, receiver=OURS, value=USDC, removed=True)  # reorged out
        add(tx_hash(16), log_index=0, block=560, sender=THEM, receiver=OURS, value=USDC, token=address(0xDEAD))
        peer.receipts[tx_hash(20)] = 90_000  # an older deposit: its transaction is outside the range
        peer.receipts[tx_hash(21)] = 600     # in range, but no token transfer in it
        async with LedgerEngine("memory://") as engine:
            await _deposit(engine, "u1", "5", tx_hash=tx_hash(10), log_index=0)
            await engine.create_batch([
                {"account_id": "u1", "amount": 1, "entry_type": "debit", "metadata": {"tx_hash": tx_hash(11).upper()}},
                {"account_id": "fees", "amount": 1, "entry_type": "credit", "metadata": {"tx_hash": tx_hash(11)}},
            ])  # two legs naming one transfer count once; the amount picks log 3 of the two
            await _deposit(engine, "u2", "9", tx_hash=tx_hash(12), log_index=0)
            await _deposit(engine, "u3", "9", tx_hash=tx_hash(12), log_index=0)
            reversed_batch = await _deposit(engine, "u4", "4", tx_hash=tx_hash(13), log_index=0)
            await engine.rollback_batch(reversed_batch, reason="chargeback")
            await _deposit(engine, "u5", "8", tx_hash=tx_hash(20))
            await _deposit(engine, "u6", "6", tx_hash=tx_hash(21))
            await _deposit(engine, "u7", "3", tx_hash=tx_hash(22))                       # unknown to the chain
            await _deposit(engine, "u8", "2", tx_hash=tx_hash(23), block_number=99_999)  # another range
            await _deposit(engine, "u9", "2", tx_hash=tx_hash(24), chain="ethereum")     # another chain
            await _deposit(engine, "u9", "2", tx_hash="0x1234")                          # not a hash
            report = await ReconciliationEngine(engine, provider, addresses=[OURS]).reconcile(0, 1_000)

        assert sorted((m.tx_hash, m.log_index) for m in report.matched) == [
            (tx_hash(10), 0), (tx_hash(11), 3), (tx_hash(12), 0),
        ]
        found = sorted((d.type.value, d.tx_hash, d.log_index) for d in report.discrepancies)
        assert found == sorted([
            ("duplicate_in_ledger", tx_hash(12), 0),
            ("missing_in_ledger", tx_hash(11), 2),
            ("missing_in_ledger", tx_hash(13), 0),
            ("missing_on_chain", tx_hash(21), None),
            ("missing_on_chain", tx_hash(22), None),
            ("missing_on_chain", "0x1234", None),
        ])
        assert report.out_of_range == 2  # tx 20 (receipt in block 90000) and tx 23 (block_number 99999)
        # tx 14 is not to or from our wallets (the topic filter leaves it out); the removed
        # log and the other contract's event are not transfers of ours
        assert report.chain_transfers == 5
        assert report.ledger_items == 7  # tx 24 is on another chain, tx 13 cancelled, 20 and 23 out of range
        gone = next(d for d in report.discrepancies if d.tx_hash == tx_hash(22))
        assert "is not on chain base" in gone.description
        # our wallets are matched as sender (topic 1) and receiver (topic 2)
        positions = [(1 if f["topics"][1] else 2) for (f,) in peer.calls("eth_getLogs")]
        assert sorted(positions) == [1, 2]
        assert len(peer.calls("eth_getTransactionReceipt")) == 3  # one batch for txs 20, 21, 22
        body = json.dumps(report.to_dict())
        assert "e+" not in body
        assert report.to_dict()["matched_count"] == 3

    asyncio.run(scenario())



def test_ranges_are_chunked_and_split_when_the_endpoint_refuses(peer: ChainRpcPeer) -> None:
    async def scenario() -> None:
        peer.max_range = 300
        blocks = [0, 299, 300, 777, 1_234, 2_999, 3_000]
        for n, block in enumerate(blocks):
            peer.add_transfer(tx_hash(100 + n), log_index=n, block=block, sender=THEM, receiver=OURS, value=USDC)
        provider = ChainProvider(chain="base", rpc_url=peer.url, max_block_range=1_000)
        async with provider:
            transfers = await provider.get_transfers(0, 3_000)
        assert [t.block_number for t in transfers] == blocks
        for (flt,) in peer.calls("eth_getLogs"):
            assert int(flt["toBlock"], 16) - int(flt["fromBlock"], 16) < 1_000
        answered = [f for (f,) in peer.calls("eth_getLogs") if int(f["toBlock"], 16) - int(f["fromBlock"], 16) < 300]
        covered = sorted((int(f["fromBlock"], 16), int(f["toBlock"], 16)) for f in answered)
        assert covered[0][0] == 0
        assert covered[-1][1] == 3_000
        assert all(a[1] + 1 == b[0] for a, b in itertools.pairwise(covered))

    asyncio.run(scenario())



def test_token_decimals_and_latest_block(peer: ChainRpcPeer) -> None:
    async def scenario() -> None:
        token = address(0x7E57)
        peer.latest_block = 42
        peer.add_transfer(
            tx_hash(1), log_index=0, block=40, sender=THEM, receiver=OURS, value=123_000_000_000_000_001, token=token
        )
        provider = ChainProvider(chain="base", rpc_url=peer.url, token_address=token, token_decimals=18)
        async with LedgerEngine("memory://") as engine:
            await engine.register_asset("WETH", 18)
            await engine.create_entry(account_id="w", amount=Decimal("0.123000000000000001"), entry_type="credit",
                                      asset="WETH", metadata={"tx_hash": tx_hash(1), "log_index": "0x0"})
            report = await ReconciliationEngine(engine, provider, asset="WETH").reconcile(start_block=0)
        assert (report.end_block, report.matched_count, report.discrepancies) == (42, 1, [])
        assert report.matched[0].amount == Decimal("0.123000000000000001")

    asyncio.run(scenario())



@pytest.mark.usefixtures("no_env_url")
def test_configuration_errors_are_clear() -> None:
    with pytest.raises(ValidationError, match="SARDIS_CHAIN_RPC_URL"):
        ChainProvider(chain="base")
    with pytest.raises(ValidationError, match="unknown chain"):
        ChainProvider(chain="dogechain", rpc_url="http://127.0.0.1:1")
    with pytest.raises(ValidationError, match="token_address"):
        ChainProvider(chain="base", rpc_url="http://127.0.0.1:1", token_address="0xnope")
    with pytest.raises(ValidationError, match="http"):
        ChainProvider(chain="base", rpc_url="ftp://127.0.0.1/")
    ledger = Ledger("memory://")
    with pytest.raises(ValidationError, match="addresses"):
        ReconciliationEngine(ledger, ChainProvider(rpc_url="http://127.0.0.1:1"), addresses=["x"])
    with pytest.raises(ValidationError, match="LedgerEngine or a Ledger"):
        ReconciliationEngine(object(), ChainProvider(rpc_url="http://127.0.0.1:1"))  # type: ignore[arg-type]
    ledger.close()


def test_endpoint_failures_are_chain_provider_errors_without_secrets(peer: ChainRpcPeer) -> None:
    async def scenario() -> None:
        async with LedgerEngine("memory://") as engine:
            wrong_chain = ChainProvider(chain="ethereum", rpc_url=peer.url)
            with pytest.raises(ChainProviderError, match="serves chain id 8453, not ethereum"):
                await ReconciliationEngine(engine, wrong_chain).reconcile(0, 10)

            peer.fail_with["eth_getLogs"] = {"code": -32000, "message": "backend unavailable"}
            with pytest.raises(ChainProviderError, match="backend unavailable"):
                await ReconciliationEngine(engine, ChainProvider(rpc_url=peer.url)).reconcile(0, 10)

            with socket.socket() as s:  # a port on loopback that nothing listens on
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            dead = ChainProvider(rpc_url=f"http://127.0.0.1:{port}/v2/secret-api-key?key=hunter2")
            with pytest.raises(ChainProviderError) as caught:
                await ReconciliationEngine(engine, dead).reconcile(0, 10)
            assert "secret" not in str(caught.value)
            assert "hunter2" not in str(caught.value)
            assert f"127.0.0.1:{port}" in str(caught.value)

            with pytest.raises(ValidationError, match="start_block"):
                await ReconciliationEngine(engine, ChainProvider(rpc_url=peer.url)).reconcile(10, 5)
        # only the failing eth_getLogs reached the peer: Transfer events of the token, blocks 0-10
        assert peer.calls("eth_getLogs") == [
            [{"fromBlock": "0x0", "toBlock": "0xa", "address": USDC_BASE, "topics": [TRANSFER_TOPIC]}]
        ]

    asyncio.run(scenario())
