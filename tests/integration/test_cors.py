"""CORS on the HTTP API: a host app's page on another origin calls the API of a replica whose
TRACKTALK_ALLOWED_ORIGINS names that origin — in Chromium, as a front-end developer would — and a
page on an origin not named cannot. What the preflights and answers carry is checked header by
header with httpx."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.edge.cors import ALLOW_HEADERS, MAX_AGE
from tests.support.host_app import HostApp
from tests.support.processes import Replica, replicas
from tests.support.seed import World
from tests.support.sockets import open_socket

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def hosts() -> Iterator[tuple[HostApp, HostApp]]:
    """Two host apps: one whose origin the replica allows, one it does not."""
    made = (HostApp(), HostApp())
    yield made
    for host in made:
        host.server.shutdown()
        host.server.server_close()


@pytest.fixture(scope="module")
def allowing(db_url: str, world: World, log_dir: Path, hosts: tuple[HostApp, HostApp]) -> Iterator[Replica]:
    """A replica that allows the first host app's origin (and one more, to show a list works)."""
    origins = f"https://app.example, {hosts[0].http}"
    with replicas(db_url, log_dir, 1, TRACKTALK_ALLOWED_ORIGINS=origins) as (started,):
        yield started


def cors_headers(answer: httpx.Response) -> dict[str, str]:
    return {k.lower(): v for k, v in answer.headers.items() if k.lower().startswith("access-control-")}


def preflight(origin: str, method: str, headers: str = "authorization, content-type") -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": headers,
    }


async def test_a_preflight_from_an_allowed_origin_gets_the_routes_methods(
    allowing: Replica, world: World, hosts: tuple[HostApp, HostApp]
) -> None:
    origin = hosts[0].http
    async with httpx.AsyncClient(base_url=allowing.http, timeout=10) as client:
        for path, method, methods in [
            (f"/api/tracks/{world.public}/comments", "POST", {"GET", "POST", "OPTIONS"}),
            ("/api/comments/1", "DELETE", {"GET", "PUT", "DELETE", "OPTIONS"}),
            ("/api/comments/1/like", "POST", {"POST", "DELETE", "OPTIONS"}),
            ("/api/notifications", "GET", {"GET", "OPTIONS"}),
            ("/api/forum/categories/general/threads", "POST", {"GET", "POST", "OPTIONS"}),
            ("/api/forum/threads/1", "PUT", {"GET", "PUT", "OPTIONS"}),
            ("/api/forum/posts/1", "DELETE", {"PUT", "DELETE", "OPTIONS"}),
        ]:
            answer = await client.options(path, headers=preflight(origin, method))
            assert answer.status_code == 204, (path, answer.text)
            got = cors_headers(answer)
            assert got["access-control-allow-origin"] == origin
            assert {m.strip() for m in got["access-control-allow-methods"].split(",")} == methods, path
            assert got["access-control-allow-headers"] == ALLOW_HEADERS == "Authorization, Content-Type"
            assert got["access-control-max-age"] == str(MAX_AGE)
            assert "Origin" in answer.headers["vary"]
        # A path that is no route: its 404, and nothing that lets the browser go on.
        missing = await client.options("/api/nothing/here", headers=preflight(origin, "POST"))
        assert missing.status_code == 404 and cors_headers(missing) == {}


async def test_an_origin_not_listed_gets_no_cors_headers(
    allowing: Replica, world: World, hosts: tuple[HostApp, HostApp]
) -> None:
    refused = hosts[1].http
    async with httpx.AsyncClient(base_url=allowing.http, timeout=10) as client:
        answer = await client.options(
            f"/api/tracks/{world.public}/comments", headers=preflight(refused, "POST")
        )
        assert cors_headers(answer) == {}
        for origin in (refused, f"{hosts[0].http}/", hosts[0].http.replace("127.0.0.1", "localhost")):
            got = await client.get(f"/api/tracks/{world.public}/comments", headers={"Origin": origin})
            assert got.status_code == 200 and cors_headers(got) == {}, origin


async def test_answers_to_an_allowed_origin_errors_included_can_be_read(
    allowing: Replica, world: World, hosts: tuple[HostApp, HostApp]
) -> None:
    origin = {"Origin": hosts[0].http}
    async with httpx.AsyncClient(base_url=allowing.http, timeout=10) as client:
        page = await client.get(f"/api/tracks/{world.public}/comments?limit=1", headers=origin)
        assert page.status_code == 200
        got = cors_headers(page)
        assert got["access-control-allow-origin"] == hosts[0].http
        assert {h.strip() for h in got["access-control-expose-headers"].split(",")} >= {"Link", "Retry-After"}
        unsigned = await client.post(f"/api/tracks/{world.public}/comments", json={}, headers=origin)
        assert unsigned.status_code == 401
        assert cors_headers(unsigned)["access-control-allow-origin"] == hosts[0].http
        # The client's files stay open to any origin, listed or not.
        for who in (hosts[0].http, hosts[1].http):
            module = await client.get("/client/tracktalk.js", headers={"Origin": who})
            assert module.headers["access-control-allow-origin"] == "*"


async def test_without_allowed_origins_the_api_has_no_cors_and_sockets_come_from_anywhere(
    replica: Replica, world: World, hosts: tuple[HostApp, HostApp]
) -> None:
    async with httpx.AsyncClient(base_url=replica.http, timeout=10) as client:
        answer = await client.options(
            f"/api/tracks/{world.public}/comments", headers=preflight(hosts[0].http, "POST")
        )
        assert cors_headers(answer) == {}
        got = await client.get(f"/api/tracks/{world.public}/comments", headers={"Origin": hosts[0].http})
        assert cors_headers(got) == {}
    async with open_socket(
        replica.ws,
        world.public,
        world.tokens["bob"],
        additional_headers={"Origin": "http://anywhere.example"},
    ) as sock:
        await sock.expect("connected")
