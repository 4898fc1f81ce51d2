"""Python's cyclic garbage collector in a replica: kept off the objects a socket holds.

An open socket holds about 55 objects the collector tracks (its protocols, its task and their
coroutines, its connection, wsproto's state) for as long as it is open. Left to Python, each is
scanned when it is young, again in the middle generation, and again in every full collection,
which runs each time the long-lived objects have grown by a quarter. Each scan of an object costs
a few hundred nanoseconds on a heap this size: in a reconnect storm the collector took about 26 µs
of each reopen on the replica that took a 19,000-socket storm, and nearly a third of the CPU of a
survivor of the six-replica storm (one pass over a middle generation of its own 16,500 sockets'
objects: 0.36 s; docs/performance.md, "Sockets by the hundred thousand").

So a replica freezes what a burst of new sockets made (`gc.freeze()`: moved, in one step, where
no collection looks) at the next tick of uvicorn's main loop (every 0.1 s), before the collector
scans it. Refcounting still frees what is frozen when it is let go; only garbage in reference
cycles would stay. So once every COLLECT_EVERY seconds, if a burst was frozen or a socket closed
since the last time (a closed socket's objects were frozen), everything is let back, collected
once, and what is left frozen again.
"""

from __future__ import annotations

import gc
from collections.abc import Callable

THRESHOLDS = (50_000, 10, 10)
"""The collector's thresholds in a replica (Python's default: 700, 10, 10)."""
BURST = 100
"""Sockets opened since the last freeze that make a tick freeze them."""
COLLECT_EVERY = 3600.0
"""Seconds between two collections of what was frozen, when sockets opened or closed since. Each
pauses the loop (0.35 s at 19,000 sockets held, measured), as Python's own full collections did
each time the sockets held grew by a quarter; what it finds is little (closed sockets leave next to
no garbage in cycles), so it runs once an hour at most."""


def tune() -> None:
    """Collect garbage cycles less often, and never look at what startup made again.

    A replica holds many long-lived objects per socket, and a full collection scans every one of
    them. What makes short-lived objects here (admissions, replays, requests) would, at Python's
    default threshold of 700, run the young collections often and promote survivors into the
    oldest generation, whose full collections grow with the sockets held. With these thresholds
    collections are rare, and what startup made (the modules, the app) is frozen out of them.
    """
    gc.collect()  # what startup left unreachable, before the rest is frozen for good
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)


running: Freezer | None = None
"""The server's freezer, for /metrics (a process has one garbage collector, so one freezer)."""


class Freezer:
    """Freezes what bursts of new sockets made (`tick`, called by the server's main loop);
    `opened` and `closed` count the sockets opened and closed since start. `freeze`, `unfreeze`
    and `collect` are the gc module's (a test passes its own, so as not to freeze its own
    process)."""

    def __init__(
        self,
        opened: Callable[[], int],
        closed: Callable[[], int],
        now: float,
        freeze: Callable[[], None] = gc.freeze,
        unfreeze: Callable[[], None] = gc.unfreeze,
        collect: Callable[[], object] = gc.collect,
    ) -> None:
        self._opened = opened
        self._closed = closed
        self._freeze = freeze
        self._unfreeze = unfreeze
        self._collect = collect
        self._frozen_at = opened()
        """`opened()` at the last freeze."""
        self._collected_at = now
        self._closed_at = closed()
        """`closed()` at the last collection."""
        self._owed = False
        """A burst was frozen since the last collection."""
        self.freezes = 0
        self.collections = 0

    def tick(self, now: float) -> None:
        """Freeze if a burst of sockets opened since the last freeze; collect what was frozen if
        COLLECT_EVERY seconds passed since the last collection and a burst was frozen or a socket
        closed since (what it leaves in cycles with frozen objects waits for that)."""
        opened = self._opened()
        if opened - self._frozen_at >= BURST:
            self._freeze()
            self._frozen_at = opened
            self._owed = True
            self.freezes += 1
        if now - self._collected_at < COLLECT_EVERY:
            return
        closed = self._closed()
        if self._owed or (self.freezes and closed != self._closed_at):
            self._unfreeze()
            self._collect()
            self._freeze()
            self._collected_at = now
            self._closed_at = closed
            self._owed = False
            self.collections += 1
