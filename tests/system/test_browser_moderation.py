"""Moderation on the page (issue 20), in Chromium, through two replicas: carol (the demo album's
creator, signed in with the demo picker on replica 0) pins, hearts, hides, approves from the queue
and turns comments off; alice (the author) and bob (a listener) watch on replica 1 with tokens a
host app would hand over. Sort, the pinned comment first, the artist's heart, reports, and a deep
link that opens at its comment."""

from __future__ import annotations

import re

import httpx
import pytest
from playwright.async_api import Browser, Locator, Page, expect

from app.dev.demo import DemoSummary
from tests.support.processes import Replica

WAIT_MS = 15_000
"""Deadline of each wait for something to show up in a page."""
TRACK = "sunrise"

pytestmark = pytest.mark.timeout(240)


class Visitor:
    def __init__(self, name: str, page: Page) -> None:
        self.name = name
        self.page = page
        self.errors: list[str] = []
        page.on("pageerror", lambda error: self.errors.append(str(error)))

    def comment(self, text: str) -> Locator:
        own = self.page.locator(":scope > .comment-row .content", has_text=re.compile(f"^{re.escape(text)}$"))
        return self.page.locator("#comments .comment").filter(has=own)

    def button(self, text: str, name: str) -> Locator:
        return self.comment(text).locator(f"> .comment-row .actions .{name}")


async def _page(browser: Browser, replica: Replica) -> Page:
    context = await browser.new_context(viewport={"width": 1100, "height": 900}, base_url=replica.http)
    context.set_default_timeout(WAIT_MS)
    return await context.new_page()


async def _with_token(browser: Browser, replica: Replica, user_id: int, name: str, path: str = "") -> Visitor:
    async with httpx.AsyncClient(base_url=replica.http, timeout=10) as client:
        answer = await client.post(f"/api/demo/token/{user_id}")
    answer.raise_for_status()
    visitor = Visitor(name, await _page(browser, replica))
    await visitor.page.goto(f"/tracks/{TRACK}{path}#token={answer.json()['token']}")
    await expect(visitor.page.locator("#conn")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
    return visitor


@pytest.fixture(scope="module")
async def carol(browser: Browser, servers: list[Replica]) -> Visitor:
    """carol, the demo album's creator, signed in with the demo picker."""
    visitor = Visitor("carol", await _page(browser, servers[0]))
    page = visitor.page
    await page.goto("/")
    async with page.expect_navigation(timeout=WAIT_MS):
        await page.select_option("#user-picker", label="carol (artist)")
    await expect(page.locator("#who .me > span:not(.avatar)")).to_have_text("carol", timeout=WAIT_MS)
    await page.goto(f"/tracks/{TRACK}")
    await expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
    return visitor


@pytest.fixture(scope="module")
async def alice(browser: Browser, servers: list[Replica], demo: DemoSummary) -> Visitor:
    return await _with_token(browser, servers[1], demo.users["alice"], "alice")


@pytest.fixture(scope="module")
async def bob(browser: Browser, servers: list[Replica], demo: DemoSummary) -> Visitor:
    return await _with_token(browser, servers[1], demo.users["bob"], "bob")


async def _post(visitor: Visitor, text: str, at: str) -> None:
    page = visitor.page
    await page.locator("#comment-input").fill(text)
    await page.locator("#comment-time").fill(at)
    await page.locator("#comment-input").press("Enter")
    await expect(visitor.comment(text)).to_be_visible(timeout=WAIT_MS)


async def test_the_creator_pins_and_hearts_and_everyone_sees_it_first_with_the_heart(
    carol: Visitor, alice: Visitor, bob: Visitor
) -> None:
    text = "Pin me: the bridge is everything."
    await _post(alice, text, at="0:21")
    await expect(alice.page.locator("#moderation")).to_be_hidden()
    await expect(alice.button(text, "pin")).to_have_count(0)  # no moderation buttons for listeners
    await expect(carol.page.locator("#moderation")).to_be_visible()
    await carol.button(text, "pin").click()
    await carol.button(text, "heart").click()
    for visitor in (alice, bob):
        first = visitor.page.locator("#comments > .comment").first
        await expect(first.locator("> .comment-row .content")).to_have_text(text, timeout=WAIT_MS)
        await expect(first.locator("> .comment-row .pinned-mark")).to_be_visible(timeout=WAIT_MS)
        await expect(first.locator("> .comment-row .artist-heart")).to_be_visible(timeout=WAIT_MS)
    # The pinned one stays first in every order.
    await bob.page.select_option("#comment-sort", "newest")
    await expect(
        bob.page.locator("#comments > .comment").first.locator("> .comment-row .content")
    ).to_have_text(text)
    await bob.page.select_option("#comment-sort", "top")
    await expect(
        bob.page.locator("#comments > .comment").first.locator("> .comment-row .content")
    ).to_have_text(text)
    await carol.button(text, "pin").click()  # unpin
    await expect(bob.comment(text).locator("> .comment-row .pinned-mark")).to_be_hidden(timeout=WAIT_MS)
    await bob.page.select_option("#comment-sort", "timestamp")


async def test_a_hidden_comment_goes_from_a_listeners_page_and_stays_on_its_authors(
    carol: Visitor, alice: Visitor, bob: Visitor
) -> None:
    text = "Hide me, please."
    await _post(alice, text, at="0:22")
    await expect(bob.comment(text)).to_be_visible(timeout=WAIT_MS)
    await carol.button(text, "hide").click()
    await expect(bob.comment(text)).to_have_count(0, timeout=WAIT_MS)
    await expect(carol.comment(text).locator("> .comment-row .mod-mark")).to_have_text(
        "hidden", timeout=WAIT_MS
    )
    await expect(alice.comment(text)).to_be_visible()
    await expect(alice.comment(text).locator("> .comment-row .mod-mark")).to_be_hidden()  # not told
    await carol.button(text, "hide").click()  # unhide: back on bob's page, live
    await expect(bob.comment(text)).to_be_visible(timeout=WAIT_MS)


async def test_a_report_reaches_the_queue_and_approving_it_clears_it(
    carol: Visitor, alice: Visitor, bob: Visitor
) -> None:
    text = "Report me."
    await _post(alice, text, at="0:23")
    await bob.button(text, "report").click()
    await bob.page.locator(".inline-form.report textarea").fill("off topic")
    await bob.page.locator(".inline-form.report button[type=submit]").click()
    item = carol.page.locator("#queue .queue-item", has_text=text)
    await expect(item).to_be_visible(timeout=WAIT_MS)
    await expect(item.locator(".reports")).to_have_text("bob: off topic")
    await item.locator(".approve").click()
    await expect(item).to_have_count(0, timeout=WAIT_MS)
    await expect(bob.comment(text)).to_be_visible()


async def test_comments_off_shows_on_every_page_live(carol: Visitor, bob: Visitor) -> None:
    await carol.page.locator("#comments-enabled").uncheck()
    await carol.page.locator("#settings-save").click()
    await expect(bob.page.locator("#comments-off")).to_be_visible(timeout=WAIT_MS)
    await carol.page.locator("#comments-enabled").check()
    await carol.page.locator("#settings-save").click()
    await expect(bob.page.locator("#comments-off")).to_be_hidden(timeout=WAIT_MS)


async def test_a_deep_link_opens_at_its_comment_highlighted(
    browser: Browser, servers: list[Replica], demo: DemoSummary, alice: Visitor
) -> None:
    text = "Deep link to me."
    await _post(alice, text, at="0:24")
    cid = await alice.comment(text).get_attribute("data-id")
    dave = await _with_token(browser, servers[0], demo.users["dave"], "dave", path=f"?comment={cid}")
    linked = dave.comment(text)
    await expect(linked).to_have_class(re.compile(r"\blinked\b"), timeout=WAIT_MS)
    await expect(linked).to_be_in_viewport(timeout=WAIT_MS)


async def test_no_script_errors(carol: Visitor, alice: Visitor, bob: Visitor) -> None:
    assert carol.errors == alice.errors == bob.errors == []
