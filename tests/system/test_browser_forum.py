"""The forum's pages in a real browser: two people, each through a different replica.

Headless Debian chromium driven by Playwright, as in tests/system/test_browser.py: alice's window
talks to replica 0, bob's to replica 1, each signed in with a token handed over in the address as
a host app would. Each test makes the category or thread it acts on, so that they pass in any
order. A live page holds one socket (/api/ws) for its topic and the bell. Screenshots go to
tests/screenshots/ (ignored by git).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import psycopg
import pytest
from playwright.async_api import Browser, BrowserContext, Page, expect

from app.dev.demo import DemoSummary
from tests.support.processes import ROOT, Replica

pytestmark = pytest.mark.timeout(180)

WAIT_MS = 15_000
"""Deadline of each wait for a page to show something."""
SHOTS = ROOT / "tests" / "screenshots"


@dataclass
class Window:
    """One person's window, what it opened and what went wrong in it."""

    name: str
    page: Page
    sockets: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    def post(self, text: str) -> Any:
        """The post whose content is exactly `text`."""
        own = self.page.locator(".content", has_text=re.compile(f"^{re.escape(text)}$"))
        return self.page.locator("#posts .post").filter(has=own)

    async def shot(self, name: str) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        await self.page.screenshot(path=SHOTS / f"forum-{name}-{self.name}.png", full_page=True)


@pytest.fixture
async def windows(browser: Browser) -> AsyncIterator[list[BrowserContext]]:
    """Browser windows of their own (no shared storage), closed at the end."""
    made: list[BrowserContext] = []
    yield made
    for context in made:
        await context.close()


async def token(replica: Replica, demo: DemoSummary, who: str) -> str:
    async with httpx.AsyncClient(base_url=replica.http, timeout=10) as client:
        answer = await client.post(f"/api/demo/token/{demo.users[who]}")
    answer.raise_for_status()
    result: str = answer.json()["token"]
    return result


async def open_window(
    browser: Browser, windows: list[BrowserContext], replica: Replica, demo: DemoSummary, who: str, path: str
) -> Window:
    """A window at `path` through `replica`, signed in as `who`."""
    context = await browser.new_context(viewport={"width": 1100, "height": 900}, base_url=replica.http)
    context.set_default_timeout(WAIT_MS)
    windows.append(context)
    page = await context.new_page()
    window = Window(who, page)
    page.on("pageerror", lambda error: window.errors.append(str(error)))
    page.on("websocket", lambda socket: window.sockets.append(socket.url))

    async def on_dialog(dialog: Any) -> None:
        window.dialogs.append(dialog.message)
        await dialog.dismiss()

    page.on("dialog", on_dialog)
    await page.goto(f"{path}#token={await token(replica, demo, who)}")
    return window


async def api(replica: Replica, demo: DemoSummary, who: str, method: str, path: str, **kw: Any) -> Any:
    async with httpx.AsyncClient(base_url=replica.http, timeout=10) as client:
        answer = await client.request(
            method, path, headers={"Authorization": f"Bearer {await token(replica, demo, who)}"}, **kw
        )
    assert answer.is_success, answer.text
    return answer.json() if answer.content else None


def new_category(db_url: str, private: bool = False) -> str:
    slug = f"b-{uuid.uuid4().hex[:8]}"
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO forum_categories (slug, title, description, is_private) VALUES (%s, %s, 'For a test', %s)",
            (slug, f"Room {slug}", private),
        )
    return slug


async def live(window: Window) -> None:
    await expect(window.page.locator("#conn")).to_have_attribute("data-state", "live", timeout=WAIT_MS)


async def test_the_forum_lists_what_each_may_see_and_the_nav_leads_there(
    browser: Browser, servers: list[Replica], demo: DemoSummary, windows: list[BrowserContext]
) -> None:
    alice = await open_window(browser, windows, servers[0], demo, "alice", "/")
    await alice.page.locator("#nav-forum").click()
    await expect(alice.page).to_have_url(re.compile("/forum$"))
    titles = alice.page.locator("#category-list .card-title")
    await expect(titles.first).to_have_text("General")
    assert "Backstage" not in await titles.all_inner_texts()  # the team's
    tina = await open_window(browser, windows, servers[1], demo, "tina", "/forum")
    await expect(tina.page.locator("#category-list .card-title", has_text="Backstage")).to_be_visible()
    await alice.page.locator("#category-list .card-link", has_text="General").click()
    await expect(alice.page.locator("#thread-list .thread").first).to_contain_text("Welcome: read me first")
    await expect(alice.page.locator("#thread-list .thread").first).to_contain_text("pinned")
    await live(alice)
    await alice.shot("category")
    await alice.page.goto("/forum/backstage")
    await expect(alice.page.locator(".missing")).to_contain_text("does not exist, or it is for the team only")
    assert alice.errors == [] and tina.errors == []


async def test_a_thread_started_in_one_window_and_a_post_written_with_sql_appear_live_in_the_other(
    browser: Browser, servers: list[Replica], demo: DemoSummary, windows: list[BrowserContext], db_url: str
) -> None:
    slug = new_category(db_url)
    older = await api(
        servers[0],
        demo,
        "dave",
        "POST",
        f"/api/forum/categories/{slug}/threads",
        json={"title": "Older", "content": "x"},
    )
    alice = await open_window(browser, windows, servers[0], demo, "alice", f"/forum/{slug}")
    bob = await open_window(browser, windows, servers[1], demo, "bob", f"/forum/{slug}")
    for window in (alice, bob):
        await live(window)
        await expect(window.page.locator("#thread-list .thread")).to_have_count(1)
    await bob.page.locator("#new-thread-title").fill("Started in a browser")
    await bob.page.locator("#new-thread-content").fill("Anyone else hear the bells at 0:12?")
    await bob.page.locator("#new-thread-send").click()
    await expect(bob.page).to_have_url(re.compile(r"/forum/threads/\d+$"))  # bob goes to his thread
    rows = alice.page.locator("#thread-list .thread")
    await expect(rows).to_have_count(2)
    await expect(rows.first).to_contain_text("Started in a browser")
    await expect(rows.first).to_contain_text("1 post")
    with psycopg.connect(db_url, autocommit=True) as conn:  # another service answers dave's, with SQL
        conn.execute(
            "INSERT INTO forum_posts (thread_id, user_id, content) VALUES (%s, %s, 'from psql')",
            (older["id"], demo.users["carol"]),
        )
    await expect(rows.first).to_contain_text("Older")  # its newest post moved it up
    await expect(rows.first).to_contain_text("2 posts")
    # One socket for the page's topic and the bell.
    assert len(alice.sockets) == 1 and re.search(r"/api/ws\?token=", alice.sockets[0])
    assert alice.errors == [] and bob.errors == []


async def test_two_windows_on_one_thread_post_reply_like_edit_type_and_see_each_other_live(
    browser: Browser, servers: list[Replica], demo: DemoSummary, windows: list[BrowserContext], db_url: str
) -> None:
    slug = new_category(db_url)
    thread = await api(
        servers[0],
        demo,
        "alice",
        "POST",
        f"/api/forum/categories/{slug}/threads",
        json={"title": "Live one", "content": "Hello all"},
    )
    path = f"/forum/threads/{thread['id']}"
    alice = await open_window(browser, windows, servers[0], demo, "alice", path)
    bob = await open_window(browser, windows, servers[1], demo, "bob", path)
    for window in (alice, bob):
        await live(window)
        await expect(window.page.locator("#thread-title")).to_have_text("Live one")
        await expect(window.post("Hello all")).to_be_visible()
        await expect(window.page.locator("#here-count")).to_have_text("2 here")

    # bob types: alice sees it; bob posts: alice sees the post and the count, without a reload.
    await bob.page.locator("#post-input").press_sequentially("Hi alice", delay=30)
    await expect(alice.page.locator("#forum-typing")).to_have_text("bob is typing…")
    await bob.page.locator("#post-input").press("Enter")
    await expect(alice.post("Hi alice")).to_be_visible()
    await expect(alice.page.locator("#thread-post-count")).to_have_text("2 posts")
    await expect(alice.page.locator("#forum-typing")).to_have_text("")

    # alice replies to bob's post: bob sees it, in reply to him.
    await alice.post("Hi alice").locator(".reply").click()
    await alice.post("Hi alice").locator("textarea").fill("Hi @bob, welcome")
    await alice.post("Hi alice").locator("textarea").press("Enter")
    reply = bob.post("Hi @bob, welcome")
    await expect(reply).to_be_visible()
    await expect(reply.locator(".reply-to")).to_have_text("in reply to bob")
    await expect(reply.locator(".mention")).to_have_text("@bob")

    # bob likes alice's first post; alice edits it; both live.
    await bob.post("Hello all").locator(".like").click()
    await expect(alice.post("Hello all").locator(".like-count")).to_have_text("1")
    await alice.post("Hello all").locator(".edit").click()
    await alice.post("Hello all").locator("textarea").fill("Hello everyone")
    await alice.post("Hello all").locator("textarea").press("Enter")
    await expect(bob.post("Hello everyone").locator(".edited")).to_be_visible()

    # A post written with SQL reaches both; bob deletes his: gone from both, counts follow.
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO forum_posts (thread_id, user_id, content) VALUES (%s, %s, 'by psql')",
            (thread["id"], demo.users["dave"]),
        )
    for window in (alice, bob):
        await expect(window.post("by psql")).to_be_visible()
        await expect(window.page.locator("#thread-post-count")).to_have_text("4 posts")
    await bob.post("Hi alice").locator(".delete").click()
    await expect(alice.post("Hi alice")).to_have_count(0)
    await expect(alice.page.locator("#thread-post-count")).to_have_text("3 posts")
    await expect(alice.post("Hi @bob, welcome").locator(".reply-to")).to_have_text(
        "in reply to a deleted post"
    )
    await alice.shot("thread")

    # The team locks it: bob's composer closes at once; markup in a post stays text.
    await api(servers[0], demo, "tina", "PUT", f"/api/forum/threads/{thread['id']}", json={"is_locked": True})
    await expect(bob.page.locator("#thread-locked")).to_be_visible()
    await expect(bob.page.locator("#post-input")).to_be_disabled()
    await api(
        servers[0],
        demo,
        "tina",
        "POST",
        f"/api/forum/threads/{thread['id']}/posts",
        json={"content": "<img src=x onerror=alert(1)>"},
    )
    await expect(alice.post("<img src=x onerror=alert(1)>")).to_be_visible()
    assert len(alice.sockets) == 1 and len(bob.sockets) == 1
    assert alice.errors == bob.errors == alice.dialogs == bob.dialogs == []


async def test_a_mention_in_the_forum_rings_the_bell_and_leads_to_the_post(
    browser: Browser, servers: list[Replica], demo: DemoSummary, windows: list[BrowserContext], db_url: str
) -> None:
    slug = new_category(db_url)
    thread = await api(
        servers[1],
        demo,
        "dave",
        "POST",
        f"/api/forum/categories/{slug}/threads",
        json={"title": "For alice", "content": "x"},
    )
    alice = await open_window(browser, windows, servers[0], demo, "alice", f"/forum/{slug}")
    await live(alice)
    # The bell's label has its count once the bell has loaded it; the badge before that is a placeholder.
    await expect(alice.page.locator("#bell")).to_have_attribute("aria-label", re.compile(r"\(\d+ unread\)$"))
    before = (
        await alice.page.locator("#bell-count").inner_text()
        if await alice.page.locator("#bell-count").is_visible()
        else "0"
    )
    made = await api(
        servers[1],
        demo,
        "dave",
        "POST",
        f"/api/forum/threads/{thread['id']}/posts",
        json={"content": "look @alice"},
    )
    await expect(alice.page.locator("#bell-count")).to_have_text(str(int(before) + 1))
    await alice.page.locator("#bell").click()
    note = alice.page.locator("#bell-list .note", has_text="For alice").first
    await expect(note).to_contain_text("mentioned you in")
    await note.locator(".note-button").click()
    await expect(alice.page).to_have_url(re.compile(rf"/forum/threads/{thread['id']}#post-{made['id']}$"))
    await expect(alice.post("look @alice")).to_have_class(re.compile("flash"))
    assert alice.errors == []
