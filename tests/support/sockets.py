"""WebSocket clients of a replica (the track socket's, /api/ws's), each frame stamped with when it
arrived."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import socket
import time
from typing import Any, get_args

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.frames import DATA_OPCODES, Frame

from app.wire import (
    ForumMessage,
    LiveRowMessage,
    ServerMessage,
    forum_message_decoder,
    live_row_decoder,
    server_message_decoder,
    topic_socket_decoder,
)

RECV_TIMEOUT = 10.0


class StampedConnection(ClientConnection):
    """A client connection that notes when each message arrives (time.monotonic()), as its
    frame is read off the socket, whenever the test gets to read the message."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.arrivals: collections.deque[float] = collections.deque()

    def process_event(self, event: Any) -> None:
        if isinstance(event, Frame) and event.opcode in DATA_OPCODES and event.fin:
            self.arrivals.append(time.monotonic())
        super().process_event(event)


class Socket:
    """A WebSocket client that decodes (and so checks) every server frame.

    `presence` frames come on their own schedule (on connect, and as others come and go): they
    are kept in `presence` and skipped by `recv`, unless the socket was opened with presence=True.
    Times are those of arrival (StampedConnection), not of the test's reading: a test that reads
    late does not make the server's gaps look shorter.
    """

    def __init__(self, conn: StampedConnection, presence: bool = False) -> None:
        self.conn = conn
        self.received: list[dict[str, Any]] = []
        self.presence: list[dict[str, Any]] = []
        """Every `presence` message, in order ..."""
        self.presence_at: list[float] = []
        """... and when each arrived (time.monotonic())."""
        self.arrived_at = 0.0
        """When the message `recv` last returned arrived (time.monotonic())."""
        self._with_presence = presence

    async def recv(self, timeout: float = RECV_TIMEOUT) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            raw = await asyncio.wait_for(self.conn.recv(), max(0.01, deadline - time.monotonic()))
            arrived = self.conn.arrivals.popleft()
            assert isinstance(raw, str), f"expected a text frame, got {raw!r:.80}"
            server_message_decoder.decode(raw)  # every frame must match the wire types
            message: dict[str, Any] = json.loads(raw)
            if message["type"] == "presence":
                self.presence.append(message)
                self.presence_at.append(arrived)
                if not self._with_presence:
                    continue
            self.received.append(message)
            self.arrived_at = arrived
            return message

    async def expect(
        self, kind: str, timeout: float = RECV_TIMEOUT, ignore: tuple[str, ...] = ()
    ) -> dict[str, Any]:
        """The next message of type `kind`, failing on any other type not in `ignore`."""
        deadline = time.monotonic() + timeout
        while True:
            message = await self.recv(max(0.01, deadline - time.monotonic()))
            if message["type"] == kind:
                return message
            assert message["type"] in ignore, f"expected {kind}, got {message}"

    async def events(
        self, count: int, timeout: float = RECV_TIMEOUT, resync: bool = False
    ) -> list[dict[str, Any]]:
        """The next `count` durable events (messages with a seq), skipping ephemeral ones; a
        `resync` fails the test unless `resync` says one may come (it is then skipped too)."""
        deadline = time.monotonic() + timeout
        got: list[dict[str, Any]] = []
        while len(got) < count:
            message = await self.recv(max(0.01, deadline - time.monotonic()))
            if message["type"] == "resync":
                assert resync, f"an unexpected resync after {len(got)} of {count} events: {message}"
            elif "seq" in message and message["type"] != "connected":
                got.append(message)
        return got

    async def closed(self, timeout: float = RECV_TIMEOUT) -> tuple[int | None, str | None]:
        """Wait for the server to close; (code, reason). Messages before the close are kept (and
        checked: a malformed frame fails the test)."""
        deadline = time.monotonic() + timeout
        with contextlib.suppress(ConnectionClosed):
            while time.monotonic() < deadline:
                await self.recv(max(0.01, deadline - time.monotonic()))
        await asyncio.wait_for(self.conn.wait_closed(), max(0.01, deadline - time.monotonic()))
        return self.conn.close_code, self.conn.close_reason

    async def send(self, message: Any) -> None:
        await self.conn.send(message if isinstance(message, (str, bytes)) else json.dumps(message))

    async def close(self) -> None:
        await self.conn.close()


@contextlib.asynccontextmanager
async def open_socket(  # type: ignore[no-untyped-def]
    base: str,
    track_id: str,
    token: str | None,
    since: int | None = None,
    rcvbuf: int | None = None,
    presence: bool = False,
    **kw: Any,
):
    """A socket on a track (not yet past `connected`: call expect('connected')).

    `rcvbuf` fixes the client's TCP receive buffer (no autotuning), for a client that reads slowly;
    `presence`: `recv` returns the `presence` messages too.
    """
    if rcvbuf is not None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        host, port = base.removeprefix("ws://").split(":")
        sock.connect((host, int(port)))
        kw["sock"] = sock
    query = []
    if token is not None:
        query.append(f"token={token}")
    if since is not None:
        query.append(f"since={since}")
    url = f"{base}/api/ws/track/{track_id}" + ("?" + "&".join(query) if query else "")
    async with connect(
        url,
        open_timeout=RECV_TIMEOUT,
        close_timeout=2,
        max_size=2**22,
        create_connection=StampedConnection,
        **kw,
    ) as conn:
        assert isinstance(conn, StampedConnection)
        yield Socket(conn, presence)


_TOPIC_SOCKET_OWN = frozenset(
    {"connected", "subscribed", "subscribe_error", "unsubscribed", "error", "mention", "notification"}
)
"""What /api/ws sends of its own (app/wire.py's TopicSocketMessage)."""
_TRACK_MESSAGES = frozenset(m.__struct_config__.tag for m in get_args(ServerMessage))
"""The track socket's messages (app/wire.py's ServerMessage): a track topic's are checked against
them (another type, such as moderation's of issue 20, is a kind's own)."""
_FORUM_MESSAGES = frozenset(m.__struct_config__.tag for m in get_args(ForumMessage))
"""The durable messages of the forum's topics (app/wire.py's ForumMessage): a thread's or a
category's are checked against them, their user_typing and presence against the track socket's."""
_LIVE_ROWS = frozenset(m.__struct_config__.tag for m in get_args(LiveRowMessage))
"""The messages of a table made live by its DBA (app/wire.py's LiveRowMessage)."""


class TopicSocket:
    """A client of /api/ws that checks every frame: its own messages against their wire types, a
    topic's message (with `topic`) against the track socket's once `topic` is taken out; and keeps
    what came per topic."""

    def __init__(self, conn: StampedConnection) -> None:
        self.conn = conn
        self.received: list[dict[str, Any]] = []
        self.by_topic: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
        """Every message about a topic (its events and its own answers), in order of arrival."""

    async def recv(self, timeout: float = RECV_TIMEOUT) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.conn.recv(), timeout)
        self.conn.arrivals.popleft()
        assert isinstance(raw, str), f"expected a text frame, got {raw!r:.80}"
        message: dict[str, Any] = json.loads(raw)
        topic = message.get("topic")
        if message["type"] in _TOPIC_SOCKET_OWN:
            topic_socket_decoder.decode(raw)
        else:
            assert isinstance(topic, str) and next(iter(message)) == "topic", message  # spliced in front
            bare = json.dumps({k: v for k, v in message.items() if k != "topic"})
            if topic.startswith("track:") and message["type"] in _TRACK_MESSAGES:
                server_message_decoder.decode(bare)
            elif topic.startswith(("thread:", "category:")):  # the forum's (typing, presence: the tracks')
                (
                    forum_message_decoder if message["type"] in _FORUM_MESSAGES else server_message_decoder
                ).decode(bare)
            elif message["type"] in _LIVE_ROWS:
                live_row_decoder.decode(raw)
        if isinstance(topic, str):
            self.by_topic[topic].append(message)
        self.received.append(message)
        return message

    async def until(self, check: Any, what: str, timeout: float = RECV_TIMEOUT) -> None:
        """Read until `check()` holds (every message read is kept)."""
        deadline = time.monotonic() + timeout
        while not check():
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            with contextlib.suppress(TimeoutError):
                await self.recv(left)

    def answers(self, topic: str, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.by_topic[topic] if m["type"] == kind]

    def seqs(self, topic: str) -> list[int]:
        """The seqs of the topic's durable events, in order of arrival."""
        return [
            m["seq"] for m in self.by_topic[topic] if "seq" in m and m["type"] not in ("subscribed", "resync")
        ]

    async def subscribe(self, topic: str, since: int | None = None, tag: str | None = None) -> dict[str, Any]:
        """Subscribe; the `subscribed` answer (a `subscribe_error` fails the test)."""
        ok, refused = len(self.answers(topic, "subscribed")), len(self.answers(topic, "subscribe_error"))
        message: dict[str, Any] = {"type": "subscribe", "topic": topic}
        if since is not None:
            message["since"] = since
        if tag is not None:
            message["tag"] = tag
        await self.send(message)
        await self.until(
            lambda: (
                len(self.answers(topic, "subscribed")) > ok
                or len(self.answers(topic, "subscribe_error")) > refused
            ),
            f"the answer to subscribe {topic}",
        )
        assert len(self.answers(topic, "subscribe_error")) == refused, self.answers(topic, "subscribe_error")[
            -1
        ]
        return self.answers(topic, "subscribed")[-1]

    async def send(self, message: Any) -> None:
        await self.conn.send(message if isinstance(message, (str, bytes)) else json.dumps(message))

    async def closed(self, timeout: float = RECV_TIMEOUT) -> tuple[int | None, str | None]:
        """Wait for the server to close; (code, reason)."""
        deadline = time.monotonic() + timeout
        with contextlib.suppress(ConnectionClosed):
            while time.monotonic() < deadline:
                await self.recv(max(0.01, deadline - time.monotonic()))
        await asyncio.wait_for(self.conn.wait_closed(), max(0.01, deadline - time.monotonic()))
        return self.conn.close_code, self.conn.close_reason


@contextlib.asynccontextmanager
async def open_topics(base: str, token: str | None, **kw: Any):  # type: ignore[no-untyped-def]
    """A socket of many topics (/api/ws), past its `connected`."""
    url = f"{base}/api/ws" + (f"?token={token}" if token is not None else "")
    async with connect(
        url,
        open_timeout=RECV_TIMEOUT,
        close_timeout=2,
        max_size=2**22,
        create_connection=StampedConnection,
        **kw,
    ) as conn:
        assert isinstance(conn, StampedConnection)
        sock = TopicSocket(conn)
        assert (await sock.recv())["type"] == "connected"
        yield sock
