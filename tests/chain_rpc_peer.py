"""A JSON-RPC protocol peer for tests: serves canned ERC-20 Transfer logs on 127.0.0.1.

It is not a chain and not a mock of httpx: it is a real HTTP server speaking
the Ethereum JSON-RPC methods the reconciler uses (``eth_chainId``,
``eth_blockNumber``, ``eth_getLogs`` with the address/topics/block-range filter
semantics of the spec, ``eth_getTransactionReceipt``, and batches), so the
client's requests, filters, chunking and error handling run for real. It only
ever binds the loopback interface.

    with ChainRpcPeer(chain_id=8453) as peer:
        peer.add_transfer(tx_hash, log_index=0, block=1_000_100, sender=a, receiver=b, value=25_000_000)
        os.environ["SARDIS_CHAIN_RPC_URL"] = peer.url
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["TRANSFER_TOPIC", "USDC_BASE", "ChainRpcPeer", "address", "tx_hash"]

TRANSFER_TOPIC = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
USDC_BASE = "0x833589fcd6edb6e08f4c7c32d4f71b54bda02913"


def address(n: int) -> str:
    return f"0x{n:040x}"


def tx_hash(n: int) -> str:
    return f"0x{n:064x}"


def _topic(addr: str) -> str:
    return "0x" + "0" * 24 + addr.lower()[2:]


class ChainRpcPeer:
    def __init__(self, chain_id: int = 8453, latest_block: int = 2_000_000, max_range: int | None = None) -> None:
        self.chain_id = chain_id
        self.latest_block = latest_block
        self.max_range = max_range
        self.logs: list[dict[str, Any]] = []
        self.receipts: dict[str, int] = {}
        self.requests: list[tuple[str, Any]] = []
        self.fail_with: dict[str, dict[str, Any]] = {}
        """method -> JSON-RPC error object to answer with."""
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def add_transfer(
        self, tx: str, *, log_index: int, block: int, sender: str, receiver: str, value: int,
        token: str = USDC_BASE, removed: bool = False,
    ) -> None:
        self.logs.append({
            "address": token, "topics": [TRANSFER_TOPIC, _topic(sender), _topic(receiver)],
            "data": f"0x{value:064x}", "blockNumber": hex(block), "transactionHash": tx,
            "logIndex": hex(log_index), "removed": removed,
        })
        self.receipts[tx] = block

    @property
    def url(self) -> str:
        assert self._server is not None, "start the peer first"
        return f"http://127.0.0.1:{self._server.server_address[1]}/v2/secret-api-key"

    def calls(self, method: str) -> list[Any]:
        with self._lock:
            return [params for m, params in self.requests if m == method]

    # ------------------------------------------------------------------ serving

    def _answer(self, request: Any) -> dict[str, Any]:
        rid = request.get("id") if isinstance(request, dict) else None
        method = request.get("method") if isinstance(request, dict) else None
        params = request.get("params", []) if isinstance(request, dict) else []
        with self._lock:
            self.requests.append((str(method), params))
        if method in self.fail_with:
            return {"jsonrpc": "2.0", "id": rid, "error": self.fail_with[method]}
        if method == "eth_chainId":
            result: Any = hex(self.chain_id)
        elif method == "eth_blockNumber":
            result = hex(self.latest_block)
        elif method == "eth_getTransactionReceipt":
            block = self.receipts.get(str(params[0]).lower())
            result = None if block is None else {
                "transactionHash": params[0], "blockNumber": hex(block), "status": "0x1",
            }
        elif method == "eth_getLogs":
            flt = params[0]
            lo, hi = int(flt["fromBlock"], 16), int(flt["toBlock"], 16)
            if self.max_range is not None and hi - lo + 1 > self.max_range:
                return {"jsonrpc": "2.0", "id": rid,
                        "error": {"code": -32005, "message": f"query exceeds max block range {self.max_range}"}}
            result = [log for log in self.logs if lo <= int(log["blockNumber"], 16) <= hi and _matches(log, flt)]
        else:
            return {"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": f"method {method} not found"}}
        return {"jsonrpc": "2.0", "id": rid, "result": result}

    def start(self) -> ChainRpcPeer:
        peer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
                reply = [peer._answer(r) for r in body] if isinstance(body, list) else peer._answer(body)
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> ChainRpcPeer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _matches(log: dict[str, Any], flt: dict[str, Any]) -> bool:
    """The eth_getLogs filter: address (one or a list), topics by position, where
    each position is null (any), one topic, or a list of alternatives."""
    want = flt.get("address")
    if want is not None:
        wanted = [want] if isinstance(want, str) else want
        if log["address"].lower() not in {w.lower() for w in wanted}:
            return False
    for position, topic in enumerate(flt.get("topics") or []):
        if topic is None:
            continue
        if position >= len(log["topics"]):
            return False
        options = [topic] if isinstance(topic, str) else topic
        if log["topics"][position].lower() not in {o.lower() for o in options}:
            return False
    return True

