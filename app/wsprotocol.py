"""uvicorn's wsproto WebSocket protocol, with a way to write prepared frames straight to the socket.

Through ASGI, every message of every socket goes through the app's send wrappers, uvicorn's
`send()` (an await per frame) and wsproto, which frames and UTF-8-encodes the same text again for
each socket. A track's events are the same bytes for all of its sockets (server frames are not
masked), so the feed builds each frame once (`app/frames.py`) and the socket's `Subscriber`
writes it here, straight to the transport: no await, no task wake-up, one `send()` system call,
and several queued frames in one write.

The handshake, client frames, pings and the closing handshake stay uvicorn's and wsproto's.
The app finds this object in `scope["extensions"][EXTENSION]`; see `app/handlers/sockets.py`.
"""

from __future__ import annotations

from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string
from uvicorn.protocols.websockets.wsproto_impl import WSProtocol
from wsproto import events
from wsproto.utilities import LocalProtocolError

EXTENSION = "tracktalk.frames"
"""Key of this protocol in the ASGI scope's `extensions`."""
CLOSE_TIMEOUT = 5.0
"""Seconds a client gets to answer the server's close frame before the connection is cut."""


class FrameProtocol(WSProtocol):
    """A WebSocket connection that also takes ready-made frames (`app.subscriber.FrameSocket`)."""

    def handle_connect(self, event: events.Request) -> None:
        """Make the scope as uvicorn does, and put this protocol in its extensions."""
        super().handle_connect(event)
        self.scope["extensions"][EXTENSION] = self  # type: ignore[assignment]

    def accept_with(self, data: bytes) -> bool:
        """Complete the handshake (as the ASGI `websocket.accept` does) and write `data`, the
        first frames, in the same write; False when the client is already gone."""
        if self.handshake_complete or self.transport.is_closing():
            return False
        self.logger.info(
            '%s - "WebSocket %s" [accepted]',
            get_client_addr(self.scope),
            get_path_with_query_string(self.scope),
        )
        self.handshake_complete = True
        self.transport.write(
            self.conn.send(events.AcceptConnection(extra_headers=self.default_headers)) + data
        )
        self.start_keepalive()
        return True

    def write_frames(self, data: bytes) -> bool:
        """Write whole frames now (queued by the transport if the kernel cannot take them yet);
        False once the socket is closing."""
        transport = self.transport
        if self.close_sent or transport.is_closing():
            return False
        transport.write(data)
        return True

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
        self.close_timer = self.loop.call_later(CLOSE_TIMEOUT, transport.abort)
