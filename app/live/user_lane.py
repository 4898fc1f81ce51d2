"""The users' notifications lane: the notifications announced (by id) to this replica's users,
read from the database and sent to their sockets, in order, off the listener's path.

A user's channel is listened on while the user has a socket here (and _FORGET_AFTER after). A
batch of ids is queued once (a payload sent twice is sent once) and while fresh; the lane reads
their messages in batches; what cannot be read or waited too long is not sent live (the inbox,
GET /api/notifications, has it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

from app.live.connection import ANONYMOUS
from app.live.cursors import Listening
from app.live.frames import text_frame
from app.live.hub import Hub
from app.live.notices import stale, user_name
from app.wire import UserBatch

log = logging.getLogger(__name__)

_FORGET_AFTER = 10.0
"""Seconds a user without sockets stays listened to (a client that reconnects misses nothing)."""
_USER_LANE = 10_000
"""Notification batches waiting to be read for this replica's users; more are not sent live
(they stay in the inbox), so that a slow database never stalls the listener."""
_USER_READ = 500
"""Notification ids read per query by the user lane."""
_USER_STALE = 30.0
"""Seconds after which a notification is no longer sent live (the inbox has it): after a
database outage the lane does not replay minutes-old news, nor a listener's replayed payload."""
_SENT_KEPT = 50_000
"""Notification ids remembered as sent live (a payload sent twice is sent once)."""


class MessageReader(Protocol):
    """What the lane reads (app/data/events.py's EventLog; an in-memory one in the unit tests)."""

    async def user_messages(
        self, notification_ids: list[int], written_by: list[int] | None = None
    ) -> list[tuple[int, bytes, bool]]:
        """(user id, message, whether it is about a track) for notifications; `written_by`: the
        primary's transactions that wrote them (a fan-out node's notices), to wait for."""


class UserLane:
    """This replica's users' channels, and the notifications sent to their sockets."""

    def __init__(self, hub: Hub, log: MessageReader, listening: Listening) -> None:
        self._hub = hub
        self._log = log
        self._listening = listening
        self._users: dict[int, int] = {}
        """Sockets per user here (the user's channel is listened on while any)."""
        self._forget: dict[int, asyncio.TimerHandle] = {}
        self._queue: asyncio.Queue[tuple[float, list[int], int | None]] = asyncio.Queue(_USER_LANE)
        self._sent: dict[int, None] = {}

    async def listen(self, user_id: int) -> bool:
        """Listen on the user's channel (none for an anonymous socket); True when it was not in
        place before (a notice sent on it meanwhile was not heard here)."""
        return user_id != ANONYMOUS and await self._listening.listen([user_name(user_id)])

    def join(self, user_id: int) -> None:
        """A socket of the user joined."""
        if user_id == ANONYMOUS:
            return
        self._users[user_id] = self._users.get(user_id, 0) + 1
        if (handle := self._forget.pop(user_id, None)) is not None:
            handle.cancel()

    def leave(self, user_id: int) -> None:
        """A socket of the user left: the last one lets the user's channel go, after _FORGET_AFTER."""
        if user_id == ANONYMOUS:
            return
        left = self._users[user_id] = self._users[user_id] - 1
        if left == 0:
            loop = asyncio.get_running_loop()
            self._forget[user_id] = loop.call_later(_FORGET_AFTER, self._forget_user, user_id)

    def _forget_user(self, user_id: int) -> None:
        self._forget.pop(user_id, None)
        if self._users.get(user_id) == 0:
            del self._users[user_id]
            self._listening.unlisten([user_name(user_id)])

    def on_batch(self, batch: UserBatch) -> None:
        """Queue the user's new notifications for the user lane (once each, while fresh)."""
        if batch.user not in self._hub.users or stale(batch.at, _USER_STALE):
            return
        ids = [id_ for id_ in batch.ids if id_ not in self._sent]
        if not ids:
            return
        if len(self._sent) + len(ids) > _SENT_KEPT:
            for old in list(self._sent)[: len(self._sent) // 2]:
                del self._sent[old]
        self._sent.update(dict.fromkeys(ids))
        try:
            self._queue.put_nowait((time.monotonic(), ids, batch.x))
        except asyncio.QueueFull:
            log.warning("user lane full: %d notifications not sent live (they are in the inbox)", len(ids))

    async def run(self) -> None:
        """The user lane: read queued notifications' messages and send them, in order, forever.

        Off the listener's path, so that reading them never holds up the tracks' events. A batch
        that cannot be read is not sent live (it stays in the inbox); the lane goes on.
        """
        while True:
            ids, written_by = _fresh(*await self._queue.get())
            while len(ids) < _USER_READ and not self._queue.empty():
                more, by = _fresh(*self._queue.get_nowait())
                ids += more
                written_by += by
            if not ids:
                continue
            try:
                for user_id, message, about_track in await self._log.user_messages(ids, written_by):
                    # The track socket's `mention` and `notification` are a track's (its contract):
                    # the forum's go to /api/ws sockets only.
                    self._hub.send_user(user_id, text_frame(message), track_sockets=about_track)
            except Exception:
                log.exception("%d notifications not sent live", len(ids))


def _fresh(queued_at: float, ids: list[int], written_by: int | None) -> tuple[list[int], list[int]]:
    """`ids` and the transaction that wrote them (if a fan-out node said), unless they waited in the
    user lane for longer than _USER_STALE."""
    if time.monotonic() - queued_at <= _USER_STALE:
        return ids, [] if written_by is None else [written_by]
    log.warning("%d notifications queued for over %.0f s: not sent live", len(ids), _USER_STALE)
    return [], []
