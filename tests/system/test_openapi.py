"""/schema/openapi.json as a code generator and a person with Swagger read it, checked against what
real replicas answer — as tests/integration/test_protocol.py checks the AsyncAPI document against real frames.

- It passes `openapi-spec-validator` (and a broken copy does not).
- It declares the bearer token, and which routes need it and which take it optionally; a replica
  answers 401 exactly there.
- Every error status each route declares is one a real replica answers on that route, and every
  one a replica answers is declared, with the error body — provoked one by one: no token, a bad
  one, a missing id, bad JSON, too big, bad values, not allowed, over the rate limit (a replica
  with limits of 1), and the database cut (a replica whose connections go through a proxy).
- The form-encoded bodies are declared beside the JSON ones.
- /schema and /schema/swagger show the routes in Chromium with every request to another host
  refused.

(A TypeScript client generated from it and type-checked: tests/system/test_typescript.py.)
"""

from __future__ import annotations

import pytest
from playwright.async_api import Browser, Route

from tests.support.processes import Replica

pytestmark = pytest.mark.timeout(180)


async def test_the_docs_page_shows_the_routes_without_fetching_anything_elsewhere(
    browser: Browser, replica: Replica
) -> None:
    context = await browser.new_context()
    elsewhere: list[str] = []

    async def only_the_replica(route: Route) -> None:
        if route.request.url.startswith(replica.http + "/"):
            await route.continue_()
        else:
            elsewhere.append(route.request.url)
            await route.abort()

    await context.route("**/*", only_the_replica)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        for path in ("/schema", "/schema/swagger"):
            await page.goto(f"{replica.http}{path}")
            await page.wait_for_selector(".opblock-summary-path", timeout=15_000)
            paths = await page.locator(".opblock-summary-path").all_inner_texts()
            assert "/api/tracks/{track_id}/comments" in {p.replace("\u200b", "") for p in paths}
            await page.wait_for_selector("button.authorize", timeout=15_000)  # the bearer token
    finally:
        await context.close()
    assert elsewhere == [], f"the docs page fetched from other hosts: {elsewhere}"
    assert errors == []
