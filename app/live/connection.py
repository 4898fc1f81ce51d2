"""One socket as the hub sees it: a Connection (its transport, its user, its token's expiry)
holding subscriptions to topics.

The hub offers each frame to every connection subscribed to a topic, in one loop that never
waits: a connection writes the frame to its socket there and then (`FrameSocket.write_frames`,
one system call, no task woken), and one whose unsent bytes pass its bound is closed with 1013
instead of delaying anyone. The user's own messages (`mention`, `notification`) reach it once,
whatever it subscribes to.

A subscription costs a connection one entry in its list of topics (and the hub one in the
topic's list of connections): a socket holds up to 100. What a subscription needs besides
(`_Resuming`: the seqs the client has, and the frames held while its `since=` replay runs) exists
only while it is needed, and whether the user moderates the topic (sees the restricted variant of
its events) only for the topics they do.
"""

from __future__ import annotations

from typing import Protocol

from app.live import close_codes
from app.live.frames import Frames

ANONYMOUS = 0
"""The user id of a socket without a token (never a users.id: ids start at 1)."""
EPHEMERAL = 0
"""The seq of a frame that is not durable (typing, presence, resync, an error): never skipped as
one the client has (durable seqs start at 1)."""
WRITE_MOST = 64 * 1024
"""Bytes of frames joined before they are written (the frame that reaches it is the write's
last): the bound is checked after each write, so a socket's unsent bytes never pass it by more
than this and a frame. A catch-up's page written whole to each socket of a topic put up to a page
in every stalled socket's buffer."""


class FrameSocket(Protocol):
    """Where a connection's frames go: the socket (app/live/wsprotocol.py in a server)."""

    def write_frames(self, data: bytes) -> bool:
        """Write whole frames now; False when the socket is closing."""

    def buffered(self) -> int:
        """Bytes written but not yet taken by the kernel."""

    async def drained(self) -> None:
        """Wait until the socket's buffer is low again (the pace of a replay or a catch-up)."""

    def close_now(self, code: int, reason: str) -> None:
        """Send the close frame and end the socket's handler (idempotent)."""


class _Resuming:
    """A subscription that is not plainly live: its replay runs (`held` is not None: live frames
    wait in it), or the client has events ahead of what this replica delivered (`skip`)."""

    __slots__ = ("held", "held_bytes", "skip")

    def __init__(self) -> None:
        self.skip = 0
        """Durable frames up to this seq are not sent (the client has them: its replay, or its
        `since=` when it is ahead of this replica)."""
        self.held: list[Frames] | None = []
        self.held_bytes = 0


class Connection:
    """A socket of a user, and the topics it subscribes to."""

    __slots__ = (
        "_held",
        "_limit",
        "_moderates",
        "_resuming",
        "_socket",
        "closed_code",
        "closed_for",
        "expires_at",
        "tagged",
        "topics",
        "user_id",
    )

    def __init__(
        self,
        socket: FrameSocket,
        user_id: int,
        limit: int,
        expires_at: float = float("inf"),
        tagged: bool = False,
    ) -> None:
        self._socket = socket
        self.user_id = user_id
        self._limit = limit
        """Unsent bytes (in the socket's buffer, or held) past which it is closed with 1013."""
        self.expires_at = expires_at
        """When the socket's token expires (time.time()); the hub closes it then, with 4001."""
        self.tagged = tagged
        """Its frames carry their topic (/api/ws); the track socket's do not."""
        self.topics: list[str] = []
        """The topics it subscribes to (in the hub)."""
        self.closed_for: str | None = None
        """Why the socket was closed (its close reason); None while it is open."""
        self.closed_code = 0
        """The close code it was closed with (0: open, or its client went)."""
        self._resuming: dict[str, _Resuming] | None = None
        self._held = 0
        """Bytes of frames held, all subscriptions together."""
        self._moderates: set[str] | None = None

    @property
    def closed(self) -> bool:
        """The socket was closed (or asked to close)."""
        return self.closed_for is not None

    @property
    def too_slow(self) -> bool:
        """The socket was closed for not keeping up."""
        return self.closed_for is close_codes.TOO_SLOW

    # -----------------------------------------------------------------------------------------
    # Subscriptions (the hub and the feed keep these in step)
    # -----------------------------------------------------------------------------------------

    def hold(self, topic: str) -> None:
        """A subscription begins: its live frames wait until `go_live`."""
        if self._resuming is None:
            self._resuming = {}
        self._resuming[topic] = _Resuming()

    def drop(self, topic: str) -> None:
        """A subscription ends: forget what it held."""
        if self._resuming is not None and (resuming := self._resuming.pop(topic, None)) is not None:
            self._held -= resuming.held_bytes
            if not self._resuming:
                self._resuming = None
        if self._moderates is not None:
            self._moderates.discard(topic)

    def skip_through(self, topic: str, seq: int) -> None:
        """The client has the topic's events up to `seq`: they are not sent again."""
        resuming = self._resuming.get(topic) if self._resuming is not None else None
        if resuming is None:
            if seq <= 0:
                return
            resuming = _Resuming()
            resuming.held = None
            if self._resuming is None:
                self._resuming = {}
            self._resuming[topic] = resuming
        resuming.skip = seq

    def skipping(self, topic: str) -> int:
        """The seq through which the topic's durable frames are not sent."""
        resuming = self._resuming.get(topic) if self._resuming is not None else None
        return 0 if resuming is None else resuming.skip

    def resync(self, topic: str, seq: int) -> None:
        """The topic's numbering goes on after `seq` (a resync): skip nothing past it."""
        resuming = self._resuming.get(topic) if self._resuming is not None else None
        if resuming is not None:
            resuming.skip = min(resuming.skip, seq)

    def live(self, topic: str) -> bool:
        """The topic's frames are written as they come (its replay, if any, is over)."""
        resuming = self._resuming.get(topic) if self._resuming is not None else None
        return resuming is None or resuming.held is None

    def go_live(self, topic: str) -> None:
        """After the replay: write the held frames the client lacks, then write as frames come."""
        resuming = self._resuming.get(topic) if self._resuming is not None else None
        if resuming is None or resuming.held is None:
            return
        held, resuming.held = resuming.held, None
        self._held -= resuming.held_bytes
        resuming.held_bytes = 0
        if resuming.skip == 0:
            self._forget_resuming(topic)
        if held:
            self.offer_many(topic, held)

    def moderate(self, topic: str, moderator: bool) -> None:
        """Whether the user moderates the topic (gets the restricted variant of its events)."""
        if moderator:
            if self._moderates is None:
                self._moderates = set()
            self._moderates.add(topic)
        elif self._moderates is not None:
            self._moderates.discard(topic)

    def moderates(self, topic: str) -> bool:
        """The user moderates the topic."""
        return self._moderates is not None and topic in self._moderates

    def sees(self, topic: str, frames: Frames) -> bool:
        """This socket gets the restricted variant of `frames` (its audience: the topic's
        moderators, and the event's author)."""
        return frames.restricted is not None and (
            (frames.author is not None and frames.author == self.user_id and self.user_id != ANONYMOUS)
            or (self._moderates is not None and topic in self._moderates)
        )

    # -----------------------------------------------------------------------------------------
    # Frames
    # -----------------------------------------------------------------------------------------

    def offer(self, topic: str, frames: Frames) -> bool:
        """Send one message of a topic; False when the connection is closed or too slow."""
        if self.closed_for is not None:
            return False
        if self._resuming is not None and (resuming := self._resuming.get(topic)) is not None:
            seq = frames.seq
            if seq != EPHEMERAL and seq <= resuming.skip:
                return True  # the client has it already
            if resuming.held is not None:
                return self._hold(resuming, frames)
            if seq != EPHEMERAL:
                self._forget_resuming(topic)  # past what it had: plainly live from now on
        if frames.restricted is not None and self.sees(topic, frames):
            return self._write(frames.form(self.tagged, True))
        data = frames.tagged if self.tagged else frames.plain
        return self._write(data if data is not None else frames.form(self.tagged))

    def offer_many(self, topic: str, many: list[Frames]) -> bool:
        """Send several messages of a topic in order, in one write when live; False when closed
        or too slow."""
        if self.closed_for is not None:
            return False
        if self._resuming is not None and (resuming := self._resuming.get(topic)) is not None:
            if resuming.held is not None:
                return all(self.offer(topic, frames) for frames in many)
            skip = resuming.skip
            many = [frames for frames in many if frames.seq == EPHEMERAL or frames.seq > skip]
            if any(frames.seq != EPHEMERAL for frames in many):
                self._forget_resuming(topic)
        tagged = self.tagged
        chunk: list[bytes] = []
        size = 0
        for frames in many:
            data = frames.form(tagged, self.sees(topic, frames))
            chunk.append(data)
            size += len(data)
            if size >= WRITE_MOST:  # written, and the bound checked, before more is joined
                if not self._write(b"".join(chunk)):
                    return False
                chunk, size = [], 0
        return self._write(b"".join(chunk)) if chunk else True

    def send(self, frame: bytes) -> bool:
        """Send a frame of the connection's own (the user's messages, an error, an answer),
        ephemeral, in order with everything else; False when closed or too slow."""
        return self.closed_for is None and self._write(frame)

    def write_now(self, data: bytes) -> bool:
        """Write frames of this socket's own (connected, a replay) ahead of what a replaying
        subscription holds."""
        return self.closed_for is None and self._socket.write_frames(data)

    def behind(self) -> bool:
        """Open, and more than half its bound unsent (a catch-up lets it drain first)."""
        return self.closed_for is None and self._socket.buffered() > self._limit // 2

    async def drained(self) -> None:
        """Wait until this socket's buffer is low again (a replay's pace, or a catch-up's)."""
        await self._socket.drained()

    def close(self, code: int, reason: str) -> None:
        """Close the socket with `code` and `reason` (the first close wins)."""
        if self.closed_for is not None:
            return
        self.closed_for = reason
        self.closed_code = code
        self._resuming = None
        self._held = 0
        self._socket.close_now(code, reason)

    def _write(self, data: bytes) -> bool:
        if not self._socket.write_frames(data):
            self.closed_for = "socket closed"
            return False
        if self._socket.buffered() > self._limit:
            self.close(close_codes.TRY_AGAIN, close_codes.TOO_SLOW)
            return False
        return True

    def _hold(self, resuming: _Resuming, frames: Frames) -> bool:
        assert resuming.held is not None
        resuming.held.append(frames)
        resuming.held_bytes += frames.size
        self._held += frames.size
        if self._held > self._limit:
            self.close(close_codes.TRY_AGAIN, close_codes.TOO_SLOW)
            return False
        return True

    def _forget_resuming(self, topic: str) -> None:
        assert self._resuming is not None
        del self._resuming[topic]
        if not self._resuming:
            self._resuming = None
