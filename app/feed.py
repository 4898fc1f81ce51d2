"""Puts each track's events in order for this replica's sockets: no gap, no duplicate.

The listener hands over notices in commit order. For every watched track the feed knows the
last seq delivered here; a batch that continues it is delivered as it came, a batch that
leaves a gap (its events did not fit in the NOTIFY, or the listener was away) is read from
the event log first. Joining a track and handling a batch take turns under one lock, so a new
channel's starting seq and the batches after it cannot cross.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from app.events import EventLog
from app.hub import Hub, TrackChannel
from app.subscriber import Subscriber
from app.wire import Ephemeral, Notice, Resync, TrackBatch, UserBatch, encoder

log = logging.getLogger(__name__)

_USER_LANE = 10_000
"""Notification batches waiting to be read for this replica's users; more are not sent live
(they stay in the inbox), so that a slow database never stalls the listener."""
_USER_READ = 500
"""Notification ids read per query by the user lane."""
_USER_STALE = 30.0
"""Seconds after which a queued notification is no longer sent live (the inbox has it): after
a database outage the lane does not replay minutes-old news."""

_MAX_CATCH_UP = 200
"""A gap longer than this is not replayed live: the track's sockets get `resync` instead
(kept below the sockets' queue bound, so that a catch-up alone never overflows a socket)."""


def resync_frame(track_id: str, seq: int) -> str:
    """The `resync` message: reload with GET, then go on after `seq`."""
    message = Resync(track_id=track_id, seq=seq, message="events were missed: reload the comments")
    return encoder.encode(message).decode()


class Feed:
    """The listener's sink: routes notices to the hub in per-track seq order."""

    def __init__(self, hub: Hub, events: EventLog, on_lag: Callable[[float], None] | None = None) -> None:
        self._hub = hub
        self._events = events
        self._lock = asyncio.Lock()
        self._on_lag = on_lag
        self._user_lane: asyncio.Queue[tuple[float, list[int]]] = asyncio.Queue(_USER_LANE)

    @asynccontextmanager
    async def subscription(self, sub: Subscriber) -> AsyncIterator[int]:
        """Register a socket for its track and user; yields the seq its live frames follow."""
        async with self._lock:
            channel = self._hub.tracks.get(sub.track_id)
            start = channel.last_seq if channel else (await self._events.latest([sub.track_id]))[sub.track_id]
            self._hub.add(sub, start)
        try:
            yield start
        finally:
            self._hub.remove(sub)

    async def on_listen(self) -> None:
        """The listener (re)connected: deliver what every watched track missed meanwhile."""
        async with self._lock:
            if not self._hub.tracks:
                return
            latest = await self._events.latest(list(self._hub.tracks))
            for track_id, seq in latest.items():
                channel = self._hub.tracks.get(track_id)
                if channel is None:
                    continue
                if seq > channel.last_seq:
                    await self._fill(track_id, channel, seq)
                elif seq < channel.last_seq:
                    # The database went back in time (a failover that lost commits): what the
                    # sockets saw no longer exists; they must reload, and numbers go on from there.
                    self._resync(track_id, channel, seq)

    async def on_notice(self, notice: Notice) -> None:
        """Route one NOTIFY payload."""
        match notice:
            case TrackBatch():
                async with self._lock:
                    await self._track_batch(notice)
                if self._on_lag is not None and notice.at:
                    self._on_lag(max(0.0, time.time() - notice.at))
            case UserBatch():
                self._user_batch(notice)
            case Ephemeral(track_id=track_id, message=message):
                self._hub.send_track(track_id, 0, bytes(message).decode())

    async def _track_batch(self, batch: TrackBatch) -> None:
        channel = self._hub.tracks.get(batch.track_id)
        if channel is None or batch.last <= channel.last_seq:
            return
        if batch.events is None or batch.first > channel.last_seq + 1:
            await self._fill(batch.track_id, channel, batch.last)
            return
        for seq, raw in enumerate(batch.events, start=batch.first):
            if seq > channel.last_seq:
                self._hub.send_track(batch.track_id, seq, bytes(raw).decode())
        channel.last_seq = batch.last

    async def _fill(self, track_id: str, channel: TrackChannel, through: int) -> None:
        """Deliver events last_seq+1..through from the log, or `resync` when that is not possible."""
        if through - channel.last_seq > _MAX_CATCH_UP:
            self._resync(track_id, channel, through)
            return
        while channel.last_seq < through:
            rows = await self._events.range(track_id, channel.last_seq, through)
            if not rows or rows[0][0] != channel.last_seq + 1:
                self._resync(track_id, channel, through)
                return
            for seq, frame in rows:
                self._hub.send_track(track_id, seq, frame)
                channel.last_seq = seq

    def _resync(self, track_id: str, channel: TrackChannel, through: int) -> None:
        log.info("track %s: seq %d -> %d, sockets told to resync", track_id, channel.last_seq, through)
        channel.last_seq = through
        for sub in channel.subscribers:
            sub.skip_through = min(sub.skip_through, through)
        self._hub.send_track(track_id, 0, resync_frame(track_id, through))

    def _user_batch(self, batch: UserBatch) -> None:
        """Queue the notifications whose recipients have a socket here for the user lane."""
        users = self._hub.users
        if not users:
            return
        wanted = [id_ for id_, user in zip(batch.ids, batch.users, strict=True) if user in users]
        if not wanted:
            return
        try:
            self._user_lane.put_nowait((time.monotonic(), wanted))
        except asyncio.QueueFull:
            log.warning("user lane full: %d notifications not sent live (they are in the inbox)", len(wanted))

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
                for user_id, frame in await self._events.user_messages(ids):
                    self._hub.send_user(user_id, frame)
            except Exception:
                log.exception("%d notifications not sent live", len(ids))


def _fresh(queued_at: float, ids: list[int]) -> list[int]:
    """`ids`, unless they waited in the user lane for longer than _USER_STALE."""
    if time.monotonic() - queued_at <= _USER_STALE:
        return ids
    log.warning("%d notifications queued for over %.0f s: not sent live", len(ids), _USER_STALE)
    return []
