"""Audit commands: ``verify``, ``tree-head``, ``prove``, ``consistency``, ``keys``.

They join the main CLI with one line in ``cli.py`` (then ``mesh-ledger verify``
etc. share its options, error rendering and exit codes)::

    from . import audit_cli
    add_commands(audit_cli.app)

and also run on their own: ``python -m mesh_fake_ledger.audit_cli verify --ledger ledger.db``.

Each takes ``--ledger PATH`` / ``--database-url URL``, ``--json`` and
``--key-dir DIR`` (signing keys and the log of issued heads; default
``$LEDGER_KEY_DIR``, else ``keys/`` beside a file ledger). ``verify`` exits 0
when the ledger is intact and 3 when it found tampering, naming the first bad
entry; ``tree-head --tracker FILE`` acts as a client that remembers the last
head it verified and exits 3 if the new head is not consistent with it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from sardis_ledger.errors import LedgerError, ValidationError
from sardis_ledger.evidence import AuditReport, Evidence
from sardis_ledger.signing import Keyring
from sardis_ledger.verifier import (
    TreeHeadTracker,
    load_public_keys,
    verify_consistency,
    verify_inclusion_bundle,
)

from .cli import (
    EXIT_FAILURE,
    EXIT_OK,
    DatabaseUrlOpt,
    DebugOpt,
    JsonOpt,
    LedgerOpt,
    Options,
    emit,
    exit_code_for,
    open_service,
    options,
)

__all__ = ["EXIT_TAMPERED", "PROGRESS_THRESHOLD", "app", "main"]

EXIT_TAMPERED = EXIT_FAILURE
"""``verify`` found tampering (3, the CLI's "the ledger could not do it" code)."""

PROGRESS_THRESHOLD = 50_000
"""Ledgers at least this large get a progress bar on stderr (unless ``--json``)."""

KeyDirOpt = Annotated[
    Path | None,
    typer.Option("--key-dir", metavar="DIR", help="Signing keys and issued heads. Default: $LEDGER_KEY_DIR, else"
                 " keys/ beside a file ledger.", show_default=False),
]

app = typer.Typer(
    name="mesh-ledger-audit",
    help="Evidence and audit: signed tree heads, inclusion and consistency proofs, full verification.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@contextmanager
def _evidence(opts: Options, key_dir: Path | None) -> Iterator[Evidence]:
    with open_service(opts) as service:
        keyring = Keyring(key_dir) if key_dir is not None else None
        yield Evidence(service.ledger, keyring)


def _report_text(report: AuditReport, console: Console) -> None:
    if report.ok:
        console.print(f"[green]OK[/green]: {report.entries_checked} entries verified; tree size {report.tree_size},"
                      f" root {report.root}; {report.signed_heads_checked} signed heads checked")
        return
    first = f"first bad entry: {report.first_bad_sequence}" if report.first_bad_sequence else "no single entry named"
    console.print(f"[red]TAMPERED[/red]: {first}; {len(report.problems)} problem(s) "
                  f"({report.entries_checked} entries read)")
    for line in report.problems[:20]:
        console.print(f"  - {line}", markup=False)
    if len(report.problems) > 20:
        console.print(f"  ... and {len(report.problems) - 20} more (use --json for all)")


@app.command("verify")
def verify(
    ctx: typer.Context,
    ledger: LedgerOpt = None,
    database_url: DatabaseUrlOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
    key_dir: KeyDirOpt = None,
    audit_url: Annotated[str | None, typer.Option("--audit-url", metavar="URL",
                                                  help="Also check the ledger against this audit store.")] = None,
    progress: Annotated[bool | None, typer.Option("--progress/--no-progress",
                                                  help="Progress bar (default: on for large ledgers).")] = None,
) -> None:
    """Audit the whole ledger: every leaf and Merkle node, the root, running balances,
    conservation, signed tree heads (and the audit store with --audit-url).
    Exit 0 when intact, 3 when tampering is found."""
    opts = options(ctx, ledger, database_url, json_out, debug)
    with _evidence(opts, key_dir) as evidence:
        audit = None
        if audit_url is not None:
            from sardis_ledger.immutable import AuditLog

            audit = AuditLog(audit_url, keyring=Keyring(key_dir) if key_dir is not None else None)
        try:
            size = evidence.ledger.tree_head().tree_size
            show = (size >= PROGRESS_THRESHOLD) if progress is None else progress
            if show and not opts.json:
                with Progress(TextColumn("verifying"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                              console=Console(stderr=True), transient=True) as bar:
                    task = bar.add_task("verify", total=max(size, 1))
                    report = evidence.verify(lambda done, total: bar.update(task, completed=done, total=total),
                                             audit=audit)
            else:
                report = evidence.verify(audit=audit)
        finally:
            if audit is not None:
                audit.close()
    emit(opts, report.to_dict(), lambda console: _report_text(report, console))
    if not report.ok:
        raise typer.Exit(EXIT_TAMPERED)


@app.command("tree-head")
def tree_head(
    ctx: typer.Context,
    ledger: LedgerOpt = None,
    database_url: DatabaseUrlOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
    key_dir: KeyDirOpt = None,
    tracker: Annotated[Path | None, typer.Option(
        "--tracker", metavar="FILE",
        help="Act as a client: accept the head only if it is consistent with the one kept in FILE, then keep it."
    )] = None,
) -> None:
    """Print the latest signed tree head (signing the current one if the ledger grew)."""
    opts = options(ctx, ledger, database_url, json_out, debug)
    with _evidence(opts, key_dir) as evidence:
        sth = evidence.signed_tree_head()
        held = None
        if tracker is not None:
            client = TreeHeadTracker(tracker, load_public_keys(evidence.public_keyring()), origin=evidence.origin)
            held = client.head.tree_size if client.head else None
            client.update(sth, lambda old, new: evidence.ledger.consistency_proof(old, new))
    body = sth.to_dict()
    if tracker is not None:
        body["tracker"] = {"path": str(tracker), "previous_size": held, "consistent": True}

    def human(console: Console) -> None:
        console.print(f"tree size {sth.tree_size}\nroot      {sth.root}\nsigned    {body['issued_at']}"
                      f" by key {sth.key_id[:16]}…")
        if tracker is not None:
            since = "first head kept" if held is None else f"consistent with the kept head of size {held}"
            console.print(f"client    {since} ({tracker})")

    emit(opts, body, human)


@app.command("prove")
def prove(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(metavar="SEQUENCE|TRANSFER-ID|ENTRY-ID",
                                       help="Entry sequence number, transfer (batch) id or entry id.")],
    tree_size: Annotated[int | None, typer.Option("--tree-size", metavar="N",
                                                  help="Prove inclusion in the tree of N entries.")] = None,
    ledger: LedgerOpt = None,
    database_url: DatabaseUrlOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
    key_dir: KeyDirOpt = None,
) -> None:
    """Inclusion proof of an entry (or of each entry of a transfer), checked offline before it is printed."""
    opts = options(ctx, ledger, database_url, json_out, debug)
    with _evidence(opts, key_dir) as evidence:
        bundle = evidence.inclusion_proof(ref, tree_size)
        keys = load_public_keys(evidence.public_keyring())
    proven = verify_inclusion_bundle(bundle, keys, origin=evidence.origin)

    def human(console: Console) -> None:
        sth = bundle["signed_tree_head"]
        for item in proven:
            console.print(f"entry {item.sequence} ({item.fields.get('entry_id')}) is leaf {item.leaf_index} of the "
                          f"tree of size {item.tree_size}")
        console.print(f"root {bundle['root']}; signed head size {sth['tree_size']}, root {sth['root']}")
        console.print("[green]verified offline[/green] (RFC 9162 inclusion + consistency, Ed25519 signature)")

    emit(opts, bundle, human)


@app.command("consistency")
def consistency(
    ctx: typer.Context,
    old: Annotated[int, typer.Argument(metavar="OLD", help="The smaller tree size.")],
    new: Annotated[int | None, typer.Argument(metavar="NEW", help="The larger size (default: signed head).")] = None,
    ledger: LedgerOpt = None,
    database_url: DatabaseUrlOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
    key_dir: KeyDirOpt = None,
) -> None:
    """Consistency proof between two tree sizes, checked before it is printed."""
    opts = options(ctx, ledger, database_url, json_out, debug)
    if old < 0 or (new is not None and new < old):
        raise ValidationError("sizes must satisfy 0 <= OLD <= NEW", field="old")
    with _evidence(opts, key_dir) as evidence:
        body = evidence.consistency_proof(old, new)
    verify_consistency(body["old_size"], body["new_size"], bytes.fromhex(body["old_root"]),
                       bytes.fromhex(body["new_root"]), [bytes.fromhex(p) for p in body["proof"]])

    def human(console: Console) -> None:
        console.print(f"size {body['old_size']} (root {body['old_root']}) is a prefix of size {body['new_size']}"
                      f" (root {body['new_root']})")
        for p in body["proof"]:
            console.print(f"  {p}")
        console.print("[green]verified[/green]")

    emit(opts, body, human)


@app.command("keys")
def keys(
    ctx: typer.Context,
    rotate: Annotated[bool, typer.Option("--rotate", help="Make a new signing key current (old heads stay"
                                                          " verifiable).")] = False,
    ledger: LedgerOpt = None,
    database_url: DatabaseUrlOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
    key_dir: KeyDirOpt = None,
) -> None:
    """Print the public keyring (publish it: clients verify tree heads with it)."""
    opts = options(ctx, ledger, database_url, json_out, debug)
    with _evidence(opts, key_dir) as evidence:
        if rotate:
            evidence.keyring.rotate()
        body = evidence.public_keyring()

    def human(console: Console) -> None:
        for k in body["keys"]:
            state = "current" if k["key_id"] == body["current"] else f"retired {k['retired_at']}"
            console.print(f"{k['key_id']}  ed25519 {k['public_key']}  ({state})")

    emit(opts, body, human)


def main(argv: Sequence[str] | None = None) -> int:
    """Run these commands alone; errors end as in the main CLI (one line, mapped exit code)."""
    args = list(sys.argv[1:] if argv is None else argv)
    command = typer.main.get_command(app)
    try:
        result: Any = command.main(args=args, prog_name="mesh-ledger-audit", standalone_mode=False)
    except typer.Exit as exc:  # pragma: no cover - click returns the code in non-standalone mode
        return int(exc.exit_code)
    except (LedgerError, typer.TyperException, OSError) as exc:
        message = exc.message if isinstance(exc, LedgerError) else (
            exc.format_message() if isinstance(exc, typer.TyperException) else str(exc))
        if "--json" in args:
            import json

            body = exc.to_json() if isinstance(exc, LedgerError) else {"error": "usage_error", "message": message}
            sys.stdout.write(json.dumps(body, default=str) + "\n")
        sys.stderr.write(f"mesh-ledger-audit: error: {' '.join(message.split())}\n")
        return exit_code_for(exc)
    return result if isinstance(result, int) else EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
