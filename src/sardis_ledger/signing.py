"""Signed tree heads: Ed25519 keys for a ledger and the heads it has issued.

Why sign: a Merkle root only proves that an entry is in *some* tree; a signed
(size, root, time) binds the server to one history. A client that keeps the
last signed head it saw can later demand a consistency proof and so detects any
rewrite or rollback (see :mod:`sardis_ledger.verifier`).

Keys
    :class:`Keyring` keeps private keys in a directory (mode 0700, each key a
    PKCS#8 PEM file of mode 0600, refused if anyone else can read it) and the
    public halves in ``keyring.json`` beside them, which is meant to be
    published. A key id is the SHA-256 of the raw public key. The first key is
    generated on first use; :meth:`Keyring.rotate` makes a new key current and
    keeps every old public key, so heads signed before the rotation still
    verify. Default directory: ``LEDGER_KEY_DIR``, else ``keys/`` beside a file
    ledger, else ``~/.sardis-ledger/keys``; a ``memory://`` ledger gets
    in-memory keys.

Issued heads
    :class:`HeadLog` appends every head the server signs to a JSON-lines file in
    the key directory, outside the ledger's store. Restoring an older copy of
    the store therefore leaves the log ahead of it, and :class:`TreeHeadSigner`
    refuses to sign (and ``verify`` reports) a store that is behind or diverges
    from a head it already signed.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from filelock import FileLock

from .errors import IntegrityError, StorageError, ValidationError
from .models import TreeHead
from .verifier import SignedTreeHead, key_id_of, load_public_keys, tree_head_message, verify_signed_tree_head

__all__ = [
    "LEDGER_ORIGIN",
    "HeadLog",
    "Keyring",
    "SignedTreeHead",
    "TreeHeadSigner",
    "default_key_dir",
    "store_file",
    "store_location",
]

LEDGER_ORIGIN = "sardis-ledger"
"""Origin (log name) in the signed heads of a ledger; its audit store uses ``sardis-audit``."""

_KEYRING_FILE = "keyring.json"


def store_file(url: str) -> Path | None:
    """The file behind a file-backed store URL (SQLite, JSON), else None."""
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///"):].split("?", 1)[0])
    if "://" not in url and url.endswith((".db", ".sqlite", ".sqlite3", ".json")):
        return Path(url)
    return None


def store_location(url: str) -> str:
    """A stable name for a store, without credentials: an absolute file path, or
    ``postgresql://host:port/dbname``. Heads logs are keyed by it."""
    path = store_file(url)
    if path is not None:
        return str(path.resolve())
    if url.startswith("memory://"):
        return "memory://"
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    scheme = "postgresql" if parts.scheme.startswith("postgres") else parts.scheme
    return f"{scheme}://{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path}"


def default_key_dir(database_url: str) -> Path | None:
    """Where a ledger's keys live by default; None means in memory (``memory://``)."""
    env = os.environ.get("LEDGER_KEY_DIR")
    if env:
        return Path(env)
    path = store_file(database_url)
    if path is not None:
        return path.resolve().parent / "keys"
    if database_url.startswith("memory://"):
        return None
    return Path.home() / ".sardis-ledger" / "keys"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _iso_now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _private_dir(path: Path) -> None:
    """Create ``path`` owner-only, or refuse one that others can enter."""
    if not path.exists():
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path, 0o700)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise StorageError(f"key directory {path} is accessible to other users (mode {mode:o}); run chmod 700 {path}",
                           path=str(path))


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


class Keyring:
    """Ed25519 signing keys of one ledger deployment.

    ``Keyring(directory)`` keeps keys on disk; ``Keyring(None)`` keeps them in
    memory only (nothing it signs stays verifiable after the process exits
    unless the public keyring is saved elsewhere). Safe across threads and
    processes: generation and rotation take a file lock.
    """

    def __init__(self, directory: str | os.PathLike[str] | None) -> None:
        self.directory = Path(directory) if directory is not None else None
        self._mem: dict[str, Any] | None = None if self.directory is not None else {"keys": [], "current": None}
        self._mem_private: dict[str, Ed25519PrivateKey] = {}
        self._private: dict[str, Ed25519PrivateKey] = {}
        self._cache: tuple[float, int, dict[str, Any]] | None = None
        self._lock = threading.Lock()
        if self.directory is not None:
            _private_dir(self.directory)

    @classmethod
    def for_database(cls, database_url: str) -> Keyring:
        """The default keyring of the ledger at ``database_url`` (see module docs)."""
        return cls(default_key_dir(database_url))

    # -- state ---------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock:
            if self.directory is None:
                yield
            else:
                with FileLock(str(self.directory / ".keyring.lock"), timeout=60):
                    yield

    def _read(self) -> dict[str, Any]:
        if self._mem is not None:
            return self._mem
        assert self.directory is not None
        path = self.directory / _KEYRING_FILE
        try:
            st = path.stat()
        except FileNotFoundError:
            return {"keys": [], "current": None}
        if self._cache is not None and self._cache[:2] == (st.st_mtime, st.st_size):
            return self._cache[2]
        try:
            body: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise StorageError(f"cannot read keyring {path}: {exc}") from None
        load_public_keys(body)  # refuse a keyring whose ids do not match their keys
        self._cache = (st.st_mtime, st.st_size, body)
        return body

    def _write(self, body: dict[str, Any]) -> None:
        if self._mem is not None:
            self._mem = body
            return
        assert self.directory is not None
        _write_atomic(self.directory / _KEYRING_FILE, json.dumps(body, indent=2, sort_keys=True).encode(), 0o644)
        self._cache = None

    def _new_key(self, body: dict[str, Any]) -> str:
        key = Ed25519PrivateKey.generate()
        raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        kid = key_id_of(raw)
        if self.directory is None:
            self._mem_private[kid] = key
        else:
            pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
            _write_atomic(self.directory / f"{kid}.pem", pem, 0o600)
        now = _iso_now()
        for item in body["keys"]:
            if item.get("retired_at") is None:
                item["retired_at"] = now
        body["keys"].append({"key_id": kid, "algorithm": "ed25519", "public_key": raw.hex(),
                             "created_at": now, "retired_at": None})
        body["current"] = kid
        self._write(body)
        return kid

    def current_key_id(self) -> str:
        """The id of the signing key, generating the first key if there is none."""
        body = self._read()
        current = body.get("current")
        if isinstance(current, str):
            return current
        with self._locked():
            body = self._read()
            current = body.get("current")
            if isinstance(current, str):
                return current
            return self._new_key({"keys": list(body.get("keys", [])), "current": None})

    def rotate(self) -> str:
        """Make a fresh key current. Old public keys stay in the keyring (marked
        ``retired_at``), so every head they signed still verifies; their private
        files stay too and may be deleted once no process signs with them."""
        with self._locked():
            body = self._read()
            return self._new_key({"keys": [dict(k) for k in body.get("keys", [])], "current": body.get("current")})

    def _private_key(self, kid: str) -> Ed25519PrivateKey:
        key = self._private.get(kid) or self._mem_private.get(kid)
        if key is not None:
            return key
        assert self.directory is not None
        path = self.directory / f"{kid}.pem"
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
            if mode & 0o077:
                raise StorageError(f"private key {path} is readable by other users (mode {mode:o}); chmod 600 it",
                                   path=str(path))
            loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except FileNotFoundError:
            raise StorageError(f"private key {path} is missing", path=str(path)) from None
        if not isinstance(loaded, Ed25519PrivateKey):
            raise StorageError(f"{path} is not an Ed25519 key")
        pub = loaded.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        if key_id_of(pub) != kid:
            raise StorageError(f"{path} does not hold key {kid}")
        self._private[kid] = loaded
        return loaded

    # -- public face -----------------------------------------------------------

    def public_keyring(self) -> dict[str, Any]:
        """The publishable keyring: every public key, current and retired."""
        self.current_key_id()
        body = self._read()
        return {"keys": [dict(k) for k in body["keys"]], "current": body["current"]}

    def public_keys(self) -> dict[str, Ed25519PublicKey]:
        return load_public_keys(self.public_keyring())

    def sign_tree_head(self, origin: str, tree_size: int, root: bytes | str,
                       timestamp_ms: int | None = None) -> SignedTreeHead:
        raw_root = bytes.fromhex(root) if isinstance(root, str) else root
        kid = self.current_key_id()
        ts = _now_ms() if timestamp_ms is None else timestamp_ms
        signature = self._private_key(kid).sign(tree_head_message(origin, tree_size, raw_root, ts))
        return SignedTreeHead(origin, tree_size, raw_root.hex(), ts, kid, signature.hex())


class HeadLog:
    """Append-only JSON-lines log of the tree heads a server signed.

    Kept outside the ledger store on purpose (see module docs). ``path=None``
    keeps it in memory.
    """

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = Path(path) if path is not None else None
        self._mem: list[SignedTreeHead] = []
        self._last: tuple[int, SignedTreeHead | None] | None = None
        self._thread_lock = threading.RLock()

    @classmethod
    def for_store(cls, keyring: Keyring, origin: str, database_url: str) -> HeadLog:
        """The log of heads signed for the store at ``database_url`` (in the key directory)."""
        if keyring.directory is None:
            return cls(None)
        location = store_location(database_url)
        name = Path(location).name if "://" not in location else location.rsplit("/", 1)[-1]
        slug = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in name)[:40]
        digest = hashlib.sha256(location.encode()).hexdigest()[:12]
        return cls(keyring.directory / "heads" / f"{origin}-{slug}-{digest}.jsonl")

    @contextmanager
    def locked(self) -> Iterator[None]:
        with self._thread_lock:
            if self.path is None:
                yield
            else:
                self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                with FileLock(str(self.path) + ".lock", timeout=60):
                    yield

    def append(self, sth: SignedTreeHead) -> None:
        """Call with :meth:`locked` held."""
        if self.path is None:
            self._mem.append(sth)
            return
        line = (sth.to_json() + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def last(self) -> SignedTreeHead | None:
        """The most recently appended head (cheap: reads only the file's tail)."""
        if self.path is None:
            return self._mem[-1] if self._mem else None
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return None
        if self._last is not None and self._last[0] == size:
            return self._last[1]
        with open(self.path, "rb") as fh:
            fh.seek(max(0, size - 4096))
            tail = fh.read().splitlines()
        head = None
        for raw in reversed(tail):
            try:
                head = SignedTreeHead.from_dict(json.loads(raw))
                break
            except ValueError:
                continue
        self._last = (size, head)
        return head

    def entries(self) -> Iterator[tuple[int, SignedTreeHead | str]]:
        """Every line as (line number, head), or (line number, problem) for a line
        that is not a signed tree head."""
        if self.path is None:
            yield from enumerate(self._mem, start=1)
            return
        if not self.path.exists():
            return
        with open(self.path, "rb") as fh:
            for number, raw in enumerate(fh, start=1):
                try:
                    yield number, SignedTreeHead.from_dict(json.loads(raw))
                except ValueError as exc:
                    yield number, f"line {number} of {self.path.name} is not a signed tree head ({exc})"


class _Log(Protocol):
    def tree_head(self) -> TreeHead: ...

    def root_at(self, tree_size: int) -> str: ...


class TreeHeadSigner:
    """Signs the heads of one log (a :class:`~sardis_ledger.core.Ledger` or an
    audit store) and records them in a :class:`HeadLog`.

    A new head is signed only when the log has grown since the last one, so
    asking for the head is cheap and the heads log grows with writes, not reads.
    Before signing it checks that the log still contains the last head it
    signed; if not it raises :class:`IntegrityError` rather than sign a
    rolled-back or rewritten history.
    """

    def __init__(self, log: _Log, keyring: Keyring, head_log: HeadLog, *, origin: str = LEDGER_ORIGIN) -> None:
        if not origin or len(origin) > 200:
            raise ValidationError("origin must be 1-200 characters", field="origin")
        self.log = log
        self.keyring = keyring
        self.head_log = head_log
        self.origin = origin

    def check_extends(self, last: SignedTreeHead | None, head: TreeHead) -> None:
        """Raise IntegrityError unless the log (now ``head``) contains ``last``."""
        if last is None:
            return
        hint = (f" (if the store was deliberately replaced, move the heads log {self.head_log.path} aside)"
                if self.head_log.path is not None else "")
        if head.tree_size < last.tree_size:
            raise IntegrityError(
                f"the store holds {head.tree_size} entries but a tree head of size {last.tree_size} was signed "
                f"for it: the store was rolled back or truncated{hint}",
                signed_size=last.tree_size, tree_size=head.tree_size, first_bad_sequence=head.tree_size + 1,
            )
        root = head.root if head.tree_size == last.tree_size else self.log.root_at(last.tree_size)
        if root != last.root:
            raise IntegrityError(
                f"the store's root at size {last.tree_size} differs from the head signed for that size: "
                f"history was rewritten{hint}", signed_size=last.tree_size,
            )

    def signed_tree_head(self) -> SignedTreeHead:
        """The latest signed head, signing the current one if the log has grown."""
        last = self.head_log.last()
        head = self.log.tree_head()
        if last is not None and last.tree_size == head.tree_size and last.root == head.root:
            return last
        with self.head_log.locked():
            last = self.head_log.last()
            head = self.log.tree_head()  # re-read: another signer may have moved on
            self.check_extends(last, head)
            if last is not None and last.tree_size == head.tree_size:
                return last
            ts = max(_now_ms(), last.timestamp if last else 0)
            sth = self.keyring.sign_tree_head(self.origin, head.tree_size, head.root, ts)
            self.head_log.append(sth)
            return sth

    def verify_head(self, sth: SignedTreeHead) -> SignedTreeHead:
        return verify_signed_tree_head(sth, self.keyring.public_keys(), origin=self.origin)
