"""Who is here: per topic whose kind has presence (a track's, a thread's), the distinct users with
a socket subscribed to it on any replica, and the `presence` frames that tell the topic's sockets.

Each replica knows its own subscriptions at once (`join` and `leave`, which the feed calls as
subscriptions to such topics begin and end). What the others have it learns from PostgreSQL, in
two unlogged tables (sql/schema.sql), on a tick of a quarter second (of a second once nothing has
changed for two: `Timing.quiet_tick`):

- write: one row per topic of this replica's, the distinct users it has there and its anonymous
  sockets, only for the topics whose set changed since the last tick, all in one statement. A
  user's second tab changes nothing; 200 sockets a second coming and going on one topic is at
  most four writes a second, not 200. A topic this replica left keeps an empty row for a minute
  (so that every reader sees it go), then the row is deleted.
- read: in one statement, every replica's heartbeat and the others' rows changed since the last
  read, by transaction id against the last read's snapshot (a row that committed late is never
  missed), plus all their rows of the topics that just got their first socket here.
- heartbeat, every 5 s: a replica not seen for 12 s counts no one (a SIGKILL, a network cut), and
  is deleted with its rows after 10 minutes. A replica id is stable across restarts
  (TRACKTALK_REPLICA_ID, default host name:port): a restart deletes its old rows and changes its
  `instance`, and the others drop the old instance's rows when they see the new one. A write
  takes effect only while its process holds the id: one whose id another live process claimed
  writes nothing more under it, and moves to an id of its own (`id/instance`).

The count of a topic is |union of the live replicas' users| + the sum of their anonymous
sockets (app/presence/roster.py keeps it). A change goes out as `presence` at most once a second per
topic: the first at once, the ones within the second after it coalesced into one with the latest
count when the second is up. A new subscription is greeted with the count as soon as it joins (the
frame waits behind `connected` or `subscribed` and its replay); a socket is never sent the number
it was last told.

Why tables and not NOTIFY: a replica's set of users on a topic does not fit NOTIFY's 8000 bytes
once a listening party passes ~1,000 users (it would have to travel as deltas, and a replica that
missed one would count wrong until some full resend); every NOTIFY also takes the cluster-wide
lock that the comment writers queue on at commit (docs/dba.md). Rows written on a tick, read by
transaction id, are whole each time, cost no WAL, and a reader that missed some reads them later.

Costs and figures: docs/performance.md, "Presence".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

from app.background import background
from app.data.db import Conn
from app.live.connection import EPHEMERAL, Connection
from app.live.frames import Frames
from app.live.hub import Hub
from app.live.topics import identity, prefix
from app.logs import one_line
from app.presence.roster import Roster, TopicListeners
from app.presence.table import Beat, Row, Snapshot
from app.wire import encoder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Timing:
    """Presence's clock, in seconds (the defaults are the service's; tests shorten them)."""

    tick: float = 0.25
    """Between two rounds of write and read. A change reaches the other replicas' memory within
    two ticks; with the one-second limit on frames that stays within the 2 s the issue allows."""
    quiet_tick: float = 1.0
    """Between two rounds once nothing has changed for `quiet_after` (no socket here came or went,
    no row read was new): an idle replica's reads were a sixth of its idle CPU at 100 sockets
    (docs/performance.md). A socket coming or going here ends the wait at once, so another
    replica's change is read within a second of its write: counts still agree within 1.25 s."""
    quiet_after: float = 2.0
    """Seconds without a change (a row written here, another replica's row read) before the
    rounds slow to `quiet_tick`."""
    send_every: float = 1.0
    """At most one `presence` per topic per this long (the contract's once a second)."""
    fresh_pause: float = 0.05
    """A topic's first socket here makes the next read come at once, but never sooner than this
    after the last one (sockets arriving on many new topics share a read)."""
    heartbeat: float = 5.0
    dead_after: float = 12.0
    """A replica whose heartbeat is older counts no one: dead within 12 s of its last beat, plus a
    quiet tick and a frame's second: under the 15 s allowed."""
    forget_replica: float = 600.0
    """A replica silent this long is deleted, with its rows, by the others' heartbeats."""
    keep_topic: float = 10.0
    """A topic without sockets here stays loaded this long (a page reload finds it warm)."""
    keep_empty_row: float = 60.0
    """An empty row (this replica left the topic) is kept this long so that every reader sees it."""
    release_timeout: float = 2.0
    """At shutdown, the longest wait to delete this replica's rows (the others drop them anyway
    once its heartbeat is old)."""


class Table(Protocol):
    """What presence asks of the database (app/presence/table.py; an in-memory one in tests)."""

    async def claim(self, replica: str, instance: str) -> None:
        """Take the replica id: its rows of an earlier run go."""

    async def beat(self, replica: str, instance: str, forget: float) -> Beat:
        """The heartbeat."""

    async def write(self, replica: str, instance: str, rows: list[Row], drop: list[str]) -> bool:
        """Write rows of topics that changed, delete empty rows of `drop`, if this process still
        holds the replica id; False (nothing written) if it does not."""

    async def read(self, since: int, fresh: list[str], exclude: str) -> Snapshot:
        """Heartbeats; of the replicas other than `exclude`, the rows changed since `since` (0:
        all) and all rows of `fresh` topics."""

    async def release(self, replica: str, instance: str) -> None:
        """Delete the heartbeat and rows of this process."""

    async def count(self, conn: Conn, topic: str, exclude: str, alive: float) -> int:
        """The count of a topic from the rows of the other live replicas."""


class _TopicPresence:
    """One topic as presence sends it: its listeners (the roster's), what its sockets were last
    told, and the timers."""

    __slots__ = ("forget", "greeted", "listeners", "sent", "sent_at", "timer")

    def __init__(self, listeners: TopicListeners) -> None:
        self.listeners = listeners
        self.sent: int | None = None
        """The count last sent to all the topic's sockets."""
        self.sent_at = -math.inf
        self.timer: asyncio.TimerHandle | None = None
        """The coalesced send, when one is due."""
        self.greeted: dict[Connection, int] = {}
        """Sockets told a count other than `sent` when they joined (until the next send)."""
        self.forget: asyncio.TimerHandle | None = None
        """When the topic, without sockets here, is let go."""


class Presence:
    """Counts listeners per topic across replicas and sends `presence` to the topic's sockets."""

    def __init__(self, hub: Hub, table: Table, replica: str, timing: Timing | None = None) -> None:
        self._hub = hub
        self._table = table
        self._timing = timing or Timing()
        self._roster = Roster(replica, self._timing.dead_after)
        self._instance = os.urandom(8).hex()
        self._topics: dict[str, _TopicPresence] = {}
        self._dirty: set[str] = set()
        """Tracks whose row must be written (their users or anonymous sockets here changed)."""
        self._empty_rows: dict[str, float] = {}
        """Tracks left, whose empty row was written -> when (loop time)."""
        self._fresh: set[str] = set()
        """Tracks whose rows must be read whole (their first socket here)."""
        self._since: int | None = None
        """Where the next read starts (None: read every row, as after a failure)."""
        self._wake = asyncio.Event()
        self._quiet = False
        """Waiting a quiet tick: a change here must end the wait (`_stir`)."""
        self._stirred = -math.inf
        """Loop time of the last round that wrote or read a change."""
        self._claimed = False
        self._failing = False
        self._next_beat = self._last_write = self._last_read = -math.inf
        self.writes = 0
        """Statements run that write (rows, heartbeats; for /metrics)."""
        self.reads = 0

    @property
    def replica(self) -> str:
        """This replica's id in tracktalk.replicas (TRACKTALK_REPLICA_ID)."""
        return self._roster.me

    @property
    def live_replicas(self) -> int:
        """Replicas counted now, this one included."""
        return self._roster.live_replicas

    def listening(self, topic: str) -> int | None:
        """The count of a topic with sockets here (lately); None for the others (ask `count`)."""
        return self._roster.listening(topic)

    async def count(self, conn: Conn, topic: str) -> int:
        """The count of any topic: from memory when it has sockets here, else from the others' rows."""
        known = self.listening(topic)
        if known is not None:
            return known
        return await self._table.count(conn, topic, self.replica, self._timing.dead_after)

    # -----------------------------------------------------------------------------------------
    # Sockets
    # -----------------------------------------------------------------------------------------

    def join(self, conn: Connection, topic: str) -> None:
        """Count a subscription (the hub has it registered; its frames wait for go_live)."""
        place = self._topics.get(topic)
        if place is None:
            listeners = self._roster.topics[topic] = TopicListeners()
            place = self._topics[topic] = _TopicPresence(listeners)
            self._fresh.add(topic)
            self._wake.set()
        if place.forget is not None:
            place.forget.cancel()
            place.forget = None
        if place.listeners.arrive(conn.user_id):
            self._dirty.add(topic)
            self._stir()
        if not place.listeners.loaded:
            return  # the read that loads it sends the count to every socket of the topic
        count = place.listeners.listening
        if count != place.sent:
            place.greeted[conn] = count
        self._hub.offer_each(topic, [conn], _frames(topic, count))
        self._changed(topic, place)

    def leave(self, conn: Connection, topic: str) -> None:
        """Stop counting a subscription (still in the hub, or just gone from it)."""
        place = self._topics[topic]
        place.greeted.pop(conn, None)
        if place.listeners.depart(conn.user_id):
            self._dirty.add(topic)
            self._stir()
        if place.listeners.empty_here:
            loop = asyncio.get_running_loop()
            place.forget = loop.call_later(self._timing.keep_topic, self._let_go, topic, place)
        self._changed(topic, place, leaving=conn)

    def _let_go(self, topic: str, place: _TopicPresence) -> None:
        """The topic has had no socket here for a while: stop following it."""
        if place.listeners.empty_here and self._topics.get(topic) is place:
            del self._topics[topic]
            del self._roster.topics[topic]
            self._fresh.discard(topic)
            if place.timer is not None:
                place.timer.cancel()

    # -----------------------------------------------------------------------------------------
    # Sending
    # -----------------------------------------------------------------------------------------

    def _changed(self, topic: str, place: _TopicPresence, leaving: Connection | None = None) -> None:
        """The count may have changed: send it now, or when the topic's second is up (`leaving`:
        a socket on its way out, still in the hub)."""
        if not place.listeners.loaded or place.timer is not None:
            return
        if place.listeners.listening == place.sent and not place.greeted:
            return
        loop = asyncio.get_running_loop()
        due = place.sent_at + self._timing.send_every
        if loop.time() >= due:
            self._send(topic, place, leaving)
        else:
            place.timer = loop.call_at(due, self._send, topic, place)

    def _send(self, topic: str, place: _TopicPresence, leaving: Connection | None = None) -> None:
        """Tell each socket of the topic the count, unless it is what the socket was last told."""
        place.timer = None
        if self._topics.get(topic) is not place:
            return
        count = place.listeners.listening
        greeted, place.greeted = place.greeted, {}
        if count != place.sent:
            told = place.sent
            place.sent, place.sent_at = count, asyncio.get_running_loop().time()
            targets = [
                s
                for s in self._hub.topic_sockets(topic)
                if s is not leaving and greeted.get(s, told) != count
            ]
        else:
            targets = [s for s, told in greeted.items() if told != count]
        if targets:
            self._hub.offer_each(topic, targets, _frames(topic, count))

    # -----------------------------------------------------------------------------------------
    # The database
    # -----------------------------------------------------------------------------------------

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Claim the replica id, keep the tables and the counts up to date while the block runs,
        then delete this replica's rows."""
        try:
            async with background(self._run()):
                yield
        finally:
            if self._claimed:
                try:
                    await asyncio.wait_for(
                        self._table.release(self.replica, self._instance), self._timing.release_timeout
                    )
                except Exception as exc:
                    log.warning("rows not deleted at shutdown (%s): the others drop them", one_line(exc))

    async def _run(self) -> None:
        while True:
            await self._pause()
            await self.tick()

    def _stir(self) -> None:
        """A row of this replica's must be written: end a quiet tick's wait (only then: in a
        storm, a wake-up per socket would cost more than the reads it saves)."""
        if self._quiet:
            self._quiet = False
            self._wake.set()

    async def _pause(self) -> None:
        """Until the next tick; sooner when a topic got its first socket here (but never sooner
        than `fresh_pause` after the last read); later, a quiet tick, when nothing changed for
        `quiet_after` (a change here ends that wait)."""
        loop = asyncio.get_running_loop()
        timing = self._timing
        try:
            while True:
                self._wake.clear()
                now = loop.time()
                if self._fresh:
                    gap = timing.fresh_pause
                elif self._dirty or now - self._stirred < timing.quiet_after:
                    gap = timing.tick
                else:
                    gap = timing.quiet_tick
                wait = gap - (now - self._last_read)
                if wait <= 0:
                    return
                self._quiet = gap > timing.tick
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)
        finally:
            self._quiet = False

    async def tick(self) -> None:
        """One round: the heartbeat and the write when they are due, then the read. A failure is
        logged, makes the next read a whole one, and the next round tries again."""
        now = asyncio.get_running_loop().time()
        self._last_read = now
        try:
            if now >= self._next_beat:
                await self._beat()
                self._next_beat = now + self._timing.heartbeat
            if now - self._last_write >= self._timing.tick:
                self._last_write = now
                if await self._write():
                    self._stirred = now
            if await self._read():
                self._stirred = now
        except Exception as exc:
            if not self._failing:
                log.warning("the database failed (%s): counts may lag until it answers", one_line(exc))
            self._failing = True
            self._since = None  # rows deleted meanwhile would be missed: read them all next time
        else:
            if self._failing:
                log.info("the database answers again")
            self._failing = False

    async def _beat(self) -> None:
        if not self._claimed:
            await self._table.claim(self.replica, self._instance)
            self.writes += 1
            self._claimed = True
            log.info("counting as replica %r", self.replica)
        beat = await self._table.beat(self.replica, self._instance, self._timing.forget_replica)
        self.writes += 1
        if beat is Beat.LOST:
            # The unlogged tables were emptied (a crash, a failover) or this replica was
            # forgotten: write every row again, and read every row (xids may have gone back).
            log.warning("replica %r had no heartbeat row: writing its rows again", self.replica)
            self._write_all()
            self._since = None
        elif beat is Beat.TAKEN:
            taken = self._roster.me
            self._roster.me = f"{taken}/{self._instance[:8]}"
            log.error(
                "another running replica has TRACKTALK_REPLICA_ID %r: this one counts as %r; "
                "give each replica its own id",
                taken,
                self.replica,
            )
            self._claimed = False
            self._write_all()
            await self._beat()

    def _write_all(self) -> None:
        """Every row of this replica must be written again (they were lost)."""
        self._empty_rows.clear()
        self._dirty.update(t for t, place in self._topics.items() if not place.listeners.empty_here)

    async def _write(self) -> bool:
        """Write the rows that changed; whether there were any."""
        if not self._claimed:
            return False
        loop = asyncio.get_running_loop()
        dirty, self._dirty = self._dirty, set()
        rows = []
        for topic in sorted(dirty):
            place = self._topics.get(topic)
            users = list(place.listeners.users) if place else []
            rows.append(Row(self.replica, topic, users, place.listeners.anonymous if place else 0))
        old = loop.time() - self._timing.keep_empty_row
        drop = [t for t, at in self._empty_rows.items() if at <= old and t not in dirty]
        if not rows and not drop:
            return False
        try:
            held = await self._table.write(self.replica, self._instance, rows, drop)
        except BaseException:
            self._dirty |= dirty
            raise
        self.writes += 1
        if not held:
            # The heartbeat row is gone, or another process claimed the id: nothing was written.
            # The heartbeat finds which, and does what it does then (rows written again, or
            # under an id of this process's own) without waiting for its turn.
            self._dirty |= dirty
            await self._beat()
            return True
        now = loop.time()
        for topic in drop:
            del self._empty_rows[topic]
        for row in rows:
            if row.users or row.anonymous:
                self._empty_rows.pop(row.topic, None)
            else:
                self._empty_rows[row.topic] = now
        return True

    async def _read(self) -> bool:
        """Read what the other replicas changed; whether a row was read (a change, or one read
        again: a read's horizon is the oldest transaction then running)."""
        fresh = set(self._fresh)
        since = self._since
        snapshot = await self._table.read(since or 0, [] if since is None else sorted(fresh), self.replica)
        self.reads += 1
        if since is not None and snapshot.horizon < since:
            # Transaction ids went back: a restored or failed-over database. Read it all again.
            log.warning("the database's transaction ids went back: reading every row again")
            self._since = None
            return True
        complete = set(self._topics) if since is None else fresh
        touched = self._roster.take(snapshot, complete)
        for topic in touched:
            if (place := self._topics.get(topic)) is not None:
                self._changed(topic, place)
        self._fresh -= complete
        self._since = snapshot.horizon
        return bool(touched or snapshot.rows)  # the rows are the other replicas' (the read leaves ours out)


def _frames(topic: str, listening: int) -> Frames:
    """The `presence` message of a topic (app/wire.py's Presence), to be built once per form."""
    message = encoder.encode({"type": "presence", **identity(topic), "listening": listening})
    return Frames(EPHEMERAL, message, prefix(topic))
