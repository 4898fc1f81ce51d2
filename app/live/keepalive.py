"""Every socket's keepalive pings from one timer: a wheel of slots, one visited each `TICK`.

uvicorn pings each socket from two timers of its own (the next ping, then the pong's deadline),
each a `TimerHandle` in the event loop's heap, and frames each ping through wsproto with a random
payload. A replica holds sockets by the ten thousand; idle, that was most of its CPU (the profile
in docs/performance.md, "Sockets by the hundred thousand"). Here the sockets are dealt round the
slots of a wheel that makes one revolution an interval: each turn (every `TICK` seconds, kept on
that schedule however late the loop runs it) visits one slot, pings the sockets there that
answered their last ping (one prepared frame, written as it is), and closes those that did not.
A socket is so pinged every `interval` seconds, and closed when a ping goes unanswered for one
interval: a dead peer is found within two intervals, as uvicorn's own timers find it within an
interval and a timeout of the same length. The sockets that open together (a reconnect storm) are
spread over the slots, so that their pings do not come in one burst either.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Protocol

log = logging.getLogger(__name__)

INTERVAL = 25.0
"""Seconds between two pings of a socket (and the time it has to answer one): Centrifugo's and
Socket.IO's 25 s, under the 60 s of a proxy's usual idle timeout (nginx's `proxy_read_timeout`,
AWS's load balancers), which a ping resets. A dead peer is found within two intervals. The idle
replica's CPU is these pings and their pongs (docs/performance.md, "Sockets by the hundred thousand")."""

TICK = 0.05
"""Seconds between two turns of the wheel: each turn pings a slot's share of the sockets, so that
the pings of 19,000 sockets go ~50 at a time (about a millisecond of the loop) rather than in
bursts that a comment's frames would queue behind."""

_CATCH_UP = 0.25
"""The most a late wheel makes up, as a share of its interval: a socket always has at least the
rest of the interval (three quarters, less the loop's lateness) to answer a ping."""

PING = b"\x89\x02tt"
"""A server's ping frame (unmasked, FIN, opcode 9) with the payload `tt`; any pong counts."""


class Pinged(Protocol):
    """What the wheel asks of a socket (app/live/wsprotocol.py's FrameProtocol)."""

    keepalive_slot: int
    """The socket's slot in the wheel (-1: none): kept on the socket, which costs no entry more."""

    def keepalive_turn(self) -> bool:
        """Ping, or close if the last ping (one turn ago) is unanswered; False when the socket
        leaves the wheel."""


class Keepalive:
    """The wheel of one event loop's sockets (`interval` seconds, a slot per `tick`)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float, tick: float = TICK) -> None:
        self._loop = loop
        self.interval = interval
        self._tick_s = tick
        self._slots: list[set[Pinged]] = [set() for _ in range(max(1, round(interval / tick)))]
        self._count = 0
        self._deal = itertools.cycle(range(len(self._slots)))
        self._turn = 0
        self._timer: asyncio.TimerHandle | None = None
        self._due = 0.0
        """Loop time the next turn is due at: each turn is set from the last one's due time, not
        from when it ran, so that a busy loop's lateness does not add up over the turns."""

    def __len__(self) -> int:
        return self._count

    def add(self, socket: Pinged) -> None:
        """Ping `socket` from now on, first within `interval` seconds."""
        if socket.keepalive_slot >= 0:
            return
        slot = socket.keepalive_slot = next(self._deal)
        self._slots[slot].add(socket)
        self._count += 1
        if self._timer is None:
            self._due = self._loop.time() + self._tick_s
            self._timer = self._loop.call_at(self._due, self._tick)

    def discard(self, socket: Pinged) -> None:
        slot = socket.keepalive_slot
        if slot >= 0:
            socket.keepalive_slot = -1
            self._slots[slot].discard(socket)
            self._count -= 1

    def _tick(self) -> None:
        self._timer = None
        slot = self._slots[self._turn]
        self._turn = (self._turn + 1) % len(self._slots)
        for socket in list(slot):
            try:
                kept = socket.keepalive_turn()
            except Exception:
                # One socket's failure must not stop the wheel (every socket of the loop would go
                # unpinged until another opens) nor the rest of its slot; it is not pinged again.
                log.exception("keepalive: a socket's turn failed; it leaves the wheel")
                kept = False
            if not kept:
                self.discard(socket)
        if self._count:
            # A turn that came late is followed sooner (at the next pass of the loop, if it is
            # already due): the wheel catches up a turn at a time, between the loop's other work.
            # It catches up at most _CATCH_UP of an interval (after a longer stall, the turns
            # missed beyond that are not made up): a socket pinged late is checked at its slot's
            # next due time, so a longer catch-up would leave it too little time to answer.
            self._due = max(self._due + self._tick_s, self._loop.time() - self.interval * _CATCH_UP)
            self._timer = self._loop.call_at(self._due, self._tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
