"""FastAPI dependencies shared by every router of the ledger API.

They live apart from :mod:`mesh_fake_ledger.api` so that other routers (the
audit API) can depend on them without importing the app module, which would
make the two modules import each other.
"""

from __future__ import annotations

import os
import threading
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from mesh_fake_ledger.ledger_service import LedgerConfig, LedgerService
from mesh_fake_ledger.security import ANONYMOUS_ADMIN, KeyStore, Principal, is_loopback
from sardis_ledger.errors import AuthError

__all__ = ["PrincipalDep", "ServiceDep", "get_principal", "get_service"]


class _Runtime:
    """What a running app needs, created lazily so importing the module (for the
    OpenAPI document, or by uvicorn before forking workers) touches no storage."""

    def __init__(
        self, service: LedgerService | None, config: LedgerConfig | None, keys: KeyStore | None,
        insecure: bool | None,
    ) -> None:
        self._service = service
        self._owns_service = service is None
        self._config = config
        self._keys = keys
        self._keys_loaded = keys is not None
        self._insecure = insecure
        self._lock = threading.Lock()

    @property
    def insecure(self) -> bool:
        if self._insecure is None:
            self._insecure = os.environ.get("LEDGER_INSECURE", "").lower() in ("1", "true", "yes")
        return self._insecure

    def keys(self) -> KeyStore | None:
        if not self._keys_loaded:
            with self._lock:
                if not self._keys_loaded:
                    self._keys = KeyStore.from_env()
                    self._keys_loaded = True
        return self._keys

    def service(self) -> LedgerService:
        if self._service is None:
            with self._lock:
                if self._service is None:
                    self._service = LedgerService(self._config or LedgerConfig())
        return self._service

    def close(self) -> None:
        if self._owns_service and self._service is not None:
            self._service.close()
            self._service = None


def _runtime(request: Request) -> _Runtime:
    rt: _Runtime = request.app.state.ledger_runtime
    return rt


async def get_service(request: Request) -> LedgerService:
    """Dependency: the app's LedgerService."""
    return _runtime(request).service()


_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key (see security docs).")
_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <API key>.")


async def get_principal(
    request: Request,
    api_key: Annotated[str | None, Security(_api_key_header)] = None,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None,
) -> Principal:
    """Dependency: who is calling. Without configured keys the ledger is open to
    loopback clients only (unless started insecure); with keys, a key is required."""
    rt = _runtime(request)
    keys = rt.keys()
    if keys is None:
        client = request.client.host if request.client else None
        if rt.insecure or is_loopback(client):
            return ANONYMOUS_ADMIN
        raise AuthError(
            "this ledger has no API keys configured, so it serves loopback clients only;"
            " configure LEDGER_API_KEYS_FILE (or start it insecure)", reason="forbidden",
        )
    return keys.authenticate(api_key or (bearer.credentials if bearer else None))


ServiceDep = Annotated[LedgerService, Depends(get_service)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
