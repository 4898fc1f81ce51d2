"""One socket's place in the hub: a bounded queue of frames, and why it must stop."""

from __future__ import annotations

import asyncio
from collections import deque

CLOSE_TOO_SLOW = 1013
"""Close code for a socket whose queue overflowed (RFC 6455: try again later)."""


class Subscriber:
    """Frames for one socket, queued without ever waiting; its writer takes them out.

    The hub calls `offer` from its fan-out loop: it never blocks, and when the queue is full the
    subscriber asks to be closed (1013) instead of delaying anyone. Durable frames carry their
    `seq`; those at or below `skip_through` (already seen by the client) are dropped.
    """

    __slots__ = (
        "_frames",
        "_limit",
        "_wakeup",
        "close_reason",
        "skip_through",
        "track_id",
        "user_id",
    )

    def __init__(self, user_id: int, track_id: str, limit: int) -> None:
        self.user_id = user_id
        self.track_id = track_id
        self.skip_through = 0
        self.close_reason: tuple[int, str] | None = None
        self._frames: deque[tuple[int, str]] = deque()
        self._limit = limit
        self._wakeup = asyncio.Event()

    def offer(self, seq: int, frame: str) -> bool:
        """Queue a frame (seq 0: not durable); False when the subscriber is stopping or too slow."""
        if self.close_reason is not None:
            return False
        if len(self._frames) >= self._limit:
            self.close(CLOSE_TOO_SLOW, "too slow: reconnect with since=<last seq you got>")
            return False
        self._frames.append((seq, frame))
        self._wakeup.set()
        return True

    def close(self, code: int, reason: str) -> None:
        """Ask the writer to close the socket with `code` (the first reason wins)."""
        if self.close_reason is None:
            self.close_reason = (code, reason)
            self._frames.clear()
        self._wakeup.set()

    def take(self) -> list[str]:
        """Every queued frame the client does not have yet, in order (and empty the queue)."""
        frames = [frame for seq, frame in self._frames if not seq or seq > self.skip_through]
        self._frames.clear()
        return frames

    async def wait(self) -> None:
        """Until there is a frame to take, or the subscriber is asked to stop."""
        while not self._frames and self.close_reason is None:
            self._wakeup.clear()
            await self._wakeup.wait()
