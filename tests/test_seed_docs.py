"""Every code block of the seed documents, run as written: one test per block.

The seeds (``shared/seeds/*.md`` beside the repository) are the product's
contract: DESIGN.md says every code block in them must run. They are read at
test time, never copied into the repo, so the tests cannot drift from them. Test
ids name the document and section (``mesh_fake_ledger/cli-usage``), so a failure
says which promise is broken. Nothing is xfailed: a block that cannot pass yet
fails, and its message names what is missing.

How each kind of block runs:

* bash blocks of CLI commands run in bash (``set -e``) in a temp directory with
  ``python`` meaning this interpreter. ``cd c:\\…`` and ``pip install -r`` lines
  belong to the author's Windows checkout and are not run;
  ``pip install sardis-ledger[extra]`` checks the installed distribution declares
  that extra. A line commented ``# Should fail`` must exit 1 (a refusal).
* server blocks (uvicorn, ``python api.py``) are started on 127.0.0.1 (never
  0.0.0.0 in a test) on a free port and must answer ``GET /accounts``.
* curl and ``requests`` blocks run against a real uvicorn on 127.0.0.1 serving a
  ledger where the Quick Start's accounts exist (``localhost:8000`` rewritten to
  it); curl gets ``--fail-with-body``, so an HTTP error fails the block.
* python blocks are compiled with top-level await and run in an event loop. The
  placeholder ``"postgresql://..."`` becomes a real URL: SQLite in a temp dir, and
  PostgreSQL when reachable (``pg_url``). Only names a block leaves undefined are
  pre-defined (:data:`PRELUDE`); accounts a block debits before it credits them are
  funded first (:data:`FUNDING`). FastAPI apps a block defines are exercised with
  a real uvicorn on 127.0.0.1, the 402 path included (:data:`APP_CHECKS`); printed output is checked
  where the document shows what it should say (:data:`EXPECT`).
* the JSON data model is compared with the file the JSON backend writes, and the
  architecture tree with the package's modules.
"""

from __future__ import annotations

import ast
import asyncio
import builtins
import contextlib
import inspect
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

REPO = Path(__file__).resolve().parents[1]
SEEDS = REPO.parent / "shared" / "seeds"
BLOCK_TIMEOUT = 30.0
SERVER_START_TIMEOUT = 30.0


# --------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class Block:
    doc: str
    section: str
    label: str
    lang: str
    code: str
    line: int
    id: str = ""

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line} ({self.section})"


_FENCE = re.compile(r"^\s*(`{3,})\s*([\w+-]*)\s*$")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_BOLD_LABEL = re.compile(r"^\*\*(.+?):?\*\*:?\s*$")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def extract_blocks(path: Path) -> list[Block]:
    """Fenced code blocks of a markdown file, with the heading they sit under.

    A fence line with a language inside an open block means the open fence was a
    stray one (the mesh seed has a lone ``````` before "### HTTP API Usage"): the
    reader's intent is that prose follows, so the stray block is read as prose."""
    headings: dict[int, str] = {}
    last_prose = ""
    raw: list[tuple[str, str, str, list[str], int]] = []
    open_block: tuple[str, int, list[str], str, str] | None = None  # lang, line, lines, section, label

    def prose(line: str) -> None:
        nonlocal last_prose
        m = _HEADING.match(line)
        if m:
            level = len(m.group(1))
            headings[level] = m.group(2).strip()
            for deeper in [k for k in headings if k > level]:
                del headings[deeper]
            last_prose = ""
        elif line.strip():
            last_prose = line.strip()

    def start(lang: str, lineno: int) -> tuple[str, int, list[str], str, str]:
        section = headings[max(headings)] if headings else path.stem
        bold = _BOLD_LABEL.match(last_prose)
        return (lang, lineno, [], section, bold.group(1) if bold else "")

    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fence = _FENCE.match(line)
        if open_block is None:
            if fence:
                open_block = start(fence.group(2).lower(), lineno)
            else:
                prose(line)
            continue
        if fence and not fence.group(2):
            lang, first, lines, section, label = open_block
            raw.append((section, label, lang, lines, first))
            open_block = None
            last_prose = ""
        elif fence:
            for stray in open_block[2]:
                prose(stray)
            open_block = start(fence.group(2).lower(), lineno)
        else:
            open_block[2].append(line)

    blocks: list[Block] = []
    stem = path.stem
    counts: dict[str, int] = {}
    for section, label, _lang, _lines, _first in raw:
        key = _slug(section + " " + label)
        counts[key] = counts.get(key, 0) + 1
    seen: dict[str, int] = {}
    for section, label, lang, lines, first in raw:
        key = _slug(section + " " + label)
        seen[key] = seen.get(key, 0) + 1
        suffix = f"-{seen[key]}" if counts[key] > 1 else ""
        block_id = f"{stem}/{key}{suffix}"
        blocks.append(Block(path.name, section, label, lang, "\n".join(lines) + "\n", first + 1, block_id))
    return blocks


def _collect() -> list[Block]:
    if not SEEDS.is_dir():
        return []
    out: list[Block] = []
    for doc in sorted(SEEDS.glob("*.md")):
        out.extend(extract_blocks(doc))
    return out


BLOCKS = _collect()


def test_seed_documents_are_present() -> None:
    """Loud when the seeds are not beside the repository (every block test vanishes)."""
    if not SEEDS.is_dir():
        pytest.skip(f"SKIPPING ALL SEED-DOC TESTS: {SEEDS} does not exist (expected shared/seeds beside the repo)")
    assert BLOCKS, f"no code blocks found in {SEEDS}/*.md"


def test_stray_fence_is_read_as_prose() -> None:
    """The parser recovers the mesh seed's stray fence the way a reader does."""
    import tempfile

    text = "# T\n```python\nx = 1\n```\n\n```\n\n### Next\n\nStart:\n\n```bash\necho hi\n```\n"
    with tempfile.TemporaryDirectory() as tmp:
        doc = Path(tmp) / "d.md"
        doc.write_text(text)
        blocks = extract_blocks(doc)
    assert [(b.section, b.lang, b.code) for b in blocks] == [("T", "python", "x = 1\n"), ("Next", "bash", "echo hi\n")]


# --------------------------------------------------------------------- kinds


def _is_windows_cd(line: str) -> bool:
    return bool(re.match(r"^\s*cd\s+[A-Za-z]:\\", line))


def _code_lines(code: str) -> list[str]:
    return [ln for ln in code.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def kind_of(block: Block) -> str:
    if block.lang in ("json",):
        return "json-model"
    if block.lang in ("python", "py"):
        return "python-http" if "localhost:8000" in block.code else "python"
    if block.lang in ("", "text") and "├──" in block.code:
        return "tree"
    if block.lang in ("bash", "sh", "shell", "console", ""):
        lines = _code_lines(block.code)
        if lines and all(_is_windows_cd(ln) or re.match(r"^\s*pip install\b", ln) for ln in lines):
            return "install"
        if any("uvicorn" in ln or re.match(r"^\s*python\s+api\.py\b", ln) for ln in lines):
            return "server"
        if any(re.match(r"^\s*curl\b", ln) for ln in lines):
            return "curl"
        return "shell"
    return "unknown"


# --------------------------------------------------------------- processes


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEDGER_", "UVICORN_"))}
    env.update(extra)
    return env


def _stop(proc: subprocess.Popen[str]) -> None:
    """Stop the whole process group (a shell's children too), politely then firmly."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=15)
            return
        except subprocess.TimeoutExpired:
            continue


def _log_of(proc: subprocess.Popen[str]) -> str:
    log = getattr(proc, "log_path", None)
    return Path(log).read_text(errors="replace")[-2000:] if log and Path(log).exists() else ""


def _wait_http(proc: subprocess.Popen[str], port: int) -> str | None:
    """None once ``GET /accounts`` answers 200, else why not (bounded wait)."""
    import httpx

    deadline = time.monotonic() + SERVER_START_TIMEOUT
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"server exited with {proc.returncode}: {_log_of(proc)}"
        try:
            response = httpx.get(f"http://127.0.0.1:{port}/accounts", timeout=2.0)
        except httpx.TransportError as exc:
            last = repr(exc)
            time.sleep(0.1)
            continue
        if response.status_code == 200:
            return None
        return f"GET /accounts answered {response.status_code}: {response.text[:500]}"
    return f"server did not answer on port {port} within {SERVER_START_TIMEOUT} s ({last}): {_log_of(proc)}"


@contextlib.contextmanager
def _process(cmd: list[str], *, cwd: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    """A server process in its own group, its output in a file (a pipe nobody reads
    would fill and stall it)."""
    log_path = cwd / f"server-{time.monotonic_ns()}.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
    proc.log_path = log_path  # type: ignore[attr-defined]
    try:
        yield proc
    finally:
        _stop(proc)


def _seed_quick_start_accounts(ledger_path: Path) -> None:
    from mesh_fake_ledger import LedgerConfig, LedgerService

    service = LedgerService(LedgerConfig(ledger_path=ledger_path, database_url=None))
    try:
        service.create_account_if_missing("alice", initial_balance=100)
        service.create_account_if_missing("provider", initial_balance=0)
    finally:
        service.close()


@dataclass
class Server:
    base_url: str | None
    problem: str | None
    ledger_path: Path

    def require(self) -> str:
        if self.problem or not self.base_url:
            pytest.fail(f"the seed's HTTP API server could not be started: {self.problem}")
        return self.base_url


@pytest.fixture(scope="module")
def http_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The seed's way to serve: ``python -m uvicorn mesh_fake_ledger.api:app`` with
    ``LEDGER_PATH``, on 127.0.0.1 and a free port, over the Quick Start's accounts."""
    tmp = tmp_path_factory.mktemp("http")
    ledger_path = tmp / "ledger.json"
    try:
        _seed_quick_start_accounts(ledger_path)
    except Exception as exc:
        yield Server(None, f"could not create the Quick Start accounts in {ledger_path}: {exc!r}", ledger_path)
        return
    port = _free_port()
    cmd = [sys.executable, "-m", "uvicorn", "mesh_fake_ledger.api:app", "--host", "127.0.0.1", "--port", str(port)]
    with _process(cmd, cwd=tmp, env=_clean_env(LEDGER_PATH=str(ledger_path))) as proc:
        problem = _wait_http(proc, port)
        yield Server(None if problem else f"http://127.0.0.1:{port}", problem, ledger_path)


# ------------------------------------------------------------- bash blocks


def _bash_script(code: str, *, base_url: str | None = None, tmp: Path) -> str:
    """The block as a bash script: ``python`` is this interpreter, another machine's
    ``cd``/``pip install`` lines are comments, ``# Should fail`` must exit 1."""
    exe = shlex.quote(sys.executable)
    out = ["set -e"]
    for line in code.splitlines():
        stripped = line.strip()
        if _is_windows_cd(line) or re.match(r"^pip install\b", stripped):
            out.append(f"# doc-runner: not run here: {stripped}")
            continue
        line = re.sub(r"(^|[;&|]\s*)python(\s)", lambda m: m.group(1) + exe + m.group(2), line)
        line = line.replace("/path/to/", f"{tmp}/")
        if base_url:
            line = line.replace("http://localhost:8000", base_url)
        line = re.sub(r"^(\s*)curl\s", r"\1curl --fail-with-body -sS ", line)
        if re.search(r"#\s*should fail", line, re.IGNORECASE):
            command = line.split("#", 1)[0].strip()
            quoted = shlex.quote(command)
            line = (
                f"if {command}; then echo \"doc-runner: expected a refusal: \"{quoted} >&2; exit 97; "
                f"else rc=$?; if [ $rc -ne 1 ]; then echo \"doc-runner: expected exit 1, got $rc: \"{quoted} >&2; "
                "exit 98; fi; fi"
            )
        out.append(line)
    # An unquoted & in a URL backgrounds curl: wait for each job so its failure counts too.
    out.append(_WAIT_JOBS)
    return "\n".join(out) + "\n"


_WAIT_JOBS = 'for job in $(jobs -p); do wait "$job"; done'



def _run_bash(script: str, *, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert "Traceback" not in proc.stderr + proc.stdout, f"{proc.stdout}\n{proc.stderr}"
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\nscript:\n{script}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    )
    return proc


def run_install(block: Block) -> None:
    """``pip install sardis-ledger[extra]``: the installed distribution declares it."""
    checked = 0
    extras = set(metadata.metadata("sardis-ledger").get_all("Provides-Extra") or [])
    for line in _code_lines(block.code):
        m = re.match(r"^\s*pip install\s+([A-Za-z0-9_.-]+)(?:\[([\w,-]+)\])?\s*$", line)
        if not m:
            continue
        assert m.group(1) == "sardis-ledger", f"{block.where}: installs {m.group(1)!r}, not this distribution"
        metadata.version("sardis-ledger")
        for extra in (m.group(2) or "").split(","):
            if extra:
                assert extra in extras, f"extra [{extra}] is not declared (declared: {sorted(extras)})"
        checked += 1
    if not checked:
        pytest.skip(f"{block.where}: only the author's Windows checkout steps (cd c:\\…, pip install -r …)")


def run_shell(block: Block, tmp: Path) -> None:
    _run_bash(_bash_script(block.code, tmp=tmp), cwd=tmp, env=_clean_env())


def run_server(block: Block, tmp: Path) -> None:
    """Start the block's server on a free loopback port; it must answer GET /accounts."""
    port = _free_port()
    script = _bash_script(block.code, tmp=tmp).replace(_WAIT_JOBS, "")
    script = script.replace("--host 0.0.0.0", "--host 127.0.0.1")
    script = re.sub(r"--port\s+8000\b", f"--port {port}", script)
    package_dir = REPO / "src" / "mesh_fake_ledger"
    # The seed's "cd c:\mesh_idee\mesh_fake_ledger; python api.py" runs api.py from the package directory.
    script = script.replace(f"{shlex.quote(sys.executable)} api.py", f"cd {shlex.quote(str(package_dir))} && "
                            f"{shlex.quote(sys.executable)} api.py")
    # uvicorn's CLI reads UVICORN_*; api.py run as a script reads LEDGER_HOST / LEDGER_PORT.
    env = _clean_env(UVICORN_PORT=str(port), UVICORN_HOST="127.0.0.1", LEDGER_PORT=str(port), LEDGER_HOST="127.0.0.1")
    env.setdefault("LEDGER_PATH", str(tmp / "ledger.json"))
    with _process(["bash", "-c", script], cwd=tmp, env=env) as proc:
        problem = _wait_http(proc, port)
    assert problem is None, f"{block.where}: {problem}\nscript:\n{script}"


def run_curl(block: Block, server: Server, tmp: Path) -> None:
    _run_bash(_bash_script(block.code, base_url=server.require(), tmp=tmp), cwd=tmp, env=_clean_env())


# ------------------------------------------------------------ python blocks


class ScanJob(BaseModel):
    """The mesh seed's scan job (left undefined there)."""

    id: str
    target: str = "example.org"


class ComputeRequest(BaseModel):
    """The mesh seed's compute request (left undefined there)."""

    job_id: str
    units: int = 1


@dataclass
class Ctx:
    url: str
    tmp: Path
    closers: list[Any] = field(default_factory=list)


async def _engine(ctx: Ctx) -> Any:
    from sardis_ledger import LedgerEngine

    engine = LedgerEngine(database_url=ctx.url)
    ctx.closers.append(engine)
    return engine


async def _entry(ctx: Ctx) -> Any:
    """What the Quick Start made: a credit of 100.50 to acc_123."""
    from sardis_ledger import LedgerEntryType

    engine = await _engine(ctx)
    return await engine.create_entry(
        account_id="acc_123", amount=Decimal("100.50"), entry_type=LedgerEntryType.CREDIT, reference="payment_456"
    )


def _sardis(name: str) -> Callable[[Ctx], Any]:
    def get(_ctx: Ctx) -> Any:
        import sardis_ledger

        if not hasattr(sardis_ledger, name):
            raise AssertionError(f"sardis_ledger exports no {name!r} (a seed block uses it)")
        return getattr(sardis_ledger, name)

    return get


PRELUDE: dict[str, Callable[[Ctx], Any]] = {
    # mesh seed, "Integration in Services" and "Implementing 402 Payment Required"
    "ScanJob": lambda _: ScanJob,
    "estimate_cost": lambda _: lambda job: 10,
    "execute_scan": lambda _: lambda job: {"job_id": job.id, "findings": []},
    "ComputeRequest": lambda _: ComputeRequest,
    "calculate_cost": lambda _: lambda request: 10 * request.units,
    "execute_compute_job": lambda _: lambda request: {"job_id": request.job_id, "output": "ok"},
    # sardis seed: names its later blocks use from earlier ones
    "amount": lambda _: Decimal("25.00"),
    "Decimal": lambda _: Decimal,
    "LedgerEntryType": _sardis("LedgerEntryType"),
    "VerificationStatus": _sardis("VerificationStatus"),
    "engine": _engine,
    "entry": _entry,
}
"""Values for names a block uses but leaves undefined (and nothing else)."""

FUNDING: dict[str, dict[str, str]] = {
    "sardis_ledger/batch-processing": {"acc_sender": "500.00"},
    "sardis_ledger/row-level-locking": {"acc_123": "100.00"},
}
"""Balances a block assumes (it debits an account it never credits), set up first."""

@contextlib.contextmanager
def _chain_with_one_deposit(ctx: Ctx, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The reconciliation block's chain: a JSON-RPC peer on 127.0.0.1 (the chain is
    to it what the database URL is to the other blocks) with one USDC transfer in
    the block range, booked in the ledger as a deposit to acc_123."""
    from chain_rpc_peer import ChainRpcPeer, address, tx_hash

    with ChainRpcPeer(chain_id=8453) as peer:
        peer.add_transfer(
            tx_hash(1), log_index=0, block=1_000_100, sender=address(0xB0B), receiver=address(0xA11CE),
            value=25_000_000,
        )
        monkeypatch.setenv("SARDIS_CHAIN_RPC_URL", peer.url)
        _fund(
            ctx.url,
            {"acc_123": "25"},
            metadata={"tx_hash": tx_hash(1), "log_index": 0, "chain": "base", "block_number": 1_000_100},
        )
        yield


ENVIRONMENT: dict[str, Callable[[Ctx, pytest.MonkeyPatch], contextlib.AbstractContextManager[None]]] = {
    "sardis_ledger/blockchain-reconciliation": _chain_with_one_deposit,
}
"""Services a block talks to besides the ledger, set up around it."""

EXPECT: dict[str, list[str]] = {
    "mesh_fake_ledger/python-api-usage": [
        r"Transfer completed: \S+",
        r"Alice's balance: 90\b",
        r"alice → provider: 10\b",
    ],
    "mesh_fake_ledger/ledgerclient-usage-recommended": [r"Charged successfully: \S+"],
    "sardis_ledger/quick-start": [r"Entry ID: \S+", r"Balance: 100\.50?\b", r"Merkle Root: [0-9a-f]{64}"],
    "sardis_ledger/ledger-operations": [r"Current balance: 400(\.0+)?\b"],
    "sardis_ledger/batch-processing": [r"Batch ID: \S+", r"Entries: 2\b"],
    "sardis_ledger/blockchain-reconciliation": [r"Matched: 1\b", r"Discrepancies: 0\b"],
    "sardis_ledger/immutable-audit-trail-with-immudb": [r"Verified at: \S+", r"Merkle proof: "],
    "sardis_ledger/hybrid-ledger-postgresql-immudb": [r"PostgreSQL ID: \S+", r"immudb TX: \S+"],
}
"""What a block's output must say, where the document shows it."""

PG_ONLY = ("postgres_url=",)


def free_names(tree: ast.AST) -> set[str]:
    """Names a block reads but never binds (imports, assignments, defs, arguments)."""
    loaded: set[str] = set()
    bound: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (loaded if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bound.add(node.name)
        elif isinstance(node, ast.alias):
            bound.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    return loaded - bound - set(dir(builtins))


async def _namespace(block: Block, tree: ast.AST, ctx: Ctx) -> dict[str, Any]:
    ns: dict[str, Any] = {"__name__": "__seed_block__", "__builtins__": builtins}
    missing = []
    for name in sorted(free_names(tree)):
        provider = PRELUDE.get(name)
        if provider is None:
            missing.append(name)
            continue
        value = provider(ctx)
        ns[name] = await value if inspect.isawaitable(value) else value
    assert not missing, f"{block.where} uses names it never defines and the harness has no value for: {missing}"
    return ns


def _fund(url: str, balances: dict[str, str], metadata: dict[str, Any] | None = None) -> None:
    from sardis_ledger import Ledger

    with Ledger(url) as ledger:
        for account, value in balances.items():
            ledger.create_entry(account, Decimal(value), "credit", reference="doc-runner funding", metadata=metadata)


async def _close_all(ns: dict[str, Any], ctx: Ctx) -> None:
    """Close what the block opened so no connection leaks into later tests."""
    from mesh_fake_ledger import AsyncLedgerClient, LedgerClient, LedgerService
    from sardis_ledger import Ledger, LedgerEngine

    closable = (Ledger, LedgerEngine, LedgerService, LedgerClient, AsyncLedgerClient)
    for value in [*ns.values(), *ctx.closers]:
        closer = getattr(value, "aclose", None) or getattr(value, "close", None)
        if isinstance(value, closable) and closer is not None:
            result = closer()
            if inspect.isawaitable(result):
                await result


def run_python(
    block: Block, url: str, tmp: Path, base_url: str | None = None, monkeypatch: pytest.MonkeyPatch | None = None
) -> dict[str, Any]:
    """Run a python block as written (top-level await allowed) and return its namespace."""
    source = block.code.replace('"postgresql://..."', repr(url))
    if base_url:
        source = source.replace("http://localhost:8000", base_url)
    tree = ast.parse(source, filename=block.where)
    code = compile(tree, block.where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    if block.id in FUNDING:
        _fund(url, FUNDING[block.id])
    ctx = Ctx(url, tmp)
    with contextlib.ExitStack() as stack:
        if block.id in ENVIRONMENT:
            assert monkeypatch is not None
            stack.enter_context(ENVIRONMENT[block.id](ctx, monkeypatch))
        return _execute(block, tree, code, ctx)


def _execute(block: Block, tree: ast.AST, code: Any, ctx: Ctx) -> dict[str, Any]:
    """Async blocks run in one event loop with their prelude; sync blocks outside any
    loop (a sync API may start its own)."""

    async def run_async() -> dict[str, Any]:
        ns = await _namespace(block, tree, ctx)
        try:
            await asyncio.wait_for(eval(code, ns), timeout=BLOCK_TIMEOUT)
        finally:
            await _close_all(ns, ctx)
        return ns

    if code.co_flags & inspect.CO_COROUTINE:
        return asyncio.run(run_async())
    ns = asyncio.run(_namespace(block, tree, ctx))
    try:
        exec(code, ns)  # the documents' code, by design
    finally:
        if block.id not in APP_CHECKS:
            asyncio.run(_close_all(ns, ctx))
    return ns


# ---------------------------------------------------- FastAPI apps in the seed


@contextlib.contextmanager
def _serve_app(app: Any) -> Iterator[Any]:
    """A block's FastAPI app on a real uvicorn, 127.0.0.1 and a free port, in a
    thread of this process (the app lives in the block's namespace); yields an
    httpx client bound to it."""
    import threading

    import httpx
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=_free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while not server.started:
            assert thread.is_alive(), "uvicorn stopped while starting"
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10.0) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def _check_scan_service(ns: dict[str, Any]) -> None:
    """The seed's /scan service: charges per job, answers 402 with the error's JSON."""
    ledger = ns["ledger"]
    ledger.ensure_account("payer", initial_balance=15)
    ledger.ensure_account("provider", initial_balance=0)
    with _serve_app(ns["app"]) as client:
        ok = client.post("/scan", params={"payer": "payer", "provider": "provider"}, json={"id": "scan_1"})
        assert ok.status_code == 200, ok.text
        assert ok.json() == {"job_id": "scan_1", "findings": []}
        refused = client.post("/scan", params={"payer": "payer", "provider": "provider"}, json={"id": "scan_2"})
    assert refused.status_code == 402, refused.text
    body = refused.json()
    assert body["required_tokens"] == 10
    assert body["current_balance"] == 5
    assert body["account_id"] == "payer"
    assert ledger.get_balance("payer") == 5


def _check_compute_service(ns: dict[str, Any]) -> None:
    """The seed's /compute/run service: 402 when the user cannot pay, charge on success."""
    ledger = ns["ledger"]
    ledger.create_account_if_missing("user_1", initial_balance=15)
    ledger.create_account_if_missing("mesh_provider", initial_balance=0)
    with _serve_app(ns["app"]) as client:
        ok = client.post("/compute/run", params={"user_id": "user_1"}, json={"job_id": "c1"})
        assert ok.status_code == 200, ok.text
        assert ok.json() == {"result": {"job_id": "c1", "output": "ok"}, "charged": 10}
        refused = client.post("/compute/run", params={"user_id": "user_1"}, json={"job_id": "c2"})
    assert refused.status_code == 402, refused.text
    assert refused.json() == {"detail": "Insufficient balance. Required: 10"}
    assert ledger.get_balance("user_1") == 5
    assert ledger.get_balance("mesh_provider") == 10


APP_CHECKS: dict[str, Callable[[dict[str, Any]], None]] = {
    "mesh_fake_ledger/integration-in-services": _check_scan_service,
    "mesh_fake_ledger/implementing-402-payment-required": _check_compute_service,
}


# --------------------------------------------------------- data model, tree


def run_json_model(block: Block, tmp: Path) -> None:
    """The documented ledger.json shape is what the JSON backend writes after the
    Quick Start (alice 100, provider 0, alice pays provider 10 for job_123)."""
    from mesh_fake_ledger import LedgerConfig, LedgerService

    documented = json.loads(block.code)
    path = tmp / "ledger.json"
    service = LedgerService(LedgerConfig(ledger_path=path, database_url=None))
    try:
        service.create_account("alice", initial_balance=100)
        service.create_account("provider", initial_balance=0)
        service.transfer("alice", "provider", 10, job_id="job_123")
    finally:
        service.close()
    actual = json.loads(path.read_text(encoding="utf-8"))
    assert set(documented) <= set(actual), f"top-level keys: {sorted(actual)}"
    for account_id, doc_account in documented["accounts"].items():
        account = actual["accounts"][account_id]
        assert set(doc_account) <= set(account), f"{account_id}: {sorted(account)}"
        assert account["balance"] == doc_account["balance"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", account["created_at"])
    fields = ("from_account", "to_account", "amount", "job_id", "note")
    for doc_transfer in documented["transfers"]:
        matches = [t for t in actual["transfers"] if all(t.get(f) == doc_transfer[f] for f in fields)]
        assert matches, f"no transfer like {doc_transfer} in {actual['transfers']}"
        assert set(doc_transfer) <= set(matches[0])


def run_tree(block: Block) -> None:
    """The modules the architecture tree names exist in the package."""
    names = re.findall(r"([\w]+\.py)", block.code)
    assert names
    package = REPO / "src" / "sardis_ledger"
    missing = [n for n in names if not (package / n).exists()]
    assert not missing, f"{block.where} names modules that do not exist in {package}: {missing}"


# --------------------------------------------------------------------- tests


def _params() -> list[Any]:
    params: list[Any] = []
    for block in BLOCKS:
        kind = kind_of(block)
        # The engine's blocks run on every durable backend; the mesh's use its JSON file.
        if kind == "python" and ('"postgresql://..."' in block.code or block.doc.startswith("sardis")):
            backends = ["postgresql"] if any(p in block.code for p in PG_ONLY) else ["sqlite", "postgresql"]
            for backend in backends:
                marks = [pytest.mark.postgres] if backend == "postgresql" else []
                params.append(pytest.param(block, backend, id=f"{block.id}:{backend}", marks=marks))
        else:
            params.append(pytest.param(block, None, id=block.id))
    return params


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("block", "backend"), _params())
def test_seed_block(
    block: Block,
    backend: str | None,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    kind = kind_of(block)
    for name in [k for k in os.environ if k.startswith("LEDGER_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    if kind == "install":
        run_install(block)
    elif kind == "shell":
        run_shell(block, tmp_path)
    elif kind == "server":
        run_server(block, tmp_path)
    elif kind == "curl":
        run_curl(block, request.getfixturevalue("http_server"), tmp_path)
    elif kind == "json-model":
        run_json_model(block, tmp_path)
    elif kind == "tree":
        run_tree(block)
    elif kind in ("python", "python-http"):
        url = request.getfixturevalue("pg_url") if backend == "postgresql" else f"sqlite:///{tmp_path / 'doc.db'}"
        if backend is not None:
            monkeypatch.setenv("LEDGER_DATABASE_URL", url)  # a block that names no database uses the default
        server = request.getfixturevalue("http_server") if kind == "python-http" else None
        ns = run_python(block, url, tmp_path, base_url=server.require() if server else None, monkeypatch=monkeypatch)
        if block.id in APP_CHECKS:
            try:
                APP_CHECKS[block.id](ns)
            finally:
                asyncio.run(_close_all(ns, Ctx(url, tmp_path)))
        if kind == "python-http" and server is not None:
            _check_api_testing_state(server)
    else:
        pytest.fail(f"{block.where}: no runner for a {block.lang or 'plain'} block")
    output = capsys.readouterr().out
    for pattern in EXPECT.get(block.id, []):
        assert re.search(pattern, output), f"{block.where}: output lacks {pattern!r}:\n{output}"


def _check_api_testing_state(server: Server) -> None:
    """After the seed's requests block: its transfer is in the served ledger."""
    import httpx

    assert server.base_url
    transfers = httpx.get(f"{server.base_url}/transfers", params={"account": "alice", "limit": 100}).json()
    items = transfers if isinstance(transfers, list) else next(v for v in transfers.values() if isinstance(v, list))
    assert any(t.get("job_id") == "test_job" for t in items), items

