"""A host app's web server and its pages, for the browser client's tests: a page that imports only
the client module it is given, and logs what the client reports; and a scripted WebSocket server
(no tracktalk in it) that the test drives frame by frame."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import msgspec
from playwright.async_api import Browser, Page
from websockets.asyncio.server import Server, ServerConnection
from websockets.exceptions import ConnectionClosed

from app import wire
from tests.support.processes import LocalServer, free_port
from tests.support.sockets import RECV_TIMEOUT

WAIT_MS = 15_000
"""Deadline of each wait for something to happen in the page."""


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
window.topicLog = {{ messages: {{}}, subscribed: [], errors: [], unsubscribed: [], resyncs: [], user: [] }};
window.startTopics = (options, topics) => {{
  window.live = tracktalk.openTopics({{
    ...options,
    getToken: async ({{ expired }}) => {{
      log.tokenCalls.push(expired);
      return expired ? tokens.fresh : tokens.current;
    }},
    onUserMessage: (message) => topicLog.user.push(message),
    onStatus: (status, detail) => log.statuses.push([status, detail]),
    onRefused: (refusal) => log.refusals.push(refusal),
  }});
  window.subs = {{}};
  for (const topic of topics) subscribeTopic(topic);
}};
window.subscribeTopic = (topic, extra = {{}}) => {{
  subs[topic] = live.subscribe(topic, {{
    ...extra,
    onMessage: (message) => (topicLog.messages[topic] ??= []).push(message),
    onSubscribed: (message) => topicLog.subscribed.push(message),
    onError: (message) => topicLog.errors.push(message),
    onUnsubscribed: (message) => topicLog.unsubscribed.push(message),
    onResync: (message) => topicLog.resyncs.push(message),
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


async def start_topics(page: Page, token: str | None, topics: list[str], **options: Any) -> None:
    """openTopics() in the page with `options` (baseUrl, backoff), subscribed to `topics`."""
    await page.evaluate("(token) => { tokens.current = token; }", token)
    await page.evaluate("([options, topics]) => startTopics(options, topics)", [options, topics])


async def wait_status(page: Page, status: str, count: int = 1) -> list[Any]:
    """Wait until the feed reported `status` `count` times; the details."""
    await page.wait_for_function(
        "([status, count]) => log.statuses.filter(([s]) => s === status).length >= count",
        arg=[status, count],
        timeout=WAIT_MS,
    )
    statuses: list[list[Any]] = await page.evaluate("() => log.statuses")
    return [detail for name, detail in statuses if name == status]


AT_ONCE_S = 1.5
"""A reconnect this soon after the close was at once (not a backoff)."""


@dataclass
class Scripted:
    """One connection to the scripted server: the test sends and closes; `frames` it received."""

    conn: ServerConnection
    at: float
    query: dict[str, str]
    frames: list[dict[str, Any]] = field(default_factory=list)
    frame_times: list[float] = field(default_factory=list)

    async def send(self, message: msgspec.Struct | dict[str, Any]) -> None:
        await self.conn.send(wire.encoder.encode(message).decode())

    async def received(self, count: int) -> list[dict[str, Any]]:
        """The first `count` frames the client sent (waiting for them)."""
        deadline = time.monotonic() + RECV_TIMEOUT
        while len(self.frames) < count:
            assert time.monotonic() < deadline, f"the client sent {self.frames}, not {count} frames"
            await asyncio.sleep(0.01)
        return self.frames[:count]

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


TRACK = "t-scripted"


def connected(seq: int) -> wire.Connected:
    return wire.Connected(track_id=TRACK, message="Connected to comment updates", seq=seq)


def liked(seq: int) -> wire.CommentLiked:
    return wire.CommentLiked(track_id=TRACK, seq=seq, comment_id=1, like_count=seq)
