"""Storage backends, chosen by URL.

=============================  =============================================
``memory://``                  process-local, nothing persists (tests, demos)
``sqlite:///path/ledger.db``   embedded default; many threads and processes
``path/ledger.db``             the same, as a plain path
``path/ledger.json``           one JSON document plus sealed segments (mesh)
``postgresql://…``             shared by many processes on many hosts
=============================  =============================================
"""

from __future__ import annotations

from .base import EntryQuery, Storage, Transaction

__all__ = ["EntryQuery", "Storage", "Transaction", "open_storage"]


def open_storage(url: str) -> Storage:
    from ..errors import ValidationError

    if not isinstance(url, str) or not url:
        raise ValidationError("database URL must be a non-empty string", field="database_url")
    if url == "memory://" or url.startswith("memory://"):
        from .memory import MemoryStorage

        return MemoryStorage()
    if url.startswith(("postgresql://", "postgres://", "postgresql+psycopg://")):
        try:
            from .postgresql import PostgresStorage
        except ImportError as exc:  # pragma: no cover - depends on installed extras
            raise ValidationError(
                f"PostgreSQL support needs the 'postgres' extra: pip install 'sardis-ledger[postgres]' ({exc})"
            ) from None
        return PostgresStorage(url)
    if url.startswith("sqlite://"):
        from urllib.parse import parse_qs, urlsplit

        from .sqlite import SQLiteStorage

        parts = urlsplit(url)
        path = url[len("sqlite:///") :].split("?", 1)[0] if url.startswith("sqlite:///") else ""
        if not path:
            raise ValidationError("SQLite URLs look like sqlite:///relative.db or sqlite:////abs/path.db")
        sync = parse_qs(parts.query).get("synchronous", ["NORMAL"])[0]
        return SQLiteStorage(path, synchronous=sync, url=url)
    if url.endswith(".json"):
        from .jsonfile import JSONFileStorage

        return JSONFileStorage(url)
    if url.endswith((".db", ".sqlite", ".sqlite3")):
        from .sqlite import SQLiteStorage

        return SQLiteStorage(url)
    raise ValidationError(
        f"unsupported database URL {url[:60]!r}: use memory://, sqlite:///path.db, a .json path"
        " or postgresql://…",
        field="database_url",
    )
