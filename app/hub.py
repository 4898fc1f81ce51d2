"""This replica's sockets, by track and by user. Routing only: no I/O, no waiting."""

from __future__ import annotations

from collections.abc import Iterable

from app.subscriber import CLOSE_TOKEN_EXPIRED, Subscriber


class TrackChannel:
    """The sockets watching one track, and the last event delivered to them."""

    __slots__ = ("last_seq", "subscribers")

    def __init__(self, last_seq: int) -> None:
        self.last_seq = last_seq
        self.subscribers: set[Subscriber] = set()


class Hub:
    """`track id -> sockets` and `user id -> sockets`; every send is a non-blocking offer."""

    def __init__(self) -> None:
        self.tracks: dict[str, TrackChannel] = {}
        self.users: dict[int, set[Subscriber]] = {}
        self.delivered = 0
        """Frames handed to sockets since start (for metrics)."""
        self.dropped_slow = 0
        """Sockets asked to close for not keeping up (1013)."""
        self.closing = False
        """Set at shutdown: new sockets are turned away."""

    def add(self, sub: Subscriber, last_seq: int) -> TrackChannel:
        """Register a socket; a new track channel starts at `last_seq`."""
        channel = self.tracks.get(sub.track_id)
        if channel is None:
            channel = self.tracks[sub.track_id] = TrackChannel(last_seq)
        channel.subscribers.add(sub)
        self.users.setdefault(sub.user_id, set()).add(sub)
        return channel

    def remove(self, sub: Subscriber) -> None:
        """Forget a socket; a channel or user entry left empty goes too."""
        channel = self.tracks.get(sub.track_id)
        if channel is not None:
            channel.subscribers.discard(sub)
            if not channel.subscribers:
                del self.tracks[sub.track_id]
        mine = self.users.get(sub.user_id)
        if mine is not None:
            mine.discard(sub)
            if not mine:
                del self.users[sub.user_id]

    def send_track(self, track_id: str, seq: int, frame: str) -> None:
        """Offer a frame to every socket of a track (seq 0 for ephemeral frames)."""
        channel = self.tracks.get(track_id)
        if channel is not None:
            self._offer(channel.subscribers, seq, frame)

    def send_user(self, user_id: int, frame: str) -> None:
        """Offer a frame to every socket of a user, whatever track it watches."""
        mine = self.users.get(user_id)
        if mine is not None:
            self._offer(mine, 0, frame)

    def close_all(self, code: int, reason: str) -> None:
        """Turn new sockets away and ask every open one to close (shutdown)."""
        self.closing = True
        for channel in self.tracks.values():
            for sub in channel.subscribers:
                sub.close(code, reason)

    def close_expired(self, now: float) -> None:
        """Close the sockets whose token expired by `now` (one sweep instead of a timer each)."""
        for channel in self.tracks.values():
            for sub in channel.subscribers:
                if sub.expires_at <= now:
                    sub.close(
                        CLOSE_TOKEN_EXPIRED,
                        "token expired: reconnect with a fresh token and since=<last seq>",
                    )

    @property
    def sockets(self) -> int:
        """How many sockets are open here."""
        return sum(len(channel.subscribers) for channel in self.tracks.values())

    def _offer(self, subs: Iterable[Subscriber], seq: int, frame: str) -> None:
        for sub in subs:
            was_open = sub.close_reason is None
            if sub.offer(seq, frame):
                self.delivered += 1
            elif was_open:
                self.dropped_slow += 1
