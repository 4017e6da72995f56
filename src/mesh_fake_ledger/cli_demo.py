"""``mesh-ledger demo``: the README's tour of the ledger over HTTP, narrated.

Starts ``mesh-ledger serve`` in a subprocess on 127.0.0.1 and a free port, on a
throwaway SQLite ledger (unless the user names one), walks through it with httpx
(accounts, a credit, a charged job and its idempotent retry, a 402 refusal with its
JSON body, history, balances) and stops the server. Kept apart from :mod:`.cli`
so the everyday commands neither load httpx nor grow past a readable size.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.json import JSON
from rich.table import Table
from rich.text import Text

from sardis_ledger.errors import StorageError

from .cli import Options, _amount_text, _dump, _history_table, _one_line, _stdout

__all__ = ["run_demo"]



def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class _DemoStep:
    title: str
    method: str
    path: str
    body: Any
    status: int
    response: Any


class _Demo:
    """A narrated walk through the HTTP API: each request and its answer are shown."""

    def __init__(self, base_url: str, opts: Options) -> None:
        import httpx

        self.client = httpx.Client(base_url=base_url, timeout=10.0)
        self.opts = opts
        self.console = _stdout(stderr=opts.json)
        self.steps: list[_DemoStep] = []

    def say(self, text: str) -> None:
        if not self.opts.json:
            self.console.print()
            self.console.rule(Text(text, style="bold"), align="left")

    def call(self, title: str, method: str, path: str, body: Any = None, *, show: bool = True) -> Any:
        response = self.client.request(method, path, json=body)
        try:
            payload = response.json()
        except ValueError:
            payload = response.text
        self.steps.append(_DemoStep(title, method, path, body, response.status_code, payload))
        if show and not self.opts.json:
            line = Text(f"{method} {path}", style="cyan")
            if body is not None:
                line.append(" " + _dump(body), style="dim")
            style = "green" if response.status_code < 300 else "yellow" if response.status_code < 500 else "red"
            line.append(f"  → {response.status_code} {response.reason_phrase}", style=style)
            self.console.print(line)
            if response.status_code >= 300:
                self.console.print(JSON(_dump(payload)))
        return payload

    def expect(self, expected: int | None = None) -> Any:
        """The last answer's body, if its status is ``expected`` (default: any 2xx)."""
        step = self.steps[-1]
        good = step.status == expected if expected is not None else 200 <= step.status < 300
        if not good:
            raise StorageError(
                f"demo: {step.method} {step.path} answered HTTP {step.status}, expected"
                f" {expected or '2xx'}: {_one_line(_dump(step.response))[:300]}"
            )
        return step.response

    def run(self) -> None:
        run = uuid.uuid4().hex[:6]
        self.say("1. Open accounts: a payer with 100 tokens and a provider with none")
        for acct, initial in (("alice", 100), ("provider", 0)):
            self.call(f"ensure {acct}", "POST", f"/accounts/{acct}/ensure", {"initial_balance": initial})
            self.expect()

        self.say("2. Grant alice 50 more tokens (admin credit)")
        self.call("credit alice", "POST", "/accounts/alice/credit", {"amount": 50, "reason": "welcome grant"})
        self.expect()

        self.say("3. Charge alice 30 tokens for a compute job")
        job = f"job_{run}"
        body = {"from_account": "alice", "to_account": "provider", "amount": 30, "job_id": job}
        self.call("charge job", "POST", "/transfers", body)
        self.expect()
        self.call("retry charge", "POST", "/transfers", body)
        self.expect()
        if not self.opts.json:
            first, retry = (self.steps[-2].response, self.steps[-1].response)
            same = isinstance(first, Mapping) and isinstance(retry, Mapping) and first.get("id") == retry.get("id")
            verdict = "returned the first transfer: charged once" if same else "made a second transfer!"
            self.console.print(Text(f"The retry with job_id {job} {verdict}", style="dim" if same else "bold red"))

        self.say("4. An overdraft is refused with HTTP 402 Payment Required")
        over = {"from_account": "alice", "to_account": "provider", "amount": 1000, "job_id": f"big_{run}"}
        self.call("overdraft", "POST", "/transfers", over)
        self.expect(402)

        self.say("5. History, most recent first")
        self.call("history", "GET", "/transfers?limit=10")
        records = self.expect()
        if not self.opts.json:
            self.console.print(_history_table(_items(records), "Transfers"))

        self.say("6. Balances")
        self.call("accounts", "GET", "/accounts")
        accounts = self.expect()
        if not self.opts.json:
            table = Table(title="Accounts", title_justify="left")
            table.add_column("Account", overflow="fold")
            table.add_column("Balance", justify="right", overflow="fold")
            for a in _items(accounts):
                table.add_row(Text(str(a.get("id", a.get("account_id")))), Text(_amount_text(a.get("balance"))))
            self.console.print(table)


def _items(payload: Any) -> list[Mapping[str, Any]]:
    """A list from an HTTP list answer, bare or wrapped (``{"transfers": [...]}``)."""
    if isinstance(payload, list):
        return [p for p in payload if isinstance(p, Mapping)]
    if isinstance(payload, Mapping):
        for value in payload.values():
            if isinstance(value, list):
                return [p for p in value if isinstance(p, Mapping)]
    return []


def _wait_ready(proc: subprocess.Popen[bytes], base_url: str, log: Path) -> None:
    import httpx

    for _ in range(300):  # bounded: ~30 s
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
            raise StorageError(f"the demo server exited with code {proc.returncode}: {_one_line(tail)}")
        try:
            if httpx.get(f"{base_url}/accounts", timeout=1.0).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise StorageError(f"the demo server did not answer at {base_url} within 30 s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def run_demo(opts: Options, *, keep_serving: bool = False) -> None:
    """Serve a ledger, tour it over HTTP, print the tour (or its JSON with ``--json``), stop."""
    with tempfile.TemporaryDirectory(prefix="mesh-ledger-demo-") as tmp:
        storage: list[str]
        if opts.database_url is not None:
            storage, shown = ["--database-url", opts.database_url], opts.database_url
        elif opts.ledger is not None:
            storage, shown = ["--ledger", str(opts.ledger)], str(opts.ledger)
        else:
            url = f"sqlite:///{Path(tmp) / 'demo.db'}"
            storage, shown = ["--database-url", url], url
        port = _free_port()
        base_url = f"http://127.0.0.1:{port}"
        log = Path(tmp) / "server.log"
        # Loopback only and no --insecure: without API keys the service answers local clients only.
        cmd = [sys.executable, "-m", "mesh_fake_ledger", "serve", "--host", "127.0.0.1", "--port", str(port)]
        cmd += storage
        with log.open("wb") as log_file:
            proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=os.environ.copy())  # noqa: S603
        try:
            _wait_ready(proc, base_url, log)
            tour = _Demo(base_url, opts)
            if not opts.json:
                tour.console.print(Text(f"Mesh ledger demo: HTTP API at {base_url}, storage {shown}", style="bold"))
            try:
                tour.run()
            finally:
                tour.client.close()
            if opts.json:
                sys.stdout.write(
                    _dump({"base_url": base_url, "storage": shown, "steps": [vars(s) for s in tour.steps]}) + "\n"
                )
            if keep_serving:
                _stdout(stderr=True).print(Text(f"Serving at {base_url} (Ctrl+C stops it)."))
                with contextlib.suppress(KeyboardInterrupt):
                    proc.wait()
        finally:
            _stop(proc)
