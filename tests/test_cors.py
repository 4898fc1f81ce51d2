"""CORS on the HTTP API: a host app's page on another origin calls the API of a replica whose
TRACKTALK_ALLOWED_ORIGINS names that origin — in Chromium, as a front-end developer would — and a
page on an origin not named cannot. What the preflights and answers carry is checked header by
header with httpx."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser

from app.config import Settings
from app.edge.cors import ALLOW_HEADERS, MAX_AGE
from app.env import ConfigError
from tests.support import Replica, World, open_socket, replicas
from tests.test_client import HostApp, host_page
from tests.test_realtime import post_comment

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
            ("/api/comments/1", "DELETE", {"PUT", "DELETE", "OPTIONS"}),
            ("/api/comments/1/like", "POST", {"POST", "DELETE", "OPTIONS"}),
            ("/api/notifications", "GET", {"GET", "OPTIONS"}),
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


FETCH = """async ([base, token]) => {
  const call = async (method, path, body) => {
    const headers = { Authorization: `Bearer ${token}` };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const answer = await fetch(base + path, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await answer.text();
    return { status: answer.status, body: text ? JSON.parse(text) : null, link: answer.headers.get("Link") };
  };
  return call;
}"""


async def in_page(page: Any, base: str, token: str, steps: str) -> Any:
    """Run `steps` (a JS function body with `call(method, path, body)`) in the page."""
    return await page.evaluate(
        f"async ([base, token]) => {{ const call = await ({FETCH})([base, token]); {steps} }}", [base, token]
    )


async def test_a_page_on_an_allowed_origin_reads_posts_and_deletes(
    browser: Browser, allowing: Replica, world: World, hosts: tuple[HostApp, HostApp]
) -> None:
    page = await host_page(browser, hosts[0], f"{allowing.http}/client/tracktalk.js")
    try:
        done = await in_page(
            page,
            allowing.http,
            world.tokens["alice"],
            f"""
            const track = "{world.public}";
            const posted = await call("POST", `/api/tracks/${{track}}/comments`, {{content: "from a host page", timestamp: 3}});
            const listed = await call("GET", `/api/tracks/${{track}}/comments?limit=1`);
            const edited = await call("PUT", `/api/comments/${{posted.body.id}}`, {{content: "edited from a host page"}});
            const liked = await call("POST", `/api/comments/${{posted.body.id}}/like`);
            const gone = await call("DELETE", `/api/comments/${{posted.body.id}}`);
            const again = await call("DELETE", `/api/comments/${{posted.body.id}}`);
            return {{posted, listed, edited, liked, gone, again}};
            """,
        )
    finally:
        await page.context.close()
    assert done["posted"]["status"] == 201 and done["posted"]["body"]["content"] == "from a host page"
    assert done["listed"]["status"] == 200 and len(done["listed"]["body"]) == 1
    assert done["listed"]["link"] is not None  # exposed: the page can page on
    assert done["edited"]["status"] == 200 and done["edited"]["body"]["is_edited"] is True
    assert done["liked"]["status"] == 200 and done["liked"]["body"]["like_count"] == 1
    assert done["gone"]["status"] == 204
    assert done["again"]["status"] == 404 and "not found" in done["again"]["body"]["detail"]


async def test_a_page_on_another_origin_cannot_call_the_api(
    browser: Browser, allowing: Replica, world: World, hosts: tuple[HostApp, HostApp]
) -> None:
    before = await post_comment(allowing.http, world, "bob", world.public, "before the refused page")
    page = await host_page(browser, hosts[1], f"{allowing.http}/client/tracktalk.js")
    try:
        refused = await in_page(
            page,
            allowing.http,
            world.tokens["alice"],
            f"""
            const outcomes = [];
            for (const [method, path, body] of [
              ["GET", "/api/tracks/{world.public}/comments", undefined],
              ["POST", "/api/tracks/{world.public}/comments", {{content: "must not land", timestamp: 1}}],
              ["DELETE", "/api/comments/{before["id"]}", undefined],
            ]) {{
              try {{ outcomes.push(["answered", (await call(method, path, body)).status]); }}
              catch (error) {{ outcomes.push([error.name, String(error.message)]); }}
            }}
            return outcomes;
            """,
        )
    finally:
        await page.context.close()
    assert [kind for kind, _ in refused] == ["TypeError"] * 3, refused  # "Failed to fetch"
    async with httpx.AsyncClient(base_url=allowing.http, timeout=10) as client:
        comments = (await client.get(f"/api/tracks/{world.public}/comments?limit=500")).json()
    contents = [c["content"] for c in comments]
    assert "must not land" not in contents and "before the refused page" in contents


@pytest.mark.parametrize(
    "written", ["https://app.example/", "app.example", "https://app.example/page", "*", "https://*.example"]
)
def test_an_allowed_origin_that_no_browser_sends_fails_at_start(written: str) -> None:
    """The list is compared exactly with `Origin`: a trailing slash or a pattern would never match."""
    env = {"DATABASE_URL": "postgresql://unused/unused", "TRACKTALK_SECRET": "s" * 32}
    with pytest.raises(ConfigError, match=r"^TRACKTALK_ALLOWED_ORIGINS: .* is not an origin"):
        Settings.from_env({**env, "TRACKTALK_ALLOWED_ORIGINS": f"http://localhost:3000, {written}"})
    fine = Settings.from_env(
        {**env, "TRACKTALK_ALLOWED_ORIGINS": "http://localhost:3000, https://app.example"}
    )
    assert fine.allowed_origins == ("http://localhost:3000", "https://app.example")
