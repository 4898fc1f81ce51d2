"""The resume protocol, in one place: each track's cursor, catch-up from the log, `since=` replays.

The listener hands over notices in commit order. For every watched track the feed knows the last
event delivered here (its cursor: seq and tag). A batch that continues it is delivered as it came,
if it says the event before it had the cursor's tag (`prev`); a batch that leaves a gap (its
events were not in the payload, or the listener was away), or whose `prev` is another, makes the
track catch up from the event log, page by page, in a task of its own: the track's later notices
wait for it (only as the highest seq they name), every other track goes on live. No database call
ever holds up events that are already in hand.

Each read of the log is one statement, so one snapshot: the page (whose first event must name the
cursor's tag as the one before it, or the log is another history: a failover lost what the
sockets were sent) and the track's latest event. What the log lacks in that snapshot is not kept (pruned,
deleted with its track) or never was: the sockets `resync` to the latest event. A notice that
comes while a read is in flight makes it read again; nothing else ever moves what a track waits
for, so nothing but a verified notice or the log itself can deliver, hold up or skip an event.

A socket joins a track through `subscription`: the first socket of a track makes the listener
LISTEN on its channel, then reads its latest seq (the cursor); the socket is registered and gets
that cursor as the point its live frames follow. `replay` then gives it the events after its
`since=`, read from the log in pages, each row checked to follow the one before it: a hole (what
is kept no longer reaches back that far), or a `tag=` that is not the tag of the log's event at
`since` (the client holds events of a lost history), gives `resync` instead. The hub only routes
and the socket handler only sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from contextlib import asynccontextmanager
from typing import Any, Protocol

from app.backoff import Backoff
from app.bounds import EVENT_PAGE
from app.data.batch import Batched
from app.data.events import Cursor, Page
from app.live import close_codes
from app.live.frames import message_frame, text_frame
from app.live.hub import Hub
from app.live.notices import Opened, track_topic, user_topic
from app.live.subscriber import ANONYMOUS, EPHEMERAL, Subscriber
from app.logs import one_line
from app.wire import Ephemeral, Resync, Revoke, TrackBatch, UserBatch

log = logging.getLogger(__name__)

_FORGET_AFTER = 10.0
"""Seconds a track or user without sockets stays listened to (a client that reconnects finds
its cursor warm)."""
_RETRY_FIRST = 0.1
"""Seconds before a failed read of the log (a catch-up's, or the check after a reconnect) is
tried again (then doubling) ..."""
_RETRY_MOST = 5.0
"""... and the longest wait (the database may be down: the listener's reconnection starts the
catch-up afresh anyway)."""
_RECHECK_RETRY = 1.0
"""Seconds before a failed access recheck is tried again, every time (steady, not growing: a socket
that lost access is closed within 5 s of the database's answer)."""
_PACE_MAX = 1.0
"""A catch-up waits for its track's sockets to drain between pages, for at most this long per
page: the healthy ones keep up, and one that does not is closed with 1013 on a later page."""
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
_SIGNED_STALE = 30.0
"""Seconds after which a signed track payload's events are not taken from it but read from the
log (a payload captured and sent again later need not be believed). The database's clock and the
replica's are assumed within seconds."""
_REVOKE_STALE = 60.0
"""Seconds after which a revocation is old news (a replayed one is dropped)."""

_RESYNC_MESSAGE = "events were missed: reload the comments"


class Log(Protocol):
    """What the feed reads (app/data/events.py's EventLog; an in-memory one in the unit tests)."""

    async def latest(self, track_ids: list[str]) -> dict[str, Cursor]:
        """The latest event of each track (seq 0 if none)."""

    async def page(
        self, track_id: str, after: int, limit: int = EVENT_PAGE, through: int | None = None
    ) -> Page:
        """Up to `limit` kept events after `after` (<= through), in seq order, with the track's
        latest event, all in one snapshot."""

    async def user_messages(self, notification_ids: list[int]) -> list[tuple[int, bytes]]:
        """(user id, message) for notifications."""

    async def visible(self, pairs: list[tuple[int, str]]) -> set[tuple[int, str]]:
        """Which (user, track) pairs may still watch."""


class Listening(Protocol):
    """What the feed asks of the listener (app/listener.py)."""

    async def listen(self, topics: Iterable[str]) -> bool:
        """LISTEN on the channels of `topics`; return once in place: True when some were not in
        place before (a notice sent on them meanwhile was not heard here)."""

    def unlisten(self, topics: Iterable[str]) -> None:
        """Stop listening on the channels of `topics`."""


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
    def cursor(self) -> Cursor:
        return Cursor(self.last_seq, self.last_tag)

    def move(self, to: Cursor) -> None:
        self.last_seq, self.last_tag = to


class Feed:
    """The listener's sink: routes notices to the hub in per-track seq order."""

    def __init__(
        self,
        hub: Hub,
        log: Log,
        listening: Listening,
        on_lag: Callable[[float], None] | None = None,
        page: int = EVENT_PAGE,
    ) -> None:
        self._hub = hub
        self._log = log
        self._listening = listening
        self._on_lag = on_lag
        self._page = page
        self._tracks: dict[str, _TrackCursor] = {}
        self._reconnects = 0
        self.access_epoch = 0
        """Goes up whenever a revocation may have passed a socket being admitted: a revocation
        heard, a reconnect, a channel newly listened on. The socket handler checks access again
        when it moved during the admission."""
        self._users: dict[int, int] = {}
        """Sockets per user here (the user's channel is listened on while any)."""
        self._user_forget: dict[int, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._user_lane: asyncio.Queue[tuple[float, list[int]]] = asyncio.Queue(_USER_LANE)
        self._sent: dict[int, None] = {}
        self._recheck: set[tuple[int, str]] = set()
        self._recheck_wake = asyncio.Event()
        self._caught_up = True
        self._reconnected: asyncio.Task[None] | None = None
        self._cursor: Batched[str, Cursor] = Batched(self._latest)
        """A new track's cursor: the tracks that start together are read in one query."""

    # -----------------------------------------------------------------------------------------
    # Sockets
    # -----------------------------------------------------------------------------------------

    @asynccontextmanager
    async def subscription(self, sub: Subscriber, wait: float) -> AsyncIterator[Cursor]:
        """Register a socket for its track and user; yields the event its live frames follow.

        Raises TimeoutError when the track's channel and cursor are not in place within `wait`
        seconds, what the database raised when they cannot be, hub.TooManySockets and hub.ShuttingDown.
        """
        track = self._join_track(sub.track_id)
        self._join_user(sub.user_id)
        try:
            await asyncio.wait_for(self._joined(sub, track), wait)
            self._hub.add(sub)  # counted and added in one step: see Hub.add
            try:
                yield track.cursor
            finally:
                self._hub.remove(sub)
        finally:
            self._leave_track(sub.track_id, track)
            self._leave_user(sub.user_id)

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

    # -----------------------------------------------------------------------------------------
    # The listener's sink
    # -----------------------------------------------------------------------------------------

    def on_listen(self) -> None:
        """The listener (re)connected: catch up in the background, so that the listener goes on
        reading (a database call here would hold up every event already on its way)."""
        self._caught_up = False
        self._reconnects += 1
        self.access_epoch += 1
        if self._reconnected is not None:
            self._reconnected.cancel()
        self._reconnected = self._spawn(self._after_reconnect())

    @property
    def caught_up(self) -> bool:
        """What the tracks missed while the listener was away has been delivered."""
        return self._caught_up

    def catch_up(self) -> None:
        """Notices may have gone by unheard (the channels were renamed): read every watched
        track's log again, in the background."""
        self._spawn(self._check_and_forget())

    async def _after_reconnect(self) -> None:
        """What did every watched track miss meanwhile? And may every socket still see its track
        (a revocation may have passed unheard)?"""
        catching_up = await self._check_tracks()
        self._ask_recheck((sub.user_id, sub.track_id) for sub in self._hub.all_sockets())
        if catching_up:
            await asyncio.wait(catching_up)
        self._caught_up = True

    async def _check_and_forget(self) -> None:
        await self._check_tracks()

    async def _check_tracks(self) -> list[asyncio.Task[None]]:
        """Compare every watched track's cursor with its latest event in the log, and catch up
        the tracks where they differ: events to read, or another history (a failover that lost
        commits: the catch-up finds the cursor's event is not the log's, and the sockets reload).
        The catch-ups it started."""
        backoff = Backoff(_RETRY_FIRST, _RETRY_MOST)
        while True:
            tracks = {t: track for t, track in self._tracks.items() if _started(track)}
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

    def on_notice(self, opened: Opened) -> None:
        """Route one payload that verified (synchronously: nothing here waits)."""
        notice = opened.notice
        match notice:
            case TrackBatch():
                self._track_batch(notice)
            case UserBatch():
                self._user_batch(notice)
            case Revoke(at=at) if _stale(at, _REVOKE_STALE):
                return  # old news, or sent again by someone listening
            case Revoke(track_id=str(track_id), gone=gone, at=at):
                self.access_epoch += 1
                if gone:
                    self._gone(track_id, at)
                self._ask_recheck((sub.user_id, track_id) for sub in self._hub.track_sockets(track_id))
            case Revoke(user=int(user)):
                self.access_epoch += 1
                self._ask_recheck((user, sub.track_id) for sub in self._hub.user_sockets(user))
            case Ephemeral(track_id=track_id, message=message):
                self._hub.send_track(track_id, [(EPHEMERAL, text_frame(bytes(message)))])

    # -----------------------------------------------------------------------------------------
    # Background work, run by the replica for as long as it serves
    # -----------------------------------------------------------------------------------------

    async def deliver_user_messages(self) -> None:
        """The user lane: read queued notifications' messages and send them, in order, forever.

        Off the listener's path, so that reading them never holds up the tracks' events. A batch
        that cannot be read is not sent live (it stays in the inbox); the lane goes on.
        """
        while True:
            ids = _fresh(*await self._user_lane.get())
            while len(ids) < _USER_READ and not self._user_lane.empty():
                ids += _fresh(*self._user_lane.get_nowait())
            if not ids:
                continue
            try:
                for user_id, message in await self._log.user_messages(ids):
                    self._hub.send_user(user_id, text_frame(message))
            except Exception:
                log.exception("%d notifications not sent live", len(ids))

    async def enforce_access(self) -> None:
        """Close the sockets whose user may no longer see their track, as revocations come in."""
        recheck_backoff = Backoff(_RECHECK_RETRY, _RECHECK_RETRY)
        while True:
            await self._recheck_wake.wait()
            self._recheck_wake.clear()
            pairs, self._recheck = list(self._recheck), set()
            try:
                allowed = await self._log.visible(pairs)
            except Exception as exc:
                log.warning("access not checked again (will retry): %s", type(exc).__name__)
                self._ask_recheck(pairs)
                await recheck_backoff.wait()
                continue
            recheck_backoff.reset()
            refused: dict[str, set[int]] = {}
            for user_id, track_id in set(pairs) - allowed:
                refused.setdefault(track_id, set()).add(user_id)
            for track_id, users in refused.items():
                for sub in self._hub.track_sockets(track_id):
                    if sub.user_id in users:
                        sub.close(close_codes.POLICY, close_codes.ACCESS_REVOKED)

    async def stop(self) -> None:
        """Cancel the catch-ups in flight."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -----------------------------------------------------------------------------------------
    # Tracks
    # -----------------------------------------------------------------------------------------

    def _join_track(self, track_id: str) -> _TrackCursor:
        track = self._tracks.get(track_id)
        if track is None or (track.ready.done() and track.ready.exception() is not None):
            track = self._tracks[track_id] = _TrackCursor()
            self._spawn(self._start(track_id, track))
        track.sockets += 1
        if track.forget is not None:
            track.forget.cancel()
            track.forget = None
        return track

    async def _joined(self, sub: Subscriber, track: _TrackCursor) -> None:
        await asyncio.shield(track.ready)
        if sub.user_id != ANONYMOUS and await self._listening.listen([user_topic(sub.user_id)]):
            self.access_epoch += 1  # a revocation before this LISTEN went unheard here

    def _leave_track(self, track_id: str, track: _TrackCursor) -> None:
        track.sockets -= 1
        if track.sockets == 0 and self._tracks.get(track_id) is track:
            loop = asyncio.get_running_loop()
            track.forget = loop.call_later(_FORGET_AFTER, self._forget_track, track_id, track)

    def _forget_track(self, track_id: str, track: _TrackCursor) -> None:
        if track.sockets == 0 and self._tracks.get(track_id) is track:
            del self._tracks[track_id]
            self._listening.unlisten([track_topic(track_id)])

    async def _start(self, track_id: str, track: _TrackCursor) -> None:
        """Listen on the track's channel, then read its cursor (in that order: an event that
        commits in between is in the cursor, or notified, or both)."""
        reconnects = self._reconnects
        try:
            if await self._listening.listen([track_topic(track_id)]):
                self.access_epoch += 1  # a revocation before this LISTEN went unheard here
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

    def _track_batch(self, batch: TrackBatch) -> None:
        track_id = batch.track_id
        track = self._tracks.get(track_id)
        if track is None:
            return
        if not _started(track) or track.filling:
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
        events = None if _stale(batch.at, _SIGNED_STALE) else batch.events
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

    def _gone(self, track_id: str, at: float) -> None:
        """The track was deleted: its sockets reload (the ones that lost it are closed by the
        recheck; a track made again goes on numbering after the old one's last seq)."""
        track = self._tracks.get(track_id)
        if track is None or at <= track.gone_at:
            return  # not watched here, or this deletion was told already
        track.gone_at = at
        track.reload = True
        if _started(track):
            self._fill(track_id, track)

    def _fill(self, track_id: str, track: _TrackCursor) -> asyncio.Task[None] | None:
        """Catch the track up from the log, in a task of its own (one at a time per track); the
        task, when this call started it."""
        if track.filling:
            return None
        track.filling = True
        return self._spawn(self._catch_up(track_id, track))

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

    # -----------------------------------------------------------------------------------------
    # Users
    # -----------------------------------------------------------------------------------------

    def _join_user(self, user_id: int) -> None:
        if user_id == ANONYMOUS:
            return
        self._users[user_id] = self._users.get(user_id, 0) + 1
        if (handle := self._user_forget.pop(user_id, None)) is not None:
            handle.cancel()

    def _leave_user(self, user_id: int) -> None:
        if user_id == ANONYMOUS:
            return
        left = self._users[user_id] = self._users[user_id] - 1
        if left == 0:
            loop = asyncio.get_running_loop()
            self._user_forget[user_id] = loop.call_later(_FORGET_AFTER, self._forget_user, user_id)

    def _forget_user(self, user_id: int) -> None:
        self._user_forget.pop(user_id, None)
        if self._users.get(user_id) == 0:
            del self._users[user_id]
            self._listening.unlisten([user_topic(user_id)])

    def _user_batch(self, batch: UserBatch) -> None:
        """Queue the user's new notifications for the user lane (once each, while fresh)."""
        if batch.user not in self._hub.users or _stale(batch.at, _USER_STALE):
            return
        ids = [id_ for id_ in batch.ids if id_ not in self._sent]
        if not ids:
            return
        if len(self._sent) + len(ids) > _SENT_KEPT:
            for old in list(self._sent)[: len(self._sent) // 2]:
                del self._sent[old]
        self._sent.update(dict.fromkeys(ids))
        try:
            self._user_lane.put_nowait((time.monotonic(), ids))
        except asyncio.QueueFull:
            log.warning("user lane full: %d notifications not sent live (they are in the inbox)", len(ids))

    def _ask_recheck(self, pairs: Iterable[tuple[int, str]]) -> None:
        self._recheck.update(pairs)
        if self._recheck:
            self._recheck_wake.set()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_retrieve)
        return task


def _stale(at: float, seconds: float) -> bool:
    """A signed payload made more than `seconds` ago (or without a time)."""
    return time.time() - at > seconds


def _started(track: _TrackCursor) -> bool:
    return track.ready.done() and track.ready.exception() is None


def _retrieve(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.debug("feed task ended: %s", one_line(task.exception()))


def _fresh(queued_at: float, ids: list[int]) -> list[int]:
    """`ids`, unless they waited in the user lane for longer than _USER_STALE."""
    if time.monotonic() - queued_at <= _USER_STALE:
        return ids
    log.warning("%d notifications queued for over %.0f s: not sent live", len(ids), _USER_STALE)
    return []
