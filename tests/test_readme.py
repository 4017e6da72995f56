"""The README's Python blocks run as written (PostgreSQL URLs pointed at a test database)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
PG_URL = "postgresql://postgres@127.0.0.1:5432/ledger"


def test_readme_has_python_blocks() -> None:
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                           request: pytest.FixtureRequest) -> None:
    code = BLOCKS[index]
    if PG_URL in code:
        code = code.replace(PG_URL, request.getfixturevalue("pg_url"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LEDGER_KEY_DIR", str(tmp_path / "keys"))
    for var in ("LEDGER_DATABASE_URL", "LEDGER_PATH"):
        monkeypatch.delenv(var, raising=False)
    namespace: dict[str, object] = {"__name__": f"readme_block_{index}"}
    exec(compile(code, f"README.md block {index}", "exec"), namespace)
    assert os.getcwd() == str(tmp_path)
