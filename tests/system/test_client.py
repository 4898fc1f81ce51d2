"""The browser client /client/tracktalk.js, in headless chromium, on a page that loads nothing else.

The page is a host app's, served from another origin (a port of its own): it imports the module
from tracktalk's server, as another site would, and logs what the feed hands it. Against two real
replicas behind nginx it must see every event, in order, across a replica killed under it. What
a real server never does on demand (duplicates, a gap, each close code at the right moment) comes
from a scripted WebSocket server that the test drives frame by frame.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from playwright.async_api import Browser, Page

from app import wire
from app.auth.hs256 import issue_token
from tests.support.host_app import (
    AT_ONCE_S,
    TRACK,
    WAIT_MS,
    HostApp,
    Scripted,
    ScriptedServer,
    connected,
    host_page,
    liked,
    start,
    wait_status,
)
from tests.support.metrics import metric
from tests.support.processes import SECRET, Replica
from tests.support.proxies import Nginx
from tests.support.seed import World
from tests.support.sockets import RECV_TIMEOUT
from tests.support.waiting import async_wait_until
from tests.support.writes import insert_comment, post_comment

pytestmark = pytest.mark.timeout(180)


DTS = Path(__file__).resolve().parents[2] / "app" / "client" / "tracktalk.d.ts"


SLOW_BACKOFF_MS = 4000
"""The scripted tests' first backoff ceiling: a backoff waits 2 s or more, "at once" far less."""


async def durable(page: Page) -> list[dict[str, Any]]:
    """The durable events the feed delivered, in order."""
    messages: list[dict[str, Any]] = await page.evaluate("() => log.messages")
    return [m for m in messages if "seq" in m]


async def stored_events(db_url: str, track: str, after: int) -> list[dict[str, Any]]:
    """The track's events after `after`, as the server keeps them (and replays them)."""
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT message::text FROM tracktalk.events WHERE topic = 'track:' || %s AND seq > %s ORDER BY seq",
            (track, after),
        )
        return [json.loads(text) for (text,) in await cur.fetchall()]


async def test_a_page_with_only_the_module_sees_every_event_in_order_across_a_killed_replica(
    browser: Browser,
    host_app: HostApp,
    nginx: Nginx,
    pair: list[Replica],
    world: World,
    db_url: str,
    log_dir: Path,
) -> None:
    page = await host_page(browser, host_app, f"{nginx.http}/client/tracktalk.js")
    await start(page, world.tokens["bob"], trackId=world.timed, baseUrl=nginx.http)
    first = (await wait_status(page, "live"))[0]
    assert first["resumed"] is False
    open_sockets = [await metric(replica, "tracktalk_open_sockets") for replica in pair]
    assert 1 in open_sockets, open_sockets
    holder = pair[open_sockets.index(1)]
    survivor = next(replica for replica in pair if replica is not holder)

    async def write(count: int) -> None:
        for n in range(count):
            await insert_comment(db_url, world.timed, world.users["alice"], f"by SQL {n}", ts=n % 60)

    try:
        await write(5)
        writing = asyncio.create_task(write(20))  # goes on while the replica dies
        holder.stop(signal.SIGKILL)
        await writing
        # and some of every kind, through the replica that is left
        comment = await post_comment(survivor.http, world, "alice", world.timed, "through the survivor")
        async with httpx.AsyncClient(base_url=survivor.http, timeout=10) as client:
            for method, path, who in [
                ("POST", f"/api/comments/{comment['id']}/like", "bob"),
                ("PUT", f"/api/comments/{comment['id']}", "alice"),
                ("POST", f"/api/tracks/{world.timed}/like", "bob"),
                ("POST", f"/api/tracks/{world.timed}/share", "bob"),
                ("DELETE", f"/api/comments/{comment['id']}", "alice"),
            ]:
                body = {"content": "edited"} if method == "PUT" else None
                answer = await client.request(method, path, json=body, headers=world.auth(who))
                assert answer.status_code in (200, 204), answer.text
        expected = await stored_events(db_url, world.timed, first["seq"])
        kinds = {event["type"] for event in expected}
        assert kinds == {"new_comment", "comment_liked", "comment_edited", "track_metrics", "comment_deleted"}
        await page.wait_for_function(
            "(last) => feed.lastSeq === last", arg=expected[-1]["seq"], timeout=WAIT_MS
        )
        assert await durable(page) == expected  # every event, once, in order, as the server keeps it
        resumed = (await wait_status(page, "live", 2))[1]
        assert resumed["resumed"] is True
        assert "since=" in await page.evaluate("() => feed.socket.url")
        assert await page.evaluate("() => log.refusals") == []
    finally:
        await page.context.close()
        if holder.process is not None and holder.process.poll() is not None:
            await asyncio.to_thread(holder.start, log_dir)


async def test_a_bad_token_is_refused_with_the_servers_reason_and_the_feed_stops(
    browser: Browser, host_app: HostApp, pair: list[Replica], world: World
) -> None:
    page = await host_page(browser, host_app, f"{pair[0].http}/client/tracktalk.js")
    await start(page, "not-a-token", trackId=world.public)  # baseUrl: where the module came from
    closed = (await wait_status(page, "closed"))[0]
    assert closed["code"] == 1008 and closed["reason"].startswith("invalid token")
    refusals = await page.evaluate("() => log.refusals")
    assert [(r["code"], r["reason"][:13]) for r in refusals] == [(1008, "invalid token")]
    assert await page.evaluate("() => feed.status") == "closed"
    await page.context.close()


async def test_an_expired_token_is_renewed_through_get_token_and_nothing_is_missed(
    browser: Browser, host_app: HostApp, pair: list[Replica], world: World, db_url: str
) -> None:
    page = await host_page(browser, host_app, f"{pair[1].http}/client/tracktalk.js")
    await page.evaluate("(fresh) => { tokens.fresh = fresh; }", world.tokens["dave"])
    await start(page, issue_token(SECRET, world.users["dave"], 2), trackId=world.other)
    await wait_status(page, "live")
    reconnecting = (await wait_status(page, "reconnecting"))[0]
    assert reconnecting["code"] == 4001
    await wait_status(page, "live", 2)
    assert await page.evaluate("() => log.tokenCalls") == [False, True]
    assert world.tokens["dave"] in await page.evaluate("() => feed.socket.url")
    cid = await insert_comment(db_url, world.other, world.users["alice"], "after the renewal")
    await page.wait_for_function(
        "(cid) => log.messages.some((m) => m.comment && m.comment.id === cid)", arg=cid, timeout=WAIT_MS
    )
    await page.context.close()


@pytest.fixture
async def page(browser: Browser, host_app: HostApp, pair: list[Replica]) -> AsyncIterator[Page]:
    """A host page with the module from a real replica."""
    made = await host_page(browser, host_app, f"{pair[0].http}/client/tracktalk.js")
    yield made
    await made.evaluate("() => window.feed && feed.close()")
    await made.context.close()


async def open_scripted(page: Page, server: ScriptedServer, **options: Any) -> Scripted:
    await start(
        page, "t0", trackId=TRACK, baseUrl=server.http, backoff={"firstMs": SLOW_BACKOFF_MS}, **options
    )
    return await server.next()


async def test_duplicates_are_dropped_and_a_gap_resumes_from_the_last_seq(
    page: Page, scripted: ScriptedServer
) -> None:
    first = await open_scripted(page, scripted)
    assert "since" not in first.query and first.query["token"] == "t0"
    await first.send(connected(5))
    for seq in (6, 6, 5, 8):  # a duplicate, an old one, then a gap (7 is missing)
        await first.send(liked(seq))
    second = await scripted.next()
    assert second.query["since"] == "6"
    await second.send(connected(8))
    for seq in (7, 8, 7):  # the replay, and a duplicate at the seam
        await second.send(liked(seq))
    await second.send(wire.UserTyping(track_id=TRACK, user_id=2, username="bob", is_typing=True))
    await page.wait_for_function("() => log.messages.length === 4", timeout=WAIT_MS)
    assert [m["seq"] for m in await durable(page)] == [6, 7, 8]
    assert (await page.evaluate("() => log.messages.at(-1).type")) == "user_typing"
    assert await page.evaluate("() => feed.lastSeq") == 8
    scripted.assert_no_more()


async def test_a_resync_is_handed_over_and_the_feed_goes_on_from_its_seq(
    page: Page, scripted: ScriptedServer
) -> None:
    sock = await open_scripted(page, scripted, since=50)
    assert sock.query["since"] == "50"
    await sock.send(connected(12))  # the track is behind what the caller said it has
    await sock.send(wire.Resync(track_id=TRACK, seq=12, message="events were missed: reload the comments"))
    await sock.send(liked(13))
    await page.wait_for_function("() => log.messages.length === 1", timeout=WAIT_MS)
    assert [r["seq"] for r in await page.evaluate("() => log.resyncs")] == [12]
    assert [m["seq"] for m in await durable(page)] == [13]
    live = (await wait_status(page, "live"))[0]
    assert (live["seq"], live["resumed"]) == (12, True)


async def test_the_feed_keeps_each_events_tag_and_resumes_with_it(
    page: Page, scripted: ScriptedServer
) -> None:
    """Issue 23, item 11: the tag of the last event goes back with since=, so that a server whose
    event at that seq is another (a failover lost the client's) can say `resync`."""
    sock = await open_scripted(page, scripted, since=4, tag="0a0b")
    assert (sock.query["since"], sock.query["tag"]) == ("4", "0a0b")
    await sock.send(wire.Connected(track_id=TRACK, message="m", seq=5, tag="05"))
    await sock.send(wire.CommentLiked(track_id=TRACK, seq=5, comment_id=1, like_count=1, tag="5e"))
    await page.wait_for_function("() => feed.lastSeq === 5", timeout=WAIT_MS)
    assert await page.evaluate("() => feed.lastTag") == "5e"
    await sock.close(1001, "going away")
    again = await scripted.next()
    assert (again.query["since"], again.query["tag"]) == ("5", "5e")
    await again.send(wire.Connected(track_id=TRACK, message="m", seq=9, tag="09"))
    await again.send(wire.Resync(track_id=TRACK, seq=9, tag="09", message="events were missed"))
    await page.wait_for_function("() => log.resyncs.length === 1", timeout=WAIT_MS)
    assert (await page.evaluate("() => [feed.lastSeq, feed.lastTag]")) == [9, "09"]
    await again.close(1001, "going away")
    third = await scripted.next()
    assert (third.query["since"], third.query["tag"]) == ("9", "09")


@pytest.mark.parametrize(
    ("code", "reason", "at_once"),
    [
        (1001, "server shutting down: reconnect with since=<last seq>", True),
        (1013, "too slow: reconnect with since=<last seq you got>", True),
        (1011, "server error (logged): reconnect with since=<last seq>", False),
        (1000, "bye", False),
    ],
)
async def test_after_a_drop_the_feed_resumes_at_once_or_after_a_backoff(
    page: Page, scripted: ScriptedServer, code: int, reason: str, at_once: bool
) -> None:
    sock = await open_scripted(page, scripted)
    await sock.send(connected(3))
    await sock.send(liked(4))
    await page.wait_for_function("() => feed.lastSeq === 4", timeout=WAIT_MS)
    closed_at = await sock.close(code, reason)
    again = await scripted.next()
    waited = again.at - closed_at
    if at_once:
        assert waited < AT_ONCE_S, waited
    else:
        assert waited >= SLOW_BACKOFF_MS / 2000 * 0.95, waited
    assert again.query["since"] == "4"
    reconnecting = (await wait_status(page, "reconnecting"))[0]
    assert (reconnecting["code"], reconnecting["reason"]) == (code, reason)


async def test_a_1013_before_connected_waits_for_the_backoff(page: Page, scripted: ScriptedServer) -> None:
    """The database was unavailable: reconnecting at once would only knock again."""
    sock = await open_scripted(page, scripted)
    closed_at = await sock.close(1013, "database unavailable: reconnect in a few seconds")
    again = await scripted.next()
    assert again.at - closed_at >= SLOW_BACKOFF_MS / 2000 * 0.95


async def test_1008_stops_the_feed_and_says_why(page: Page, scripted: ScriptedServer) -> None:
    sock = await open_scripted(page, scripted)
    await sock.send(connected(3))
    await wait_status(page, "live")
    await sock.close(1008, "track not found")
    closed = (await wait_status(page, "closed"))[0]
    assert (closed["code"], closed["reason"]) == (1008, "track not found")
    assert await page.evaluate("() => log.refusals") == [{"code": 1008, "reason": "track not found"}]
    assert await page.evaluate("() => [feed.status, feed.socket]") == ["closed", None]
    scripted.assert_no_more()


async def test_4001_asks_for_a_fresh_token_and_resumes_with_it_at_once(
    page: Page, scripted: ScriptedServer
) -> None:
    await page.evaluate("() => { tokens.fresh = 't1'; }")
    sock = await open_scripted(page, scripted)
    await sock.send(connected(3))
    await sock.send(liked(4))
    await page.wait_for_function("() => feed.lastSeq === 4", timeout=WAIT_MS)
    closed_at = await sock.close(4001, "token expired: reconnect with a fresh token and since=<last seq>")
    again = await scripted.next()
    assert again.at - closed_at < AT_ONCE_S
    assert (again.query["token"], again.query["since"]) == ("t1", "4")
    assert await page.evaluate("() => log.tokenCalls") == [False, True]


@pytest.mark.parametrize("fresh", [None, "still-expired"])
async def test_an_expired_token_without_a_fresh_one_stops_the_feed(
    page: Page, scripted: ScriptedServer, fresh: str | None
) -> None:
    """getToken has none (null), or the fresh one is refused as expired too: no loop, a refusal."""
    await page.evaluate("(fresh) => { tokens.fresh = fresh; }", fresh)
    sock = await open_scripted(page, scripted)
    await sock.send(connected(3))
    await sock.close(4001, "token expired: reconnect with a fresh token and since=<last seq>")
    if fresh is not None:
        again = await scripted.next()
        assert again.query["token"] == fresh
        await again.close(1008, "token expired")  # refused at the handshake, before `connected`
    closed = (await wait_status(page, "closed"))[0]
    assert closed["code"] in (4001, 1008) and closed["reason"].startswith("token expired")
    assert len(await page.evaluate("() => log.refusals")) == 1
    # Closed for good (no reconnect is due: one after the backoff would come too late to be seen).
    assert await page.evaluate("() => [feed.status, feed.socket]") == ["closed", None]
    scripted.assert_no_more()


async def test_typing_keeps_to_one_message_a_second_and_the_last_state_gets_through(
    page: Page, scripted: ScriptedServer
) -> None:
    sock = await open_scripted(page, scripted)
    await sock.send(connected(1))
    await wait_status(page, "live")
    # Keystrokes for half a second, then a stop at once: true now; false a second later, not lost.
    await page.evaluate(
        """async () => {
            for (let i = 0; i < 10; i++) {
                feed.typing(true);
                await new Promise((done) => setTimeout(done, 50));
            }
            feed.typing(false);
        }"""
    )
    await async_wait_until(lambda: len(sock.frames) >= 2, RECV_TIMEOUT, "the typing frames")
    assert sock.frames == [
        {"type": "typing", "is_typing": True},
        {"type": "typing", "is_typing": False},
    ]
    assert sock.frame_times[1] - sock.frame_times[0] >= 1.0  # the stop waited for the server's second
    for frame in sock.frames:
        wire.client_message_decoder.decode(json.dumps(frame))


async def test_typing_again_before_a_pending_stop_went_out_is_sent_again(
    page: Page, scripted: ScriptedServer
) -> None:
    """true, then false (held back: under a second since the true), then true again: the others
    may have forgotten the typist meanwhile (their comment came), so the second true goes out
    (a second after the first), not swallowed as "already said"."""
    sock = await open_scripted(page, scripted)
    await sock.send(connected(1))
    await wait_status(page, "live")
    await page.evaluate(
        """async () => {
            feed.typing(true);
            feed.typing(false);  // a comment was posted: stop (held back by the rate limit)
            await new Promise((done) => setTimeout(done, 300));
            feed.typing(true);  // typing the next one
        }"""
    )
    await async_wait_until(lambda: len(sock.frames) >= 2, RECV_TIMEOUT, "the second typing frame")
    assert sock.frames == [{"type": "typing", "is_typing": True}, {"type": "typing", "is_typing": True}]
    assert sock.frame_times[1] - sock.frame_times[0] >= 1.0  # still one a second


async def test_a_socket_without_a_token_sends_no_typing(page: Page, scripted: ScriptedServer) -> None:
    """An anonymous socket is read-only: typing would only get an `error` back."""
    await page.evaluate(
        """() => {
            window.sent = 0;
            const send = WebSocket.prototype.send;
            WebSocket.prototype.send = function (data) { window.sent += 1; return send.call(this, data); };
        }"""
    )
    await start(page, None, trackId=TRACK, baseUrl=scripted.http)
    sock = await scripted.next()
    assert "token" not in sock.query
    await sock.send(connected(1))
    live = (await wait_status(page, "live"))[0]
    assert live["anonymous"] is True
    # typing(true) sends at once when it may; here nothing goes out (and no later send is due).
    assert await page.evaluate("() => { feed.typing(true); feed.typing(false); return window.sent; }") == 0


async def test_the_declarations_name_exactly_what_the_module_exports(page: Page) -> None:
    exported = await page.evaluate("() => Object.keys(window.tracktalk).sort()")
    declared = sorted(re.findall(r"^export declare (?:const|function) (\w+)", DTS.read_text(), re.M))
    assert exported == declared
