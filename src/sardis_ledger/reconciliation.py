"""Blockchain reconciliation: the ledger's on-chain movements against the chain.

Why: a ledger that mirrors token movements on a chain (deposits arriving at a
wallet, withdrawals leaving it) is only right if every such entry has its
transfer on chain, with the same amount, and every transfer to or from our
wallets has its entry. :class:`ReconciliationEngine` checks both directions
over a block range and reports each difference as data (like beancount's
errors), so one run lists every problem instead of stopping at the first.

The ledger side is every entry whose metadata carries ``tx_hash`` (optionally
``log_index``, ``chain`` and ``block_number``)::

    await engine.create_entry(account_id="acc_123", amount=Decimal("25"), entry_type="credit",
                              metadata={"tx_hash": "0x…", "log_index": 3, "chain": "base",
                                        "block_number": 1000123})

The legs of one batch that name the same transfer count once; a batch that was
rolled back, and its reversal, no longer represent the transfer. The chain side
is the ERC-20 ``Transfer`` events of one token (default: USDC on the chosen
chain) read with ``eth_getLogs`` over JSON-RPC, limited to ``addresses`` (our
wallets) when given. Discrepancy types:

==================== ==========================================================
``missing_on_chain``  an entry names a transfer the range does not hold (its
                      block is in range, or its transaction does not exist)
``missing_in_ledger`` a transfer in range that no entry names
``amount_mismatch``   entry and transfer disagree on the amount (the raw
                      uint256 scaled by the token's ``decimals``)
``duplicate_in_ledger`` a second batch names a transfer another batch matched
==================== ==========================================================

Entries without ``block_number`` that match nothing in range are looked up
with ``eth_getTransactionReceipt``: outside the range they are skipped (counted
in ``report.out_of_range``), so record ``block_number`` to save those calls.

The RPC endpoint is ``rpc_url=`` or the ``SARDIS_CHAIN_RPC_URL`` environment
variable; errors from it are :class:`ChainProviderError` and never show the
URL's path or query (providers put API keys there).
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .errors import LedgerError, ValidationError, json_amount

if TYPE_CHECKING:
    import httpx

    from .core import Ledger
    from .engine import LedgerEngine

__all__ = [
    "CHAIN_IDS",
    "RPC_URL_ENV",
    "ChainProvider",
    "ChainProviderError",
    "ChainTransfer",
    "Discrepancy",
    "DiscrepancyType",
    "ReconciliationEngine",
    "ReconciliationMatch",
    "ReconciliationReport",
]

RPC_URL_ENV = "SARDIS_CHAIN_RPC_URL"

CHAIN_IDS: Mapping[str, int] = {
    "ethereum": 1, "mainnet": 1, "sepolia": 11155111,
    "base": 8453, "base-sepolia": 84532,
    "optimism": 10, "arbitrum": 42161, "polygon": 137,
}
"""Chain names accepted by :class:`ChainProvider` and their EIP-155 chain ids."""

_USDC: Mapping[int, str] = {
    1: "0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48",
    11155111: "0x1c7d4b196cb0c7b01d743fbc6116a902379c7238",
    8453: "0x833589fcd6edb6e08f4c7c32d4f71b54bda02913",
    84532: "0x036cbd53842c5426634e7929541ec2318f3dcf7e",
    10: "0x0b2c639c533813f4aa9d7837caf62653d097ff85",
    42161: "0xaf88d065e77c8cc2239327c5edb3a432268e5831",
    137: "0x3c499c542cef5e3811e1192ce70d8cc03d5c3359",
}
"""Circle's native USDC contract per chain id: the default token (6 decimals)."""

TRANSFER_TOPIC = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
"""keccak256("Transfer(address,address,uint256)")."""

_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_TX_HASH = re.compile(r"0x[0-9a-fA-F]{64}")
_RANGE_ERRORS = ("range", "limit", "too many", "exceed", "10000", "response size")
_MAX_SPLITS = 10_000


class ChainProviderError(LedgerError):
    """The chain's JSON-RPC endpoint failed, refused, or answered nonsense."""

    code = "chain_provider_error"


class DiscrepancyType(StrEnum):
    MISSING_ON_CHAIN = "missing_on_chain"
    MISSING_IN_LEDGER = "missing_in_ledger"
    AMOUNT_MISMATCH = "amount_mismatch"
    DUPLICATE_IN_LEDGER = "duplicate_in_ledger"


@dataclass(frozen=True, slots=True)
class ChainTransfer:
    """One ERC-20 ``Transfer`` event: ``value`` is the raw uint256, ``amount`` it scaled."""

    tx_hash: str
    log_index: int
    block_number: int
    token: str
    from_address: str
    to_address: str
    value: int
    amount: Decimal


@dataclass(frozen=True, slots=True)
class Discrepancy:
    type: DiscrepancyType
    description: str
    tx_hash: str | None = None
    log_index: int | None = None
    block_number: int | None = None
    ledger_amount: Decimal | None = None
    chain_amount: Decimal | None = None
    batch_id: str | None = None
    entry_ids: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type.value, "description": self.description, "tx_hash": self.tx_hash,
            "log_index": self.log_index, "block_number": self.block_number,
            "ledger_amount": None if self.ledger_amount is None else json_amount(self.ledger_amount),
            "chain_amount": None if self.chain_amount is None else json_amount(self.chain_amount),
            "batch_id": self.batch_id, "entry_ids": list(self.entry_ids),
        }


@dataclass(frozen=True, slots=True)
class ReconciliationMatch:
    tx_hash: str
    log_index: int
    block_number: int
    amount: Decimal
    batch_id: str


@dataclass(slots=True)
class ReconciliationReport:
    chain: str
    chain_id: int
    token: str
    start_block: int
    end_block: int
    matched: list[ReconciliationMatch] = field(default_factory=list)
    discrepancies: list[Discrepancy] = field(default_factory=list)
    chain_transfers: int = 0
    ledger_items: int = 0
    out_of_range: int = 0
    """Ledger items whose transaction is in a block outside the range (not judged)."""

    @property
    def matched_count(self) -> int:
        return len(self.matched)

    @property
    def ok(self) -> bool:
        return not self.discrepancies

    def to_dict(self) -> dict[str, Any]:
        return {
            "chain": self.chain, "chain_id": self.chain_id, "token": self.token,
            "start_block": self.start_block, "end_block": self.end_block,
            "matched_count": self.matched_count, "chain_transfers": self.chain_transfers,
            "ledger_items": self.ledger_items, "out_of_range": self.out_of_range,
            "discrepancies": [d.to_dict() for d in self.discrepancies],
        }


def _safe_url(url: str) -> str:
    """Scheme and host only: RPC URLs carry API keys in their path or query."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '?'}{f':{parts.port}' if parts.port else ''}"


def _int(value: object, what: str) -> int:
    if isinstance(value, str) and value.startswith("0x"):
        try:
            return int(value, 16)
        except ValueError:
            pass
    raise ChainProviderError(f"the chain answered a malformed {what}: {str(value)[:80]!r}")


class ChainProvider:
    """ERC-20 transfers of one token on one chain, over Ethereum JSON-RPC (httpx).

    ``rpc_url`` defaults to ``$SARDIS_CHAIN_RPC_URL``. ``token_address`` defaults
    to USDC on ``chain``; ``token_decimals`` to 6 (USDC's). ``max_block_range``
    bounds each ``eth_getLogs`` call (providers cap it); a range the endpoint
    still refuses as too large is split in halves.
    """

    def __init__(
        self,
        chain: str = "base",
        *,
        rpc_url: str | None = None,
        token_address: str | None = None,
        token_decimals: int | None = None,
        max_block_range: int = 2_000,
        timeout: float = 30.0,
    ) -> None:
        if not isinstance(chain, str) or chain.lower() not in CHAIN_IDS:
            raise ValidationError(
                f"unknown chain {chain!r}; use one of: {', '.join(sorted(CHAIN_IDS))}", field="chain"
            )
        self.chain = chain.lower()
        self.chain_id = CHAIN_IDS[self.chain]
        url = rpc_url if rpc_url is not None else os.environ.get(RPC_URL_ENV, "")
        if not url:
            raise ValidationError(
                f"no JSON-RPC endpoint for chain {self.chain!r}: pass rpc_url= or set the {RPC_URL_ENV} "
                "environment variable (e.g. https://mainnet.base.org)",
                field="rpc_url",
            )
        if urlsplit(url).scheme not in ("http", "https"):
            raise ValidationError(f"{RPC_URL_ENV} must be an http(s) URL, got {_safe_url(url)}", field="rpc_url")
        self.rpc_url = url
        token = token_address if token_address is not None else _USDC.get(self.chain_id)
        if token is None or not _ADDRESS.fullmatch(token):
            raise ValidationError("token_address must be a 0x-prefixed 20-byte hex address", field="token_address")
        self.token_address = token.lower()
        decimals = 6 if token_decimals is None else token_decimals
        if isinstance(decimals, bool) or not isinstance(decimals, int) or not 0 <= decimals <= 36:
            raise ValidationError("token_decimals must be an integer from 0 to 36", field="token_decimals")
        self.token_decimals = decimals
        if isinstance(max_block_range, bool) or not isinstance(max_block_range, int) or max_block_range < 1:
            raise ValidationError("max_block_range must be a positive integer", field="max_block_range")
        self.max_block_range = max_block_range
        self.timeout = timeout
        self._client: httpx.AsyncClient | None = None
        self._depth = 0
        self._next_id = 0
        self._checked_chain = False

    # -------------------------------------------------------------- transport

    async def __aenter__(self) -> ChainProvider:
        """Keep one HTTP connection pool open until the matching exit (nestable)."""
        import httpx

        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout)
        self._depth += 1
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth <= 0:
            self._depth = 0
            await self.aclose()

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def _post(self, body: Any) -> Any:
        import httpx

        where = _safe_url(self.rpc_url)
        try:
            if self._client is not None:
                response = await self._client.post(self.rpc_url, json=body)
            else:
                async with httpx.AsyncClient(timeout=self.timeout) as client:
                    response = await client.post(self.rpc_url, json=body)
        except httpx.HTTPError as exc:
            raise ChainProviderError(f"JSON-RPC request to {where} failed: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise ChainProviderError(f"JSON-RPC endpoint {where} answered HTTP {response.status_code}")
        try:
            return response.json()
        except ValueError:
            raise ChainProviderError(f"JSON-RPC endpoint {where} answered something that is not JSON") from None

    def _request(self, method: str, params: list[Any]) -> dict[str, Any]:
        self._next_id += 1
        return {"jsonrpc": "2.0", "id": self._next_id, "method": method, "params": params}

    @staticmethod
    def _result(reply: Any, method: str) -> Any:
        if not isinstance(reply, dict):
            raise ChainProviderError(f"{method}: malformed JSON-RPC reply")
        error = reply.get("error")
        if error is not None:
            message = str(error.get("message", error) if isinstance(error, dict) else error)[:200]
            code = error.get("code") if isinstance(error, dict) else None
            raise ChainProviderError(f"{method} failed: {message}", rpc_code=code)
        if "result" not in reply:
            raise ChainProviderError(f"{method}: JSON-RPC reply without a result")
        return reply["result"]

    async def call(self, method: str, params: list[Any]) -> Any:
        """One JSON-RPC call; its ``result``, or ChainProviderError."""
        return self._result(await self._post(self._request(method, params)), method)

    async def call_batch(self, method: str, params_list: Sequence[list[Any]]) -> list[Any]:
        """Several calls of one method in one JSON-RPC batch, results in order."""
        if not params_list:
            return []
        requests = [self._request(method, p) for p in params_list]
        replies = await self._post(requests)
        if not isinstance(replies, list):
            replies = [replies]
        by_id = {r.get("id"): r for r in replies if isinstance(r, dict)}
        return [self._result(by_id.get(req["id"]), method) for req in requests]

    # ---------------------------------------------------------------- queries

    async def block_number(self) -> int:
        """The chain's latest block (``eth_blockNumber``)."""
        return _int(await self.call("eth_blockNumber", []), "block number")

    async def check_chain(self) -> None:
        """Refuse an endpoint that serves another chain than the one named."""
        if self._checked_chain:
            return
        got = _int(await self.call("eth_chainId", []), "chain id")
        if got != self.chain_id:
            raise ChainProviderError(
                f"{_safe_url(self.rpc_url)} serves chain id {got}, not {self.chain} ({self.chain_id})"
            )
        self._checked_chain = True

    async def get_transfers(
        self, start_block: int, end_block: int, addresses: Iterable[str] | None = None
    ) -> list[ChainTransfer]:
        """Transfer events of the token in ``[start_block, end_block]``, to or from
        any of ``addresses`` when given, ordered by block and log index."""
        topic_sets: list[list[Any]] = [[TRANSFER_TOPIC]]
        if addresses is not None:
            padded = sorted({"0x" + "0" * 24 + a.lower()[2:] for a in addresses})
            if not padded:
                return []
            topic_sets = [[TRANSFER_TOPIC, padded], [TRANSFER_TOPIC, None, padded]]
        found: dict[tuple[str, int], ChainTransfer] = {}
        for topics in topic_sets:
            for lo in range(start_block, end_block + 1, self.max_block_range):
                hi = min(lo + self.max_block_range - 1, end_block)
                for log in await self._logs(lo, hi, topics):
                    t = self._transfer(log)
                    if t is not None:
                        found[(t.tx_hash, t.log_index)] = t
        return sorted(found.values(), key=lambda t: (t.block_number, t.log_index))

    async def _logs(self, lo: int, hi: int, topics: list[Any]) -> list[Any]:
        pending = [(lo, hi)]
        out: list[Any] = []
        for _ in range(_MAX_SPLITS):
            if not pending:
                return out
            a, b = pending.pop()
            params = [{"fromBlock": hex(a), "toBlock": hex(b), "address": self.token_address, "topics": topics}]
            try:
                logs = await self.call("eth_getLogs", params)
            except ChainProviderError as exc:
                if b > a and any(word in exc.message.lower() for word in _RANGE_ERRORS):
                    mid = (a + b) // 2
                    pending += [(mid + 1, b), (a, mid)]
                    continue
                raise
            if not isinstance(logs, list):
                raise ChainProviderError("eth_getLogs: the result is not a list")
            out += logs
        raise ChainProviderError(f"eth_getLogs: gave up splitting blocks {lo}-{hi} into small enough ranges")

    def _transfer(self, log: Any) -> ChainTransfer | None:
        if not isinstance(log, dict):
            raise ChainProviderError("eth_getLogs: a log is not an object")
        if log.get("removed"):
            return None  # undone by a reorg
        topics = log.get("topics") or []
        if len(topics) != 3 or str(topics[0]).lower() != TRANSFER_TOPIC:
            return None  # not an ERC-20 Transfer (ERC-721 has 4 topics)
        if str(log.get("address", "")).lower() != self.token_address:
            return None  # another contract's event (a filter the endpoint ignored)
        tx_hash = str(log.get("transactionHash", "")).lower()
        if not _TX_HASH.fullmatch(tx_hash):
            raise ChainProviderError(f"eth_getLogs: malformed transaction hash {tx_hash[:80]!r}")
        value = _int(log.get("data"), "transfer value")
        return ChainTransfer(
            tx_hash=tx_hash,
            log_index=_int(log.get("logIndex"), "log index"),
            block_number=_int(log.get("blockNumber"), "block number"),
            token=str(log.get("address", "")).lower(),
            from_address="0x" + str(topics[1])[-40:].lower(),
            to_address="0x" + str(topics[2])[-40:].lower(),
            value=value,
            amount=Decimal(value).scaleb(-self.token_decimals),
        )

    async def transaction_blocks(self, tx_hashes: Sequence[str], chunk: int = 100) -> dict[str, int | None]:
        """Block number of each transaction (None: the chain does not know it)."""
        out: dict[str, int | None] = {}
        for i in range(0, len(tx_hashes), chunk):
            part = list(tx_hashes[i : i + chunk])
            receipts = await self.call_batch("eth_getTransactionReceipt", [[h] for h in part])
            for h, receipt in zip(part, receipts, strict=True):
                if receipt is None:
                    out[h] = None
                elif isinstance(receipt, dict):
                    out[h] = _int(receipt.get("blockNumber"), "receipt block number")
                else:
                    raise ChainProviderError("eth_getTransactionReceipt: malformed receipt")
        return out


# --------------------------------------------------------------------------- the ledger side


@dataclass(slots=True)
class _Item:
    """The entries of one batch that name one on-chain transfer."""

    batch_id: str
    tx_hash: str
    log_index: int | None
    block_number: int | None
    amount: Decimal
    entry_ids: list[str]
    valid: bool = True


def _meta_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value, 16) if value.startswith("0x") else int(value)
        except ValueError:
            return None
    return None


def _ledger_items(ledger: Ledger, chain: str, chain_id: int, asset: str | None) -> list[_Item]:
    """Every batch leg naming a transfer on this chain, read page by page;
    reversed batches and their reversals are left out (they cancel)."""
    items: dict[tuple[str, str, int | None], _Item] = {}
    reversed_ids: set[str] = set()
    reversal_ids: set[str] = set()
    cursor: int | None = None
    while True:
        page = ledger.list_entries(cursor=cursor, limit=1000)
        for e in page.items:
            if e.reverses is not None:
                reversed_ids.add(e.reverses)
                reversal_ids.add(e.batch_id)
            meta = e.metadata
            tx = meta.get("tx_hash")
            if not isinstance(tx, str) or (asset is not None and e.asset != asset):
                continue
            named = meta.get("chain")
            if named is not None and str(named).lower() not in (chain, str(chain_id)):
                continue
            key = (e.batch_id, tx.lower(), _meta_int(meta.get("log_index")))
            item = items.get(key)
            if item is None:
                items[key] = _Item(
                    e.batch_id, tx.lower(), key[2], _meta_int(meta.get("block_number")), e.amount, [e.entry_id],
                    bool(_TX_HASH.fullmatch(tx.lower())),
                )
            else:
                item.entry_ids.append(e.entry_id)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    skip = reversed_ids | reversal_ids
    return [i for i in items.values() if i.batch_id not in skip]


def _sync_ledger(ledger: Ledger | LedgerEngine) -> Ledger:
    from .core import Ledger
    from .engine import LedgerEngine

    if isinstance(ledger, LedgerEngine):
        return ledger.sync
    if isinstance(ledger, Ledger):
        return ledger
    raise ValidationError("ledger must be a LedgerEngine or a Ledger", field="ledger")


class ReconciliationEngine:
    """Compares a ledger with a chain over block ranges; see the module docstring.

    ``addresses`` (our wallets) limits the chain side to transfers to or from
    them; without it every transfer of the token in range must have an entry.
    ``asset`` limits the ledger side to entries of one ledger asset.
    """

    def __init__(
        self,
        ledger: Ledger | LedgerEngine,
        chain_provider: ChainProvider,
        *,
        addresses: Iterable[str] | None = None,
        asset: str | None = None,
    ) -> None:
        self.ledger = _sync_ledger(ledger)
        if not isinstance(chain_provider, ChainProvider):
            raise ValidationError("chain_provider must be a ChainProvider", field="chain_provider")
        self.chain_provider = chain_provider
        self.addresses: list[str] | None = None
        if addresses is not None:
            wallets = [addresses] if isinstance(addresses, str) else list(addresses)
            bad = [a for a in wallets if not isinstance(a, str) or not _ADDRESS.fullmatch(a)]
            if bad:
                raise ValidationError(f"addresses: {str(bad[0])[:60]!r} is not a 0x address", field="addresses")
            self.addresses = [a.lower() for a in wallets]
        self.asset = asset

    async def reconcile(self, start_block: int, end_block: int | None = None) -> ReconciliationReport:
        """Reconcile ``[start_block, end_block]`` (inclusive; default: up to the
        chain's latest block)."""
        for name, value in (("start_block", start_block), ("end_block", end_block)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValidationError(f"{name} must be a non-negative integer", field=name)
        if end_block is not None and start_block > end_block:
            raise ValidationError("start_block must not exceed end_block", field="start_block")
        provider = self.chain_provider
        async with provider:
            await provider.check_chain()
            if end_block is None:
                end_block = await provider.block_number()
                if start_block > end_block:
                    raise ValidationError(
                        f"start_block {start_block} is after the chain's latest block {end_block}", field="start_block"
                    )
            chain_side, ledger_side = await asyncio.gather(
                provider.get_transfers(start_block, end_block, self.addresses),
                asyncio.to_thread(_ledger_items, self.ledger, provider.chain, provider.chain_id, self.asset),
            )
            report = ReconciliationReport(
                provider.chain, provider.chain_id, provider.token_address, start_block, end_block,
                chain_transfers=len(chain_side),
            )
            unmatched = self._match(report, chain_side, ledger_side)
            await self._judge_unmatched(report, unmatched)
        return report

    def _match(
        self, report: ReconciliationReport, chain_side: list[ChainTransfer], ledger_side: list[_Item]
    ) -> list[_Item]:
        by_key = {(t.tx_hash, t.log_index): t for t in chain_side}
        by_tx: dict[str, list[ChainTransfer]] = {}
        for t in chain_side:
            by_tx.setdefault(t.tx_hash, []).append(t)
        claimed: dict[tuple[str, int], str] = {}
        unmatched: list[_Item] = []
        start, end = report.start_block, report.end_block
        in_scope = [
            i for i in ledger_side
            if i.tx_hash in by_tx or i.block_number is None or start <= i.block_number <= end
        ]
        report.ledger_items = len(in_scope)
        report.out_of_range = len(ledger_side) - len(in_scope)
        # Exact (tx_hash, log_index) names first, so a vaguer entry cannot take their transfer.
        for item in sorted(in_scope, key=lambda i: i.log_index is None):
            if not item.valid:
                report.discrepancies.append(Discrepancy(
                    DiscrepancyType.MISSING_ON_CHAIN,
                    f"batch {item.batch_id} names {item.tx_hash[:80]!r}, which is not a transaction hash",
                    item.tx_hash, item.log_index, item.block_number, item.amount, None, item.batch_id,
                    tuple(item.entry_ids),
                ))
                continue
            if item.log_index is not None:
                found = by_key.get((item.tx_hash, item.log_index))
            else:
                free = [t for t in by_tx.get(item.tx_hash, []) if (t.tx_hash, t.log_index) not in claimed]
                found = next((t for t in free if t.amount == item.amount), free[0] if free else None)
                if found is None and by_tx.get(item.tx_hash):
                    found = by_tx[item.tx_hash][0]  # every log of it is taken: a duplicate
            if found is None:
                unmatched.append(item)
                continue
            key = (found.tx_hash, found.log_index)
            owner = claimed.get(key)
            if owner is not None and owner != item.batch_id:
                report.discrepancies.append(Discrepancy(
                    DiscrepancyType.DUPLICATE_IN_LEDGER,
                    f"batch {item.batch_id} books transfer {found.tx_hash}#{found.log_index}, already booked by"
                    f" batch {owner}",
                    found.tx_hash, found.log_index, found.block_number, item.amount, found.amount, item.batch_id,
                    tuple(item.entry_ids),
                ))
                continue
            claimed[key] = item.batch_id
            if found.amount != item.amount:
                report.discrepancies.append(Discrepancy(
                    DiscrepancyType.AMOUNT_MISMATCH,
                    f"transfer {found.tx_hash}#{found.log_index} moved {found.amount}, batch {item.batch_id}"
                    f" books {item.amount}",
                    found.tx_hash, found.log_index, found.block_number, item.amount, found.amount, item.batch_id,
                    tuple(item.entry_ids),
                ))
            else:
                report.matched.append(ReconciliationMatch(
                    found.tx_hash, found.log_index, found.block_number, found.amount, item.batch_id
                ))
        for t in chain_side:
            if (t.tx_hash, t.log_index) not in claimed:
                report.discrepancies.append(Discrepancy(
                    DiscrepancyType.MISSING_IN_LEDGER,
                    f"transfer {t.tx_hash}#{t.log_index} in block {t.block_number} ({t.amount} from"
                    f" {t.from_address} to {t.to_address}) has no ledger entry",
                    t.tx_hash, t.log_index, t.block_number, None, t.amount,
                ))
        return unmatched

    async def _judge_unmatched(self, report: ReconciliationReport, unmatched: list[_Item]) -> None:
        """Entries that matched nothing: missing on chain if their block is in range
        or their transaction does not exist; skipped if it lives in another range."""
        unknown = sorted({i.tx_hash for i in unmatched if i.block_number is None})
        blocks = await self.chain_provider.transaction_blocks(unknown) if unknown else {}
        for item in unmatched:
            block = item.block_number if item.block_number is not None else blocks.get(item.tx_hash)
            if item.block_number is None and block is not None and not (
                report.start_block <= block <= report.end_block
            ):
                report.out_of_range += 1
                report.ledger_items -= 1
                continue
            where = (
                f"is not on chain {report.chain}" if block is None
                else f"has no matching transfer of {report.token} in block {block}"
            )
            named = item.tx_hash + (f"#{item.log_index}" if item.log_index is not None else "")
            report.discrepancies.append(Discrepancy(
                DiscrepancyType.MISSING_ON_CHAIN,
                f"batch {item.batch_id} books {item.amount} for transaction {named}, which {where}",
                item.tx_hash, item.log_index, block, item.amount, None, item.batch_id, tuple(item.entry_ids),
            ))
