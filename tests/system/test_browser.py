"""The page in a real browser: two people on one track, each through a different replica.

Headless Debian chromium driven by Playwright (never a downloaded browser). alice signs in with
the demo picker on replica 0; bob gets a token the way a host app hands one over (`#token=` in
the address) on replica 1. The tests share the two pages but not their comments: each posts
what it acts on and counts from what the page showed before, so that they pass in any order.

Screenshots go to tests/screenshots/ (ignored by git). docs/screenshot.png, the README's, is
written when it is missing or when TRACKTALK_SCREENSHOT=1.
"""

from __future__ import annotations

import asyncio
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
import pytest
from playwright.async_api import Browser, Dialog, Locator, Page, Route, expect

from app.auth.hs256 import issue_token
from app.dev.demo import DemoSummary
from tests.support.processes import ROOT, SECRET, Replica

WAIT_MS = 15_000
"""Deadline of each wait for something to show up in a page."""
RECONNECT_MS = 45_000
"""Deadline for a page to come back after its replica restarts (backoff included)."""
SHOTS = ROOT / "tests" / "screenshots"
DOC_SHOT = ROOT / "docs" / "screenshot.png"
TRACK = "sunrise"
XSS = "<img src=x onerror=alert(1)>"


@dataclass
class Visitor:
    """One person's page, and what it did that it should not have."""

    name: str
    replica: Replica
    page: Page
    dialogs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def comment(self, text: str) -> Locator:
        """The comment (top-level or reply) whose own content is exactly `text`."""
        own = self.page.locator(":scope > .comment-row .content", has_text=re.compile(f"^{re.escape(text)}$"))
        return self.page.locator("#comments .comment").filter(has=own)

    async def shot(self, name: str) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        await self.page.screenshot(path=SHOTS / f"{name}-{self.name}.png", full_page=True)


async def _visitor(browser: Browser, name: str, replica: Replica) -> Visitor:
    context = await browser.new_context(viewport={"width": 1100, "height": 900}, base_url=replica.http)
    context.set_default_timeout(WAIT_MS)  # every action and wait has a deadline
    page = await context.new_page()
    visitor = Visitor(name, replica, page)

    async def on_dialog(dialog: Dialog) -> None:
        visitor.dialogs.append(dialog.message)
        await dialog.dismiss()

    page.on("dialog", on_dialog)
    page.on("pageerror", lambda error: visitor.errors.append(str(error)))
    return visitor


@pytest.fixture(scope="module")
async def alice(browser: Browser, servers: list[Replica]) -> Visitor:
    """alice, signed in with the demo picker, on replica 0."""
    visitor = await _visitor(browser, "alice", servers[0])
    page = visitor.page
    await page.goto("/")
    await expect(page.locator(".card-title", has_text="Sunrise")).to_be_visible(timeout=WAIT_MS)
    async with page.expect_navigation(timeout=WAIT_MS):
        await page.select_option("#user-picker", label="alice")
    await expect(page.locator("#who .me > span:not(.avatar)")).to_have_text("alice", timeout=WAIT_MS)
    async with page.expect_navigation(timeout=WAIT_MS):
        await page.locator(".card-link", has_text="Sunrise").click()
    await expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
    await _loaded(visitor)
    return visitor


@pytest.fixture(scope="module")
async def bob(browser: Browser, servers: list[Replica], demo: DemoSummary) -> Visitor:
    """bob, with a token handed over in the address as a host app would, on replica 1."""
    async with httpx.AsyncClient(base_url=servers[1].http, timeout=10) as client:
        answer = await client.post(f"/api/demo/token/{demo.users['bob']}")
    answer.raise_for_status()
    visitor = await _visitor(browser, "bob", servers[1])
    await visitor.page.goto(f"/tracks/{TRACK}#token={answer.json()['token']}")
    # Live before any test acts: a socket that never got `connected` has no seq to resume from.
    await expect(visitor.page.locator("#conn")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
    await _loaded(visitor)
    return visitor


async def _loaded(visitor: Visitor) -> None:
    """Wait until the page shows the server's list and counts.

    `live` comes first: the page loads the list after its socket's `connected`, so that nothing
    between the two is missed. A count read in between is the page's placeholder, 0.
    """
    await expect(visitor.page.locator("#comments")).to_have_attribute("aria-busy", "false", timeout=WAIT_MS)


async def _post(visitor: Visitor, text: str, at: str | None = None) -> None:
    page = visitor.page
    await page.locator("#comment-input").fill(text)
    if at is not None:
        await page.locator("#comment-time").fill(at)
    await page.locator("#comment-input").press("Enter")
    await expect(visitor.comment(text)).to_be_visible(timeout=WAIT_MS)
    await expect(page.locator("#comment-input")).to_have_value("", timeout=WAIT_MS)


async def test_both_pages_are_live_on_the_track(alice: Visitor, bob: Visitor) -> None:
    for visitor in (alice, bob):
        page = visitor.page
        await expect(page).to_have_url(re.compile(f"/tracks/{TRACK}$"), timeout=WAIT_MS)
        await expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
        await expect(page.locator("#track-title")).to_have_text("Sunrise")
        await expect(visitor.comment("That opening arpeggio is the sun coming up.")).to_be_visible(
            timeout=WAIT_MS
        )
        # replies sit under their parent
        parent = visitor.comment("That opening arpeggio is the sun coming up.")
        await expect(parent.locator(".replies .content")).to_have_text(
            ["Thank you! I wrote it at 6 a.m. on the balcony."]
        )
        # One marker per comment (other tests may have posted some by now). A page's own post shows
        # its marker at once, the count comes with the socket's event a moment later: wait until
        # they agree rather than read the count once.
        await page.wait_for_function(
            "() => document.querySelectorAll('#markers .marker').length"
            " === Number(document.getElementById('comments-count').textContent)",
            timeout=WAIT_MS,
        )
        await expect(page.locator("audio#audio")).to_have_attribute("src", f"/api/tracks/{TRACK}/audio")
    # the host-token path knows who bob is; the token is out of the address bar
    await expect(bob.page.locator("#who .me > span:not(.avatar)")).to_have_text("bob")
    assert "token" not in bob.page.url
    # edit and delete only on one's own comments
    own = alice.comment("That opening arpeggio is the sun coming up.")
    await expect(own.locator("> .comment-row .edit")).to_be_visible()
    await expect(
        bob.comment("That opening arpeggio is the sun coming up.").locator("> .comment-row .edit")
    ).to_have_count(0)
    await alice.shot("01-live")


async def _count(visitor: Visitor) -> int:
    """How many comments the page says the track has, once it has loaded them."""
    await _loaded(visitor)
    return int((await visitor.page.locator("#comments-count").inner_text()).strip())


async def test_a_posts_and_b_sees_it_without_reload(alice: Visitor, bob: Visitor) -> None:
    text = "That warm chord change right here gets me every time."
    before = await _count(bob)
    await _post(alice, text, at="0:12")
    seen = bob.comment(text)
    await expect(seen).to_be_visible(timeout=WAIT_MS)
    await expect(seen.locator("> .comment-row .author")).to_have_text("alice")
    await expect(seen.locator("> .comment-row .at")).to_have_text("at 0:12")
    await expect(bob.page.locator("#comment-total")).to_have_text(f"{before + 1} comments", timeout=WAIT_MS)
    await expect(bob.page.locator("#comments-count")).to_have_text(str(before + 1), timeout=WAIT_MS)
    await expect(bob.page.locator("#markers .marker")).to_have_count(before + 1)
    await bob.shot("02-posted")


async def test_the_timeline_seeks(alice: Visitor) -> None:
    page = alice.page
    await page.wait_for_function("() => document.getElementById('audio').readyState > 0", timeout=WAIT_MS)
    marker = page.locator('#markers .marker[aria-label="dave at 0:16"]')
    await marker.hover()
    await expect(page.locator("#marker-tip .tip-body")).to_have_text(
        "Second time around it hits even harder."
    )
    await marker.click()
    await expect(page.locator("#time-now")).to_have_text("0:16", timeout=WAIT_MS)
    await expect(alice.comment("Second time around it hits even harder.")).to_have_class(re.compile("flash"))
    await expect(page.locator("#comment-time")).to_have_value("0:16")  # the form follows playback
    box = await page.locator("#wave").bounding_box()
    assert box is not None
    await page.locator("#wave").click(position={"x": box["width"] * 12.5 / 32, "y": box["height"] / 2})
    await expect(page.locator("#time-now")).to_have_text("0:12", timeout=WAIT_MS)


async def test_b_types_and_a_sees_the_indicator(alice: Visitor, bob: Visitor) -> None:
    await bob.page.locator("#comment-input").press_sequentially("Same here", delay=30)
    indicator = alice.page.locator("#typing")
    await expect(indicator).to_have_text("bob is typing…", timeout=WAIT_MS)
    await expect(bob.page.locator("#typing")).to_have_text("")  # not for one's own typing
    await alice.page.locator('#markers .marker[aria-label="bob at 0:08"]').hover()
    await expect(alice.page.locator("#marker-tip")).to_be_visible(timeout=WAIT_MS)
    await alice.shot("03-typing")
    if not DOC_SHOT.exists() or os.environ.get("TRACKTALK_SCREENSHOT") == "1":
        DOC_SHOT.parent.mkdir(parents=True, exist_ok=True)
        await alice.page.screenshot(path=DOC_SHOT)
    await bob.page.locator("#comment-input").fill("")
    await expect(indicator).to_have_text("", timeout=WAIT_MS)  # gone once bob stops


async def test_a_likes_and_b_sees_the_count(alice: Visitor, bob: Visitor) -> None:
    text = "The bass line under the bridge: liked by alice."
    await _post(alice, text, at="0:14")
    await expect(bob.comment(text)).to_be_visible(timeout=WAIT_MS)
    like = alice.comment(text).locator("> .comment-row .like")
    await like.click()
    await expect(like).to_have_attribute("aria-pressed", "true", timeout=WAIT_MS)
    await expect(bob.comment(text).locator("> .comment-row .like-count")).to_have_text("1", timeout=WAIT_MS)
    await expect(bob.comment(text).locator("> .comment-row .like")).to_have_attribute("aria-pressed", "false")

    # the track's like button toggles (the demo has alice like Sunrise already)
    track_like = alice.page.locator("#track-like")
    liked = await track_like.get_attribute("aria-pressed") == "true"
    before = int(await bob.page.locator("#likes-count").inner_text())
    await track_like.click()
    await expect(track_like).to_have_attribute("aria-pressed", str(not liked).lower(), timeout=WAIT_MS)
    await expect(bob.page.locator("#likes-count")).to_have_text(
        str(before + (-1 if liked else 1)), timeout=WAIT_MS
    )
    await track_like.click()
    await expect(track_like).to_have_attribute("aria-pressed", str(liked).lower(), timeout=WAIT_MS)
    await expect(bob.page.locator("#likes-count")).to_have_text(str(before), timeout=WAIT_MS)


async def test_reply_edit_delete_and_the_bell(alice: Visitor, bob: Visitor) -> None:
    text = "The pad that swells at 0:20 is my favourite part."
    await _post(alice, text, at="0:20")
    await expect(bob.comment(text)).to_be_visible(timeout=WAIT_MS)
    before = await _count(bob)
    unread = alice.page.locator("#bell-count")
    # The bell loads its count apart from the list: its badge is a placeholder until its label has it.
    await expect(alice.page.locator("#bell")).to_have_attribute(
        "aria-label", re.compile(r"\(\d+ unread\)$"), timeout=WAIT_MS
    )
    if await unread.is_visible():  # the demo's notifications for alice, or earlier tests'
        await alice.page.locator("#bell").click()
        await expect(alice.page.locator("#bell-list .note").first).to_be_visible(timeout=WAIT_MS)
        await expect(unread).to_be_hidden(timeout=WAIT_MS)  # opening marks them read
        await alice.page.locator("#bell").click()

    # bob replies: nested under alice's comment on both pages, and alice's bell rings live
    await bob.comment(text).locator("> .comment-row .reply").click()
    await bob.page.locator(".inline-form.reply textarea").fill("@alice agreed, it is lovely")
    await bob.page.locator(".inline-form.reply button[type=submit]").click()
    reply = "@alice agreed, it is lovely"
    await expect(alice.comment(text).locator(".replies .content")).to_have_text([reply], timeout=WAIT_MS)
    await expect(unread).to_have_text("1", timeout=WAIT_MS)
    await alice.page.locator("#bell").click()
    await expect(alice.page.locator("#bell-list .note").first).to_contain_text("bob", timeout=WAIT_MS)
    await expect(unread).to_be_hidden(timeout=WAIT_MS)
    await alice.shot("05-bell")
    await alice.page.keyboard.press("Escape")

    # alice edits: bob sees the new text, marked edited
    mine = alice.comment(text)
    await mine.locator("> .comment-row .edit").click()
    await alice.page.locator(".inline-form.edit textarea").fill("The pad at 0:20 (edited) gets me.")
    await alice.page.locator(".inline-form.edit button[type=submit]").click()
    edited = bob.comment("The pad at 0:20 (edited) gets me.")
    await expect(edited).to_be_visible(timeout=WAIT_MS)
    await expect(edited.locator("> .comment-row .edited")).to_be_visible()

    # alice deletes: on bob's page it stays as a tombstone, its reply kept (issue 20)
    await alice.comment("The pad at 0:20 (edited) gets me.").locator("> .comment-row .delete").click()
    await alice.page.locator(".confirm .danger").click()
    await expect(edited).to_have_count(0, timeout=WAIT_MS)
    tombstone = bob.comment("This comment was deleted.")
    await expect(tombstone).to_have_class(re.compile(r"\btombstone\b"), timeout=WAIT_MS)
    await expect(tombstone.locator(".replies .content")).to_have_text([reply], timeout=WAIT_MS)
    await expect(bob.page.locator("#comment-total")).to_have_text(f"{before} comments", timeout=WAIT_MS)


async def test_markup_in_a_comment_is_shown_as_text(alice: Visitor, bob: Visitor) -> None:
    await _post(alice, XSS, at="0:05")
    for visitor in (alice, bob):
        shown = visitor.comment(XSS)
        await expect(shown).to_be_visible(timeout=WAIT_MS)
        await expect(shown.locator("> .comment-row .content")).to_have_text(XSS)
        await expect(visitor.page.locator("#comments img, #markers img, #marker-tip img")).to_have_count(0)
    marker = bob.page.locator('#markers .marker[aria-label="alice at 0:05"]')
    await marker.hover()
    await expect(bob.page.locator("#marker-tip .tip-body")).to_have_text(XSS, timeout=WAIT_MS)
    await expect(bob.page.locator("#marker-tip img")).to_have_count(0)
    await bob.shot("06-markup")
    assert alice.dialogs == [] and bob.dialogs == [], "a comment ran a script"


async def test_a_closed_socket_reconnects(alice: Visitor, bob: Visitor) -> None:
    page = bob.page
    await page.evaluate("() => { window.oldSocket = window.tracktalk.socket; window.oldSocket.close(); }")
    await page.wait_for_function(
        "() => window.tracktalk.socket && window.tracktalk.socket !== window.oldSocket"
        " && window.tracktalk.socket.readyState === 1",
        timeout=WAIT_MS,
    )
    assert "since=" in await page.evaluate("() => window.tracktalk.socket.url")
    await expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
    await _post(alice, "Are you still there, bob?")
    await expect(bob.comment("Are you still there, bob?")).to_be_visible(timeout=WAIT_MS)


async def test_b_catches_up_after_its_replica_restarts(alice: Visitor, bob: Visitor, log_dir: Path) -> None:
    page = bob.page
    bob.replica.stop()
    await expect(page.locator("#conn")).to_have_attribute("data-state", "reconnecting", timeout=WAIT_MS)
    await bob.shot("08-reconnecting")
    text = "Posted while bob's server was down."
    await _post(alice, text)  # through replica 0, which stays up
    await expect(bob.comment(text)).to_have_count(0)
    await asyncio.to_thread(bob.replica.start, log_dir)
    await expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=RECONNECT_MS)
    await expect(bob.comment(text)).to_be_visible(timeout=WAIT_MS)
    assert "since=" in await page.evaluate("() => window.tracktalk.socket.url")
    await bob.shot("08-caught-up")


async def test_resync_reloads_the_list(alice: Visitor, bob: Visitor, db_url: str, log_dir: Path) -> None:
    """Events missed while away that are no longer kept get `resync`: the page reloads the list."""
    page = bob.page
    bob.replica.stop()
    await expect(page.locator("#conn")).to_have_attribute("data-state", "reconnecting", timeout=WAIT_MS)
    await _post(alice, "Only a reload shows this one.")
    # As a retention shorter than bob's absence would: the events he missed are gone.
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("DELETE FROM tracktalk.events WHERE topic = 'track:' || %s", (TRACK,))
    await asyncio.to_thread(bob.replica.start, log_dir)
    await expect(bob.comment("Only a reload shows this one.")).to_be_visible(timeout=RECONNECT_MS)
    await expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
    await _post(alice, "And live again after it.")
    await expect(bob.comment("And live again after it.")).to_be_visible(timeout=WAIT_MS)


async def test_an_expired_token_is_renewed(
    browser: Browser, servers: list[Replica], demo: DemoSummary
) -> None:
    """The socket closes when the token expires (4001); the demo page gets a fresh one and goes on."""
    short = issue_token(SECRET, demo.users["dave"], 3)
    dave = await _visitor(browser, "dave", servers[0])
    await dave.page.goto(f"/tracks/{TRACK}#token={short}")
    await expect(dave.page.locator("#conn")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
    await dave.page.wait_for_function(
        f"() => sessionStorage.getItem('tracktalk.token') !== {short!r}"
        " && window.tracktalk.socket && window.tracktalk.socket.readyState === 1",
        timeout=WAIT_MS,
    )
    await expect(dave.page.locator("#conn")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
    assert dave.errors == []
    await dave.page.context.close()


async def test_a_bad_token_is_dropped_for_reading(browser: Browser, servers: list[Replica]) -> None:
    stranger = await _visitor(browser, "stranger", servers[1])
    await stranger.page.goto(f"/tracks/{TRACK}#token=not-a-token")
    await expect(stranger.page.locator("#toasts")).to_contain_text(
        "Signed out: invalid token", timeout=WAIT_MS
    )
    await expect(stranger.page.locator("#conn")).to_have_attribute("data-state", "readonly", timeout=WAIT_MS)
    await expect(stranger.page.locator("#user-picker")).to_be_visible()  # pick a demo user instead
    await expect(stranger.comment("That opening arpeggio is the sun coming up.")).to_be_visible(
        timeout=WAIT_MS
    )
    await expect(stranger.page.locator("#comments .like").first).to_be_disabled()
    await stranger.shot("10-read-only")
    assert stranger.errors == []
    await stranger.page.context.close()


async def test_the_list_says_it_is_loading_until_the_servers_answer(
    browser: Browser, servers: list[Replica], demo: DemoSummary
) -> None:
    """The page goes live before it loads the list (so it misses nothing in between); until the
    load answers, `#comments` is `aria-busy` and its counts are placeholders, not the track's."""
    reader = await _visitor(browser, "reader", servers[0])
    held: asyncio.Future[Route] = asyncio.get_running_loop().create_future()

    def hold(route: Route) -> None:
        held.set_result(route)

    await reader.page.route(f"**/api/tracks/{TRACK}/comments?*", hold)
    await reader.page.goto(f"/tracks/{TRACK}#token={issue_token(SECRET, demo.users['dave'], 600)}")
    route = await asyncio.wait_for(held, WAIT_MS / 1000)
    await expect(reader.page.locator("#conn")).to_have_attribute("data-state", "live")
    await expect(reader.page.locator("#comments")).to_have_attribute("aria-busy", "true")
    await route.continue_()
    await expect(reader.page.locator("#comments")).to_have_attribute("aria-busy", "false", timeout=WAIT_MS)
    await expect(reader.comment("That opening arpeggio is the sun coming up.")).to_be_visible()
    assert await _count(reader) > 0
    assert reader.errors == []
    await reader.page.context.close()


async def test_a_refused_socket_shows_the_reason(
    browser: Browser, servers: list[Replica], demo: DemoSummary
) -> None:
    token = issue_token(SECRET, demo.users["dave"], 600)
    dave = await _visitor(browser, "dave", servers[1])
    await dave.page.goto(f"/tracks/{TRACK}#token={token}")
    await expect(dave.page.locator("#conn")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
    await dave.page.evaluate(
        "() => { window.tracktalk.session.token = 'bad'; window.tracktalk.socket.close(); }"
    )
    await expect(dave.page.locator("#conn")).to_have_attribute("data-state", "closed", timeout=WAIT_MS)
    await expect(dave.page.locator("#conn")).to_have_attribute("title", re.compile("invalid token"))
    await expect(dave.page.locator("#toasts")).to_contain_text("Signed out", timeout=WAIT_MS)
    assert dave.errors == []
    await dave.page.context.close()


async def test_a_link_with_another_users_token_does_not_switch_a_signed_in_tab(
    browser: Browser, servers: list[Replica], demo: DemoSummary
) -> None:
    """`#token=` signs a tab in; it never makes a signed-in tab someone else. Anyone can write a
    link (in a comment, say) with their own token in it: the tab that followed it would post as
    them (issue 23, item 9)."""
    other_track = next(track for track in demo.track_ids if track != TRACK)
    own = issue_token(SECRET, demo.users["dave"], 600)
    links = issue_token(SECRET, demo.users["tina"], 600)
    dave = await _visitor(browser, "dave-link", servers[0])
    page, me = dave.page, dave.page.locator("#who .me > span:not(.avatar)")
    await page.goto(f"/tracks/{TRACK}#token={own}")
    await expect(me).to_have_text("dave")
    await page.goto(f"/tracks/{other_track}#token={links}")  # the same tab follows the link
    await expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
    await expect(me).to_have_text("dave")
    assert "token" not in page.url
    assert await page.evaluate("() => sessionStorage.getItem('tracktalk.token')") == own
    text = "Posted after following a link that carried someone else's token."
    await _post(dave, text)
    async with httpx.AsyncClient(base_url=servers[0].http, timeout=10) as client:
        answer = await client.get(f"/api/tracks/{other_track}/comments", params={"sort": "newest"})
    answer.raise_for_status()
    assert [c["username"] for c in answer.json() if c["content"] == text] == ["dave"]
    # A fresh token of the same user is taken: a host app renews the tab's token that way.
    fresh = issue_token(SECRET, demo.users["dave"], 900)
    await page.goto(f"/tracks/{TRACK}#token={fresh}")
    await page.wait_for_function(
        f"() => sessionStorage.getItem('tracktalk.token') === {fresh!r}", timeout=WAIT_MS
    )
    await expect(me).to_have_text("dave")
    assert dave.errors == []
    await page.context.close()


async def test_no_script_errors(alice: Visitor, bob: Visitor) -> None:
    assert alice.errors == [] and bob.errors == []
    assert alice.dialogs == [] and bob.dialogs == []
