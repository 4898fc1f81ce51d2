"""The browser client after quick restarts of the server: it reconnects at once when the server
is back, instead of waiting out a backoff that grew while it was away (a reconnect after two
quick restarts waited 13.6 s with the server up). A scripted WebSocket server plays the restarts
(tests/system/test_client.py's), with the client's default backoff: 0.25 to 0.5 s, then doubling.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, Page

from tests.support.host_app import (
    AT_ONCE_S,
    WAIT_MS,
    HostApp,
    ScriptedServer,
    connected,
    host_page,
    liked,
    start,
)
from tests.support.processes import Replica

pytestmark = pytest.mark.timeout(120)


GOING_AWAY = (1001, "server shutting down: reconnect with since=<last seq>")
DOWN = (1013, "database unavailable: reconnect in a few seconds")


@pytest.fixture
async def page(browser: Browser, host_app: HostApp, replica: Replica) -> AsyncIterator[Page]:
    made = await host_page(browser, host_app, f"{replica.http}/client/tracktalk.js")
    yield made
    await made.evaluate("() => window.feed && feed.close()")
    await made.context.close()


async def test_after_two_quick_restarts_the_client_is_back_at_once(
    page: Page, scripted: ScriptedServer
) -> None:
    await start(page, "t0", trackId="t-scripted", baseUrl=scripted.http)  # the default backoff
    first = await scripted.next()
    await first.send(connected(3))
    await page.wait_for_function("() => feed.status === 'live'", timeout=WAIT_MS)
    closed_at = await first.close(*GOING_AWAY)  # restart 1
    down = await scripted.next()
    assert down.at - closed_at < AT_ONCE_S
    for _ in range(2):  # still restarting: refused twice, the backoff grows
        closed_at = await down.close(*DOWN)
        down = await scripted.next()
    back = down
    await back.send(connected(3))
    await back.send(liked(4))
    await page.wait_for_function("() => feed.lastSeq === 4", timeout=WAIT_MS)
    closed_at = await back.close(*GOING_AWAY)  # restart 2, a moment after the first
    again = await scripted.next()
    waited = again.at - closed_at
    assert waited < AT_ONCE_S, f"waited {waited:.1f} s for a server that answered at once"
    assert again.query["since"] == "4"
    # A server that keeps dropping sockets soon after accepting them is not knocked on at once
    # for ever: the third short-lived socket in a row waits for a backoff.
    await again.send(connected(4))
    await page.wait_for_function("() => feed.status === 'live'", timeout=WAIT_MS)
    closed_at = await again.close(*GOING_AWAY)
    third = await scripted.next()
    assert third.at - closed_at >= 0.95, third.at - closed_at  # backoff(2): 1-2 s
