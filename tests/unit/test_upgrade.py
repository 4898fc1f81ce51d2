"""app/edge/upgrade.py: a socket's handshake read once, in place of h11's reading then wsproto's.

The long way (h11, then wsproto) is the reference: a handshake read once must give the app the
scope the long way gives, and anything the one reading does not recognise must go the long way.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import h11
import pytest
import uvicorn
import wsproto
import wsproto.events
import wsproto.utilities
from uvicorn.protocols.websockets.wsproto_impl import WSProtocol
from uvicorn.server import ServerState

from app.edge import upgrade
from app.edge.httpprotocol import EdgeProtocol
from app.live.wsprotocol import FrameProtocol
from tests.support.fakes import HANDSHAKE, FakeTransport
from tests.support.waiting import async_wait_until

KEY = b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"


def request(*headers: bytes, target: bytes = b"/api/ws/track/t1?token=tok&since=3") -> bytes:
    return b"GET " + target + b" HTTP/1.1\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n"


PLAIN = [
    HANDSHAKE,
    request(
        b"Host: example.com:8000",
        b"Upgrade: websocket",
        b"Connection: Upgrade",
        KEY[:-2],
        b"Sec-WebSocket-Version: 13",
    ),
    # case and spacing as browsers and libraries vary them; extensions and subprotocols offered
    request(
        b"host:EXAMPLE.com",
        b"UPGRADE:  WebSocket  ",
        b"connection: keep-alive, Upgrade",
        b"sec-websocket-key:dGhlIHNhbXBsZSBub25jZQ==",
        b"Sec-WebSocket-Version:\t13",
        b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits",
        b"Sec-WebSocket-Protocol: tracktalk.v1, chat",
        b"Origin: https://app.example.com",
        b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) Chrome/131.0",
        b"X-Forwarded-For: 203.0.113.7, 10.0.0.1",
        b"Cookie: a=1; b=2",
        b"Empty:",
    ),
    request(
        b"Host: [::1]:80",
        b"Upgrade: websocket",
        b"Connection: upgrade",
        KEY[:-2],
        b"Sec-WebSocket-Version: 13",
        target=b"/api/ws",
    ),
]

NOT_PLAIN = {
    "split over two reads": HANDSHAKE[:-2],
    "bytes after the head": HANDSHAKE + b"\x81\x80abcd",
    "not GET": HANDSHAKE.replace(b"GET", b"POST", 1),
    "HTTP/1.0": HANDSHAKE.replace(b"HTTP/1.1", b"HTTP/1.0", 1),
    "absolute target": HANDSHAKE.replace(b"GET /", b"GET http://x/", 1),
    "a space in the target": HANDSHAKE.replace(b"t1?", b"t 1?", 1),
    "a body": HANDSHAKE.replace(b"Host: x", b"Host: x\r\nContent-Length: 0", 1),
    "chunked": HANDSHAKE.replace(b"Host: x", b"Host: x\r\nTransfer-Encoding: chunked", 1),
    "two hosts": HANDSHAKE.replace(b"Host: x", b"Host: x\r\nHost: y", 1),
    "two keys": HANDSHAKE.replace(b"Host: x", b"Host: x\r\n" + KEY[:-2], 1),
    "no host": HANDSHAKE.replace(b"Host: x\r\n", b"", 1),
    "no key": HANDSHAKE.replace(KEY, b"", 1),
    "version 8": HANDSHAKE.replace(b"Version: 13", b"Version: 8", 1),
    "upgrade to h2c": HANDSHAKE.replace(b"Upgrade: websocket", b"Upgrade: h2c", 1),
    "no Connection: upgrade": HANDSHAKE.replace(b"Connection: Upgrade", b"Connection: keep-alive", 1),
    "a folded header": HANDSHAKE.replace(b"Host: x\r\n", b"Host: x\r\nX-A: 1\r\n 2\r\n", 1),
    "a space in a header's name": HANDSHAKE.replace(b"Host: x", b"Host: x\r\nX A: 1", 1),
    "a line without a colon": HANDSHAKE.replace(b"Host: x", b"Host: x\r\nnonsense", 1),
    "a control character in a value": HANDSHAKE.replace(b"Host: x", b"Host: x\r\nX-A: a\x01b", 1),
    "a value beyond ASCII": HANDSHAKE.replace(b"Host: x", b"Host: x\r\nX-A: caf\xc3\xa9", 1),
    "an IDNA host": HANDSHAKE.replace(b"Host: x", b"Host: xn--bcher-kva.example", 1),
    "a head past h11's limit": HANDSHAKE.replace(
        b"Host: x", b"Host: x\r\nX-A: " + b"a" * upgrade.MAX_HEAD, 1
    ),
}


@pytest.mark.parametrize("why", list(NOT_PLAIN))
def test_what_is_not_plainly_a_handshake_is_left_to_h11_and_wsproto(why: str) -> None:
    assert upgrade.parse(NOT_PLAIN[why]) is None


class Connected:
    """An EdgeProtocol on a fake transport, serving an app that records its scope and answers
    the handshake as told."""

    def __init__(self, answer: list[Any] | None = None, ws: type[Any] = FrameProtocol) -> None:
        self.scope: dict[str, Any] | None = None
        self.done = asyncio.Event()
        answer = [{"type": "websocket.accept"}] if answer is None else answer

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] != "websocket":
                await send({"type": "http.response.start", "status": 404, "headers": []})
                await send({"type": "http.response.body", "body": b""})
                return
            self.scope = dict(scope)
            await receive()
            for message in answer:
                if isinstance(message, Exception):
                    raise message
                await send(message)
            await self.done.wait()

        config = uvicorn.Config(  # no keepalive: its pings would come between what is compared
            app, ws=ws, lifespan="off", log_level="warning", ws_ping_interval=None
        )
        config.load()
        self.edge = EdgeProtocol(config, ServerState(), {})
        self.transport = FakeTransport()
        self.edge.connection_made(self.transport)  # type: ignore[arg-type]

    async def send(self, *reads: bytes) -> None:
        for data in reads:
            protocol = self.transport.protocol or self.edge
            protocol.data_received(data)  # type: ignore[attr-defined]
        await async_wait_until(lambda: self.transport.written or self.transport.closing, 2, "an answer")

    def read_once(self) -> bool:
        """Whether the edge handed the request over without h11 reading it (without uvicorn's
        h11 connection even made)."""
        return "conn" not in vars(self.edge)


def _comparable(scope: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in scope.items() if k not in ("state", "extensions")}


@pytest.mark.parametrize("raw", PLAIN, ids=["plain", "with port", "varied", "ipv6 host"])
async def test_a_handshake_read_once_gives_the_app_the_scope_the_long_way_gives(raw: bytes) -> None:
    assert upgrade.parse(raw) is not None
    once, long_way = Connected(), Connected()
    await once.send(raw)
    await long_way.send(raw[:7], raw[7:])  # two reads: h11, then wsproto
    assert once.read_once() and not long_way.read_once()
    assert once.scope is not None and long_way.scope is not None
    assert _comparable(once.scope) == _comparable(long_way.scope)
    assert once.transport.written == long_way.transport.written  # the same 101
    assert once.transport.written.startswith(b"HTTP/1.1 101 ")
    once.done.set()
    long_way.done.set()


@pytest.mark.parametrize(
    "answer, status",
    [
        ([{"type": "websocket.close", "code": 1000}], b"403"),
        (
            [
                {
                    "type": "websocket.http.response.start",
                    "status": 401,
                    "headers": [(b"content-type", b"text/plain")],
                },
                {"type": "websocket.http.response.body", "body": b"who are you?"},
            ],
            b"401",
        ),
    ],
    ids=["closed", "http response"],
)
async def test_a_handshake_read_once_can_still_be_refused_with_any_answer(
    answer: list[dict[str, Any]], status: bytes
) -> None:
    once, long_way = Connected(answer), Connected(answer, ws=WSProtocol)  # uvicorn's own: the reference
    await once.send(HANDSHAKE)
    await long_way.send(HANDSHAKE[:7], HANDSHAKE[7:])
    await async_wait_until(
        lambda: once.transport.closing or b"who" in once.transport.written, 2, "the refusal"
    )
    await async_wait_until(
        lambda: long_way.transport.closing or b"who" in long_way.transport.written, 2, "the refusal"
    )
    assert once.read_once()
    assert once.transport.written.startswith(b"HTTP/1.1 " + status)
    assert once.transport.written == long_way.transport.written
    once.done.set()
    long_way.done.set()


@pytest.mark.parametrize("reads", [1, 2], ids=["one read", "two reads"])
async def test_a_handshake_with_two_keys_is_refused_400_and_never_reaches_the_app(reads: int) -> None:
    """RFC 6455 (4.2.1) wants one key; with two there is no right answer to hash (wsproto took
    the last)."""
    raw = NOT_PLAIN["two keys"]
    connected = Connected()
    await connected.send(*([raw] if reads == 1 else [raw[:7], raw[7:]]))
    assert connected.transport.written.startswith(b"HTTP/1.1 400 ")
    assert b'"detail":"send exactly one Sec-WebSocket-Key header' in connected.transport.written
    assert connected.transport.closing and connected.scope is None
    connected.transport.protocol.connection_lost(None)  # type: ignore[attr-defined]  # quietly


@pytest.mark.parametrize(
    "early",
    [b"\x81\x82\x00\x00\x00\x00hi", b"\x81\x84\x00\x00\x00\x00\r\n\r\n"],
    ids=["a frame", "a frame that ends a head"],
)
@pytest.mark.parametrize(
    "answer",
    [[{"type": "websocket.close", "code": 1000}], [{"type": "websocket.accept"}]],
    ids=["refused", "accepted"],
)
async def test_bytes_sent_before_the_answer_change_nothing_the_long_way_would_not(
    early: bytes, answer: list[dict[str, Any]]
) -> None:
    """A client may not send before the 101 (RFC 6455, 4.1); one that does (a frame in a
    second read) gets from a handshake read once the answer the long way gives it, and the app
    never sees an error of wsproto's."""
    once, long_way = Connected(answer), Connected(answer)
    await once.send(HANDSHAKE, early)
    await long_way.send(HANDSHAKE[:7], HANDSHAKE[7:], early)
    for connected in (once, long_way):
        await async_wait_until(
            lambda c=connected: c.scope is not None and c.transport.written, 2, "the answer"
        )
    assert once.read_once()
    assert once.transport.written == long_way.transport.written
    assert once.transport.closing == long_way.transport.closing
    once.done.set()
    long_way.done.set()


class _Boom(Exception):
    """The app's failure before it answers the handshake."""


@pytest.mark.parametrize(
    "answer",
    [
        [{"type": "websocket.accept", "subprotocol": "chat"}],
        [{"type": "websocket.accept", "headers": [(b"x-replica", b"r1")]}],
        [{"type": "websocket.accept", "subprotocol": "chat", "headers": [(b"x-replica", b"r1")]}],
        [_Boom()],
    ],
    ids=["a subprotocol", "headers", "both", "the app fails"],
)
async def test_any_other_answer_to_a_handshake_read_once_is_the_long_ways(answer: list[Any]) -> None:
    """Anything but a plain accept is answered by wsproto, which then reads the request it was
    spared: the same bytes as uvicorn's own protocol on the long way (a subprotocol, headers, a
    500)."""
    raw = HANDSHAKE.replace(b"Host: x", b"Host: x\r\nSec-WebSocket-Protocol: tracktalk.v1, chat", 1)
    once, long_way = Connected(answer), Connected(answer, ws=WSProtocol)
    await once.send(raw)
    await long_way.send(raw[:7], raw[7:])
    assert once.read_once()
    assert once.transport.written == long_way.transport.written
    assert once.transport.written.startswith(
        b"HTTP/1.1 500 " if isinstance(answer[0], _Boom) else b"HTTP/1.1 101 "
    )
    once.done.set()
    long_way.done.set()


@pytest.mark.parametrize(
    "early", [b"", b"\x81\x82\x00\x00\x00\x00hi"], ids=["nothing more", "a frame too soon"]
)
async def test_a_shutdown_before_the_app_answers_a_handshake_read_once_gives_the_long_ways_500(
    early: bytes,
) -> None:
    """uvicorn's shutdown tells each connection in turn (`shutdown()`): one that is still waiting
    for the app's answer gets uvicorn's 500, whichever way its handshake was read; none raises
    (that would stop the shutdown's loop over the others)."""
    once, long_way = Connected([]), Connected([], ws=WSProtocol)  # an app that never answers
    once.edge.data_received(HANDSHAKE)
    for data in (HANDSHAKE[:7], HANDSHAKE[7:]):
        long_way.edge.data_received(data)
    for connected in (once, long_way):
        if early:
            connected.transport.protocol.data_received(early)  # type: ignore[attr-defined]
        await async_wait_until(lambda c=connected: c.scope is not None, 2, "the app")
        connected.transport.protocol.shutdown()  # type: ignore[attr-defined]
    assert once.read_once()
    assert once.transport.written.startswith(b"HTTP/1.1 500 ")
    assert once.transport.written == long_way.transport.written
    assert once.transport.closing and long_way.transport.closing
    for connected in (once, long_way):
        connected.transport.protocol.connection_lost(None)  # type: ignore[attr-defined]


_PIECES = [b" ", b"\t", b"\r", b"\n", b":", b",", b"\x00", b"\x80", b"a", b"A", b"-", b"?", b"%", b"\x7f"]
_PIECES += [b"\r\n", b"\r\n\r\n", b"13", b"Upgrade", b"websocket", b"Host", b"xn--", b"Connection: upgrade"]


def _mutated(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        at, piece, how = rng.randrange(len(out) + 1), rng.choice(_PIECES), rng.random()
        if how < 0.4:
            out[at:at] = piece
        elif how < 0.7:
            out[at : at + 1] = piece
        else:
            del out[at : at + rng.randint(1, 3)]
    return bytes(out)


def _the_long_way(data: bytes) -> tuple[str, str, list[tuple[bytes, bytes]], list[str]] | None:
    """What uvicorn (h11, its upgrade test) then wsproto make of `data`; None: no socket."""
    http = h11.Connection(h11.SERVER)
    http.receive_data(data)
    try:
        event = http.next_event()
    except h11.RemoteProtocolError:
        return None
    if not isinstance(event, h11.Request):
        return None
    headers = [(name.lower(), value) for name, value in event.headers]
    connection = [t.lower().strip() for n, v in headers if n == b"connection" for t in v.split(b",")]
    upgrade_to = [v.lower() for n, v in headers if n == b"upgrade"]
    if b"upgrade" not in connection or upgrade_to[-1:] != [b"websocket"]:
        return None
    ws = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
    try:
        ws.receive_data(data)  # as received: what `_read_late` gives wsproto
    except wsproto.utilities.RemoteProtocolError:
        return None
    (request,) = ws.events()
    assert isinstance(request, wsproto.events.Request)
    return request.host, request.target, list(request.extra_headers), list(request.subprotocols)


def test_a_handshake_read_once_is_read_as_h11_and_wsproto_read_it_whatever_its_bytes() -> None:
    """Handshakes changed at random (a few bytes of what parsers trip on, put in, swapped or cut):
    each one `parse()` takes is one that the long way takes too, read the same."""
    rng = random.Random(22)
    taken = 0
    for _ in range(20000):
        raw = _mutated(rng, rng.choice(PLAIN))
        once = upgrade.parse(raw)
        if once is None:
            continue
        taken += 1
        assert (once.host, once.target, once.headers, once.subprotocols) == _the_long_way(raw), raw
    assert taken > 2000  # enough of them still plainly handshakes to mean something
