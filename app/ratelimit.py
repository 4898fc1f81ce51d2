"""A per-key rate limit for one replica (typing indicators)."""

from __future__ import annotations

import time
from collections.abc import Hashable


class RateLimiter:
    """Allows one event per key per interval; the rest are dropped by the caller."""

    def __init__(self, per_second: float) -> None:
        self._interval = 1.0 / per_second
        self._last: dict[Hashable, float] = {}

    def allow(self, key: Hashable) -> bool:
        """True if `key` may act now (and remember that it did)."""
        now = time.monotonic()
        if now - self._last.get(key, -self._interval) < self._interval:
            return False
        if len(self._last) > 10_000:
            self._forget_before(now - self._interval)
        self._last[key] = now
        return True

    def _forget_before(self, moment: float) -> None:
        self._last = {key: at for key, at in self._last.items() if at >= moment}
