""" "N listening" in a real browser: two people on one track, each through a different replica.

Headless Debian chromium driven by Playwright, as in tests/system/test_browser.py: alice's window talks
to replica 0, bob's to replica 1, each with a token handed over in the address as a host app
would. Screenshots go to tests/screenshots/ (ignored by git).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import httpx
import pytest
from playwright.async_api import Browser, BrowserContext, Page, expect

from app.dev.demo import DemoSummary
from tests.support.processes import ROOT, Replica

pytestmark = pytest.mark.timeout(120)

WAIT_MS = 15_000
"""Deadline of each wait for the page to show something."""
AGREE_MS = 2_000
"""A window shows a change within 2 s (issue 16)."""
TRACK = "sunrise"
SHOTS = ROOT / "tests" / "screenshots"


@pytest.fixture
async def windows(browser: Browser) -> AsyncIterator[list[BrowserContext]]:
    """Browser windows of their own (no shared storage), closed at the end."""
    made: list[BrowserContext] = []
    yield made
    for context in made:
        await context.close()


async def open_window(
    browser: Browser, windows: list[BrowserContext], replica: Replica, demo: DemoSummary, who: str | None
) -> Page:
    """A window on the track through `replica`, signed in as `who` (None: a reader without a token)."""
    context = await browser.new_context(viewport={"width": 1100, "height": 800}, base_url=replica.http)
    context.set_default_timeout(WAIT_MS)
    windows.append(context)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    address = f"/tracks/{TRACK}"
    if who is not None:
        async with httpx.AsyncClient(base_url=replica.http, timeout=10) as client:
            answer = await client.post(f"/api/demo/token/{demo.users[who]}")
        answer.raise_for_status()
        address += f"#token={answer.json()['token']}"
    await page.goto(address)
    await expect(page.locator("#track-title")).to_have_text("Sunrise", timeout=WAIT_MS)
    assert errors == []
    return page


async def test_two_windows_on_two_replicas_show_2_listening_and_1_within_2_s_of_one_closing(
    browser: Browser, servers: list[Replica], demo: DemoSummary, windows: list[BrowserContext]
) -> None:
    alice = await open_window(browser, windows, servers[0], demo, "alice")
    bob = await open_window(browser, windows, servers[1], demo, "bob")
    for page in (alice, bob):
        await expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
        await expect(page.locator("#listening")).to_have_text("2 listening", timeout=WAIT_MS)
    SHOTS.mkdir(parents=True, exist_ok=True)
    await alice.screenshot(path=SHOTS / "presence-2-listening-alice.png")

    # Someone reading without a token is not on the track's sockets: they see the count, from GET.
    reader = await open_window(browser, windows, servers[1], demo, None)
    await expect(reader.locator("#listening")).to_have_text("2 listening", timeout=WAIT_MS)
    await reader.context.close()

    await bob.context.close()
    closed = time.monotonic()
    await expect(alice.locator("#listening")).to_have_text("1 listening", timeout=AGREE_MS)
    assert time.monotonic() - closed <= AGREE_MS / 1000
    await alice.screenshot(path=SHOTS / "presence-1-listening-alice.png")
