"""The `tracktalk` command as a newcomer runs it: from another folder than the project's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from app.auth import verify_token

TRACKTALK = Path(sys.executable).with_name("tracktalk")
"""The console script, as `pip install` put it beside the interpreter."""


def run(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`tracktalk ARGS` in `cwd`, with `env` and none of the suite's TRACKTALK_… or DATABASE_URL."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("TRACKTALK_", "DATABASE_URL"))}
    return subprocess.run(
        [str(TRACKTALK), *args],
        cwd=cwd,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_token_outside_the_project_folder_says_where_it_looked_and_makes_nothing(tmp_path: Path) -> None:
    """It used to make a new key there and print a token that every server refuses."""
    made = run("token", "3", cwd=tmp_path)
    assert made.returncode == 2, made
    assert made.stdout == ""
    message = made.stderr
    assert message.startswith("tracktalk: no token key: TRACKTALK_SECRET is not set"), message
    assert str(tmp_path / ".tracktalk" / "secret") in message  # where it looked
    for hint in ("TRACKTALK_SECRET", "TRACKTALK_HOME", "tracktalk serve"):  # what to do
        assert hint in message, message
    assert list(tmp_path.iterdir()) == []  # no key made, no folder


def test_token_signs_with_the_key_serve_made(tmp_path: Path) -> None:
    home = tmp_path / "project" / ".tracktalk"
    home.mkdir(parents=True)
    (home / "secret").write_text("the-key-serve-made-0123456789-abcdefghij\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for cwd, env in [(home.parent, {}), (elsewhere, {"TRACKTALK_HOME": str(home)})]:
        made = run("token", "3", cwd=cwd, **env)
        assert made.returncode == 0, made.stderr
        claims = verify_token("the-key-serve-made-0123456789-abcdefghij", made.stdout.strip())
        assert claims.user_id == 3
    assert list(elsewhere.iterdir()) == []
    # With TRACKTALK_SECRET set, no folder is needed at all.
    signed = run("token", "4", cwd=elsewhere, TRACKTALK_SECRET="s" * 32)
    assert signed.returncode == 0 and verify_token("s" * 32, signed.stdout.strip()).user_id == 4
