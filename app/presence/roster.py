"""Who listens where: per topic, this replica's sockets and the other replicas' rows as last read,
which replicas are alive, and the count that follows from them.

The count of a topic is |union of the live replicas' users| + the sum of their anonymous sockets,
kept up to date at each change rather than computed again (`TopicListeners`: this replica's
users in a sorted array, the others' counted by how many live replicas have them, and how many
are in both). No I/O and no clock here: app/presence/tracker.py
feeds the roster what its sockets do and what its reads of the tables find, and sends the counts.
"""

from __future__ import annotations

import logging
from array import array
from bisect import bisect_left
from collections.abc import Sequence

from app.live.connection import ANONYMOUS
from app.presence.table import Snapshot

log = logging.getLogger(__name__)

Listeners = tuple[frozenset[int], int]
"""One replica's listeners on a topic: its distinct users, and its anonymous sockets."""
NOBODY: Listeners = (frozenset(), 0)


class TopicListeners:
    """One topic: this replica's sockets, the other replicas' rows, and the count.

    This replica's users of the topic are a sorted array of ids with a parallel array of their
    sockets here: 12 bytes a user and topic (a dict took about 100 with the count's own entry), so
    that a socket on 100 topics costs little more than one on one (bench/topics.py). The other
    replicas' users are counted in `remote_users`, and `overlap` is how many of them are here too:
    the count is kept at each change, never computed again."""

    __slots__ = (
        "_here",
        "_sockets",
        "anonymous",
        "loaded",
        "overlap",
        "remote",
        "remote_anonymous",
        "remote_users",
    )

    def __init__(self) -> None:
        self._here = array("q")
        """This replica's users on the topic, sorted ..."""
        self._sockets = array("I")
        """... and their sockets here, each."""
        self.anonymous = 0
        """This replica's anonymous sockets on the topic."""
        self.remote: dict[str, Listeners] = {}
        """The other replicas' rows as last read (alive or not)."""
        self.remote_users: dict[int, int] = {}
        """User -> how many live other replicas have them here."""
        self.overlap = 0
        """Users both here and on a live other replica."""
        self.remote_anonymous = 0
        """Anonymous sockets of the live other replicas."""
        self.loaded = False
        """The other replicas' rows have been read (until then the count is not known)."""

    @property
    def users(self) -> Sequence[int]:
        """This replica's users on the topic."""
        return self._here

    @property
    def listening(self) -> int:
        """Distinct users plus anonymous sockets, on every live replica."""
        return (
            len(self._here) + len(self.remote_users) - self.overlap + self.anonymous + self.remote_anonymous
        )

    @property
    def empty_here(self) -> bool:
        """No socket of this replica is on the topic."""
        return not self._here and not self.anonymous

    def arrive(self, user_id: int) -> bool:
        """A socket of `user_id` (or an anonymous one) is here; True when this replica's row changes."""
        if user_id == ANONYMOUS:
            self.anonymous += 1
            return True
        here = self._here
        at = bisect_left(here, user_id)
        if at < len(here) and here[at] == user_id:
            self._sockets[at] += 1
            return False  # another tab of someone already here
        here.insert(at, user_id)
        self._sockets.insert(at, 1)
        if user_id in self.remote_users:
            self.overlap += 1
        return True

    def depart(self, user_id: int) -> bool:
        """A socket of `user_id` (or an anonymous one) left; True when this replica's row changes."""
        if user_id == ANONYMOUS:
            self.anonymous -= 1
            return True
        at = bisect_left(self._here, user_id)
        if self._sockets[at] > 1:
            self._sockets[at] -= 1
            return False
        del self._here[at]
        del self._sockets[at]
        if user_id in self.remote_users:
            self.overlap -= 1
        return True

    def hold(self, listeners: Listeners) -> None:
        """Count a live replica's listeners."""
        users, anonymous = listeners
        for user in users:
            held = self.remote_users.get(user, 0)
            if not held and self._is_here(user):
                self.overlap += 1
            self.remote_users[user] = held + 1
        self.remote_anonymous += anonymous

    def release(self, listeners: Listeners) -> None:
        """Stop counting a replica's listeners."""
        users, anonymous = listeners
        for user in users:
            held = self.remote_users[user] - 1
            if held:
                self.remote_users[user] = held
                continue
            del self.remote_users[user]
            if self._is_here(user):
                self.overlap -= 1
        self.remote_anonymous -= anonymous

    def _is_here(self, user: int) -> bool:
        at = bisect_left(self._here, user)
        return at < len(self._here) and self._here[at] == user


class Roster:
    """Every topic with sockets here (or lately), and every other replica's heartbeat."""

    def __init__(self, me: str, dead_after: float) -> None:
        self.me = me
        """This replica's id: its own rows are never read back (its sockets are the truth)."""
        self._dead_after = dead_after
        self.topics: dict[str, TopicListeners] = {}
        self._instances: dict[str, str] = {}
        """Every other replica with a heartbeat row -> its instance."""
        self._alive: set[str] = set()

    @property
    def live_replicas(self) -> int:
        """Replicas counted now, this one included."""
        return len(self._alive) + 1

    def listening(self, topic: str) -> int | None:
        """The count of a loaded topic; None when it is not known here."""
        place = self.topics.get(topic)
        return place.listening if place is not None and place.loaded else None

    def take(self, snapshot: Snapshot, complete: set[str]) -> set[str]:
        """Take in a read: who is alive, then the rows; `complete`: the topics whose every row is
        in it (the others' rows are changes). The topics whose count may have changed."""
        touched: set[str] = set()
        self._heartbeats(snapshot, touched)
        found: dict[str, dict[str, Listeners]] = {t: {} for t in complete if t in self.topics}
        for row in snapshot.rows:
            if row.replica == self.me or row.topic not in self.topics:
                continue
            listeners = (frozenset(row.users), row.anonymous) if row.users or row.anonymous else NOBODY
            if row.topic in found:
                found[row.topic][row.replica] = listeners
            else:
                self._set(row.topic, row.replica, listeners)
                touched.add(row.topic)
        for topic, rows in found.items():
            place = self.topics[topic]
            for replica in set(place.remote) | set(rows):
                self._set(topic, replica, rows.get(replica, NOBODY))
            place.loaded = True
            touched.add(topic)
        return touched

    def _heartbeats(self, snapshot: Snapshot, touched: set[str]) -> None:
        """A replica gone or restarted is forgotten; one dead, or alive again, stops or starts
        counting."""
        peers = {replica: peer for replica, peer in snapshot.peers.items() if replica != self.me}
        for replica, instance in list(self._instances.items()):
            peer = peers.get(replica)
            if peer is None or peer.instance != instance:
                self._forget(replica, touched)
        for replica, peer in peers.items():
            self._instances[replica] = peer.instance
            alive = peer.age <= self._dead_after
            if alive and replica not in self._alive:
                self._alive.add(replica)
                self._count_replica(replica, touched, True)
            elif not alive and replica in self._alive:
                log.info("replica %r not seen for %.0f s: its listeners no longer count", replica, peer.age)
                self._alive.discard(replica)
                self._count_replica(replica, touched, False)

    def _count_replica(self, replica: str, touched: set[str], counted: bool) -> None:
        for topic, place in self.topics.items():
            listeners = place.remote.get(replica)
            if listeners is not None:
                (place.hold if counted else place.release)(listeners)
                touched.add(topic)

    def _forget(self, replica: str, touched: set[str]) -> None:
        if replica in self._alive:
            self._alive.discard(replica)
            self._count_replica(replica, touched, False)
        del self._instances[replica]
        for place in self.topics.values():
            place.remote.pop(replica, None)

    def _set(self, topic: str, replica: str, listeners: Listeners) -> None:
        place = self.topics[topic]
        old = place.remote.get(replica, NOBODY)
        if old == listeners:
            return
        if replica in self._alive:  # only who came and went: a party's row changes by a few
            place.release((old[0] - listeners[0], old[1]))
            place.hold((listeners[0] - old[0], listeners[1]))
        if listeners == NOBODY:
            place.remote.pop(replica, None)
        else:
            place.remote[replica] = listeners
