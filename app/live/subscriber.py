"""One socket's place in the hub: frames written at once, or held while its replay runs.

The hub offers each frame to every subscriber of a track in one loop that never waits: a live
subscriber writes the frame to its socket there and then (`FrameSocket.write_frames`, one system
call, no task woken), and a socket whose unsent bytes pass the bound is closed with 1013 instead
of delaying anyone. While its `since=` replay runs, a new subscriber holds live frames (bounded
as well) and `go_live` writes them after the replay, skipping what the replay already sent.
"""

from __future__ import annotations

from typing import Protocol

from app.live import close_codes

ANONYMOUS = 0
"""The user id of a socket without a token (never a users.id: ids start at 1)."""
EPHEMERAL = 0
"""The seq of a frame that is not durable (typing, presence, resync, an error, a joined chunk of
frames): never skipped as one the client has (durable seqs start at 1)."""
WRITE_MOST = 64 * 1024
"""Bytes of frames joined before they are written (the frame that reaches it is the write's
last): the bound is checked after each write, so a socket's unsent bytes never pass it by more
than this and a frame. A catch-up's page (up to 500 events of up to 400 KB) written whole to each
socket of a track put up to a page in every stalled socket's buffer."""


class FrameSocket(Protocol):
    """Where a subscriber's frames go: the socket's connection (app/live/wsprotocol.py in a server)."""

    def write_frames(self, data: bytes) -> bool:
        """Write whole frames now; False when the socket is closing."""

    def buffered(self) -> int:
        """Bytes written but not yet taken by the kernel."""

    async def drained(self) -> None:
        """Wait until the socket's buffer is low again (the pace of a replay or a catch-up)."""

    def close_now(self, code: int, reason: str) -> None:
        """Send the close frame and end the socket's handler (idempotent)."""


class Subscriber:
    """A socket of a user on a track, as the hub sees it."""

    __slots__ = (
        "_held",
        "_held_bytes",
        "_limit",
        "_socket",
        "closed_for",
        "expires_at",
        "live",
        "skip_through",
        "track_id",
        "user_id",
    )

    def __init__(
        self,
        socket: FrameSocket,
        user_id: int,
        track_id: str,
        limit: int,
        expires_at: float = float("inf"),
    ) -> None:
        self._socket = socket
        self.user_id = user_id
        self.track_id = track_id
        self._limit = limit
        """Unsent bytes (in the socket's buffer, or held) past which it is closed with 1013."""
        self.expires_at = expires_at
        """When the socket's token expires (time.time()); the hub closes it then, with 4001."""
        self.skip_through = 0
        """Durable frames up to this seq are not sent (the client has them: its replay, or its
        `since=` when it is ahead of this replica)."""
        self.live = False
        self.closed_for: str | None = None
        """Why the socket was closed (its close reason); None while it is open."""
        self._held: list[tuple[int, bytes]] | None = None
        self._held_bytes = 0

    @property
    def closed(self) -> bool:
        """The socket was closed (or asked to close)."""
        return self.closed_for is not None

    @property
    def too_slow(self) -> bool:
        """The socket was closed for not keeping up."""
        return self.closed_for is close_codes.TOO_SLOW

    def offer(self, seq: int, frame: bytes) -> bool:
        """Send one frame (seq EPHEMERAL: not durable); False when the subscriber is closed or too slow."""
        if self.closed_for is not None:
            return False
        if seq != EPHEMERAL and seq <= self.skip_through:
            return True  # the client has it already
        if not self.live:
            return self._hold(seq, frame)
        if not self._socket.write_frames(frame):
            self.closed_for = "socket closed"
            return False
        if self._socket.buffered() > self._limit:
            self.close(close_codes.TRY_AGAIN, close_codes.TOO_SLOW)
            return False
        return True

    def offer_many(self, frames: list[tuple[int, bytes]]) -> bool:
        """Send several frames in order, in one write when live; False when closed or too slow."""
        if self.closed_for is not None:
            return False
        if not self.live:
            return all(self.offer(seq, frame) for seq, frame in frames)
        skip = self.skip_through
        chunk: list[bytes] = []
        size = 0
        for seq, frame in frames:
            if seq != EPHEMERAL and seq <= skip:
                continue
            chunk.append(frame)
            size += len(frame)
            if size >= WRITE_MOST:  # written, and the bound checked, before more is joined
                if not self.offer(EPHEMERAL, b"".join(chunk)):
                    return False
                chunk, size = [], 0
        return self.offer(EPHEMERAL, b"".join(chunk)) if chunk else True

    def behind(self) -> bool:
        """Open, live, and more than half its bound unsent (a catch-up lets it drain first)."""
        return self.closed_for is None and self.live and self._socket.buffered() > self._limit // 2

    def write_now(self, data: bytes) -> bool:
        """Write frames of this socket's own (connected, its replay) ahead of everything held."""
        return self.closed_for is None and self._socket.write_frames(data)

    async def drained(self) -> None:
        """Wait until this socket's buffer is low again (its replay's pace, or its track's
        catch-up's: app/live/cursors.py)."""
        await self._socket.drained()

    def go_live(self) -> None:
        """After the replay: write the held frames the client lacks, then write as frames come."""
        held, self._held, self._held_bytes = self._held, None, 0
        self.live = True
        if held:
            self.offer_many(held)

    def close(self, code: int, reason: str) -> None:
        """Close the socket with `code` and `reason` (the first close wins)."""
        if self.closed_for is not None:
            return
        self.closed_for = reason
        self._held = None
        self._socket.close_now(code, reason)

    def _hold(self, seq: int, frame: bytes) -> bool:
        if self._held is None:
            self._held = []
        self._held.append((seq, frame))
        self._held_bytes += len(frame)
        if self._held_bytes > self._limit:
            self.close(close_codes.TRY_AGAIN, close_codes.TOO_SLOW)
            return False
        return True
