"""Rate limits kept in one replica: a token bucket per key (the typing relayed from a socket), and
one token bucket (the subscribes of a socket)."""

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


class Bucket:
    """One token bucket (one socket's subscribes): `burst` at once, then `rate` a second."""

    __slots__ = ("_at", "_burst", "_rate", "_tokens")

    def __init__(self, burst: float, rate: float) -> None:
        self._burst = burst
        self._rate = rate
        self._tokens = burst
        self._at = time.monotonic()

    def take(self) -> float:
        """0 when one may act now (and it is counted); else the seconds until one may."""
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens < 1:
            return (1 - self._tokens) / self._rate
        self._tokens -= 1
        return 0.0
