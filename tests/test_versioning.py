"""The protocol's version, where a client meets it: `connected.protocol`, the two schema
documents, /client/v1/ (with long cache headers, and a module that finds its server from there)
and CHANGELOG.md. (How a TypeScript project uses the .d.ts: tests/test_typescript.py.)"""

from __future__ import annotations

import re
from typing import get_args

import httpx
import pytest
from playwright.async_api import Browser

from app import wire
from app.handlers.client import CACHE_CONTROL, VERSIONED_CACHE_CONTROL
from app.wire import PROTOCOL
from tests.support import ROOT, Replica, World, open_socket
from tests.test_client import HostApp, host_app, host_page, start, wait_status

pytestmark = pytest.mark.timeout(120)

__all__ = ["host_app"]  # the fixture, shared with tests/test_client.py

CHANGELOG = ROOT / "CHANGELOG.md"


async def test_connected_says_the_protocol_and_both_documents_carry_it(
    replica: Replica, world: World
) -> None:
    async with open_socket(replica.ws, world.public, world.tokens["bob"]) as sock:
        hello = await sock.expect("connected")
    assert hello["protocol"] == PROTOCOL == 1
    async with httpx.AsyncClient(base_url=replica.http, timeout=10) as client:
        for path in ("/schema/openapi.json", "/schema/asyncapi.json"):
            answer = await client.get(path)
            assert answer.status_code == 200, path
            assert answer.json()["info"]["version"] == str(PROTOCOL), path


async def test_the_versioned_client_is_the_same_files_cached_for_long(replica: Replica) -> None:
    async with httpx.AsyncClient(base_url=replica.http, timeout=10) as client:
        for name, media_type in [
            ("tracktalk.js", "text/javascript"),
            ("tracktalk.d.ts", "application/typescript"),
        ]:
            latest = await client.get(f"/client/{name}")
            versioned = await client.get(
                f"/client/v{PROTOCOL}/{name}", headers={"Origin": "http://host.example"}
            )
            assert versioned.status_code == 200
            assert versioned.content == latest.content
            assert versioned.headers["content-type"].split(";")[0] == media_type
            assert versioned.headers["access-control-allow-origin"] == "*"
            assert versioned.headers["cache-control"] == VERSIONED_CACHE_CONTROL
            max_age = int(re.search(r"max-age=(\d+)", VERSIONED_CACHE_CONTROL).group(1))  # type: ignore[union-attr]
            assert max_age >= 7 * 86400
            assert latest.headers["cache-control"] == CACHE_CONTROL == "no-cache"
            again = await client.get(
                f"/client/v{PROTOCOL}/{name}", headers={"If-None-Match": versioned.headers["etag"]}
            )
            assert again.status_code == 304
            head = await client.head(f"/client/v{PROTOCOL}/{name}")
            assert (head.status_code, head.headers["content-length"]) == (200, str(len(latest.content)))
        assert (await client.get(f"/client/v{PROTOCOL + 1}/tracktalk.js")).status_code == 404


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


def test_the_changelog_says_what_the_current_version_has() -> None:
    text = CHANGELOG.read_text()
    versions = re.findall(r"^## Protocol (\d+)", text, re.M)
    assert versions and int(versions[0]) == PROTOCOL, "CHANGELOG.md: the newest section comes first"
    current = text.split(f"## Protocol {PROTOCOL}", 1)[1].split("\n## ", 1)[0]
    for struct in get_args(wire.ServerMessage):
        tag = struct.__struct_config__.tag
        assert f"`{tag}`" in current, f"CHANGELOG.md, protocol {PROTOCOL}: no `{tag}`"
    for name in ("`protocol`", f"/client/v{PROTOCOL}/tracktalk.js", "since=", "TRACKTALK_ALLOWED_ORIGINS"):
        assert name in current, f"CHANGELOG.md, protocol {PROTOCOL}: nothing about {name}"
    assert "(CHANGELOG.md)" in (ROOT / "README.md").read_text()
    assert "CHANGELOG.md" in (ROOT / "docs" / "protocol.md").read_text()
