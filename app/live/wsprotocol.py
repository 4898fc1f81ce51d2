"""uvicorn's wsproto WebSocket protocol, with a way to write prepared frames straight to the socket.

Through ASGI, every message of every socket goes through the app's send wrappers, uvicorn's
`send()` (an await per frame) and wsproto, which frames and UTF-8-encodes the same text again for
each socket. A track's events are the same bytes for all of its sockets (server frames are not
masked), so the feed builds each frame once (`app/live/frames.py`) and the socket's `Connection`
writes it here, straight to the transport: no await, no task wake-up, one `send()` system call,
and several queued frames in one write.

Client frames, their pings and the closing handshake stay uvicorn's and wsproto's. What a
reconnect storm, opening sockets by the thousand, does per socket is done here in a tenth of what
wsproto's HTTP/1.1 machinery takes: the handshake's request comes read once (app/edge/upgrade.py;
wsproto reads it again only when the app answers with anything but a 101, or bytes come before
the answer), and its answer (a fixed 101 and one hash) is written here. So is the idle socket's one
message, the pong to the keepalive's ping, read here when it comes alone. The app finds this
object in `scope["extensions"][EXTENSION]`; see `app/handlers/sockets.py`.

It also holds an idle socket in less memory (a replica holds them by the ten thousand, see
docs/performance.md): uvicorn's per-connection asyncio.Queue and asyncio.Event carry four
collections.deque of 624 bytes each whatever they hold, replaced here by a list and a future made
only while someone waits; once the handshake is done, wsproto's HTTP/1.1 machinery for it and the
scope's request headers and query string (which carries the token) are let go.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Iterator
from typing import Any, Literal

import msgspec
from uvicorn.config import Config
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string, is_ssl
from uvicorn.protocols.websockets.wsproto_impl import WebsocketBuffer, WSProtocol
from uvicorn.server import ServerState
from wsproto import ConnectionType, WSConnection, events
from wsproto.connection import Connection as WSProtoConnection
from wsproto.handshake import H11Handshake
from wsproto.utilities import LocalProtocolError, generate_accept_token

from app.edge.upgrade import Peer, Upgrade
from app.live.keepalive import PING, Keepalive

EXTENSION = "tracktalk.frames"
"""Key of this protocol in the ASGI scope's `extensions`."""
CLOSE_TIMEOUT = 5.0
"""Seconds a client gets to answer the server's close frame before the connection is cut."""
_PONG_BACKLOG = 64 * 1024
"""Unsent bytes past which a client's pings are not answered."""
_PONG = 0x8A
"""A pong frame's first byte (FIN, opcode 10)."""
_MASKED = 0x80
_MAX_CONTROL = 125
"""The longest payload of a control frame (RFC 6455, 5.5)."""
_ONE_KEY = "send exactly one Sec-WebSocket-Key header (RFC 6455, 4.2.1)"


class _Inbox:
    """What asyncio.Queue does for uvicorn's connection (put_nowait, get, empty), in a list."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self) -> Any:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.pop(0)

    def empty(self) -> bool:
        return not self._items


class _Flag:
    """What asyncio.Event does for uvicorn's connection (set, clear, wait), without a deque."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = True
        self._waiters: list[asyncio.Future[None]] | None = None

    def set(self) -> None:
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    def is_set(self) -> bool:
        return self._set

    async def wait(self) -> None:
        if self._set:
            return
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        await waiter


class _Done:
    """Stands for wsproto's finished HTTP/1.1 handshake: it has no more events to give."""

    __slots__ = ()

    def events(self) -> Iterator[Any]:
        return iter(())


_DONE = _Done()


_WHEELS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[float, Keepalive]] = (
    weakref.WeakKeyDictionary()
)
"""Each event loop's keepalive wheels, one per ping interval (a replica runs one server on one
loop; the tests run every server, each with its own interval, on one loop)."""


class _Shared:
    """What uvicorn's protocol keeps on each connection though it is its server's (the app, the
    loop, the logger, the settings): held once per server here (`_settings`)."""

    config: Config
    app: Any
    loop: asyncio.AbstractEventLoop
    logger: logging.Logger
    root_path: str
    asgi_version: str
    app_state: dict[str, Any]
    connections: set[Any]
    tasks: set[asyncio.Task[None]]
    server_state: ServerState
    close_timeout: float
    ping_interval: float | None
    ping_timeout: float | None

    @property
    def default_headers(self) -> list[tuple[bytes, bytes]]:
        """The server's of the moment: uvicorn makes a new list every second (its Date)."""
        return self.server_state.default_headers

    @default_headers.setter
    def default_headers(self, value: list[tuple[bytes, bytes]]) -> None:
        self.server_state.default_headers = value


_SHARED = "tracktalk_shared"
"""The attribute of uvicorn's ServerState that holds its server's `_Shared`: it lives as long as
the server (a table keyed by the state would be kept for good by the state the value holds)."""


def _server_wide(name: str) -> Any:
    """An attribute uvicorn sets on each connection, kept on the server's `_Shared` instead."""

    def get(self: FrameProtocol) -> Any:
        return getattr(self._shared, name)

    def put(self: FrameProtocol, value: Any) -> None:
        setattr(self._shared, name, value)

    return property(get, put)


def _settings(
    config: Config,
    server_state: ServerState,
    app_state: dict[str, Any],
    loop: asyncio.AbstractEventLoop | None,
) -> _Shared:
    """What uvicorn's protocol sets on each of a server's connections though it is the server's."""
    if not config.loaded:
        config.load()
    shared = _Shared()
    shared.config = config
    shared.app = config.loaded_app
    shared.loop = loop or asyncio.get_event_loop()
    shared.logger = logging.getLogger("uvicorn.error")
    shared.root_path = config.root_path
    shared.asgi_version = config.asgi_version
    shared.app_state = app_state
    shared.connections = server_state.connections
    shared.tasks = server_state.tasks
    shared.server_state = server_state
    shared.close_timeout = 10.0
    shared.ping_interval = config.ws_ping_interval
    shared.ping_timeout = config.ws_ping_timeout
    return shared


class _Handshaking(WSConnection):
    """wsproto's server connection, whose HTTP/1.1 handshake (an h11 connection and its state)
    is made when it is first asked for: a handshake read once (app/edge/upgrade.py) and answered
    with our 101 never asks for it."""

    def __init__(self) -> None:  # not wsproto's: it makes the handshake at once
        self.client = False
        self.connection: WSProtoConnection | None = None
        self._handshake: H11Handshake | _Done | None = None

    @property  # type: ignore[override]
    def handshake(self) -> H11Handshake | _Done:
        if self._handshake is None:
            self._handshake = H11Handshake(ConnectionType.SERVER)
        return self._handshake

    @handshake.setter
    def handshake(self, value: H11Handshake | _Done) -> None:
        self._handshake = value


class FrameProtocol(WSProtocol):
    """A WebSocket connection that also takes ready-made frames (`app.subscriber.FrameSocket`).

    uvicorn's protocol sets 36 attributes on each connection, 13 of them its server's. Python
    shares one table of attribute names among a class's instances, and keeps only the values on
    each, up to 30 names; past that each instance has a dictionary of its own (1.5 KiB). The
    server's 13 live once per server here (`_Shared`), so that a connection keeps its values only:
    about 1.3 KiB less per socket (docs/performance.md, "Sockets by the hundred thousand")."""

    config = _server_wide("config")
    app = _server_wide("app")
    loop = _server_wide("loop")
    logger = _server_wide("logger")
    root_path = _server_wide("root_path")
    asgi_version = _server_wide("asgi_version")
    app_state = _server_wide("app_state")
    connections = _server_wide("connections")
    tasks = _server_wide("tasks")
    default_headers = _server_wide("default_headers")
    close_timeout = _server_wide("close_timeout")
    ping_interval = _server_wide("ping_interval")
    ping_timeout = _server_wide("ping_timeout")

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        """What uvicorn's makes, less what a connection need not make each time (a reconnect
        storm makes thousands a second): the server's settings are set once per server
        (`_settings`), the queue and the event are `_Inbox` and `_Flag`, and wsproto's HTTP/1.1
        handshake is made only if it is asked to read or answer one (`_Handshaking`). The
        attributes are uvicorn's, set in its order (a shared table of names needs one order on
        every instance); tests/unit/test_wsprotocol.py checks them against uvicorn's own."""
        shared: _Shared | None = getattr(server_state, _SHARED, None)
        if shared is None:
            shared = _settings(config, server_state, app_state, _loop)
            setattr(server_state, _SHARED, shared)
        self._shared = shared
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.server: tuple[str, int | None] | None = None
        self.client: tuple[str, int] | None = None
        self.scheme: Literal["wss", "ws"] = None  # type: ignore[assignment]
        self.queue = _Inbox()  # type: ignore[assignment]
        self.handshake_complete = False
        self.close_sent = False
        self.disconnected = False
        self.close_timer: asyncio.TimerHandle | None = None
        self.response_started = False
        self.conn = _Handshaking()
        self.read_paused = False
        self.writable = _Flag()  # type: ignore[assignment]
        self.ping_timer: asyncio.TimerHandle | None = None
        self.pong_timer: asyncio.TimerHandle | None = None
        self.pending_ping_payload: bytes | None = None
        self.ping_sent_at = 0.0
        self.last_ping_rtt = 0.0
        self.buffer = WebsocketBuffer(shared.config.ws_max_size)
        self._cut: asyncio.TimerHandle | None = None
        self._key = b""
        """The handshake's Sec-WebSocket-Key."""
        self._unread = b""
        """The handshake's request, read once by app/edge/upgrade.py but not yet by wsproto."""
        self.keepalive_slot = -1
        self._corked = b""
        """Frames written before the handshake's answer, which they follow in its write."""

    def upgraded(self, transport: asyncio.Transport, peer: Peer, request: Upgrade) -> None:
        """Begin on a connection whose handshake was read already (app/edge/httpprotocol.py's
        one reading of it), with its addresses as read there: the scope as wsproto's reading of
        `request.raw` would make it. wsproto reads it only if the app answers with anything but
        a 101, or the client sends before the answer (`_read_late`)."""
        self.connections.add(self)  # what uvicorn's connection_made does, the addresses known
        self.transport = transport
        self.server, self.client = peer
        self.scheme = "wss" if is_ssl(transport) else "ws"
        self._unread = request.raw
        self.handle_connect(
            events.Request(
                host=request.host,
                target=request.target,
                extra_headers=request.headers,
                subprotocols=request.subprotocols,
            )
        )

    def handle_connect(self, event: events.Request) -> None:
        """Make the scope as uvicorn does, and put this protocol in its extensions; refuse a
        handshake with more or less than one key (400: RFC 6455 leaves no way to choose)."""
        keys = [value for name, value in event.extra_headers if name.lower() == b"sec-websocket-key"]
        if len(keys) != 1:
            self.refuse(400, _ONE_KEY)
            return
        self._key = keys[0]
        super().handle_connect(event)
        self.scope["extensions"][EXTENSION] = self  # type: ignore[assignment]

    def refuse(self, status: int, detail: str) -> None:
        """Answer the handshake with `status` and a JSON `detail` (as every error of the service
        is put), then close; the app never sees this connection."""
        body = msgspec.json.encode({"status_code": status, "detail": detail})
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        self._read_late()
        self.handshake_complete = self.close_sent = True
        out = self.conn.send(events.RejectConnection(status_code=status, headers=headers, has_body=True))
        out += self.conn.send(events.RejectData(data=body))
        self.transport.write(out)
        self.transport.close()

    def _read_late(self) -> None:
        """Have wsproto read the handshake it was spared, for an answer other than our 101 or
        for bytes that follow it."""
        unread, self._unread = self._unread, b""
        if unread:
            self.conn.receive_data(unread)
            for _ in self.conn.events():  # the Request again: the app has it already
                pass

    async def send(self, message: Any) -> None:
        """uvicorn's, but a plain `websocket.accept` is answered here (`accept_with`) and any
        other answer to the handshake first has wsproto read it."""
        if not self.handshake_complete and not self.disconnected:
            if (
                message["type"] == "websocket.accept"
                and not message.get("subprotocol")
                and not message.get("headers")
            ):
                await self.writable.wait()
                self.accept_with(b"")
                return
            self._read_late()
        await super().send(message)

    def send_500_response(self) -> None:
        self._read_late()
        super().send_500_response()

    def accept_with(self, data: bytes) -> bool:
        """Complete the handshake (as the ASGI `websocket.accept` does) and write `data`, the
        first frames, in the same write; False when the client is already gone.

        The socket is logged at debug level, where uvicorn logs it at info: a line per socket was
        9 % of a replica's CPU in a reconnect storm (docs/performance.md), and a replica holding
        100,000 sockets would write 100,000 of them after a deploy. `tracktalk_sockets_opened_total`
        counts them; refusals and failures are still logged."""
        if self.handshake_complete or self.transport.is_closing():
            return False
        if self.logger.isEnabledFor(logging.DEBUG):
            self.logger.debug(
                '%s - "WebSocket %s" [accepted]',
                get_client_addr(self.scope),
                get_path_with_query_string(self.scope),
            )
        self.handshake_complete = True
        self.transport.write(self._accepted() + data + self._corked)
        self._corked = b""
        self.start_keepalive()
        self._let_go_of_the_handshake()
        return True

    def _accepted(self) -> bytes:
        """The 101 answer to the handshake, as wsproto writes it for an `AcceptConnection` with
        no subprotocol and no extension (none is ever negotiated here), and wsproto's connection
        made open as its `send()` would."""
        headers = b"".join(name + b": " + value + b"\r\n" for name, value in self.default_headers)
        self.conn.connection = WSProtoConnection(ConnectionType.SERVER, [])
        return (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + generate_accept_token(self._key) + b"\r\n" + headers + b"\r\n"
        )

    def _let_go_of_the_handshake(self) -> None:
        """Drop what only the handshake needed: wsproto's HTTP/1.1 machinery for it (once the
        connection is made, `events()` is all that is asked of it), and the scope's request
        headers and query string (which carries the token)."""
        self.conn.handshake = _DONE  # type: ignore[assignment]
        self._key = self._unread = b""
        self.scope["headers"] = []
        self.scope["query_string"] = b""

    def connection_lost(self, exc: Exception | None) -> None:
        """As uvicorn does, and let go of this protocol's entry in its own scope (a reference
        cycle that only the garbage collector's rare full passes would free)."""
        super().connection_lost(exc)
        if self._cut is not None:
            self._cut.cancel()
        scope = getattr(self, "scope", None)  # none for a handshake refused before the app (`refuse`)
        if scope is not None:
            scope["extensions"].pop(EXTENSION, None)

    # uvicorn closes a connection with `transport.close()`, which waits until everything buffered
    # has gone out: a client that stopped reading would keep the connection and its buffer for
    # good. Wherever the server closes (or answers a close), a stuck connection is cut after
    # CLOSE_TIMEOUT seconds; a connection that closes as it should cancels that.

    def keepalive_timeout(self) -> None:
        super().keepalive_timeout()
        self._cut_if_stuck()

    def handle_close(self, event: events.CloseConnection) -> None:
        super().handle_close(event)
        self._cut_if_stuck()

    def handle_message(self, event: events.TextMessage | events.BytesMessage) -> None:
        super().handle_message(event)
        if self.close_sent:  # too big: uvicorn closed it with 1009
            self._cut_if_stuck()

    # Keepalive: one wheel per loop pings every socket (app/live/keepalive.py), in place of
    # uvicorn's two timers per socket; a socket is pinged every `ws_ping_interval` seconds and
    # closed as uvicorn closes it (1011) when a ping is unanswered at its next turn.

    def start_keepalive(self) -> None:
        interval = self.ping_interval
        if interval is not None and interval > 0:
            wheels = _WHEELS.get(self.loop)
            if wheels is None:
                wheels = _WHEELS[self.loop] = {}
            wheel = wheels.get(interval)
            if wheel is None:
                wheel = wheels[interval] = Keepalive(self.loop, interval)
            wheel.add(self)

    def stop_keepalive(self) -> None:
        interval = self.ping_interval
        wheel = _WHEELS.get(self.loop, {}).get(interval) if interval else None
        if wheel is not None:
            wheel.discard(self)
        self.pending_ping_payload = None

    def keepalive_turn(self) -> bool:
        if self.close_sent or self.transport.is_closing():
            return False
        if self.pending_ping_payload is not None:
            self.keepalive_timeout()
            return False
        self.pending_ping_payload = PING
        self.transport.write(PING)
        return True

    def data_received(self, data: bytes) -> None:
        """A pong that comes alone, between two frames (an idle socket's one message, every
        ping interval), is read here; anything else by wsproto, as uvicorn does. wsproto's reading
        of it was a sixth of an idle replica's CPU (docs/performance.md)."""
        # Bytes before the answer (which a client may not send, RFC 6455 4.1) come after the
        # handshake's request, for wsproto as on the long way: it keeps them unread.
        if self._unread:
            self._read_late()
        # A client's frame has 2 bytes of header and a 4-byte mask; a control frame's payload
        # is at most 125 bytes. wsproto's connection exists once the handshake is answered.
        if 6 <= len(data) <= 6 + _MAX_CONTROL and data[0] == _PONG and data[1] == _MASKED - 6 + len(data):
            connection = self.conn.connection
            if connection is not None and not self.close_sent:
                decoder = connection._proto._frame_decoder
                if decoder.header is None and not decoder.buffer.buffer:  # not inside a frame
                    self.pending_ping_payload = None
                    return
        super().data_received(data)

    def handle_pong(self, event: events.Pong) -> None:
        """Any pong answers the ping in flight (the payload is the same for every ping; the
        round trip is not timed: nothing reads it)."""
        self.pending_ping_payload = None

    def handle_ping(self, event: events.Ping) -> None:
        """Answer, unless the client is not reading what it is sent (a flood of pings from a
        client that reads nothing would grow the buffer without end)."""
        if self.transport.get_write_buffer_size() < _PONG_BACKLOG:
            super().handle_ping(event)

    def shutdown(self) -> None:
        super().shutdown()
        self._cut_if_stuck()

    def _cut_if_stuck(self) -> None:
        if self._cut is None:
            self._cut = self.loop.call_later(CLOSE_TIMEOUT, self.transport.abort)

    def write_frames(self, data: bytes) -> bool:
        """Write whole frames now (queued by the transport if the kernel cannot take them yet);
        False once the socket is closing. Before the handshake is answered they wait for the
        answer, and go in its write (`accept_with`): a new socket's first frames in one system
        call rather than one each."""
        transport = self.transport
        if self.close_sent or transport.is_closing():
            return False
        if not self.handshake_complete:
            self._corked += data
            return True
        transport.write(data)
        return True

    def drop_unanswered(self) -> None:
        """Drop the frames waiting for the handshake's answer: a refused socket is sent nothing
        but its close (app/handlers/sockets.py's `close`)."""
        self._corked = b""

    def buffered(self) -> int:
        """Bytes written but not yet taken by the kernel."""
        return self.transport.get_write_buffer_size()

    async def drained(self) -> None:
        """Return once the transport's buffer is below its low-water mark (or the socket is gone)."""
        await self.writable.wait()

    def close_now(self, code: int, reason: str) -> None:
        """Send the close frame now, without waiting for a client that may not be reading, and
        tell the app (its `receive()` answers `websocket.disconnect`). Idempotent.

        The close frame goes out after what is already buffered. A client that does not read it
        within CLOSE_TIMEOUT seconds is cut off (uvicorn would `close()`, which waits for the
        buffer to drain: a stalled client would keep it in memory for good)."""
        transport = self.transport
        if self.close_sent or transport.is_closing() or not self.handshake_complete:
            if self.handshake_complete:
                self._cut_if_stuck()
            return
        self.close_sent = True
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        try:
            transport.write(self.conn.send(events.CloseConnection(code=code, reason=reason)))
        except LocalProtocolError:  # the client's own close came first
            transport.abort()
            return
        if self.read_paused:
            self.read_paused = False
            transport.resume_reading()
        # uvicorn waits for the client's answer while a close timer is set; this one cuts.
        self.close_timer = self.loop.call_later(CLOSE_TIMEOUT, transport.abort)
