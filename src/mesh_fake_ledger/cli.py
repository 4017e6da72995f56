"""``python -m mesh_fake_ledger`` / ``mesh-ledger``: the ledger from a shell.

Every command of the seed's CLI reference (``create-account``, ``balance``,
``transfer``, ``history``, ``list-accounts``, ``credit``) plus ``serve`` (the
HTTP API) and ``demo`` (a narrated tour of the HTTP API against a throwaway
ledger). People get tables; scripts pass ``--json`` and get one JSON document on
stdout, for errors too.

Where the ledger lives: ``--database-url URL`` (default ``$LEDGER_DATABASE_URL``)
or ``--ledger PATH`` (default ``$LEDGER_PATH``, else ``ledger.json``). Both options,
and ``--json``/``--debug``, are accepted before or after the command name.

Exit codes are decided in one place, :func:`exit_code_for`, from the one error
tree in :mod:`sardis_ledger.errors`:

====  =====================================================================
0     success
1     refused: insufficient balance (402), unknown account, account exists,
      idempotency conflict, hold errors, ... (the request was understood)
2     usage or validation error: bad amount, bad id, bad option, bad URL
3     the ledger could not do it: storage or integrity failure, lock
      timeout, or an unexpected error (``--debug`` shows its traceback)
====  =====================================================================

A user never sees a traceback unless they pass ``--debug``.

Other typer apps (the audit commands) join the top level with
:func:`add_commands`; they can reuse :data:`LedgerOpt`, :data:`DatabaseUrlOpt`,
:data:`JsonOpt`, :data:`DebugOpt`, :func:`options`, :func:`open_service` and
:func:`emit`, and raise ledger errors freely: :func:`main` maps them.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from sardis_ledger.amounts import parse_amount, validate_account_id
from sardis_ledger.errors import (
    LedgerError,
    LockTimeoutError,
    ProofVerificationError,
    StorageError,
    ValidationError,
    json_amount,
)

from .ledger_service import LedgerConfig, LedgerService

__all__ = [
    "EXIT_CODES",
    "EXIT_FAILURE",
    "EXIT_OK",
    "EXIT_REFUSED",
    "EXIT_USAGE",
    "DatabaseUrlOpt",
    "DebugOpt",
    "JsonOpt",
    "LedgerOpt",
    "Options",
    "add_commands",
    "app",
    "emit",
    "exit_code_for",
    "main",
    "open_service",
    "options",
]

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_FAILURE = 3

EXIT_CODES: Mapping[type[BaseException], int] = {
    ValidationError: EXIT_USAGE,
    StorageError: EXIT_FAILURE,  # and IntegrityError, RetryableStorageError
    ProofVerificationError: EXIT_FAILURE,
    LockTimeoutError: EXIT_FAILURE,  # not a verdict on the request: try again
    typer.TyperException: EXIT_USAGE,  # typer's own usage errors (bad option, missing argument)
    OSError: EXIT_FAILURE,  # the machine refused: permissions, disk, a path that cannot be made
    LedgerError: EXIT_REFUSED,  # every other ledger error is a refusal of a well-formed request
}
"""The one table from exception type to exit code; the nearest class in the MRO wins."""


def exit_code_for(exc: BaseException) -> int:
    """Exit code for an exception: the first class of its MRO in :data:`EXIT_CODES`,
    else :data:`EXIT_FAILURE` (an unexpected error is never reported as success or
    as the caller's fault)."""
    for cls in type(exc).__mro__:
        code = EXIT_CODES.get(cls)
        if code is not None:
            return code
    return EXIT_FAILURE


# --------------------------------------------------------------------------- options

LedgerOpt = Annotated[
    Path | None,
    typer.Option(
        "--ledger",
        metavar="PATH",
        help="Ledger file: a .json file or a .db SQLite file. Default: $LEDGER_PATH, else ledger.json.",
        show_default=False,
    ),
]
DatabaseUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        metavar="URL",
        help="Storage URL (sqlite:///path.db, postgresql://..., memory://, path.json); wins over"
        " $LEDGER_PATH. Default: $LEDGER_DATABASE_URL.",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document (errors too) for scripts.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show the traceback of unexpected errors.")]


@dataclass(frozen=True)
class Options:
    """Options shared by every command, merged from before and after the command name."""

    ledger: Path | None = None
    database_url: str | None = None
    json: bool = False
    debug: bool = False


_current = Options()
"""The options of the running command, read by :func:`main` to render its error."""


def options(
    ctx: typer.Context,
    ledger: Path | None = None,
    database_url: str | None = None,
    json_out: bool = False,
    debug: bool = False,
) -> Options:
    """The command's options over the group's: ``mesh-ledger --json balance a`` and
    ``mesh-ledger balance a --json`` mean the same."""
    global _current
    root = ctx.find_root().obj
    base = root if isinstance(root, Options) else Options()
    _current = Options(
        ledger=ledger if ledger is not None else base.ledger,
        database_url=database_url if database_url is not None else base.database_url,
        json=json_out or base.json,
        debug=debug or base.debug,
    )
    return _current


def _config(opts: Options) -> LedgerConfig:
    if opts.database_url is not None and opts.ledger is not None:
        raise ValidationError("give either --ledger or --database-url, not both", field="database_url")
    if opts.database_url is not None:
        if not opts.database_url.strip():
            raise ValidationError("--database-url must not be empty", field="database_url")
        return LedgerConfig(database_url=opts.database_url)
    if opts.ledger is not None:
        # An explicit path beats $LEDGER_DATABASE_URL: the user named this ledger.
        return LedgerConfig(ledger_path=opts.ledger, database_url=None)
    return LedgerConfig()


@contextlib.contextmanager
def open_service(opts: Options) -> Iterator[LedgerService]:
    """The ledger the options name, closed when the command is done."""
    service = LedgerService(_config(opts))
    try:
        yield service
    finally:
        service.close()


# --------------------------------------------------------------------------- output


def _stdout(*, stderr: bool = False) -> Console:
    # Piped or redirected output has no terminal width; rich would assume 80 columns
    # and fold every table, so give files and pipes room (COLUMNS still wins).
    stream = sys.stderr if stderr else sys.stdout
    wide = None if stream.isatty() or os.environ.get("COLUMNS") else 160
    return Console(highlight=False, soft_wrap=False, width=wide, stderr=stderr)


def _jsonable(value: Any) -> Any:
    """JSON for what records and error details carry; amounts stay exact (never floats)."""
    if isinstance(value, Decimal):
        return json_amount(value)
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, bytes):
        return value.hex()
    return str(value)  # never fail while reporting (an error body must always render)


def _dump(data: Any) -> str:
    return json.dumps(data, default=_jsonable, ensure_ascii=False)


def emit(opts: Options, data: Any, human: Callable[[Console], None]) -> None:
    """``data`` as JSON with ``--json``, else ``human`` renders it for people."""
    if opts.json:
        sys.stdout.write(_dump(data) + "\n")
    else:
        human(_stdout())


def _amount_text(value: Any) -> str:
    return str(json_amount(value) if isinstance(value, Decimal) else value)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _check_ids(**ids: str | None) -> None:
    """Refuse malformed ids before storage is touched, so a typo writes nothing."""
    for name, value in ids.items():
        if value is not None:
            validate_account_id(value, field=name)


def _check_amount(value: str, name: str = "amount", *, allow_zero: bool = False) -> None:
    parse_amount(value, None, field=name, allow_zero=allow_zero)


# --------------------------------------------------------------------------- app

app = typer.Typer(
    name="mesh-ledger",
    help="Compute-token ledger for the mesh: accounts, balances, transfers, and an HTTP API with 402.\n\n"
    "Exit codes: 0 success; 1 refused (insufficient balance, unknown account, account exists,"
    " idempotency conflict); 2 usage or validation error; 3 storage failure or unexpected error.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Amount arguments may look like options ("-5"): let them reach validation, which
# says "amount must be positive" instead of "no such option -5".
_AMOUNT_ARGS = {"ignore_unknown_options": True}


def _version(value: bool) -> None:
    if value:
        from sardis_ledger import __version__

        sys.stdout.write(f"mesh-ledger {__version__}\n")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    ledger: LedgerOpt = None,
    database_url: DatabaseUrlOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """Options given before the command name apply to it (the command's own win)."""
    global _current
    _current = Options(ledger=ledger, database_url=database_url, json=json_out, debug=debug)
    ctx.obj = _current


def add_commands(other: typer.Typer) -> None:
    """Add another typer app's commands at the top level (``mesh-ledger verify``), so
    they share the options, the error handling and the exit codes of this CLI."""
    app.registered_commands.extend(other.registered_commands)
    app.registered_groups.extend(other.registered_groups)


@app.command("create-account")
def create_account(
    ctx: typer.Context,
    account_id: Annotated[str, typer.Argument(metavar="ID", help="New account id.", show_default=False)],
    balance: Annotated[
        str, typer.Option("--balance", metavar="N", help="Initial balance (exact decimal).")
    ] = "0",
    ledger: LedgerOpt = None,
    database_url: DatabaseUrlOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Create a new account, optionally with an initial balance. Refused if it exists."""
    opts = options(ctx, ledger, database_url, json_out, debug)
    _check_ids(account_id=account_id)
    _check_amount(balance, "balance", allow_zero=True)
    with open_service(opts) as service:
        # LedgerService.create_account opens the account before it checks the initial
        # amount against the asset's scale and range: check them first, so a refused
        # --balance never leaves an empty account behind.
        asset = service.ledger.get_asset(service.ledger.default_asset.code)
        parse_amount(balance, asset.scale, field="balance", allow_zero=True)
        account = service.create_account(account_id, initial_balance=balance)
    emit(
        opts,
        account,
        lambda c: c.print(Text(f"Created account {account['id']} with balance {_amount_text(account['balance'])}.")),
    )


@app.command()
def balance(
    ctx: typer.Context,
    account_id: Annotated[str, typer.Argument(metavar="ID", help="Account id.", show_default=False)],
    ledger: LedgerOpt = None,
    database_url: DatabaseUrlOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Show an account's balance."""
    opts = options(ctx, ledger, database_url, json_out, debug)
    _check_ids(account_id=account_id)
    with open_service(opts) as service:
        value = service.get_balance(account_id)
    emit(
        opts,
        {"account_id": account_id, "balance": value},
        lambda c: c.print(Text(f"{account_id}: {_amount_text(value)}")),
    )


def _record_line(record: Mapping[str, Any]) -> Text:
    kind = record.get("kind") or "transfer"
    amount = _amount_text(record["amount"])
    if record.get("from_account") and record.get("to_account"):
        line = f"Transferred {amount} from {record['from_account']} to {record['to_account']}"
    elif record.get("to_account"):
        line = f"Credited {amount} to {record['to_account']}"
    else:
        line = f"{kind.capitalize()} of {amount} from {record.get('from_account')}"
    if record.get("job_id"):
        line += f" (job {record['job_id']})"
    if record.get("note"):
        line += f": {record['note']}"
    return Text(f"{line}.\nTransfer id: {record['id']}")


@app.command(context_settings=_AMOUNT_ARGS)
def transfer(
    ctx: typer.Context,
    from_account: Annotated[str, typer.Argument(metavar="FROM", help="Paying account.", show_default=False)],
    to_account: Annotated[str, typer.Argument(metavar="TO", help="Receiving account.", show_default=False)],
    amount: Annotated[str, typer.Argument(metavar="AMOUNT", help="Exact decimal amount.", show_default=False)],
    job_id: Annotated[
        str | None,
        typer.Option("--job-id", metavar="ID", help="Job this pays for; a retry with the same id is charged once."),
    ] = None,
    note: Annotated[str | None, typer.Option("--note", metavar="TEXT", help="Free-text note.")] = None,
    ledger: LedgerOpt = None,
    database_url: DatabaseUrlOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Transfer tokens between accounts. Refused (exit 1) if FROM cannot pay."""
    opts = options(ctx, ledger, database_url, json_out, debug)
    _check_ids(from_account=from_account, to_account=to_account)
    _check_amount(amount)
    with open_service(opts) as service:
        record = service.transfer(from_account, to_account, amount, job_id=job_id, note=note)
    emit(opts, record, lambda c: c.print(_record_line(record)))


_SOURCE_LABELS = {"initial_balance": "(opening)", "credit": "(credit)"}


def _history_table(records: Sequence[Mapping[str, Any]], title: str) -> Table:
    """People's view of transfers; ``--json`` has every field (ids, sequence, root).

    Columns fold, never elide: a table that hides part of an account id misleads."""
    table = Table(title=title, title_justify="left")
    table.add_column("Time (UTC)", no_wrap=True)
    table.add_column("From", overflow="fold")
    table.add_column("To", overflow="fold")
    table.add_column("Amount", justify="right", no_wrap=True)
    table.add_column("Job", overflow="fold")
    table.add_column("Note", overflow="fold")
    dash = Text("-", style="dim")
    for r in records:
        source = r.get("from_account")
        kind = str(r.get("kind") or "")
        table.add_row(
            Text(str(r.get("timestamp") or "")[:19].replace("T", " ")),
            Text(str(source)) if source else Text(_SOURCE_LABELS.get(kind, f"({kind or 'issued'})"), style="dim"),
            Text(str(r["to_account"])) if r.get("to_account") else dash,
            Text(_amount_text(r["amount"])),
            Text(str(r["job_id"])) if r.get("job_id") else dash,
            Text(str(r["note"])) if r.get("note") else dash,
        )
    return table


@app.command()
def history(
    ctx: typer.Context,
    account: Annotated[
        str | None, typer.Option("--account", metavar="ID", help="Only transfers touching this account.")
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", metavar="N", min=1, max=10_000, help="Most recent N transfers.")
    ] = 20,
    ledger: LedgerOpt = None,
    database_url: DatabaseUrlOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Show transfer history, most recent first (credits included)."""
    opts = options(ctx, ledger, database_url, json_out, debug)
    _check_ids(account=account)
    with open_service(opts) as service:
        records = service.get_transfers(account_id=account, limit=limit)

    def human(c: Console) -> None:
        if not records:
            c.print(Text("No transfers yet."))
            return
        scope = f" of {account}" if account else ""
        c.print(_history_table(records, f"Last {len(records)} transfers{scope}"))

    emit(opts, records, human)


@app.command("list-accounts")
def list_accounts(
    ctx: typer.Context,
    ledger: LedgerOpt = None,
    database_url: DatabaseUrlOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """List all accounts with their balances."""
    opts = options(ctx, ledger, database_url, json_out, debug)
    with open_service(opts) as service:
        accounts = service.list_accounts()

    def human(c: Console) -> None:
        if not accounts:
            c.print(Text("No accounts yet."))
            return
        table = Table(title=f"{len(accounts)} accounts", title_justify="left")
        table.add_column("Account", overflow="fold")
        table.add_column("Balance", justify="right", overflow="fold")
        table.add_column("Created (UTC)", overflow="fold")
        for a in accounts:
            table.add_row(
                Text(str(a["id"])),
                Text(_amount_text(a["balance"])),
                Text(str(a.get("created_at") or "")[:19].replace("T", " ")),
            )
        c.print(table)

    emit(opts, accounts, human)


@app.command(context_settings=_AMOUNT_ARGS)
def credit(
    ctx: typer.Context,
    account_id: Annotated[str, typer.Argument(metavar="ID", help="Account to credit.", show_default=False)],
    amount: Annotated[str, typer.Argument(metavar="AMOUNT", help="Exact decimal amount.", show_default=False)],
    reason: Annotated[str | None, typer.Option("--reason", metavar="TEXT", help="Why (kept as the note).")] = None,
    ledger: LedgerOpt = None,
    database_url: DatabaseUrlOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Credit new tokens to an account (admin operation)."""
    opts = options(ctx, ledger, database_url, json_out, debug)
    _check_ids(account_id=account_id)
    _check_amount(amount)
    with open_service(opts) as service:
        record = service.credit(account_id, amount, reason=reason)
        new_balance = service.get_balance(account_id)
    emit(
        opts,
        {**record, "balance": new_balance},
        lambda c: c.print(_record_line(record).append(f"\nBalance of {account_id}: {_amount_text(new_balance)}")),
    )


# --------------------------------------------------------------------------- serve


@app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option("--host", help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port (0: any free port).")] = 8000,
    workers: Annotated[int, typer.Option("--workers", min=1, max=64, help="Worker processes.")] = 1,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Serve without API keys (only for a trusted network).")
    ] = False,
    api_keys_file: Annotated[
        Path | None, typer.Option("--api-keys-file", metavar="PATH", help="File of API keys and their scopes.")
    ] = None,
    ledger: LedgerOpt = None,
    database_url: DatabaseUrlOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Serve the HTTP API (the same ledger, with 402 for payers who cannot pay)."""
    opts = options(ctx, ledger, database_url, False, debug)
    _config(opts)  # the same checks as every command: one of --ledger / --database-url
    from .api import serve as serve_api  # FastAPI and uvicorn load only when serving

    try:
        serve_api(
            host,
            port,
            workers=workers,
            database_url=opts.database_url,
            ledger_path=None if opts.ledger is None else str(opts.ledger),
            insecure=insecure,
            api_keys_file=None if api_keys_file is None else str(api_keys_file),
        )
    except SystemExit as exc:  # uvicorn exits on a failed start (port taken, bad app): say so in our terms
        if exc.code not in (0, None):
            message = f"the HTTP server on {host}:{port} stopped (uvicorn exit code {exc.code}; see its log)"
            raise OSError(message) from None
        raise


# --------------------------------------------------------------------------- demo


@app.command()
def demo(
    ctx: typer.Context,
    keep_serving: Annotated[
        bool, typer.Option("--keep-serving", help="Keep the service running after the demo (Ctrl+C stops it).")
    ] = False,
    ledger: LedgerOpt = None,
    database_url: DatabaseUrlOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Start the HTTP service on a throwaway ledger and walk through it over HTTP.

    Accounts, a credit, a charged job, a 402 refusal for an overdraft, history and
    balances. The ledger is a fresh SQLite file in a temporary directory unless
    --ledger or --database-url names one.
    """
    opts = options(ctx, ledger, database_url, json_out, debug)
    _config(opts)
    from .cli_demo import run_demo  # httpx and the narration load only for the demo

    run_demo(opts, keep_serving=keep_serving)


# --------------------------------------------------------------------------- main


def _report(exc: BaseException, opts: Options, prog: str) -> int:
    """Render an error as one line on stderr (and a JSON document on stdout with
    ``--json``) and return its exit code."""
    code = exit_code_for(exc)
    if isinstance(exc, LedgerError):
        body = exc.to_json()
        message = exc.message
    elif isinstance(exc, typer.TyperException):
        message = exc.format_message()
        body = {"error": "usage_error", "message": message}
        ctx = getattr(exc, "ctx", None)
        if ctx is not None:
            message += f" (try '{ctx.command_path} --help')"
    elif isinstance(exc, OSError):
        message = f"{type(exc).__name__}: {exc}"
        body = {"error": "os_error", "message": message}
    else:
        message = f"unexpected {type(exc).__name__}: {exc}"
        body = {"error": "internal_error", "message": message}
        if not opts.debug:
            message += " (run with --debug for the traceback)"
    if opts.debug and not isinstance(exc, typer.TyperException):
        traceback.print_exception(exc, file=sys.stderr)
    if opts.json:
        sys.stdout.write(_dump(body) + "\n")
    sys.stderr.write(f"{prog}: error: {_one_line(message)}\n")
    return code


_audit_added = False


def _add_audit_commands() -> None:
    """Add ``verify``, ``tree-head``, ``prove``, ``consistency`` and ``keys``.

    Late import: audit_cli reuses this module's options and error handling. When
    audit_cli is the module being imported first, this runs from :func:`main`."""
    global _audit_added
    if _audit_added:
        return
    from . import audit_cli

    add_commands(audit_cli.app)
    _audit_added = True


if "mesh_fake_ledger.audit_cli" not in sys.modules:
    _add_audit_commands()


def main(argv: Sequence[str] | None = None, prog_name: str = "mesh-ledger") -> int:
    """Run the CLI and return its exit code; every exception ends here, mapped by
    :func:`exit_code_for`, so no traceback reaches a user without ``--debug``."""
    _add_audit_commands()
    global _current
    args = list(sys.argv[1:] if argv is None else argv)
    _current = Options(json="--json" in args, debug="--debug" in args)
    command = typer.main.get_command(app)
    try:
        result = command.main(args=args, prog_name=prog_name, standalone_mode=False)
    except typer.TyperException as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":
            sys.stderr.write(exc.format_message() + "\n")
            return EXIT_USAGE
        return _report(exc, replace(_current, json="--json" in args), prog_name)
    except typer.Abort:
        sys.stderr.write(f"{prog_name}: aborted\n")
        return 130
    except Exception as exc:
        return _report(exc, _current, prog_name)
    return result if isinstance(result, int) else EXIT_OK
