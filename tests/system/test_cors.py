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

from tests.support.host_app import HostApp, host_page
from tests.support.processes import Replica, replicas
from tests.support.seed import World
from tests.support.writes import post_comment

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
