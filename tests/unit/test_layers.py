"""The import contract of pyproject.toml ([tool.importlinter]), in every test run: the live path,
presence, data and auth never import the handlers or the wiring; data never imports the live path;
the Python client (tracktalk/) takes only the message shapes and the retry waits of the service."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_import_contract_is_kept() -> None:
    # In a process of its own: import-linter configures logging anew, which disables every
    # logger this process already has (and the later tests' caplog with them).
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "lint-imports"),
            "--config",
            str(ROOT / "pyproject.toml"),
            "--no-cache",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 kept, 0 broken" in done.stdout, done.stdout
