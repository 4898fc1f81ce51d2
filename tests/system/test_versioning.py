"""The protocol's version, where a client meets it: `connected.protocol`, the two schema
documents, /client/v1/ (with long cache headers, and a module that finds its server from there)
and CHANGELOG.md. (How a TypeScript project uses the .d.ts: tests/system/test_typescript.py.)"""

from __future__ import annotations

import pytest
from playwright.async_api import Browser

from app.wire import PROTOCOL
from tests.support.host_app import HostApp, host_page, start, wait_status
from tests.support.processes import Replica
from tests.support.seed import World

pytestmark = pytest.mark.timeout(120)


async def test_a_page_that_imports_the_versioned_module_reaches_its_server(
    browser: Browser, host_app: HostApp, replica: Replica, world: World
) -> None:
    """Without baseUrl the module takes the server from its own address: …/client/v1/ must not
    make it look for sockets under /client/."""
    page = await host_page(browser, host_app, f"{replica.http}/client/v{PROTOCOL}/tracktalk.js")
    try:
        assert await page.evaluate("() => tracktalk.PROTOCOL") == PROTOCOL
        await start(page, world.tokens["bob"], trackId=world.public)
        live = (await wait_status(page, "live"))[0]
        assert live["protocol"] == PROTOCOL
        assert await page.evaluate("() => feed.socket.url.split('?')[0]") == (
            f"{replica.ws}/api/ws/track/{world.public}"
        )
    finally:
        await page.context.close()
