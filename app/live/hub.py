"""This replica's sockets, by track and by user. Routing only: no I/O of its own, no waiting."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from app.live import close_codes
from app.live.subscriber import ANONYMOUS, EPHEMERAL, Subscriber


class TooManySockets(Exception):
    """The user has as many sockets on this replica as they may; the message says so."""


class ShuttingDown(Exception):
    """The replica is shutting down: it takes no new socket."""


class Hub:
    """`track id -> sockets` and `user id -> sockets`; every send is a non-blocking offer."""

    def __init__(self, sockets_per_user: int = 0) -> None:
        self.tracks: dict[str, set[Subscriber]] = {}
        self.users: dict[int, set[Subscriber]] = {}
        self._per_user = sockets_per_user
        self.delivered = 0
        """Frames handed to sockets since start (for metrics)."""
        self.dropped_slow = 0
        """Sockets closed for not keeping up (1013), counted when they leave."""
        self.closing = False
        """Set at shutdown: new sockets are turned away."""

    def add(self, sub: Subscriber) -> None:
        """Register a socket; TooManySockets when its user already has the most allowed,
        ShuttingDown after `close_all`.

        Counting and registering happen in one step, with no await between them, so that
        sockets opened at the same moment cannot all pass the limit.
        """
        if self.closing:
            raise ShuttingDown
        mine = self.users.get(sub.user_id)
        if self._per_user and sub.user_id != ANONYMOUS and mine and len(mine) >= self._per_user:
            raise TooManySockets(f"too many sockets: at most {self._per_user} per user; close one first")
        if mine is None:
            mine = self.users[sub.user_id] = set()
        mine.add(sub)
        self.tracks.setdefault(sub.track_id, set()).add(sub)

    def remove(self, sub: Subscriber) -> None:
        """Forget a socket; a track or user entry left empty goes too."""
        subs = self.tracks.get(sub.track_id)
        if subs is not None and sub in subs:
            subs.discard(sub)
            if not subs:
                del self.tracks[sub.track_id]
            if sub.too_slow:
                self.dropped_slow += 1
        mine = self.users.get(sub.user_id)
        if mine is not None:
            mine.discard(sub)
            if not mine:
                del self.users[sub.user_id]

    def send_track(self, track_id: str, frames: list[tuple[int, bytes]]) -> None:
        """Offer frames (seq, bytes; EPHEMERAL for the ones not kept) to every socket of a track, in
        order; each socket writes them at once, in one write."""
        subs = self.tracks.get(track_id)
        if not subs:
            return
        sent = 0
        if len(frames) == 1:
            seq, frame = frames[0]
            for sub in subs:
                sent += sub.offer(seq, frame)
        else:
            for sub in subs:
                sent += len(frames) * sub.offer_many(frames)
        self.delivered += sent

    def offer_each(self, subs: Iterable[Subscriber], frame: bytes) -> None:
        """Offer one ephemeral frame to each of `subs` (some of a track's sockets, chosen)."""
        self.delivered += sum(sub.offer(EPHEMERAL, frame) for sub in subs)

    def send_user(self, user_id: int, frame: bytes) -> None:
        """Offer a frame to every socket of a user, whatever track it watches."""
        subs = self.users.get(user_id)
        if subs and user_id != ANONYMOUS:
            self.delivered += sum(sub.offer(EPHEMERAL, frame) for sub in subs)

    def track_sockets(self, track_id: str) -> Iterable[Subscriber]:
        """The sockets of a track (a copy: safe to close them while iterating)."""
        return list(self.tracks.get(track_id, ()))

    def user_sockets(self, user_id: int) -> Iterable[Subscriber]:
        """The sockets of a user (a copy)."""
        return list(self.users.get(user_id, ()))

    def all_sockets(self) -> Iterator[Subscriber]:
        """Every socket (a copy)."""
        return iter([sub for subs in self.tracks.values() for sub in subs])

    def close_all(self, code: int, reason: str) -> None:
        """Turn new sockets away and close every open one (shutdown)."""
        self.closing = True
        for sub in self.all_sockets():
            sub.close(code, reason)

    def close_expired(self, now: float) -> None:
        """Close the sockets whose token expired by `now` (one sweep instead of a timer each)."""
        for sub in self.all_sockets():
            if sub.expires_at <= now:
                sub.close(close_codes.TOKEN_EXPIRED, close_codes.EXPIRED)

    @property
    def sockets(self) -> int:
        """How many sockets are open here."""
        return sum(len(subs) for subs in self.tracks.values())
