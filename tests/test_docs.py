"""What the guides say of their own measurements agrees with their tables, and the README's walk
through works as written (its commands are checked where they run: tests/test_cli.py)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from app.dev.demo import load_demo
from tests.support import ROOT, SECRET, replicas

SCALING = ROOT / "docs" / "scaling.md"
DASH = "\u2013"
"""The en dash of the guides' ranges."""


def row(text: str, starts: str) -> list[int]:
    """The figures of the table row that starts with `starts`, before any `[…]` of another day."""
    line = next(line for line in text.splitlines() if line.startswith(f"| {starts}"))
    cell = line.split("|")[2].split("[")[0]
    return [int(n.replace(",", "")) for n in re.findall(r"\d[\d,]*", cell)]


def test_scaling_quotes_its_own_table() -> None:
    text = SCALING.read_text()
    hot = row(text, "one hot track")
    quoted = re.findall(rf"~([\d,]+){DASH}([\d,]+) comments/s", text)
    assert quoted, "docs/scaling.md: no hot-track range in the prose"
    for low, high in quoted:  # every range it gives for one track is the measured one
        assert (int(low.replace(",", "")), int(high.replace(",", ""))) == (
            round(min(hot), -2),
            round(max(hot), -2),
        ), (low, high, hot)
    notifying = row(text, "tracktalk, 1 / 16 / 32")  # 1, 16, 32 writers
    best = row(text, "tracktalk, best")[0]  # 4 writers
    without = row(text, "the same triggers without")  # 4, 16, 32 writers
    gains = [without[0] / best - 1, without[1] / notifying[1] - 1, without[2] / notifying[2] - 1]
    said = re.search(rf"\+(\d+){DASH}(\d+) % here at 4{DASH}32 writers", text)
    assert said, "docs/scaling.md: no gain of the writers without pg_notify"
    assert (int(said.group(1)), int(said.group(2))) == (round(min(gains) * 100), round(max(gains) * 100))


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
        # A person reads the answers before the last line: the delete's frame has time to come.
        script = script.replace("\nkill %1", "\nsleep 2\nkill %1")
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
    pages = [json.loads(line) for line in out.splitlines() if line.startswith('{"notifications"')]
    assert len(pages) == 2, out
    bobs, alices = ({n["kind"] for n in page["notifications"]} for page in pages)
    assert "mention" in bobs and {"reply", "comment_like"} <= alices, pages
