"""The tracks' cursors: each watched track's last event delivered here, kept in seq order with
no gap or duplicate; catch-up from the log; `since=` replays.

The listener hands over notices in commit order. For every watched track this replica knows the
last event delivered here (its cursor: seq and tag). A batch that continues it is delivered as it
came, if it says the event before it had the cursor's tag (`prev`); a batch that leaves a gap (its
events were not in the payload, or the listener was away), or whose `prev` is another, makes the
track catch up from the event log, page by page, in a task of its own: the track's later notices
wait for it (only as the highest seq they name), every other track goes on live. No database call
ever holds up events that are already in hand.

Each read of the log is one statement, so one snapshot: the page (whose first event must name the
cursor's tag as the one before it, or the log is another history: a failover lost what the
sockets were sent) and the track's latest event. What the log lacks in that snapshot is not kept
(pruned, deleted with its track) or never was: the sockets `resync` to the latest event. A notice
that comes while a read is in flight makes it read again; nothing else ever moves what a track
waits for, so nothing but a verified notice or the log itself can deliver, hold up or skip an
event.

The first socket of a track makes the listener LISTEN on its channel, then reads its latest seq
(the cursor). `replay` gives a resuming socket the events after its `since=`, read from the log in
pages, each row checked to follow the one before it: a hole (what is kept no longer reaches back
that far), or a `tag=` that is not the tag of the log's event at `since` (the client holds events
of a lost history), gives `resync` instead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Protocol

from app.background import Tasks
from app.backoff import Backoff
from app.bounds import EVENT_PAGE
from app.data.batch import Batched
from app.data.events import Cursor, Page
from app.live.access import AccessGuard
from app.live.frames import message_frame, text_frame
from app.live.hub import Hub
from app.live.notices import stale, topic_name
from app.live.subscriber import EPHEMERAL, Subscriber
from app.live.topics import track_topic
from app.logs import one_line
from app.wire import Resync, TopicBatch

log = logging.getLogger(__name__)

_FORGET_AFTER = 10.0
"""Seconds a track without sockets stays listened to (a client that reconnects finds its cursor
warm)."""
_RETRY_FIRST = 0.1
"""Seconds before a failed read of the log (a catch-up's, or the check after a reconnect) is
tried again (then doubling) ..."""
_RETRY_MOST = 5.0
"""... and the longest wait (the database may be down: the listener's reconnection starts the
catch-up afresh anyway)."""
_PACE_MAX = 1.0
"""A catch-up waits for its track's sockets to drain between pages, for at most this long per
page: the healthy ones keep up, and one that does not is closed with 1013 on a later page."""
_SIGNED_STALE = 30.0
"""Seconds after which a signed track payload's events are not taken from it but read from the
log (a payload captured and sent again later need not be believed). The database's clock and the
replica's are assumed within seconds."""

_RESYNC_MESSAGE = "events were missed: reload the comments"


class EventReader(Protocol):
    """What the cursors read (app/data/events.py's EventLog; an in-memory one in the unit tests)."""

    async def latest(self, track_ids: list[str]) -> dict[str, Cursor]:
        """The latest event of each track (seq 0 if none)."""

    async def page(
        self, track_id: str, after: int, limit: int = EVENT_PAGE, through: int | None = None
    ) -> Page:
        """Up to `limit` kept events after `after` (<= through), in seq order, with the track's
        latest event, all in one snapshot."""


class Listening(Protocol):
    """What the feed's parts ask of the listener (app/listener.py)."""

    async def listen(self, names: Iterable[str]) -> bool:
        """LISTEN on the channels of `names`; return once in place: True when some were not in
        place before (a notice sent on them meanwhile was not heard here)."""

    def unlisten(self, names: Iterable[str]) -> None:
        """Stop listening on the channels of `names`."""


def resync_frame(track_id: str, at: Cursor) -> bytes:
    """The `resync` message as a frame: reload with GET, then go on after `at`."""
    return message_frame(Resync(track_id=track_id, seq=at.seq, tag=at.tag, message=_RESYNC_MESSAGE))


class _Read:
    """A page of a track's events from the log, as frames, checked against the reader's cursor."""

    __slots__ = ("end", "frames", "full", "latest", "lost")

    def __init__(self, frames: list[tuple[int, bytes]], end: Cursor, full: bool, lost: bool, latest: Cursor):
        self.frames = frames
        """The events that follow the cursor, up to the first one missing."""
        self.end = end
        """The last of them (the cursor, when none)."""
        self.full = full
        """The page was full: there may be more."""
        self.lost = lost
        """The log's history does not go through the cursor's event (the event after it names
        another before it, the latest event has its seq and another tag, or the latest seq is below
        it): what was sent up to the cursor is not the track's history (a failover lost it)."""
        self.latest = latest
        """The track's latest event, in the same snapshot."""


class _TrackCursor:
    """A watched track: its cursor, and whether it is starting or catching up."""

    __slots__ = (
        "check",
        "filling",
        "forget",
        "gone_at",
        "last_seq",
        "last_tag",
        "ready",
        "reload",
        "sockets",
        "wanted",
    )

    def __init__(self) -> None:
        self.last_seq = 0
        """The last durable event delivered to this replica's sockets of the track ..."""
        self.last_tag: str | None = None
        """... and its tag."""
        self.wanted = 0
        """The highest seq a verified notice named, or the log showed."""
        self.check = False
        """The log is to be read once more even if nothing more is wanted (the track's latest event
        may not be the cursor's: a reconnect, renamed channels, a notice of another history)."""
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        """Done once the channel is listened on and the cursor read."""
        self.filling = False
        self.reload = False
        """The track was deleted (and may be made again): its catch-up first tells the sockets to
        reload, from the latest seq."""
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


class Cursors:
    """Every watched track's cursor, and the catch-ups and replays that keep the sockets' events
    contiguous."""

    def __init__(
        self,
        hub: Hub,
        log: EventReader,
        listening: Listening,
        access: AccessGuard,
        tasks: Tasks,
        on_lag: Callable[[float], None] | None = None,
        page: int = EVENT_PAGE,
    ) -> None:
        self._hub = hub
        self._log = log
        self._listening = listening
        self._access = access
        self._tasks = tasks
        self._on_lag = on_lag
        self._page = page
        self._tracks: dict[str, _TrackCursor] = {}
        self._reconnects = 0
        self._cursor: Batched[str, Cursor] = Batched(self._latest)
        """A new track's cursor: the tracks that start together are read in one query."""

    def reconnected(self) -> None:
        """The listener (re)connected: a track starting meanwhile checks the log once started."""
        self._reconnects += 1

    async def replay(
        self, sub: Subscriber, since: int, start: Cursor, tag: str | None = None
    ) -> AsyncIterator[bytes]:
        """The frames a socket resuming after `since` needs before its live ones (which follow
        `start`): the events since+1..start from the log, or `resync` when some are no longer
        kept, or when `tag` (the client's tag of its event `since`) is not the log's (the client's
        events are of a history a failover lost). A client ahead of this replica (it came from a
        faster one) gets nothing again."""
        track_id = sub.track_id
        if since == start.seq:
            if tag is not None and tag != start.tag:
                yield resync_frame(track_id, start)
            return
        if since > start.seq:
            read = await self._read(track_id, Cursor(since, tag), through=since + 1, check=tag is not None)
            if read.lost:
                yield resync_frame(track_id, start)  # a seq the track never had, or another event
            else:
                sub.skip_through = since
            return
        at, check = Cursor(since, tag), tag is not None
        while at.seq < start.seq:
            read = await self._read(track_id, at, through=start.seq, check=check)
            if read.lost:
                yield resync_frame(track_id, start)
                return
            if read.frames:
                at, check = read.end, True
                sub.skip_through = at.seq
                yield b"".join(frame for _, frame in read.frames)
            if not read.full and at.seq < start.seq:
                yield resync_frame(track_id, start)  # the rest is not kept
                return

    async def check(self) -> list[asyncio.Task[None]]:
        """Compare every watched track's cursor with its latest event in the log, and catch up
        the tracks where they differ: events to read, or another history (a failover that lost
        commits: the catch-up finds the cursor's event is not the log's, and the sockets reload).
        The catch-ups it started."""
        backoff = Backoff(_RETRY_FIRST, _RETRY_MOST)
        while True:
            tracks = {t: track for t, track in self._tracks.items() if track.started}
            try:
                latest = await self._log.latest(list(tracks)) if tracks else {}
            except Exception as exc:
                log.warning("catching up with the log failed (%s), retrying", one_line(exc))
                await backoff.wait()
                continue
            break
        catching_up = []
        for track_id, at in latest.items():
            track = tracks[track_id]
            if self._tracks.get(track_id) is not track or at == track.cursor:
                continue
            track.wanted = max(track.wanted, at.seq)
            track.check = True
            if (task := self._fill(track_id, track)) is not None:
                catching_up.append(task)
        return catching_up

    def join(self, track_id: str) -> _TrackCursor:
        """A socket joins the track: the first one starts it (listen, then read the cursor)."""
        track = self._tracks.get(track_id)
        if track is None or (track.ready.done() and track.ready.exception() is not None):
            track = self._tracks[track_id] = _TrackCursor()
            self._tasks.spawn(self._start(track_id, track))
        track.sockets += 1
        if track.forget is not None:
            track.forget.cancel()
            track.forget = None
        return track

    def leave(self, track_id: str, track: _TrackCursor) -> None:
        """A socket left the track: the last one lets it go, after _FORGET_AFTER."""
        track.sockets -= 1
        if track.sockets == 0 and self._tracks.get(track_id) is track:
            loop = asyncio.get_running_loop()
            track.forget = loop.call_later(_FORGET_AFTER, self._forget_track, track_id, track)

    def _forget_track(self, track_id: str, track: _TrackCursor) -> None:
        if track.sockets == 0 and self._tracks.get(track_id) is track:
            del self._tracks[track_id]
            self._listening.unlisten([topic_name(track_topic(track_id))])

    async def _start(self, track_id: str, track: _TrackCursor) -> None:
        """Listen on the track's channel, then read its cursor (in that order: an event that
        commits in between is in the cursor, or notified, or both)."""
        reconnects = self._reconnects
        try:
            if await self._listening.listen([topic_name(track_topic(track_id))]):
                self._access.moved()  # a revocation before this LISTEN went unheard here
            latest = await self._cursor(track_id)
        except BaseException as exc:
            track.ready.set_exception(exc)
            track.ready.exception()  # retrieved: the sockets waiting on it see it raised
            self._forget_track(track_id, track)  # if no socket waits for it any more
            raise
        track.move(latest)
        track.ready.set_result(None)
        if self._reconnects != reconnects:  # the listener was away meanwhile: the log tells
            track.check = True
        if track.wanted > latest.seq or track.reload or track.check:  # notices came while starting
            self._fill(track_id, track)

    def on_batch(self, track_id: str, batch: TopicBatch) -> None:
        """A verified notice of a track's new events: delivered as it came when it continues the
        cursor, else the track catches up from the log."""
        track = self._tracks.get(track_id)
        if track is None:
            return
        if not track.started or track.filling:
            track.wanted = max(track.wanted, batch.last)
            return  # the start or the catch-up in flight reads it from the log
        last_seq = track.last_seq
        if batch.last < last_seq:
            return  # seen already (or of another history: its later events tell)
        # Does the batch continue what the sockets were sent? The event before its first, or the
        # cursor's own event within it, must be the one sent (a failover that lost commits numbers
        # new events with the seqs the sockets saw; the tags differ).
        if batch.first > last_seq + 1:
            same = True  # a gap: the log tells
        elif batch.first == last_seq + 1:
            same = batch.prev == track.last_tag
        else:
            same = batch.tag == track.last_tag
            if same and batch.last == last_seq:
                return  # seen already
        events = None if stale(batch.at, _SIGNED_STALE) else batch.events
        if (
            not same
            or events is None
            or batch.first > last_seq + 1
            or len(events) != batch.last - batch.first + 1
        ):
            track.wanted = max(track.wanted, batch.last)
            track.check = not same
            self._fill(track_id, track)
            return
        frames = [
            (seq, text_frame(bytes(raw))) for seq, raw in enumerate(events, batch.first) if seq > last_seq
        ]
        self._hub.send_track(track_id, frames)
        track.last_seq, track.last_tag = batch.last, batch.tag
        if self._on_lag is not None and batch.at:
            self._on_lag(max(0.0, time.time() - batch.at))

    def gone(self, track_id: str, at: float) -> None:
        """The track was deleted: its sockets reload (the ones that lost it are closed by the
        recheck; a track made again goes on numbering after the old one's last seq)."""
        track = self._tracks.get(track_id)
        if track is None or at <= track.gone_at:
            return  # not watched here, or this deletion was told already
        track.gone_at = at
        track.reload = True
        if track.started:
            self._fill(track_id, track)

    def _fill(self, track_id: str, track: _TrackCursor) -> asyncio.Task[None] | None:
        """Catch the track up from the log, in a task of its own (one at a time per track); the
        task, when this call started it."""
        if track.filling:
            return None
        track.filling = True
        return self._tasks.spawn(self._catch_up(track_id, track))

    async def _catch_up(self, track_id: str, track: _TrackCursor) -> None:
        backoff = Backoff(_RETRY_FIRST, _RETRY_MOST)
        try:
            while self._tracks.get(track_id) is track:
                try:
                    if not await self._catch_up_page(track_id, track):
                        return
                except Exception as exc:
                    log.warning("track %r: catch-up failed (%s), retrying", track_id[:100], one_line(exc))
                    await backoff.wait()
                else:
                    backoff.reset()
        finally:
            track.filling = False

    async def _catch_up_page(self, track_id: str, track: _TrackCursor) -> bool:
        """Read the log after the track's cursor once (one snapshot) and deliver what follows it;
        False when the track is caught up."""
        asked, track.check = track.wanted, False
        reload, track.reload = track.reload, False
        read = await self._read(track_id, track.cursor)
        if self._tracks.get(track_id) is not track:
            return False
        if reload or read.lost:
            # The track was deleted (and maybe made again), or the log is another history than
            # what the sockets were sent (a failover lost commits): they reload, from the latest.
            self._resync(track_id, track, read.latest)
            return True
        if read.frames:
            self._hub.send_track(track_id, read.frames)
            track.move(read.end)
        if read.full:
            await self._pace(track_id)
            return True
        if track.cursor != read.latest:
            # The log holds nothing more after the cursor, though the track numbered more: those
            # events are not kept (pruned, or deleted with the track). Reload from the latest.
            self._resync(track_id, track, read.latest)
        if track.wanted > asked or track.check:
            return True  # a notice (or a check) came while the log was read: read it again
        # Every notice counted in `asked` came before this read, whose snapshot is later: the log
        # holds what they named, unless the database went back in time since. Nothing more to wait for.
        track.wanted = min(track.wanted, track.last_seq)
        return False

    async def _latest(self, track_ids: list[str]) -> list[Cursor]:
        latest = await self._log.latest(track_ids)
        return [latest[track_id] for track_id in track_ids]

    async def _pace(self, track_id: str) -> None:
        """Between two pages of a catch-up: let the track's sockets that are behind drain
        (for at most _PACE_MAX seconds)."""
        behind = [asyncio.ensure_future(s.drained()) for s in self._hub.track_sockets(track_id) if s.behind()]
        if behind:
            _, pending = await asyncio.wait(behind, timeout=_PACE_MAX)
            for waiting in pending:
                waiting.cancel()

    async def _read(self, track_id: str, at: Cursor, through: int | None = None, check: bool = True) -> _Read:
        """The next page of a track's events after `at` as frames, every seq checked to follow the
        one before, and, with `check`, the event before the first checked to be `at`: its `prev`
        tag is `at`'s (or, with nothing after `at`, the latest event is `at`)."""
        page = await self._log.page(track_id, at.seq, self._page, through)
        rows = page.rows
        lost = page.latest.seq < at.seq  # a seq the track never had: the database went back in time
        if check and not lost:
            if rows and rows[0][0] == at.seq + 1:
                lost = rows[0][3] != at.tag
            elif not rows and page.latest.seq == at.seq:
                lost = page.latest.tag != at.tag
            # (Else what follows `at` is not kept: the caller resyncs to the latest event anyway.)
        frames: list[tuple[int, bytes]] = []
        end = at
        for expected, (seq, message, tag, _) in enumerate(rows, at.seq + 1):
            if seq != expected:
                break
            frames.append((seq, text_frame(message)))
            end = Cursor(seq, tag)
        return _Read(frames, end, len(rows) >= self._page and len(frames) == len(rows), lost, page.latest)

    def _resync(self, track_id: str, track: _TrackCursor, at: Cursor) -> None:
        """Tell the track's sockets to reload; numbering goes on after `at`."""
        log.info("track %r: seq %d -> %d, sockets told to resync", track_id[:100], track.last_seq, at.seq)
        track.move(at)
        track.wanted = max(track.wanted, at.seq)
        for sub in self._hub.track_sockets(track_id):
            sub.skip_through = min(sub.skip_through, at.seq)
        self._hub.send_track(track_id, [(EPHEMERAL, resync_frame(track_id, at))])
