"""The topics' cursors: each watched topic's last event delivered here, kept in seq order with
no gap or duplicate; catch-up from the log; `since=` replays. A track is the topic `track:{id}`:
one live path for every kind.

The listener hands over notices in commit order. For every watched topic this replica knows the
last event delivered here (its cursor: seq and tag). A batch that continues it is delivered as it
came, if it says the event before it had the cursor's tag (`prev`); a batch that leaves a gap (its
events were not in the payload, or the listener was away), or whose `prev` is another, makes the
topic catch up from the event log, page by page, in a task of its own: the topic's later notices
wait for it (only as the highest seq they name), every other topic goes on live. No database call
ever holds up events that are already in hand.

Each read of the log is one statement, so one snapshot: the page (whose first event must name the
cursor's tag as the one before it, or the log is another history: a failover lost what the
sockets were sent) and the topic's latest event. A page holds at most EVENT_PAGE events and about
EVENT_PAGE_BYTES of messages (at least one event). What the log lacks in that snapshot is not kept
(pruned, deleted with its subject) or never was: the sockets `resync` to the latest event. A
notice that comes while a read is in flight makes it read again; nothing else ever moves what a
topic waits for, so nothing but a verified notice or the log itself can deliver, hold up or skip
an event.

A topic whose subject was deleted (`gone`: its events left the log) makes its sockets reload from
its latest event; not all of them: the revocation that says so also makes the access guard ask
who may still see the topic, and the catch-up waits for those answers (at most _REFUSALS_WAIT)
before it reads the log and tells the subscriptions that are left. A subscription that ends gets
`unsubscribed` (or its track socket is closed), never a `resync` first.

The first subscription of a topic makes the listener LISTEN on its channel, then reads its latest
seq (the cursor). `replay` gives a resuming subscription the events after its `since=`, read from
the log in pages at the client's pace, each row checked to follow the one before it: a hole (what
is kept no longer reaches back that far), or a `tag=` that is not the tag of the log's event at
`since` (the client holds events of a lost history), gives `resync` instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Protocol

from app.background import Tasks
from app.backoff import Backoff
from app.bounds import EVENT_PAGE, EVENT_PAGE_BYTES
from app.data.batch import Batched
from app.data.events import Cursor, Page
from app.live.connection import EPHEMERAL, Connection
from app.live.frames import Frames
from app.live.hub import Hub
from app.live.notices import stale, topic_name
from app.live.topics import identity, prefix
from app.logs import one_line
from app.wire import TopicBatch, encoder

log = logging.getLogger(__name__)

_FORGET_AFTER = 10.0
"""Seconds a topic without subscriptions stays listened to (a client that reconnects finds its
cursor warm)."""
_RETRY_FIRST = 0.1
"""Seconds before a failed read of the log (a catch-up's, or the check after a reconnect) is
tried again (then doubling) ..."""
_RETRY_MOST = 5.0
"""... and the longest wait (the database may be down: the listener's reconnection starts the
catch-up afresh anyway)."""
_PACE_MAX = 1.0
"""A catch-up waits for its topic's sockets to drain between pages, for at most this long per
page: the healthy ones keep up, and one that does not is closed with 1013 on a later page."""
_SIGNED_STALE = 30.0
"""Seconds after which a signed topic payload's events are not taken from it but read from the
log (a payload captured and sent again later need not be believed). The database's clock and the
replica's are assumed within seconds."""

_REFUSALS_WAIT = 5.0
"""Seconds a topic's reload (its subject deleted) waits for the access guard to end the
subscriptions that lost the topic, before it tells the others to reload. Past it (the database
does not answer), every subscription is told, and the guard ends the refused ones later."""

_RESYNC_MESSAGE = "events were missed: reload the comments"


class EventReader(Protocol):
    """What the cursors read (app/data/events.py's EventLog; an in-memory one in the unit tests)."""

    async def latest(self, topics: list[str]) -> dict[str, Cursor]:
        """The latest event of each topic (seq 0 if none)."""

    async def page(
        self,
        topic: str,
        after: int,
        limit: int = EVENT_PAGE,
        through: int | None = None,
        max_bytes: int = EVENT_PAGE_BYTES,
    ) -> Page:
        """Up to `limit` kept events after `after` (<= through), in seq order, cut past
        `max_bytes` of messages (at least one), with the topic's latest event, all in one snapshot."""


class Listening(Protocol):
    """What the feed's parts ask of the listener (app/listener.py)."""

    async def listen(self, names: Iterable[str]) -> bool:
        """LISTEN on the channels of `names`; return once in place: True when some were not in
        place before (a notice sent on them meanwhile was not heard here)."""

    def unlisten(self, names: Iterable[str]) -> None:
        """Stop listening on the channels of `names`."""


def resync_message(topic: str, at: Cursor) -> bytes:
    """The `resync` message of a topic (app/wire.py's Resync; `track_id` only for a track's): reload,
    then go on after `at`."""
    return encoder.encode(
        {"type": "resync", **identity(topic), "seq": at.seq, "message": _RESYNC_MESSAGE, "tag": at.tag}
    )


class _Read:
    """A page of a topic's events from the log, checked against the reader's cursor."""

    __slots__ = ("end", "events", "full", "latest", "lost")

    def __init__(self, events: list[Frames], end: Cursor, full: bool, lost: bool, latest: Cursor):
        self.events = events
        """The events that follow the cursor, up to the first one missing."""
        self.end = end
        """The last of them (the cursor, when none)."""
        self.full = full
        """The page was cut: there may be more."""
        self.lost = lost
        """The log's history does not go through the cursor's event (the event after it names
        another before it, the latest event has its seq and another tag, or the latest seq is below
        it): what was sent up to the cursor is not the topic's history (a failover lost it)."""
        self.latest = latest
        """The topic's latest event, in the same snapshot."""


class _TopicCursor:
    """A watched topic: its cursor, and whether it is starting or catching up."""

    __slots__ = (
        "check",
        "filling",
        "forget",
        "gone_at",
        "last_seq",
        "last_tag",
        "prefix",
        "presence",
        "ready",
        "reload",
        "sockets",
        "wanted",
    )

    def __init__(self, topic: str) -> None:
        self.prefix = prefix(topic)
        """What /api/ws puts in front of the topic's messages."""
        self.presence = False
        """The topic's kind has typing and presence (as its first subscriber was told)."""
        self.last_seq = 0
        """The last durable event delivered to this replica's subscribers of the topic ..."""
        self.last_tag: str | None = None
        """... and its tag."""
        self.wanted = 0
        """The highest seq a verified notice named, or the log showed."""
        self.check = False
        """The log is to be read once more even if nothing more is wanted (the topic's latest
        event may not be the cursor's: a reconnect, renamed channels, a notice of another history)."""
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        """Done once the channel is listened on and the cursor read."""
        self.filling = False
        self.reload = False
        """The topic's subject was deleted (and may be made again): its catch-up first tells the
        subscribers to reload, from the latest seq."""
        self.gone_at = 0.0
        self.sockets = 0
        self.forget: asyncio.TimerHandle | None = None

    @property
    def started(self) -> bool:
        """Listened on and its cursor read."""
        return self.ready.done() and self.ready.exception() is None

    @property
    def cursor(self) -> Cursor:
        return Cursor(self.last_seq, self.last_tag)

    def move(self, to: Cursor) -> None:
        self.last_seq, self.last_tag = to

    def frames(
        self, seq: int, message: bytes, restricted: bytes | None = None, author: int | None = None
    ) -> Frames:
        """A message of the topic, to be built into frames once per form."""
        return Frames(seq, message, self.prefix, restricted, author)


def nothing_to_replay(since: int | None, start: Cursor, tag: str | None = None) -> bool:
    """A subscription that asks to resume after `since` (with its event's `tag`; None: it does
    not resume) needs nothing before the live frames that follow `start`: Cursors.replay
    would send it nothing."""
    return since is None or (since == start.seq and (tag is None or tag == start.tag))


class Cursors:
    """Every watched topic's cursor, and the catch-ups and replays that keep the subscriptions'
    events contiguous."""

    def __init__(
        self,
        hub: Hub,
        log: EventReader,
        listening: Listening,
        moved: Callable[[], None],
        tasks: Tasks,
        on_lag: Callable[[float], None] | None = None,
        page: int = EVENT_PAGE,
        page_bytes: int = EVENT_PAGE_BYTES,
        rechecked: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._hub = hub
        self._log = log
        self._listening = listening
        self._moved = moved
        """Called when a topic's channel was newly listened on (a revocation may have gone by)."""
        self._rechecked = rechecked
        """Returns once the access rechecks asked so far are answered (AccessGuard.answered)."""
        self._tasks = tasks
        self._on_lag = on_lag
        self._page = page
        self._page_bytes = page_bytes
        self._topics: dict[str, _TopicCursor] = {}
        self._reconnects = 0
        self._cursor: Batched[str, Cursor] = Batched(self._latest)
        """A new topic's cursor: the topics that start together are read in one query."""

    def reconnected(self) -> None:
        """The listener (re)connected: a topic starting meanwhile checks the log once started."""
        self._reconnects += 1

    def cursor(self, topic: str) -> _TopicCursor | None:
        """The watched topic's cursor (None: not watched here)."""
        return self._topics.get(topic)

    def message(self, topic: str, message: bytes) -> Frames:
        """An ephemeral message of a topic (typing, presence) as frames to build once each."""
        cursor = self._topics.get(topic)
        return Frames(EPHEMERAL, message, cursor.prefix if cursor is not None else prefix(topic))

    async def replay(
        self, conn: Connection, topic: str, since: int, start: Cursor, tag: str | None = None
    ) -> AsyncIterator[bytes]:
        """The frames a subscription resuming after `since` needs before its live ones (which
        follow `start`), built for its connection: the events since+1..start from the log, a page
        at a time, or `resync` when some are no longer kept, or when `tag` (the client's tag of
        its event `since`) is not the log's (the client's events are of a history a failover
        lost). A client ahead of this replica (it came from a faster one) gets nothing again."""
        if nothing_to_replay(since, start, tag):
            return
        if since == start.seq:  # the same seq, another event (tag)
            yield self._resync_frame(conn, topic, start)
            return
        if since > start.seq:
            read = await self._read(topic, Cursor(since, tag), through=since + 1, check=tag is not None)
            if read.lost:
                yield self._resync_frame(conn, topic, start)  # a seq the topic never had, or another event
            else:
                conn.skip_through(topic, since)
            return
        at, check = Cursor(since, tag), tag is not None
        while at.seq < start.seq:
            read = await self._read(topic, at, through=start.seq, check=check)
            if read.lost:
                yield self._resync_frame(conn, topic, start)
                return
            if read.events:
                at, check = read.end, True
                conn.skip_through(topic, at.seq)
                tagged = conn.tagged
                yield b"".join(frames.form(tagged, conn.sees(topic, frames)) for frames in read.events)
            if not read.full and at.seq < start.seq:
                yield self._resync_frame(conn, topic, start)  # the rest is not kept
                return

    async def check(self) -> list[asyncio.Task[None]]:
        """Compare every watched topic's cursor with its latest event in the log, and catch up
        the topics where they differ: events to read, or another history (a failover that lost
        commits: the catch-up finds the cursor's event is not the log's, and the sockets reload).
        The catch-ups it started."""
        backoff = Backoff(_RETRY_FIRST, _RETRY_MOST)
        while True:
            watched = {t: cursor for t, cursor in self._topics.items() if cursor.started}
            try:
                latest = await self._log.latest(list(watched)) if watched else {}
            except Exception as exc:
                log.warning("catching up with the log failed (%s), retrying", one_line(exc))
                await backoff.wait()
                continue
            break
        catching_up = []
        for topic, at in latest.items():
            cursor = watched[topic]
            if self._topics.get(topic) is not cursor or at == cursor.cursor:
                continue
            cursor.wanted = max(cursor.wanted, at.seq)
            cursor.check = True
            if (task := self._fill(topic, cursor)) is not None:
                catching_up.append(task)
        return catching_up

    def join(self, topic: str) -> _TopicCursor:
        """A subscription joins the topic: the first one starts it (listen, then read the cursor)."""
        cursor = self._topics.get(topic)
        if cursor is None or (cursor.ready.done() and cursor.ready.exception() is not None):
            cursor = self._topics[topic] = _TopicCursor(topic)
            self._tasks.spawn(self._start(topic, cursor))
        cursor.sockets += 1
        if cursor.forget is not None:
            cursor.forget.cancel()
            cursor.forget = None
        return cursor

    def leave(self, topic: str, cursor: _TopicCursor) -> None:
        """A subscription left the topic: the last one lets it go, after _FORGET_AFTER."""
        cursor.sockets -= 1
        if cursor.sockets == 0 and self._topics.get(topic) is cursor:
            loop = asyncio.get_running_loop()
            cursor.forget = loop.call_later(_FORGET_AFTER, self._forget, topic, cursor)

    def _forget(self, topic: str, cursor: _TopicCursor) -> None:
        if cursor.sockets == 0 and self._topics.get(topic) is cursor:
            del self._topics[topic]
            self._listening.unlisten([topic_name(topic)])

    async def _start(self, topic: str, cursor: _TopicCursor) -> None:
        """Listen on the topic's channel, then read its cursor (in that order: an event that
        commits in between is in the cursor, or notified, or both)."""
        reconnects = self._reconnects
        try:
            if await self._listening.listen([topic_name(topic)]):
                self._moved()  # a revocation before this LISTEN went unheard here
            latest = await self._cursor(topic)
        except BaseException as exc:
            cursor.ready.set_exception(exc)
            cursor.ready.exception()  # retrieved: the subscribers waiting on it see it raised
            self._forget(topic, cursor)  # if no subscriber waits for it any more
            raise
        cursor.move(latest)
        cursor.ready.set_result(None)
        if self._reconnects != reconnects:  # the listener was away meanwhile: the log tells
            cursor.check = True
        if cursor.wanted > latest.seq or cursor.reload or cursor.check:  # notices came while starting
            self._fill(topic, cursor)

    def on_batch(self, batch: TopicBatch) -> None:
        """A verified notice of a topic's new events: delivered as it came when it continues the
        cursor, else the topic catches up from the log."""
        topic = batch.topic
        cursor = self._topics.get(topic)
        if cursor is None:
            return
        if not cursor.started or cursor.filling:
            cursor.wanted = max(cursor.wanted, batch.last)
            return  # the start or the catch-up in flight reads it from the log
        last_seq = cursor.last_seq
        if batch.last < last_seq:
            return  # seen already (or of another history: its later events tell)
        # Does the batch continue what the sockets were sent? The event before its first, or the
        # cursor's own event within it, must be the one sent (a failover that lost commits numbers
        # new events with the seqs the sockets saw; the tags differ).
        if batch.first > last_seq + 1:
            same = True  # a gap: the log tells
        elif batch.first == last_seq + 1:
            same = batch.prev == cursor.last_tag
        else:
            same = batch.tag == cursor.last_tag
            if same and batch.last == last_seq:
                return  # seen already
        events = None if stale(batch.at, _SIGNED_STALE) else batch.events
        if (
            not same
            or events is None
            or batch.first > last_seq + 1
            or len(events) != batch.last - batch.first + 1
        ):
            cursor.wanted = max(cursor.wanted, batch.last)
            cursor.check = not same
            self._fill(topic, cursor)
            return
        frames = cursor.frames
        self._hub.send(
            topic, [frames(seq, bytes(raw)) for seq, raw in enumerate(events, batch.first) if seq > last_seq]
        )
        cursor.last_seq, cursor.last_tag = batch.last, batch.tag
        if self._on_lag is not None and batch.at:
            self._on_lag(max(0.0, time.time() - batch.at))

    def gone(self, topic: str, at: float) -> None:
        """The topic's subject was deleted: its subscribers reload (the ones that lost it are
        dropped by the recheck; a subject made again goes on numbering after the old one's last
        seq)."""
        cursor = self._topics.get(topic)
        if cursor is None or at <= cursor.gone_at:
            return  # not watched here, or this deletion was told already
        cursor.gone_at = at
        cursor.reload = True
        if cursor.started:
            self._fill(topic, cursor)

    def _fill(self, topic: str, cursor: _TopicCursor) -> asyncio.Task[None] | None:
        """Catch the topic up from the log, in a task of its own (one at a time per topic); the
        task, when this call started it."""
        if cursor.filling:
            return None
        cursor.filling = True
        return self._tasks.spawn(self._catch_up(topic, cursor))

    async def _catch_up(self, topic: str, cursor: _TopicCursor) -> None:
        backoff = Backoff(_RETRY_FIRST, _RETRY_MOST)
        try:
            while self._topics.get(topic) is cursor:
                try:
                    if not await self._catch_up_page(topic, cursor):
                        return
                except Exception as exc:
                    log.warning("topic %r: catch-up failed (%s), retrying", topic[:100], one_line(exc))
                    await backoff.wait()
                else:
                    backoff.reset()
        finally:
            cursor.filling = False

    async def _catch_up_page(self, topic: str, cursor: _TopicCursor) -> bool:
        """Read the log after the topic's cursor once (one snapshot) and deliver what follows it;
        False when the topic is caught up."""
        asked, cursor.check = cursor.wanted, False
        reload, cursor.reload = cursor.reload, False
        try:
            if reload:
                await self._refusals_first()
            read = await self._read(topic, cursor.cursor)
        except BaseException:
            cursor.reload = cursor.reload or reload  # not told yet: the next try tells it
            raise
        if self._topics.get(topic) is not cursor:
            return False
        if reload or read.lost:
            # The subject was deleted (and maybe made again), or the log is another history than
            # what the sockets were sent (a failover lost commits): they reload, from the latest.
            self._resync(topic, cursor, read.latest)
            return True
        if read.events:
            self._hub.send(topic, read.events)
            cursor.move(read.end)
        if read.full:
            await self._pace(topic)
            return True
        if cursor.cursor != read.latest:
            # The log holds nothing more after the cursor, though the topic numbered more: those
            # events are not kept (pruned, or deleted with their subject). Reload from the latest.
            self._resync(topic, cursor, read.latest)
        if cursor.wanted > asked or cursor.check or cursor.reload:
            return True  # a notice (a check, a deletion) came while the log was read: read it again
        # Every notice counted in `asked` came before this read, whose snapshot is later: the log
        # holds what they named, unless the database went back in time since. Nothing more to wait for.
        cursor.wanted = min(cursor.wanted, cursor.last_seq)
        return False

    async def _refusals_first(self) -> None:
        """Before a reload: let the access guard end the subscriptions that may no longer see the
        topic (the revocation that said it is gone asked it to), so that only the others are told
        to reload it; at most _REFUSALS_WAIT. The topic's notices wait meanwhile, as for any read
        of its catch-up."""
        if self._rechecked is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._rechecked(), _REFUSALS_WAIT)

    async def _latest(self, topics: list[str]) -> list[Cursor]:
        latest = await self._log.latest(topics)
        return [latest[topic] for topic in topics]

    async def _pace(self, topic: str) -> None:
        """Between two pages of a catch-up: let the topic's sockets that are behind drain
        (for at most _PACE_MAX seconds)."""
        behind = [asyncio.ensure_future(c.drained()) for c in self._hub.topic_sockets(topic) if c.behind()]
        if behind:
            _, pending = await asyncio.wait(behind, timeout=_PACE_MAX)
            for waiting in pending:
                waiting.cancel()

    async def _read(self, topic: str, at: Cursor, through: int | None = None, check: bool = True) -> _Read:
        """The next page of a topic's events after `at`, every seq checked to follow the one
        before, and, with `check`, the event before the first checked to be `at`: its `prev` tag
        is `at`'s (or, with nothing after `at`, the latest event is `at`)."""
        page = await self._log.page(topic, at.seq, self._page, through, self._page_bytes)
        rows = page.rows
        lost = page.latest.seq < at.seq  # a seq the topic never had: the database went back in time
        if check and not lost:
            if rows and rows[0].seq == at.seq + 1:
                lost = rows[0].prev != at.tag
            elif not rows and page.latest.seq == at.seq:
                lost = page.latest.tag != at.tag
            # (Else what follows `at` is not kept: the caller resyncs to the latest event anyway.)
        cursor = self._topics.get(topic)
        front = cursor.prefix if cursor is not None else prefix(topic)
        events: list[Frames] = []
        end = at
        for expected, row in enumerate(rows, at.seq + 1):
            if row.seq != expected:
                break
            events.append(Frames(row.seq, row.message, front, row.restricted, row.author))
            end = Cursor(row.seq, row.tag)
        return _Read(events, end, page.more and len(events) == len(rows), lost, page.latest)

    def _resync_frame(self, conn: Connection, topic: str, at: Cursor) -> bytes:
        return self.message(topic, resync_message(topic, at)).form(conn.tagged)

    def _resync(self, topic: str, cursor: _TopicCursor, at: Cursor) -> None:
        """Tell the topic's subscribers to reload; numbering goes on after `at`."""
        log.info("topic %r: seq %d -> %d, sockets told to resync", topic[:100], cursor.last_seq, at.seq)
        cursor.move(at)
        cursor.wanted = max(cursor.wanted, at.seq)
        for conn in self._hub.topic_sockets(topic):
            conn.resync(topic, at.seq)
        self._hub.send(topic, [cursor.frames(EPHEMERAL, resync_message(topic, at))])
