"""API keys with scopes for the HTTP API.

A ledger that moves money must not be writable by whoever reaches its port, so:

* Keys are optional. Without keys the API serves loopback clients only (and
  :func:`mesh_fake_ledger.api.serve` refuses to listen beyond loopback) unless
  it is started with an explicit insecure flag (``LEDGER_INSECURE=1``).
* Only the SHA-256 of each key is kept in memory; a presented key is hashed and
  compared with every stored digest using :func:`hmac.compare_digest`, so
  neither timing nor an early exit tells which prefix matched.
* Keys are never logged or echoed in an error.

Scopes: ``admin`` (create and credit accounts, refunds, everything), ``account``
(bound to one account: spend from it, hold from it, read it), ``read`` (read
everything, change nothing).

Key file (``LEDGER_API_KEYS_FILE``) or inline JSON (``LEDGER_API_KEYS``)::

    {"keys": [
      {"name": "ops",       "scope": "admin",   "sha256": "<64 hex digits of sha256(key)>"},
      {"name": "alice-app", "scope": "account", "account": "alice", "sha256": "<…>"},
      {"name": "dashboard", "scope": "read",    "key": "<the key itself, 16+ characters>"}
    ]}

``sha256`` is preferred (``python -c "from mesh_fake_ledger.security import
hash_key; print(hash_key('…'))"``); a plain ``key`` is hashed on load and
dropped. Clients send ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sardis_ledger.amounts import validate_account_id
from sardis_ledger.errors import AuthError, ValidationError

__all__ = [
    "SCOPES",
    "ApiKey",
    "KeyStore",
    "Principal",
    "generate_key",
    "hash_key",
    "is_loopback",
]

Scope = Literal["admin", "account", "read"]
SCOPES: tuple[str, ...] = ("admin", "account", "read")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_MIN_KEY_LEN = 16
_MAX_KEY_LEN = 512


def hash_key(key: str) -> str:
    """The hex SHA-256 of a key: what a key file stores."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def generate_key() -> str:
    """A fresh random key (256 bits), for operators writing a key file."""
    return "mfl_" + secrets.token_urlsafe(32)


def is_loopback(host: str | None) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1, and
    127.0.0.0/8 mapped into IPv6, as a dual-stack socket reports IPv4 clients)."""
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        addr = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped.is_loopback  # Python < 3.13 says False for ::ffff:127.0.0.1
    return addr.is_loopback


@dataclass(frozen=True, slots=True)
class ApiKey:
    name: str
    digest: bytes
    scope: Scope
    account: str | None = None

    def __repr__(self) -> str:  # never show the digest either
        return f"ApiKey(name={self.name!r}, scope={self.scope!r}, account={self.account!r})"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, and what they may do. Checks raise AuthError (HTTP 403)."""

    name: str
    scope: Scope
    account: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.scope == "admin"

    def _deny(self, what: str) -> AuthError:
        return AuthError(f"key {self.name!r} ({self.scope}) may not {what}", reason="forbidden")

    def require_admin(self, what: str = "do this") -> None:
        if not self.is_admin:
            raise self._deny(what)

    def require_spend(self, account_id: str) -> None:
        """Move funds out of ``account_id``: admin, or the key bound to it."""
        if not (self.is_admin or (self.scope == "account" and self.account == account_id)):
            raise self._deny(f"spend from {account_id!r}")

    def require_any_of(self, account_ids: Sequence[str | None], what: str) -> None:
        """Act as one of these parties: admin, or a key bound to one of them."""
        if not (self.is_admin or (self.scope == "account" and self.account in account_ids)):
            raise self._deny(what)

    def require_read(self, account_ids: Sequence[str | None] | None = None) -> None:
        """Read data about these accounts (``None``: the whole ledger)."""
        if self.scope in ("admin", "read"):
            return
        if account_ids is None or self.account not in account_ids:
            raise self._deny("read this")


ANONYMOUS_ADMIN = Principal("anonymous", "admin")


class KeyStore:
    """The configured keys; :meth:`authenticate` turns a presented key into a Principal."""

    def __init__(self, keys: Sequence[ApiKey]) -> None:
        self._keys = tuple(keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"KeyStore({len(self._keys)} keys)"

    @classmethod
    def from_json(cls, data: object, *, source: str = "API key configuration") -> KeyStore:
        entries = data.get("keys") if isinstance(data, Mapping) else data
        if not isinstance(entries, list):
            raise ValidationError(f"{source}: expected {{\"keys\": [...]}} or a list of keys")
        keys: list[ApiKey] = []
        for i, item in enumerate(entries):
            keys.append(_parse_key(item, f"{source}, key #{i + 1}"))
        return cls(keys)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> KeyStore:
        try:
            text = Path(path).read_text(encoding="utf-8")
            data = json.loads(text)
        except (OSError, ValueError) as exc:
            raise ValidationError(f"cannot read API key file {str(path)!r}: {type(exc).__name__}") from None
        return cls.from_json(data, source=f"API key file {str(path)!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> KeyStore | None:
        """Keys from ``LEDGER_API_KEYS_FILE`` and/or ``LEDGER_API_KEYS``; None if neither is set."""
        env = os.environ if environ is None else environ
        stores: list[KeyStore] = []
        if env.get("LEDGER_API_KEYS_FILE"):
            stores.append(cls.from_file(env["LEDGER_API_KEYS_FILE"]))
        if env.get("LEDGER_API_KEYS"):
            try:
                data = json.loads(env["LEDGER_API_KEYS"])
            except ValueError:
                raise ValidationError("LEDGER_API_KEYS is not valid JSON") from None
            stores.append(cls.from_json(data, source="LEDGER_API_KEYS"))
        if not stores:
            return None
        return cls([k for s in stores for k in s._keys])

    def authenticate(self, presented: str | None) -> Principal:
        """The principal for a presented key; AuthError (401) when missing or unknown.

        Every stored digest is compared, in constant time, whatever matches."""
        if not presented:
            raise AuthError("an API key is required (Authorization: Bearer <key> or X-API-Key)",
                            reason="missing_key")
        if len(presented) > _MAX_KEY_LEN:
            raise AuthError("invalid API key", reason="invalid_key")
        digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
        found: ApiKey | None = None
        for key in self._keys:
            if hmac.compare_digest(digest, key.digest) and found is None:
                found = key
        if found is None:
            raise AuthError("invalid API key", reason="invalid_key")
        return Principal(found.name, found.scope, found.account)


def _parse_key(item: object, where: str) -> ApiKey:
    if not isinstance(item, Mapping):
        raise ValidationError(f"{where}: each key is an object")
    unknown = set(item) - {"name", "scope", "account", "sha256", "key"}
    if unknown:
        raise ValidationError(f"{where}: unknown fields {sorted(unknown)}")
    name = item.get("name")
    if not isinstance(name, str) or not 1 <= len(name) <= 64:
        raise ValidationError(f"{where}: 'name' must be a string of 1-64 characters")
    scope = item.get("scope")
    if scope not in SCOPES:
        raise ValidationError(f"{where}: 'scope' must be one of {list(SCOPES)}")
    account = item.get("account")
    if scope == "account":
        validate_account_id(account, field="account")
    elif account is not None:
        raise ValidationError(f"{where}: 'account' is only for scope 'account'")
    has_hash, has_key = "sha256" in item, "key" in item
    if has_hash == has_key:
        raise ValidationError(f"{where}: give exactly one of 'sha256' and 'key'")
    digest: bytes
    if has_hash:
        value: Any = item["sha256"]
        if not isinstance(value, str) or not _HEX64.fullmatch(value.lower()):
            raise ValidationError(f"{where}: 'sha256' must be 64 hex digits")
        digest = bytes.fromhex(value)
    else:
        raw = item["key"]
        if not isinstance(raw, str) or not _MIN_KEY_LEN <= len(raw) <= _MAX_KEY_LEN:
            raise ValidationError(f"{where}: 'key' must be {_MIN_KEY_LEN}-{_MAX_KEY_LEN} characters")
        digest = hashlib.sha256(raw.encode("utf-8")).digest()
    return ApiKey(name, digest, scope, account if isinstance(account, str) else None)
