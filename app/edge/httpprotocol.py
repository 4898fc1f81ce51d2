"""uvicorn's h11 HTTP protocol, with the two limits a replica that faces clients directly needs.

Every connection starts here, sockets included (uvicorn hands an upgrade to app/live/wsprotocol.py).

- A deadline on each request: a client has REQUEST_TIMEOUT seconds to send it whole (its head and
  its body) from the moment the connection waits for it (when it opens, and after each response
  on a kept-alive connection); sending slowly does not extend it. uvicorn has no such deadline:
  its keep-alive timeout ends at the first byte of the next request, and the first request has
  none at all, so a connection that sent nothing, half a request line, or its headers a byte a
  second stayed open for good. Past the deadline: 408, and the connection is closed (when the
  app is already answering a request whose body is late, the connection is only closed).
- A cap on client connections (uvicorn's `server_state.connections`: requests and sockets
  alike): the one past `max_connections` is read and, unless it asks for /healthz, answered 503
  (a socket's handshake too) and closed; past `max_connections + HEALTH_ROOM`, 503 goes out at
  once, before anything is read. So a full replica still says it is alive, and its file
  descriptors stay within the limit app/server.py derives the cap from. (uvicorn's own
  `limit_concurrency` stays unused: it counts open sockets too but never refuses one, since an
  upgrade skips its check, and once it is reached every request gets 503, /healthz included.)

The connections that are let in cost one comparison and one timer per request more than uvicorn's.

A socket's handshake that comes whole in the connection's first read is read once, here
(app/edge/upgrade.py), and handed to the socket protocol without h11; anything else is h11's.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, ClassVar, Protocol, cast

import h11
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.utils import get_local_addr, get_remote_addr
from uvicorn.server import ServerState

from app.edge import upgrade

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 10.0
"""Seconds a client has to send a whole request, from when the connection waits for it."""
HEALTH_ROOM = 16
"""Connections past the cap that are still read, so that /healthz can be answered."""
HEALTH_PATH = "/healthz"
_CUT_AFTER = 5.0
"""Seconds a closed connection's last bytes get to leave before it is cut (a client that reads
nothing would keep it open)."""
_SAY_FULL_EVERY = 10.0
"""Seconds between two warnings that the replica is full."""
_WAITING = (h11.IDLE, h11.SEND_BODY)
"""The client's states while its request is not all in."""


def _response(status: int, reason: str, detail: str, headers: str = "") -> bytes:
    body = json.dumps({"status_code": status, "detail": detail}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n{headers}connection: close\r\n\r\n"
    )
    return head.encode() + body


_FULL_DETAIL = "this replica holds as many connections as it may: try again shortly"
FULL = _response(503, "Service Unavailable", _FULL_DETAIL, "retry-after: 1\r\n")
"""The answer past the cap, as it goes on the wire."""
_FULL_BODY = FULL.partition(b"\r\n\r\n")[2]
TIMED_OUT = _response(
    408,
    "Request Timeout",
    f"the request did not arrive whole within {REQUEST_TIMEOUT:g} s of the connection waiting for it: "
    "send it at once",
)


class Upgradable(Protocol):
    """What the socket protocol (uvicorn's `ws_protocol_class`, app/live/wsprotocol.py) takes
    from here: the connection, its two ends, and the handshake already read."""

    def upgraded(
        self, transport: asyncio.Transport, peer: upgrade.Peer, request: upgrade.Upgrade
    ) -> None: ...


class EdgeProtocol(H11Protocol):
    """uvicorn's HTTP/1.1 connection, with a deadline on each request and a cap on connections.

    uvicorn's side of it (an h11 connection, the request cycle's state) is made when the first
    read is not a whole handshake read once, or on any other entry (end of file, flow control,
    shutdown, a connection past the cap) (`_h11`): a reconnect storm's sockets, their handshake
    in one read, never make it."""

    max_connections = 1_000_000
    """The cap; `limited()` makes the class with a replica's own."""
    _said_full_at: ClassVar[float] = float("-inf")

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._made_with: tuple[Any, ...] | None = (config, server_state, app_state, _loop)
        """uvicorn's arguments, until its side is made (`_h11`)."""
        self.connections = server_state.connections
        self.loop = _loop or asyncio.get_event_loop()
        self.ws_protocol_class = config.ws_protocol_class
        self._deadline: asyncio.TimerHandle | None = None
        self._full = False
        self._upgraded = False
        self._fresh = True

    @classmethod
    def limited(cls, max_connections: int) -> type[EdgeProtocol]:
        """The protocol for a server that holds at most `max_connections` client connections."""
        return cast("type[EdgeProtocol]", type(cls.__name__, (cls,), {"max_connections": max_connections}))

    def _h11(self) -> None:
        """Make uvicorn's side of the connection, once: its __init__ and its connection_made,
        run late (the first lines of the latter, already done by ours, are done again)."""
        made_with, self._made_with = self._made_with, None
        if made_with is not None:
            transport = self.transport
            H11Protocol.__init__(self, *made_with)
            H11Protocol.connection_made(self, transport)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.connections.add(self)
        self.transport = transport
        held = len(self.connections)  # this one included
        if held > self.max_connections:
            self._h11()
            self._say_full(held)
            if held > self.max_connections + HEALTH_ROOM:
                self._answer(FULL)
                return
            self._full = True
            self.app = _HealthOnly(self.app)
        self._watch()

    def data_received(self, data: bytes) -> None:
        if self._fresh:
            self._fresh = False
            plain = not self._full and self.ws_protocol_class is not None and not self.transport.is_closing()
            request = upgrade.parse(data) if plain else None
            if request is not None:
                self._hand_over(request)
                return
            self._h11()
        super().data_received(data)
        self._watch()

    def _hand_over(self, request: upgrade.Upgrade) -> None:
        """What uvicorn's `handle_websocket_upgrade` does, with the request already read."""
        assert self._made_with is not None and self.ws_protocol_class is not None
        config, server_state, app_state, _ = self._made_with
        self._upgraded = True
        self._stop_clock()
        self.connections.discard(self)
        transport = self.transport
        protocol = cast(
            "Upgradable",
            self.ws_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=server_state, app_state=app_state
            ),
        )
        protocol.upgraded(transport, (get_local_addr(transport), get_remote_addr(transport)), request)
        transport.set_protocol(cast("asyncio.BaseProtocol", protocol))

    def connection_lost(self, exc: Exception | None) -> None:
        if self._made_with is not None:  # nothing read: uvicorn's part is its first lines
            self.connections.discard(self)
            if exc is None:
                self.transport.close()
        else:
            super().connection_lost(exc)
        self._stop_clock()

    def eof_received(self) -> None:
        self._h11()
        super().eof_received()

    def pause_writing(self) -> None:
        self._h11()
        super().pause_writing()

    def resume_writing(self) -> None:
        self._h11()
        super().resume_writing()

    def shutdown(self) -> None:
        self._h11()
        super().shutdown()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch()

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        """Hand the connection to the socket protocol (it has deadlines of its own), or answer 503
        when the replica is full."""
        self._upgraded = True
        self._stop_clock()
        if self._full:
            self._answer(FULL)
            return
        super().handle_websocket_upgrade(event)

    def _watch(self) -> None:
        """Start the clock when the connection begins to wait for a request; stop it once the
        request is all in."""
        waiting = (
            not self._upgraded
            and (self._made_with is not None or self.conn.their_state in _WAITING)
            and not self.transport.is_closing()
        )
        if waiting and self._deadline is None:
            self._deadline = self.loop.call_later(REQUEST_TIMEOUT, self._too_late)
        elif not waiting:
            self._stop_clock()

    def _stop_clock(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_late(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        # 408 only where no response has begun (the app answers the requests whose head came).
        self._answer(TIMED_OUT if self._made_with is not None or self.conn.our_state is h11.IDLE else b"")

    def _answer(self, response: bytes) -> None:
        """Write `response` (raw: the connection ends with it) and close."""
        transport = self.transport
        if response:
            transport.write(response)
        transport.close()
        if transport.get_write_buffer_size():
            self.loop.call_later(_CUT_AFTER, transport.abort)

    def _say_full(self, held: int) -> None:
        now = self.loop.time()
        if now - EdgeProtocol._said_full_at >= _SAY_FULL_EVERY:
            EdgeProtocol._said_full_at = now
            log.warning(
                "full: %d client connections, at most %d (TRACKTALK_MAX_CONNECTIONS): new ones get 503",
                held - 1,
                self.max_connections,
            )


class _HealthOnly:
    """The app for a connection past the cap: /healthz as usual, 503 for anything else."""

    __slots__ = ("_app",)

    def __init__(self, app: Any) -> None:
        self._app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] == HEALTH_PATH:
            await self._app(scope, receive, send)
            return
        headers = [
            (b"content-type", b"application/json"),
            (b"retry-after", b"1"),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": _FULL_BODY})
