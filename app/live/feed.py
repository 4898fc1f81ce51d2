"""The listener's sink: each verified notice routed to the part that handles it; and the way a
socket joins: its connection (its user's lane), then its subscriptions to topics.

Three parts, each with its own job:
- app/live/cursors.py: the topics' cursors (events in seq order, no gap, no duplicate), the
  catch-ups from the log and the `since=` replays;
- app/live/user_lane.py: the users' channels and their notifications, read off the listener's
  path;
- app/live/access.py: the access guard, which ends the subscriptions that lost access as
  revocations come in.

Nothing here waits: `on_notice` is called by the listener for each payload, synchronously, and
hands it over (typing goes straight to the topic's sockets). A (re)connect of the listener starts
the check of every watched topic in the background; the replica is ready once it is done. The hub
only routes and the socket handlers only send.

How a socket uses it (app/handlers/sockets.py for the track socket, app/handlers/topic_sockets.py
for /api/ws): `async with feed.connection(conn, wait)` registers the socket (its user's limit, its
user's channel); `await feed.subscribe(conn, topic, wait, …)` joins a topic and returns the event
its live frames follow (they are held until `conn.go_live(topic)`, after the replay that
`feed.replay` gives); `feed.unsubscribe(conn, topic)` leaves it; leaving the block leaves all.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Protocol

from app.background import Tasks
from app.bounds import EVENT_PAGE, EVENT_PAGE_BYTES
from app.data.events import Access, Cursor
from app.live import close_codes
from app.live.access import AccessGuard, AccessReader
from app.live.connection import EPHEMERAL, Connection
from app.live.cursors import Cursors, EventReader, Listening, resync_message
from app.live.frames import message_frame
from app.live.hub import Hub
from app.live.notices import Opened, stale
from app.live.topics import kind_of
from app.live.user_lane import MessageReader, UserLane
from app.wire import Ephemeral, Revoke, TopicBatch, Unsubscribed, UserBatch

_REVOKE_STALE = 60.0
"""Seconds after which a revocation is old news (a replayed one is dropped)."""


class Log(EventReader, MessageReader, AccessReader, Protocol):
    """What the feed's parts read (app/data/events.py's EventLog; an in-memory one in the unit
    tests)."""


class Counting(Protocol):
    """Who is here, as the live path tells it (app/presence/tracker.py's Presence): a
    subscription to a topic whose kind has presence is counted while it lasts."""

    def join(self, conn: Connection, topic: str) -> None:
        """Count the connection on the topic."""

    def leave(self, conn: Connection, topic: str) -> None:
        """Stop counting it there."""


class Feed:
    """The listener's sink: routes notices to the topic cursors, the user lane and the access
    guard; and the sockets' way in."""

    def __init__(
        self,
        hub: Hub,
        log: Log,
        listening: Listening,
        on_lag: Callable[[float], None] | None = None,
        page: int = EVENT_PAGE,
        page_bytes: int = EVENT_PAGE_BYTES,
        presence: Counting | None = None,
    ) -> None:
        self._hub = hub
        self._tasks = Tasks(__name__)
        self._presence = presence
        self.access = AccessGuard(hub, log, self._refused, self._role_changed)
        self.cursors = Cursors(
            hub,
            log,
            listening,
            self.access.moved,
            self._tasks,
            on_lag,
            page,
            page_bytes,
            rechecked=self.access.answered,
        )
        self.user_lane = UserLane(hub, log, listening)
        self._caught_up = True
        self._reconnected: asyncio.Task[None] | None = None

    @property
    def access_epoch(self) -> int:
        """Goes up whenever a revocation may have passed a subscription being admitted
        (AccessGuard.epoch)."""
        return self.access.epoch

    # -----------------------------------------------------------------------------------------
    # Sockets
    # -----------------------------------------------------------------------------------------

    @asynccontextmanager
    async def connection(self, conn: Connection, wait: float) -> AsyncIterator[None]:
        """Register a socket for its user (their notifications, their limit of sockets) while the
        block runs; at its end every subscription of the socket goes too.

        Raises TimeoutError when the user's channel is not in place within `wait` seconds, what
        the database raised when it cannot be, hub.TooManySockets and hub.ShuttingDown.
        """
        self.user_lane.join(conn.user_id)
        try:
            if await asyncio.wait_for(self.user_lane.listen(conn.user_id), wait):
                self.access.moved()  # a revocation before this LISTEN went unheard here
            self._hub.add(conn)  # counted and added in one step: see Hub.add
            try:
                yield
            finally:
                for topic in list(conn.topics):
                    self.unsubscribe(conn, topic)
                self._hub.remove(conn)
        finally:
            self.user_lane.leave(conn.user_id)

    async def subscribe(
        self, conn: Connection, topic: str, wait: float, moderator: bool = False, presence: bool = False
    ) -> Cursor:
        """Subscribe a registered socket to a topic; return the event its live frames follow.
        They are held until `conn.go_live(topic)` (its replay goes first). `moderator`: the user
        gets the restricted variant of the topic's events; `presence`: the topic's kind has typing
        and presence (counted from now on).

        Raises TimeoutError when the topic's channel and cursor are not in place within `wait`
        seconds, and what the database raised when they cannot be.
        """
        cursor = self.cursors.join(topic)
        if cursor.sockets == 1:
            cursor.presence = presence
        ready = cursor.ready
        try:
            if ready.done():  # the topic is watched here already: the common case, at no wait
                ready.result()
            else:
                await asyncio.wait_for(asyncio.shield(ready), wait)
        except BaseException:
            self.cursors.leave(topic, cursor)
            raise
        conn.hold(topic)
        conn.moderate(topic, moderator)
        self._hub.subscribe(conn, topic)
        if cursor.presence and self._presence is not None:
            self._presence.join(conn, topic)
        return cursor.cursor

    def unsubscribe(self, conn: Connection, topic: str) -> bool:
        """End a subscription (at once); False when there was none."""
        cursor = self.cursors.cursor(topic)
        if not self._hub.unsubscribe(conn, topic):
            return False
        if cursor is not None:
            if cursor.presence and self._presence is not None:
                self._presence.leave(conn, topic)
            self.cursors.leave(topic, cursor)
        return True

    def presence(self, topic: str) -> bool:
        """The watched topic's kind has typing and presence."""
        cursor = self.cursors.cursor(topic)
        return cursor is not None and cursor.presence

    def replay(
        self, conn: Connection, topic: str, since: int, start: Cursor, tag: str | None = None
    ) -> AsyncIterator[bytes]:
        """The frames a subscription resuming after `since` needs before its live ones
        (Cursors.replay), built for its socket."""
        return self.cursors.replay(conn, topic, since, start, tag)

    def _refused(self, conn: Connection, topic: str, answer: Access) -> None:
        """A subscription lost access: the track socket is closed (1008, as its contract says); a
        subscription of /api/ws ends, and its socket is told (`unsubscribed`, with the reason),
        unless its user is gone, which closes the socket."""
        if not conn.tagged:
            conn.close(close_codes.POLICY, close_codes.ACCESS_REVOKED)
        elif conn.user_id and answer.username is None:
            conn.close(close_codes.POLICY, close_codes.USER_GONE)
        elif self.unsubscribe(conn, topic):
            conn.send(
                message_frame(
                    Unsubscribed(topic=topic, reason="forbidden" if answer.may_see is False else "not found")
                )
            )

    def _role_changed(self, conn: Connection, topic: str) -> None:
        """A subscription's user no longer moderates the topic (off the team, say), or now does (on
        the team): from now on it gets the public variant of each event, or the restricted one, and
        a `resync` at the topic's latest seq here makes its client reload (with GET, which no longer
        shows it hidden or held comments, or now does) and go on from there. Offered like a frame
        of the topic: a replay in progress delivers it in turn."""
        cursor = self.cursors.cursor(topic)
        if cursor is not None:
            conn.offer(topic, cursor.frames(EPHEMERAL, resync_message(topic, cursor.cursor)))

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
        """What the topics missed while the listener was away has been delivered."""
        return self._caught_up

    def catch_up(self) -> None:
        """Notices may have gone by unheard (the channels were renamed): read every watched
        topic's log again, in the background."""
        self._tasks.spawn(self._check_topics())

    def on_notice(self, opened: Opened) -> None:
        """Route one payload that verified (synchronously: nothing here waits)."""
        notice = opened.notice
        match notice:
            case TopicBatch():
                self.cursors.on_batch(notice)
            case UserBatch():
                self.user_lane.on_batch(notice)
            case Revoke(at=at) if stale(at, _REVOKE_STALE):
                return  # old news, or sent again by someone listening
            case Revoke(topic=str(topic), gone=gone, at=at, x=x):
                self.access.moved()
                if gone:
                    self.cursors.gone(topic, at)
                self.access.recheck_topic(topic, x)
            case Revoke(user=int(user), x=x):
                self.access.moved()
                self.access.recheck_user(user, x)
            case Revoke(kind=str(kind), gone=gone, at=at, x=x):
                self.access.moved()
                for topic in [t for t in self._hub.topics if kind_of(t) == kind]:
                    if gone:
                        self.cursors.gone(topic, at)
                    self.access.recheck_topic(topic, x)
            case Ephemeral(topic=topic, message=message):
                self._hub.send(topic, [self.cursors.message(topic, bytes(message))])

    async def _after_reconnect(self) -> None:
        """What did every watched topic miss meanwhile? And may every subscription still see its
        topic (a revocation may have passed unheard)?"""
        catching_up = await self.cursors.check()
        self.access.recheck_all()
        if catching_up:
            await asyncio.wait(catching_up)
        self._caught_up = True

    async def _check_topics(self) -> None:
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
