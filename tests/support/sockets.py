"""WebSocket clients of a replica, each frame stamped with when it arrived."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import socket
import time
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.frames import DATA_OPCODES, Frame

from app.wire import server_message_decoder

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
