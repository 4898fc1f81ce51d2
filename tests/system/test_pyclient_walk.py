"""docs/client.md's walk, run as written (its ports moved to free ones) beside a `tracktalk serve`
over the embedded database (what `make run` starts): `python -m tracktalk` follows a track through a
second replica, which stops and starts again while comments are posted through the first; every
comment comes once, in order, the ones posted while it was away after it is back."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
from pathlib import Path

import httpx
import pytest

from tests.support.processes import ROOT, free_port
from tests.support.waiting import async_wait_until

pytestmark = pytest.mark.timeout(180)

GUIDE = ROOT / "docs" / "client.md"
START = 90.0


def walk() -> str:
    part = GUIDE.read_text().split("## From the command line", 1)[1]
    block = re.search(r"```sh\n(.*?)```", part, re.S)
    assert block, "docs/client.md: no shell block under 'From the command line'"
    return block.group(1)


def ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


async def stop(process: asyncio.subprocess.Process) -> None:
    """Stop the process and whatever it left running in its process group."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), 20)
    except TimeoutError:
        os.killpg(process.pid, signal.SIGKILL)
        await process.wait()


async def test_the_client_follows_a_track_across_a_replica_restart_as_the_guide_shows(tmp_path: Path) -> None:
    first, second = free_port(), free_port()
    script = walk()
    for old, new in (("8000", first), ("8001", second)):
        assert old in script
        script = script.replace(old, str(new))
    script = script.replace(". .venv/bin/activate", f". {ROOT}/.venv/bin/activate")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRACKTALK_", "DATABASE_URL"))}
    tracktalk = str(ROOT / ".venv" / "bin" / "tracktalk")
    # `make run`, in the folder the walk runs in: the embedded database and the demo data.
    serving = await asyncio.create_subprocess_exec(
        tracktalk,
        "serve",
        "--port",
        str(first),
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        await async_wait_until(lambda: ready(first), START, "the first replica", interval=0.2)
        run = await asyncio.create_subprocess_exec(
            "bash",  # as typed at a prompt: on after a failed command (`wait` says 143 after a kill)
            "-c",
            script,
            cwd=tmp_path,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        try:
            out, err = await asyncio.wait_for(run.communicate(), 120)
        finally:
            await stop(run)
    finally:
        await stop(serving)
        note = tmp_path / ".tracktalk" / "DATA-IS-ELSEWHERE.txt"
        if note.exists():  # root's runs keep the data in /var/tmp: the note's first line says where
            elsewhere = Path(note.read_text().splitlines()[0].rstrip("/"))
            assert elsewhere.parent == Path("/var/tmp") and elsewhere.name.startswith("tracktalk-")
            shutil.rmtree(elsewhere, ignore_errors=True)
    assert run.returncode == 0, out.decode() + err.decode()
    messages = [json.loads(line) for line in out.decode().splitlines()]
    comments = [(m["seq"], m["comment"]["content"]) for m in messages if m["type"] == "new_comment"]
    assert [content for _, content in comments] == ["one", "two", "three", "four"], messages
    seqs = [seq for seq, _ in comments]
    assert seqs == list(range(seqs[0], seqs[0] + 4))
    assert [m["type"] for m in messages].count("connected") >= 2
    assert "socket closed (1001" in err.decode(), err.decode()
