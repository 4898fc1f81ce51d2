"""One socket's place in the hub: a bounded queue of frames, and why it must stop."""

from __future__ import annotations

import asyncio

CLOSE_GOING_AWAY = 1001
"""Close code for the sockets of a replica that is shutting down (RFC 6455: going away)."""
CLOSE_TOO_SLOW = 1013
"""Close code for a socket whose queue overflowed (RFC 6455: try again later)."""
CLOSE_TOKEN_EXPIRED = 4001
"""Close code for a socket whose access token expired."""


class Subscriber:
    """Frames for one socket, queued without ever waiting; its writer takes them out.

    The hub calls `offer` from its fan-out loop: it never blocks, and when the queue is full the
    subscriber asks to be closed (1013) instead of delaying anyone. Durable frames carry their
    `seq`; those at or below `skip_through` (already seen by the client) are not queued.
    """

    __slots__ = (
        "_frames",
        "_limit",
        "_waiter",
        "close_reason",
        "expires_at",
        "skip_through",
        "track_id",
        "user_id",
    )

    def __init__(
        self, user_id: int, track_id: str, limit: int, skip_through: int = 0, expires_at: float = float("inf")
    ) -> None:
        self.user_id = user_id
        self.track_id = track_id
        self.expires_at = expires_at
        """When the socket's token expires (time.time()); the hub closes it then, with 4001."""
        self.skip_through = skip_through
        self.close_reason: tuple[int, str] | None = None
        # A plain list and a future made only while the writer waits: an idle socket costs
        # little (a deque and an asyncio.Event would cost about 1 KiB more each).
        self._frames: list[str] = []
        self._limit = limit
        self._waiter: asyncio.Future[None] | None = None

    def offer(self, seq: int, frame: str) -> bool:
        """Queue a frame (seq 0: not durable); False when the subscriber is stopping or too slow."""
        if self.close_reason is not None:
            return False
        if seq and seq <= self.skip_through:
            return True  # the client has it already
        if len(self._frames) >= self._limit:
            self.close(CLOSE_TOO_SLOW, "too slow: reconnect with since=<last seq you got>")
            return False
        self._frames.append(frame)
        self._wake()
        return True

    def close(self, code: int, reason: str) -> None:
        """Ask the writer to close the socket with `code` (the first reason wins)."""
        if self.close_reason is None:
            self.close_reason = (code, reason)
            self._frames.clear()
        self._wake()

    def take(self) -> list[str]:
        """Every queued frame, in order (and empty the queue)."""
        frames, self._frames = self._frames, []
        return frames

    def waiter(self) -> asyncio.Future[None]:
        """A future done when there is a frame to take or the subscriber must stop (awaited
        directly by the writer: an idle socket keeps no coroutine frame for it)."""
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        if self._frames or self.close_reason is not None:
            waiter.set_result(None)
        return waiter

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
