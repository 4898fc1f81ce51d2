"""What the guides say of their own measurements agrees with their tables, and the README's walk
through works as written (its commands are checked where they run: tests/system/test_cli.py)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from app.dev.demo import load_demo
from tests.support.processes import ROOT, SECRET, replicas


def readme_walk() -> str:
    """The shell block of the README's "Try it" that runs beside `make run`."""
    text = (ROOT / "README.md").read_text()
    part = text.split("## Try it", 1)[1]
    block = re.search(r"```sh\n(.*?)```", part, re.S)
    assert block, "README.md: no shell block under Try it"
    return block.group(1)


def test_the_readmes_walk_runs_as_written(new_database: Callable[[], str], log_dir: Path) -> None:
    """Against a replica over the demo data, in a folder of its own: the ids come from the
    answers (it hard-coded 15), the socket prints what happens while the commands run in the same
    terminal, and the notifications are listed before the delete takes them away."""
    url = new_database()
    load_demo(url)
    with replicas(url, log_dir, 1) as (server,), tempfile.TemporaryDirectory() as folder:
        script = readme_walk()
        script = script.replace(". .venv/bin/activate", f". {ROOT}/.venv/bin/activate")
        script = script.replace("127.0.0.1:8000", f"127.0.0.1:{server.port}")
        script = script.replace("localhost:8000", f"localhost:{server.port}")
        assert str(server.port) in script and "8000" not in script
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TRACKTALK_", "DATABASE_URL"))}
        env["TRACKTALK_SECRET"] = SECRET  # what the project folder's .tracktalk/secret is to `make run`
        done = subprocess.run(
            ["bash", "-e", "-c", script + "\nwait\n"],
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    # The websockets client draws its prompt with terminal codes: a message is what follows `< `.
    frames = [json.loads(line.split("< ", 1)[1]) for line in out.splitlines() if "< {" in line]
    kinds = [frame["type"] for frame in frames]
    for kind in ("new_comment", "mention", "comment_edited", "comment_liked", "comment_deleted"):
        assert kind in kinds, (kind, out)
    # The comment has a reply: it stays as a tombstone, as the README's comment says.
    (deleted,) = (frame for frame in frames if frame["type"] == "comment_deleted")
    assert deleted["tombstone"] is True, deleted
    # The watching client in the background redraws its prompt with terminal escapes, which may
    # come just before a curl's answer on the same line: each page is read from its own `{`.
    pages = [
        json.loads(line[line.index('{"notifications"') :])
        for line in out.splitlines()
        if '{"notifications"' in line
    ]
    assert len(pages) == 2, out
    bobs, alices = ({n["kind"] for n in page["notifications"]} for page in pages)
    assert "mention" in bobs and {"reply", "comment_like"} <= alices, pages
