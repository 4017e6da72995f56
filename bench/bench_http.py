"""Charges per second and latency through the HTTP API, against the same server
answering a trivial endpoint in the same run.

For each storage (embedded SQLite; PostgreSQL when ``LEDGER_BENCH_POSTGRES_URL``
names an admin connection: a database is created and dropped) and each worker
count (1 and 2), a real ``uvicorn mesh_fake_ledger.api:app`` is started with
uvloop + httptools (the pure-Python h11 stack stalls multi-worker servers on
Nagle/delayed-ACK), then a keep-alive load generator (raw HTTP/1.1 on asyncio)
drives, for ``--seconds`` each:

* ``GET /health``: a trivial endpoint (baseline: what the HTTP stack costs),
* ``POST /transfers``: a charge of 1 token with a unique ``job_id`` from one
  of 64 funded payers to one provider (an idempotent, Merkle-logged write).

Also measured in the same run, for scale: ``LedgerService.charge`` called
directly (one thread, no HTTP) on the same storage.

The machine's cores are shared by server and load generator: read the ratio
(charges / trivial) rather than the absolute figures.

    python bench/bench_http.py [--seconds 5] [--connections 16] [--update-docs]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from docs_section import replace_section
from pg_scratch import scratch_database

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmarks.md"
SECTION = "## HTTP API"
PAYERS = 64


@dataclass
class Result:
    label: str
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def server(database_url: str, workers: int, tmp: Path) -> Iterator[str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    env.update(LEDGER_DATABASE_URL=database_url, PYTHONPATH=str(ROOT / "src"))
    log = open(tmp / f"uvicorn-{port}.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "mesh_fake_ledger.api:app", "--host", "127.0.0.1", "--port", str(port),
         "--workers", str(workers), "--loop", "uvloop", "--http", "httptools", "--no-access-log",
         "--log-level", "warning"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            if proc.poll() is not None:
                raise RuntimeError((tmp / f"uvicorn-{port}.log").read_text())
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            time.sleep(0.1)
        else:
            raise RuntimeError("server did not start")
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def get_request(path: str) -> Callable[[int, int], bytes]:
    raw = f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
    return lambda _conn, _i: raw


def charge_request(tag: str) -> Callable[[int, int], bytes]:
    def make(conn: int, i: int) -> bytes:
        body = json.dumps({"from_account": f"payer{(conn * 7 + i) % PAYERS}", "to_account": "provider",
                           "amount": 1, "job_id": f"{tag}-{conn}-{i}"}).encode()
        return (b"POST /transfers HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    return make


async def _connection(port: int, conn: int, make: Callable[[int, int], bytes], warm_until: float, until: float,
                      latencies: list[float], errors: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = 0
    try:
        while True:
            start = time.perf_counter()
            if start >= until:
                return
            writer.write(make(conn, i))
            i += 1
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            end = time.perf_counter()
            if start >= warm_until:
                latencies.append(end - start)
                if head[9:10] not in (b"2",):
                    errors.append(int(head[9:12]))
    finally:
        writer.close()


def drive(url: str, label: str, make: Callable[[int, int], bytes], seconds: float, connections: int) -> Result:
    port = int(url.rsplit(":", 1)[1])
    latencies: list[float] = []
    errors: list[int] = []

    async def main() -> None:
        now = time.perf_counter()
        warm_until, until = now + 1.0, now + 1.0 + seconds
        await asyncio.gather(*(_connection(port, c, make, warm_until, until, latencies, errors)
                               for c in range(connections)))

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())
    latencies.sort()
    n = len(latencies)
    return Result(label, n, seconds, latencies[n // 2] * 1e3, latencies[min(n - 1, int(n * 0.99))] * 1e3,
                  len(errors))


def setup_accounts(url: str) -> None:
    with httpx.Client(base_url=url, timeout=30) as c:
        c.post("/accounts/provider/ensure", json={}).raise_for_status()
        for p in range(PAYERS):
            c.post(f"/accounts/payer{p}/ensure", json={"initial_balance": 10**9}).raise_for_status()


def direct_charges(database_url: str, seconds: float) -> float:
    """LedgerService.charge in this process, one thread: the ledger without HTTP."""
    sys.path.insert(0, str(ROOT / "src"))
    from mesh_fake_ledger import LedgerConfig, LedgerService

    with LedgerService(LedgerConfig(database_url=database_url)) as svc:
        svc.create_account_if_missing("dpayer", 10**9)
        svc.create_account_if_missing("provider")
        tag = uuid.uuid4().hex[:6]
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            svc.charge("dpayer", "provider", 1, job_id=f"direct-{tag}-{n}")
            n += 1
        return n / (time.perf_counter() - start)


def run(seconds: float, connections: int) -> tuple[list[list[str]], list[str]]:
    rows: list[list[str]] = []
    notes: list[str] = []
    storages: list[str] = ["sqlite"]
    pg_admin = os.environ.get("LEDGER_BENCH_POSTGRES_URL")
    if pg_admin:
        storages.append("postgresql")
    else:
        notes.append("PostgreSQL skipped: LEDGER_BENCH_POSTGRES_URL is not set.")
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        for storage in storages:
            for workers in (1, 2):
                with contextlib.ExitStack() as stack:
                    if storage == "sqlite":
                        db_url = f"sqlite:///{tmp / f'bench-{workers}.db'}"
                    else:
                        assert pg_admin is not None
                        db_url = stack.enter_context(scratch_database(pg_admin))
                    url = stack.enter_context(server(db_url, workers, tmp))
                    setup_accounts(url)
                    trivial = drive(url, "GET /health", get_request("/health"), seconds, connections)
                    charge = drive(url, "POST /transfers", charge_request(uuid.uuid4().hex[:6]), seconds,
                                   connections)
                    direct = direct_charges(db_url, min(seconds, 3.0)) if workers == 1 else None
                for r in (trivial, charge):
                    print(f"{storage:10} w={workers} {r.label:16} {r.rps:8.0f}/s p50 {r.p50_ms:6.2f} ms "
                          f"p99 {r.p99_ms:6.2f} ms errors {r.errors}", flush=True)
                rows.append([
                    storage, str(workers), f"{trivial.rps:,.0f}", f"{trivial.p99_ms:.1f}", f"{charge.rps:,.0f}",
                    f"{charge.p50_ms:.1f}", f"{charge.p99_ms:.1f}", f"{charge.rps / trivial.rps:.2f}",
                    f"{direct:,.0f}" if direct is not None else "",
                    str(trivial.errors + charge.errors),
                ])
    return rows, notes


def markdown(rows: list[list[str]], notes: list[str], command: str, seconds: float, connections: int) -> str:
    head = ["storage", "workers", "trivial GET /s", "trivial p99 ms", "charges /s", "charge p50 ms",
            "charge p99 ms", "charges / trivial", "direct charges /s (no HTTP, 1 thread)", "non-2xx"]
    lines = [
        SECTION,
        "",
        "Charges (`POST /transfers`, 1 token, unique `job_id`, 64 payers → 1 provider) against a trivial",
        "`GET /health` on the same server in the same run; uvicorn with uvloop + httptools;",
        f"{connections} keep-alive connections from one asyncio load generator on the same machine,",
        f"{seconds:g} s per measurement after 1 s warm-up. The load generator shares the cores with the",
        "server, so compare the ratio column, not absolute numbers across machines.",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {os.cpu_count()} cores, Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        *("| " + " | ".join(r) + " |" for r in rows),
    ]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--update-docs", action="store_true", help=f"rewrite the '{SECTION}' section of {DOCS}")
    args = parser.parse_args()
    command = "python bench/bench_http.py " + " ".join(sys.argv[1:])
    rows, notes = run(args.seconds, args.connections)
    section = markdown(rows, notes, command.strip(), args.seconds, args.connections)
    print()
    print(section)
    if args.update_docs:
        replace_section(SECTION, section)


if __name__ == "__main__":
    main()
