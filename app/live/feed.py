"""The listener's sink: each verified notice routed to the part that handles it, and a socket's
`subscription` to its track and its user.

Three parts, each with its own job:
- app/live/cursors.py: the tracks' cursors (events in seq order, no gap, no duplicate), the
  catch-ups from the log and the `since=` replays;
- app/live/user_lane.py: the users' channels and their notifications, read off the listener's
  path;
- app/live/access.py: the access guard, which closes the sockets that lost access as
  revocations come in.

Nothing here waits: `on_notice` is called by the listener for each payload, synchronously, and
hands it over (typing goes straight to the track's sockets). A (re)connect of the listener starts
the check of every watched track in the background; the replica is ready once it is done. The
hub only routes and the socket handler only sends.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Protocol

from app.background import Tasks
from app.bounds import EVENT_PAGE
from app.data.events import Cursor
from app.live.access import AccessGuard, AccessReader
from app.live.cursors import Cursors, EventReader, Listening, _TrackCursor
from app.live.frames import text_frame
from app.live.hub import Hub
from app.live.notices import Opened, stale
from app.live.subscriber import EPHEMERAL, Subscriber
from app.live.topics import track_of
from app.live.user_lane import MessageReader, UserLane
from app.wire import Ephemeral, Revoke, TopicBatch, UserBatch

_REVOKE_STALE = 60.0
"""Seconds after which a revocation is old news (a replayed one is dropped)."""


class Log(EventReader, MessageReader, AccessReader, Protocol):
    """What the feed's parts read (app/data/events.py's EventLog; an in-memory one in the unit
    tests)."""


class Feed:
    """The listener's sink: routes notices to the track cursors, the user lane and the access
    guard."""

    def __init__(
        self,
        hub: Hub,
        log: Log,
        listening: Listening,
        on_lag: Callable[[float], None] | None = None,
        page: int = EVENT_PAGE,
    ) -> None:
        self._hub = hub
        self._tasks = Tasks(__name__)
        self.access = AccessGuard(hub, log)
        self.cursors = Cursors(hub, log, listening, self.access, self._tasks, on_lag, page)
        self.user_lane = UserLane(hub, log, listening)
        self._caught_up = True
        self._reconnected: asyncio.Task[None] | None = None

    @property
    def access_epoch(self) -> int:
        """Goes up whenever a revocation may have passed a socket being admitted (AccessGuard.epoch)."""
        return self.access.epoch

    # -----------------------------------------------------------------------------------------
    # Sockets
    # -----------------------------------------------------------------------------------------

    @asynccontextmanager
    async def subscription(self, sub: Subscriber, wait: float) -> AsyncIterator[Cursor]:
        """Register a socket for its track and user; yields the event its live frames follow.

        Raises TimeoutError when the track's channel and cursor are not in place within `wait`
        seconds, what the database raised when they cannot be, hub.TooManySockets and hub.ShuttingDown.
        """
        track = self.cursors.join(sub.track_id)
        self.user_lane.join(sub.user_id)
        try:
            await asyncio.wait_for(self._joined(sub, track), wait)
            self._hub.add(sub)  # counted and added in one step: see Hub.add
            try:
                yield track.cursor
            finally:
                self._hub.remove(sub)
        finally:
            self.cursors.leave(sub.track_id, track)
            self.user_lane.leave(sub.user_id)

    def replay(
        self, sub: Subscriber, since: int, start: Cursor, tag: str | None = None
    ) -> AsyncIterator[bytes]:
        """The frames a socket resuming after `since` needs before its live ones (Cursors.replay)."""
        return self.cursors.replay(sub, since, start, tag)

    async def _joined(self, sub: Subscriber, track: _TrackCursor) -> None:
        await asyncio.shield(track.ready)
        if await self.user_lane.listen(sub.user_id):
            self.access.moved()  # a revocation before this LISTEN went unheard here

    # -----------------------------------------------------------------------------------------
    # The listener's sink
    # -----------------------------------------------------------------------------------------

    def on_listen(self) -> None:
        """The listener (re)connected: catch up in the background, so that the listener goes on
        reading (a database call here would hold up every event already on its way)."""
        self._caught_up = False
        self.cursors.reconnected()
        self.access.moved()
        if self._reconnected is not None:
            self._reconnected.cancel()
        self._reconnected = self._tasks.spawn(self._after_reconnect())

    @property
    def caught_up(self) -> bool:
        """What the tracks missed while the listener was away has been delivered."""
        return self._caught_up

    def catch_up(self) -> None:
        """Notices may have gone by unheard (the channels were renamed): read every watched
        track's log again, in the background."""
        self._tasks.spawn(self._check_tracks())

    def on_notice(self, opened: Opened) -> None:
        """Route one payload that verified (synchronously: nothing here waits)."""
        notice = opened.notice
        match notice:
            case TopicBatch(topic=topic):
                if (track_id := track_of(topic)) is not None:
                    self.cursors.on_batch(track_id, notice)
            case UserBatch():
                self.user_lane.on_batch(notice)
            case Revoke(at=at) if stale(at, _REVOKE_STALE):
                return  # old news, or sent again by someone listening
            case Revoke(topic=str(topic), gone=gone, at=at):
                self.access.moved()
                if (track_id := track_of(topic)) is not None:
                    if gone:
                        self.cursors.gone(track_id, at)
                    self.access.recheck_track(track_id)
            case Revoke(user=int(user)):
                self.access.moved()
                self.access.recheck_user(user)
            case Ephemeral(topic=topic, message=message):
                if (track_id := track_of(topic)) is not None:
                    self._hub.send_track(track_id, [(EPHEMERAL, text_frame(bytes(message)))])

    async def _after_reconnect(self) -> None:
        """What did every watched track miss meanwhile? And may every socket still see its track
        (a revocation may have passed unheard)?"""
        catching_up = await self.cursors.check()
        self.access.recheck_all()
        if catching_up:
            await asyncio.wait(catching_up)
        self._caught_up = True

    async def _check_tracks(self) -> None:
        await self.cursors.check()

    # -----------------------------------------------------------------------------------------
    # Background work, run by the replica for as long as it serves
    # -----------------------------------------------------------------------------------------

    async def deliver_user_messages(self) -> None:
        """The user lane, forever (UserLane.run)."""
        await self.user_lane.run()

    async def enforce_access(self) -> None:
        """The access guard, forever (AccessGuard.enforce)."""
        await self.access.enforce()

    async def stop(self) -> None:
        """Cancel the catch-ups in flight."""
        await self._tasks.cancel()
