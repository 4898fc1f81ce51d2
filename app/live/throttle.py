"""A rate limit kept in one replica: a token bucket per key (the typing relayed from a socket)."""

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
