"""The protocol's version, where a client meets it: `connected.protocol`, the two schema
documents, /client/v1/ (with long cache headers, and a module that finds its server from there)
and CHANGELOG.md. (How a TypeScript project uses the .d.ts: tests/system/test_typescript.py.)"""

from __future__ import annotations

import re

import httpx
import pytest

from app.handlers.client import CACHE_CONTROL, VERSIONED_CACHE_CONTROL
from app.wire import PROTOCOL
from tests.support.processes import Replica
from tests.support.seed import World
from tests.support.sockets import open_socket

pytestmark = pytest.mark.timeout(120)


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
