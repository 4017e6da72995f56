"""The OpenAPI document: valid for client generators, and schemathesis, fuzzing every
operation of a real server from it, finds no 500, no undocumented status, no
response that violates its schema. Bounded: a few dozen examples per operation."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from ledger_http_helpers import Server, clean_env, run_server
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from mesh_fake_ledger.api import create_app


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("fuzz_api")
    with run_server(env=clean_env(LEDGER_DATABASE_URL=f"sqlite:///{tmp / 'ledger.db'}"), log_dir=tmp) as srv:
        for account, amount in (("alice", 1000), ("provider", 0)):
            httpx.post(f"{srv.url}/accounts/{account}/ensure", json={"initial_balance": amount}).raise_for_status()
        yield srv


@pytest.fixture(scope="module")
def api_schema(server: Server) -> Any:
    return schemathesis.openapi.from_url(f"{server.url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_server_errors_and_no_schema_violations(case: schemathesis.Case[Any]) -> None:
    case.call_and_validate(checks=[not_a_server_error, status_code_conformance, content_type_conformance,
                                   response_schema_conformance])


def test_document_is_valid_openapi_with_unique_operation_ids() -> None:
    validator = pytest.importorskip("openapi_spec_validator")
    doc = create_app().openapi()
    validator.validate(doc)
    operations = [op for item in doc["paths"].values() for op in item.values()]
    ids = [op["operationId"] for op in operations]
    assert len(ids) == len(set(ids))
    for op in operations:
        assert op.get("summary") or op.get("description")
    seed_paths = {"/accounts", "/accounts/{account_id}/balance", "/accounts/{account_id}/ensure", "/transfers"}
    assert seed_paths <= set(doc["paths"])
    assert "402" in doc["paths"]["/transfers"]["post"]["responses"]
    assert "Idempotency-Key" in {p["name"] for p in doc["paths"]["/transfers"]["post"]["parameters"]}
