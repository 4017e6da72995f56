"""The one place where ledger errors become HTTP statuses and JSON bodies.

The API, the 402 integration (:mod:`mesh_fake_ledger.payments`) and any router
added to the app answer errors through :func:`error_response`, so a code means
the same status everywhere and a remote client can rebuild the exception from
the body with :func:`sardis_ledger.errors.error_from_json`.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import JSONResponse

from sardis_ledger.errors import AuthError, HoldError, LedgerError

__all__ = ["HTTP_STATUS", "error_body", "error_response", "http_status"]

HTTP_STATUS: dict[str, int] = {
    "invalid_request": 422,
    "asset_mismatch": 422,
    "account_not_found": 404,
    "batch_not_found": 404,
    "entry_not_found": 404,
    "account_exists": 409,
    "insufficient_balance": 409,
    "payment_required": 402,
    "already_reversed": 409,
    "idempotency_conflict": 409,
    "hold_error": 409,
    "lock_timeout": 503,
    "unauthorized": 401,
    "storage_error": 503,
    "storage_retryable": 503,
    "integrity_error": 500,
    "proof_invalid": 422,
}
"""Status by error code. ``insufficient_balance`` is 409 (e.g. a refund its receiver
cannot cover); a payer that cannot pay a charge or hold gets ``payment_required`` (402)."""


def http_status(exc: LedgerError) -> int:
    """HTTP status for a ledger error; the reason refines the two codes that cover
    several situations (a missing hold is 404, a key without the scope is 403)."""
    reason = exc.details.get("reason")
    if isinstance(exc, HoldError) and reason == "not_found":
        return 404
    if isinstance(exc, AuthError) and reason == "forbidden":
        return 403
    return HTTP_STATUS.get(exc.code, 500)


def error_body(exc: LedgerError) -> dict[str, Any]:
    """``exc.to_json()``, made safe to serialise whatever its details hold."""
    body = exc.to_json()
    try:
        json.dumps(body)
    except (TypeError, ValueError):
        body = json.loads(json.dumps(body, default=str))
    return body


def error_response(exc: LedgerError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if http_status(exc) == 401 else None
    return JSONResponse(error_body(exc), status_code=http_status(exc), headers=headers)
