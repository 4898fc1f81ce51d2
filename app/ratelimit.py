"""Rate limits kept in one replica: a token bucket per key (typing), and refusals remembered
until they end (the comments-per-minute limit, whose count is the database's)."""

from __future__ import annotations

import time
from collections.abc import Hashable

_FORGET_AFTER = 10_000
"""Keys kept before the full buckets (which say nothing) are forgotten."""


class RateLimiter:
    """Allows `count` events per `seconds` per key, in bursts of at most `count`."""

    def __init__(self, count: float, seconds: float) -> None:
        self._capacity = count
        self._refill = count / seconds
        self._buckets: dict[Hashable, tuple[float, float]] = {}

    def allow(self, key: Hashable) -> bool:
        """True if `key` may act now (and count it); False if it must wait."""
        now = time.monotonic()
        tokens, at = self._buckets.get(key, (self._capacity, now))
        tokens = min(self._capacity, tokens + (now - at) * self._refill)
        if tokens < 1:
            return False
        if len(self._buckets) > _FORGET_AFTER:
            self._forget_full(now)
        self._buckets[key] = (tokens - 1, now)
        return True

    def _forget_full(self, now: float) -> None:
        self._buckets = {
            key: (tokens, at)
            for key, (tokens, at) in self._buckets.items()
            if tokens + (now - at) * self._refill < self._capacity
        }


class Refusals:
    """Keys refused until a moment, as the database said: until then they are refused here
    without asking it again (nothing can shorten the wait: posts only leave the window with
    time), so that a flood of requests costs the database nothing."""

    def __init__(self) -> None:
        self._until: dict[Hashable, float] = {}

    def wait(self, key: Hashable) -> float:
        """Seconds `key` must still wait (0: ask the database)."""
        until = self._until.get(key)
        if until is None:
            return 0.0
        left = until - time.monotonic()
        if left <= 0:
            del self._until[key]
            return 0.0
        return left

    def refuse(self, key: Hashable, seconds: float) -> None:
        """Remember that `key` must wait `seconds`."""
        now = time.monotonic()
        if len(self._until) > _FORGET_AFTER:
            self._until = {k: until for k, until in self._until.items() if until > now}
        self._until[key] = now + seconds
