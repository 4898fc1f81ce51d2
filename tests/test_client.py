"""The browser client /client/tracktalk.js, in headless chromium, on a page that loads nothing else.

The page is a host app's, served from another origin (a port of its own): it imports the module
from tracktalk's server, as another site would, and logs what the feed hands it. Against two real
replicas behind nginx it must see every event, in order, across a replica killed under it. What
a real server never does on demand (duplicates, a gap, each close code at the right moment) comes
from a scripted WebSocket server that the test drives frame by frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import re
import signal
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import msgspec
import psycopg
import pytest
from playwright.async_api import Browser, Page
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from app import wire
from app.auth import issue_token
from tests.support import (
    RECV_TIMEOUT,
    SECRET,
    LocalServer,
    Nginx,
    Replica,
    World,
    async_wait_until,
    free_port,
    metric,
)
from tests.test_realtime import insert_comment, post_comment

pytestmark = pytest.mark.timeout(180)

WAIT_MS = 15_000
"""Deadline of each wait for something to happen in the page."""
DTS = Path(__file__).resolve().parent.parent / "app" / "client" / "tracktalk.d.ts"
SLOW_BACKOFF_MS = 4000
"""The scripted tests' first backoff ceiling: a backoff waits 2 s or more, "at once" far less."""
AT_ONCE_S = 1.5
"""A reconnect this soon after the close was at once (not a backoff)."""

HOST_PAGE = """<!doctype html>
<meta charset="utf-8"><title>a host app</title>
<script type="module">
import * as tracktalk from "{module}";
window.tracktalk = tracktalk;
window.log = {{ messages: [], statuses: [], resyncs: [], refusals: [], tokenCalls: [] }};
window.tokens = {{ current: null, fresh: null }};
window.start = (options) => {{
  window.feed = tracktalk.connect({{
    ...options,
    getToken: async ({{ expired }}) => {{
      log.tokenCalls.push(expired);
      return expired ? tokens.fresh : tokens.current;
    }},
    onMessage: (message) => log.messages.push(message),
    onResync: (message) => log.resyncs.push(message),
    onStatus: (status, detail) => log.statuses.push([status, detail]),
    onRefused: (refusal) => log.refusals.push(refusal),
  }});
}};
window.ready = true;
</script>
"""


class HostApp(LocalServer):
    """A host app's web server: `/?module=URL` is a page that imports only that module.

    A real server on 127.0.0.1 (chromium lets a page reach loopback addresses only from loopback
    itself), on a port of its own: another origin than any replica's.
    """

    def __init__(self) -> None:
        self.port = free_port()

        class Page(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                module = parse_qs(urlsplit(self.path).query)["module"][0]
                body = HOST_PAGE.format(module=module).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Page)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, module: str) -> str:
        return f"{self.http}/?{urlencode({'module': module})}"


@pytest.fixture(scope="module")
def host_app() -> Iterator[HostApp]:
    app = HostApp()
    yield app
    app.server.shutdown()
    app.server.server_close()


async def host_page(browser: Browser, host: HostApp, module: str) -> Page:
    """A page of the host app that imports only the client module from `module`."""
    context = await browser.new_context()
    context.set_default_timeout(WAIT_MS)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    await page.goto(host.url(module))
    await page.wait_for_function("() => window.ready === true", timeout=WAIT_MS)
    assert errors == []
    return page


async def start(page: Page, token: str | None, **options: Any) -> None:
    """connect() in the page with `options` (trackId, baseUrl, since, backoff)."""
    await page.evaluate("(token) => { tokens.current = token; }", token)
    await page.evaluate("(options) => start(options)", options)


async def wait_status(page: Page, status: str, count: int = 1) -> list[Any]:
    """Wait until the feed reported `status` `count` times; the details."""
    await page.wait_for_function(
        "([status, count]) => log.statuses.filter(([s]) => s === status).length >= count",
        arg=[status, count],
        timeout=WAIT_MS,
    )
    statuses: list[list[Any]] = await page.evaluate("() => log.statuses")
    return [detail for name, detail in statuses if name == status]


async def durable(page: Page) -> list[dict[str, Any]]:
    """The durable events the feed delivered, in order."""
    messages: list[dict[str, Any]] = await page.evaluate("() => log.messages")
    return [m for m in messages if "seq" in m]


# --- against two real replicas behind nginx ------------------------------------------------


async def stored_events(db_url: str, track: str, after: int) -> list[dict[str, Any]]:
    """The track's events after `after`, as the server keeps them (and replays them)."""
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT message::text FROM tracktalk.events WHERE track_id = %s AND seq > %s ORDER BY seq",
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


async def test_the_files_are_served_for_other_sites_with_their_types_and_answer_head(
    pair: list[Replica], host_app: HostApp
) -> None:
    async with httpx.AsyncClient(base_url=pair[0].http, timeout=10) as client:
        for name, media_type in [
            ("tracktalk.js", "text/javascript"),
            ("tracktalk.d.ts", "application/typescript"),
        ]:
            answer = await client.get(f"/client/{name}", headers={"Origin": host_app.http})
            assert answer.status_code == 200
            assert answer.headers["content-type"].split(";")[0] == media_type
            assert answer.headers["access-control-allow-origin"] == "*"
            assert answer.headers["cache-control"] == "no-cache"
            assert answer.headers["x-content-type-options"] == "nosniff"
            again = await client.get(f"/client/{name}", headers={"If-None-Match": answer.headers["etag"]})
            assert (again.status_code, again.content) == (304, b"")
            head = await client.head(f"/client/{name}")
            assert (head.status_code, head.content) == (200, b"")
            assert head.headers["content-length"] == str(len(answer.content))
            assert head.headers["etag"] == answer.headers["etag"]
        assert (await client.get("/client/other.js")).status_code == 404


# --- against a scripted server --------------------------------------------------------------


@dataclass
class Scripted:
    """One connection to the scripted server: the test sends and closes; `frames` it received."""

    conn: ServerConnection
    at: float
    query: dict[str, str]
    frames: list[dict[str, Any]] = field(default_factory=list)
    frame_times: list[float] = field(default_factory=list)

    async def send(self, message: msgspec.Struct) -> None:
        await self.conn.send(wire.encoder.encode(message).decode())

    async def close(self, code: int, reason: str) -> float:
        """Close with `code`; when it was sent."""
        closed_at = time.monotonic()
        await self.conn.close(code, reason)
        return closed_at


class ScriptedServer:
    """A WebSocket server that hands each connection to the test (no tracktalk in it)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.arrivals: asyncio.Queue[Scripted] = asyncio.Queue()
        self.server: Server | None = None

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, conn: ServerConnection) -> None:
        assert conn.request is not None
        query = {key: values[0] for key, values in parse_qs(urlsplit(conn.request.path).query).items()}
        scripted = Scripted(conn, time.monotonic(), query)
        await self.arrivals.put(scripted)
        with contextlib.suppress(ConnectionClosed):
            async for frame in conn:
                scripted.frames.append(json.loads(frame))
                scripted.frame_times.append(time.monotonic())

    async def next(self) -> Scripted:
        """The next connection the client makes."""
        return await asyncio.wait_for(self.arrivals.get(), RECV_TIMEOUT)

    def assert_no_more(self) -> None:
        assert self.arrivals.empty(), "the client connected again"


@pytest.fixture
async def scripted() -> AsyncIterator[ScriptedServer]:
    server = ScriptedServer()
    async with serve(server._handle, "127.0.0.1", server.port) as running:
        server.server = running
        yield server


@pytest.fixture
async def page(browser: Browser, host_app: HostApp, pair: list[Replica]) -> AsyncIterator[Page]:
    """A host page with the module from a real replica."""
    made = await host_page(browser, host_app, f"{pair[0].http}/client/tracktalk.js")
    yield made
    await made.evaluate("() => window.feed && feed.close()")
    await made.context.close()


TRACK = "t-scripted"


def connected(seq: int) -> wire.Connected:
    return wire.Connected(track_id=TRACK, message="Connected to comment updates", seq=seq)


def liked(seq: int) -> wire.CommentLiked:
    return wire.CommentLiked(track_id=TRACK, seq=seq, comment_id=1, like_count=seq)


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


# --- the declaration file matches the module and the wire types ------------------------------


def dts_interfaces() -> dict[str, set[str]]:
    """Each `export interface` of tracktalk.d.ts, and its property names."""
    found = {}
    for name, body in re.findall(r"^export interface (\w+) \{\n(.*?)^\}", DTS.read_text(), re.M | re.S):
        found[name] = set(re.findall(r"^  (?:readonly )?(\w+)\??:", body, re.M))
    return found


async def test_the_declarations_name_exactly_what_the_module_exports(page: Page) -> None:
    exported = await page.evaluate("() => Object.keys(window.tracktalk).sort()")
    declared = sorted(re.findall(r"^export declare (?:const|function) (\w+)", DTS.read_text(), re.M))
    assert exported == declared


WIRE_TYPES: dict[str, type[msgspec.Struct]] = {
    "Comment": wire.Comment,
    "TrackMetrics": wire.TrackMetrics,
    "LikeState": wire.LikeState,
    "Notification": wire.Notification,
    "NotificationPage": wire.NotificationPage,
    "Counters": wire.Counters,
    "Typing": wire.Typing,
    **{
        struct.__name__ if struct is not wire.Error else "ErrorMessage": struct
        for struct in get_args(wire.ServerMessage)
    },
}


def test_the_declarations_have_every_field_of_every_wire_type() -> None:
    interfaces = dts_interfaces()
    for name, struct in WIRE_TYPES.items():
        fields = set(struct.__struct_fields__)
        if struct.__struct_config__.tag is not None:
            fields.add("type")
        assert interfaces.get(name) == fields, f"tracktalk.d.ts: {name} differs from app/wire.py"
    unions = re.search(r"^export type ServerMessage =(.*?);", DTS.read_text(), re.M | re.S)
    assert unions is not None
    members = set(re.findall(r"\| (\w+)", unions.group(1)))
    assert members == {n for n, s in WIRE_TYPES.items() if s in get_args(wire.ServerMessage)}
