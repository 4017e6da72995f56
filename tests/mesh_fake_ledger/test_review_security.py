"""Review findings on the HTTP API's security (loopback detection)."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
from ledger_http_helpers import clean_env, free_port, run_server

from mesh_fake_ledger.security import is_loopback


def test_ipv4_mapped_loopback_is_loopback() -> None:
    assert is_loopback("::ffff:127.0.0.1")
    assert is_loopback("::ffff:127.8.9.10")
    assert not is_loopback("::ffff:10.1.2.3")
    assert not is_loopback("::ffff:0.0.0.0")


def test_loopback_client_of_a_dual_stack_socket_is_served_without_keys(tmp_path: Path) -> None:
    """uvicorn with workers binds an IPv6 socket itself, dual-stack (no
    IPV6_V6ONLY), so IPv4 loopback clients arrive as ``::ffff:127.0.0.1``: they
    are loopback clients and must be served like ``127.0.0.1``."""
    port = free_port()
    argv = [sys.executable, "-m", "uvicorn", "mesh_fake_ledger.api:app", "--host", "::ffff:127.0.0.1",
            "--port", str(port), "--workers", "2", "--log-level", "info"]
    env = clean_env(LEDGER_DATABASE_URL=f"sqlite:///{tmp_path / 'l.db'}")
    with run_server(argv, env=env, port=port, log_dir=tmp_path) as server:
        r = httpx.get(f"http://127.0.0.1:{port}/accounts", timeout=10)
        assert r.status_code == 200, (r.text, server.log())
