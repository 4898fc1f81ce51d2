"""The import contract of pyproject.toml ([tool.importlinter]), in every test run: the live path,
presence, data and auth never import the handlers or the wiring; data never imports the live path."""

from __future__ import annotations

from pathlib import Path

import pytest
from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parents[2]


def test_the_import_contract_is_kept(capsys: pytest.CaptureFixture[str]) -> None:
    kept = lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True)
    out = capsys.readouterr().out
    assert kept == 0, out
    assert "2 kept, 0 broken" in out, out
