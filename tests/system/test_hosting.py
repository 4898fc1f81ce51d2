"""docs/hosting.md's worked example, run as written (its ports moved to free ones): the stand-in
identity provider, `tracktalk serve` over its embedded database taking its tokens and making their
users on first sight, a page of the host app on another origin — opened in Chromium, where it POSTs
and GETs with a token whose `sub` is `auth0|5f7c8ec7` — then curl and psql as the guide types them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
from playwright.async_api import Browser

from tests.support.processes import ROOT, free_port, port_open
from tests.support.waiting import async_wait_until

pytestmark = pytest.mark.timeout(180)

GUIDE = ROOT / "docs" / "hosting.md"
START = 90.0
"""Seconds the example may take to be up: a new embedded PostgreSQL, the demo's audio made."""


def example_blocks() -> tuple[str, str]:
    """The two shell blocks of the guide's worked example."""
    part = GUIDE.read_text().split("## A worked example", 1)[1]
    blocks = re.findall(r"```sh\n(.*?)```", part, re.S)
    assert len(blocks) == 2, "docs/hosting.md: the worked example has two shell blocks"
    return blocks[0], blocks[1]


def ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


async def test_the_worked_example_runs_as_written(browser: Browser, tmp_path: Path) -> None:
    ports = {"9000": free_port(), "8000": free_port(), "3000": free_port()}
    first, second = example_blocks()
    script = f"{first}\nread -r _go_on\n{second}\nwait\n"
    for old, new in ports.items():
        assert old in script
        script = script.replace(old, str(new))
    script = script.replace(". .venv/bin/activate", f". {ROOT}/.venv/bin/activate")
    script = script.replace("docs/examples/host-page", str(ROOT / "docs" / "examples" / "host-page"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRACKTALK_", "DATABASE_URL"))}
    run = await asyncio.create_subprocess_exec(
        "bash",
        "-e",
        "-c",
        script,
        cwd=tmp_path,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        assert run.stdout is not None and run.stdin is not None
        said: list[str] = []
        while not said or not said[-1].startswith("open "):
            line = await asyncio.wait_for(run.stdout.readline(), START)
            assert line, f"the example ended before printing the page's address: {said}"
            said.append(line.decode().strip())
        await async_wait_until(lambda: ready(ports["8000"]), START, "tracktalk to be ready", interval=0.2)
        assert port_open(ports["3000"]) and port_open(ports["9000"])
        address, token = said[-1].removeprefix("open ").split("#", 1)
        # The page calls tracktalk on port 8000 unless told otherwise: here, its port.
        tracktalk = f"http://127.0.0.1:{ports['8000']}"
        context = await browser.new_context()
        page = await context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        await page.goto(f"{address}?{urlencode({'tracktalk': tracktalk})}#{token}")
        await page.wait_for_function("() => document.body.dataset.done === 'yes'", timeout=15_000)
        shown = await page.text_content("#out")
        await context.close()
        assert errors == [] and shown is not None
        found = re.fullmatch(
            r"POST 201: comment \d+ by Alice_Liddell \(tracktalk user (\d+)\)\n"
            r"GET 200: \d+ comments on sunrise, mine among them: true\n",
            shown,
        )
        assert found, shown
        run.stdin.write(b"\n")
        run.stdin.close()
        out = (await asyncio.wait_for(run.stdout.read(), 60)).decode()
        assert await asyncio.wait_for(run.wait(), 30) == 0, out
    finally:
        if run.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(run.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(run.wait(), 20)
            except TimeoutError:
                os.killpg(run.pid, signal.SIGKILL)
                await run.wait()
        # The embedded server's data, when it went to /var/tmp (root's runs): the first line of the note.
        note = tmp_path / ".tracktalk" / "DATA-IS-ELSEWHERE.txt"
        if note.exists():
            elsewhere = Path(note.read_text().splitlines()[0].rstrip("/"))
            assert elsewhere.parent == Path("/var/tmp") and elsewhere.name.startswith("tracktalk-")
            shutil.rmtree(elsewhere, ignore_errors=True)
    # curl: the same user, found now; psql: its row.
    user_id = found.group(1)
    assert f'"user_id":{user_id},"username":"Alice_Liddell"' in out, out
    assert re.search(rf"{user_id} \| Alice_Liddell \| auth0\|5f7c8ec7", out), out
