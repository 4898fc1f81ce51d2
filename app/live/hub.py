"""This replica's sockets, by topic and by user. Routing only: no I/O of its own, no waiting.

A topic's subscribers are a list of connections (a reference each: 8 bytes a subscription, where
a set would take 30 to 40), a connection's topics a list of strings shared with the hub's keys
(app/live/connection.py): a socket with 100 topics costs about 1.6 KiB more than one with one
(bench/memory.py measures it).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator

from app.live import close_codes
from app.live.connection import ANONYMOUS, Connection
from app.live.frames import Frames
from app.live.topics import TRACK


class TooManySockets(Exception):
    """The user has as many sockets on this replica as they may; the message says so."""


class ShuttingDown(Exception):
    """The replica is shutting down: it takes no new socket."""


class Hub:
    """`topic -> connections` and `user id -> connections`; every send is a non-blocking offer."""

    def __init__(self, sockets_per_user: int = 0) -> None:
        self.topics: dict[str, list[Connection]] = {}
        self.users: dict[int, set[Connection]] = {}
        self._per_user = sockets_per_user
        self.delivered = 0
        """Frames handed to sockets since start (for metrics)."""
        self.opened = 0
        """Sockets registered since start (for metrics: a socket is not a log line, see
        FrameProtocol.accept_with; and for app/garbage.py, which freezes bursts of them)."""
        self.closed = 0
        """Sockets forgotten since start (app/garbage.py: what they leave in reference cycles is
        collected only when what was frozen is let back)."""
        self.dropped_slow = 0
        """Sockets closed for not keeping up (1013), counted when they leave."""
        self.closing = False
        """Set at shutdown: new sockets are turned away."""
        self._next_expiry = float("inf")
        """No socket's token expires before this: the expiry sweep has nothing to do until then."""

    # -----------------------------------------------------------------------------------------
    # Connections and their subscriptions
    # -----------------------------------------------------------------------------------------

    def add(self, conn: Connection) -> None:
        """Register a socket; TooManySockets when its user already has the most allowed,
        ShuttingDown after `close_all`.

        Counting and registering happen in one step, with no await between them, so that
        sockets opened at the same moment cannot all pass the limit.
        """
        if self.closing:
            raise ShuttingDown
        mine = self.users.get(conn.user_id)
        if self._per_user and conn.user_id != ANONYMOUS and mine and len(mine) >= self._per_user:
            raise TooManySockets(f"too many sockets: at most {self._per_user} per user; close one first")
        if mine is None:
            mine = self.users[conn.user_id] = set()
        mine.add(conn)
        self.opened += 1
        self._next_expiry = min(self._next_expiry, conn.expires_at)

    def remove(self, conn: Connection) -> None:
        """Forget a socket and its subscriptions; a user or topic entry left empty goes too."""
        for topic in list(conn.topics):
            self.unsubscribe(conn, topic)
        mine = self.users.get(conn.user_id)
        if mine is not None and conn in mine:
            mine.discard(conn)
            if not mine:
                del self.users[conn.user_id]
            self.closed += 1
            if conn.too_slow:
                self.dropped_slow += 1

    def subscribe(self, conn: Connection, topic: str) -> None:
        """The connection gets the topic's frames from now on."""
        topic = sys.intern(topic)  # one string for the hub's key and every subscription's entry
        conns = self.topics.get(topic)
        if conns is None:
            conns = self.topics[topic] = []
        conns.append(conn)
        conn.topics.append(topic)

    def unsubscribe(self, conn: Connection, topic: str) -> bool:
        """The connection gets no more of the topic's frames; False when it had none."""
        if topic not in conn.topics:
            return False
        conn.topics.remove(topic)
        conn.drop(topic)
        conns = self.topics.get(topic)
        if conns is not None:
            conns.remove(conn)
            if not conns:
                del self.topics[topic]
        return True

    # -----------------------------------------------------------------------------------------
    # Frames
    # -----------------------------------------------------------------------------------------

    def send(self, topic: str, many: list[Frames]) -> None:
        """Offer messages of a topic to each of its connections, in order; each writes them at
        once, in one write."""
        conns = self.topics.get(topic)
        if not conns:
            return
        sent = 0
        if len(many) == 1:
            frames = many[0]
            for conn in conns:
                sent += conn.offer(topic, frames)
        else:
            for conn in conns:
                sent += len(many) * conn.offer_many(topic, many)
        self.delivered += sent

    def offer_each(self, topic: str, conns: Iterable[Connection], frames: Frames) -> None:
        """Offer one message of a topic to each of `conns` (some of its connections, chosen)."""
        self.delivered += sum(conn.offer(topic, frames) for conn in conns)

    def send_user(self, user_id: int, frame: bytes, track_sockets: bool = True) -> None:
        """Offer a frame to every socket of a user, whatever it subscribes to (`track_sockets`
        False: to its /api/ws sockets only)."""
        conns = self.users.get(user_id)
        if conns and user_id != ANONYMOUS:
            self.delivered += sum(conn.send(frame) for conn in conns if track_sockets or conn.tagged)

    # -----------------------------------------------------------------------------------------
    # Looking
    # -----------------------------------------------------------------------------------------

    def topic_sockets(self, topic: str) -> list[Connection]:
        """The connections subscribed to a topic (a copy: safe to close them while iterating)."""
        return list(self.topics.get(topic, ()))

    def user_sockets(self, user_id: int) -> list[Connection]:
        """The connections of a user (a copy)."""
        return list(self.users.get(user_id, ()))

    def all_sockets(self) -> Iterator[Connection]:
        """Every connection (a copy)."""
        return iter([conn for conns in self.users.values() for conn in conns])

    def close_all(self, code: int, reason: str) -> None:
        """Turn new sockets away and close every open one (shutdown)."""
        self.closing = True
        for conn in self.all_sockets():
            conn.close(code, reason)

    def close_expired(self, now: float) -> None:
        """Close the sockets whose token expired by `now` (one sweep instead of a timer each).

        Called every second; it looks at the sockets only when one of them is due (a replica
        holds them by the ten thousand, and a sweep of them all each second was a tenth of an
        idle replica's CPU)."""
        if now < self._next_expiry:
            return
        next_expiry = float("inf")
        for conn in self.all_sockets():
            if conn.expires_at <= now:
                conn.close(close_codes.TOKEN_EXPIRED, close_codes.EXPIRED)
            else:
                next_expiry = min(next_expiry, conn.expires_at)
        self._next_expiry = next_expiry

    @property
    def sockets(self) -> int:
        """How many sockets are open here."""
        return sum(len(conns) for conns in self.users.values())

    @property
    def watched_tracks(self) -> int:
        """Tracks with sockets here."""
        return sum(topic.startswith(TRACK) for topic in self.topics)
