"""How long to wait before trying again something that failed: one object for every retry loop
(the listener's reconnect, a track's catch-up, the check after a reconnect, the access recheck).

The wait starts at `first`, grows by `factor` at each failure up to `most`, and, with `jitter`,
is drawn from [wait * (1 - jitter), wait] so that replicas that failed together do not all come
back at the same moment; a success starts it afresh (`reset`).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

_MOST_DOUBLINGS = 64
"""Failures past which the wait is no longer computed (it is `most` long before)."""


class Backoff:
    """The waits between the attempts of one retry loop."""

    __slots__ = ("_factor", "_first", "_jitter", "_most", "_random", "failures")

    def __init__(
        self,
        first: float,
        most: float,
        *,
        factor: float = 2.0,
        jitter: float = 0.0,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if not 0 < first <= most or factor < 1 or not 0 <= jitter <= 1:
            raise ValueError("Backoff needs 0 < first <= most, factor >= 1 and jitter from 0 to 1")
        self._first = first
        self._most = most
        self._factor = factor
        self._jitter = jitter
        self._random = rand
        self.failures = 0
        """Failures since the last success."""

    def next_delay(self) -> float:
        """Count a failure; the seconds to wait before the next attempt."""
        wait = min(self._most, self._first * self._factor ** min(self.failures, _MOST_DOUBLINGS))
        self.failures += 1
        return wait * (1 - self._jitter * self._random())

    async def wait(self) -> None:
        """Count a failure and sleep until the next attempt is due."""
        await asyncio.sleep(self.next_delay())

    def reset(self) -> None:
        """The attempt succeeded: the next failure waits `first` again."""
        self.failures = 0
