"""The per-user write limits around each write of the API: comment posts
(TRACKTALK_COMMENTS_PER_MINUTE), and edits, comment likes and unlikes, track likes, unlikes and
shares (TRACKTALK_WRITES_PER_MINUTE); app/data/write_limits.py counts them. A write refused or
failed (403, 404, 422) rolls back and does not count. The database's refusals are remembered here
until they end (`Refusals`)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from app.data.db import Conn
from app.data.write_limits import Kind, seconds_until_allowed
from app.problems import TooMany, whole_seconds

if TYPE_CHECKING:
    from app.services import Services  # which holds this module's Refusals

_FORGET_AFTER = 10_000
"""Refusals kept before the ended ones are forgotten."""


class TooManyWrites(TooMany):
    """The user made as many writes of a kind within a minute as its limit allows (429)."""

    def __init__(self, kind: Kind, most: int, wait: float) -> None:
        seconds = whole_seconds(wait)
        what = "comments a minute: post again" if kind == "comment" else "writes a minute: try again"
        super().__init__(f"at most {most} {what} in {seconds} s", seconds)


@asynccontextmanager
async def counted_write(services: Services, user_id: int, kind: Kind = "write") -> AsyncIterator[Conn]:
    """A connection, in a transaction, for one write of the user's: TooManyWrites when the
    kind's limit is reached (on this replica's word while the database's last refusal lasts, else
    on the database's), counted when the transaction commits."""
    settings = services.settings
    most = settings.comments_per_minute if kind == "comment" else settings.writes_per_minute
    if most and (wait := services.refused.wait((kind, user_id))):
        raise TooManyWrites(kind, most, wait)
    async with services.pool.connection() as conn, conn.transaction():
        if most and (wait := await seconds_until_allowed(conn, user_id, kind, most)):
            services.refused.refuse((kind, user_id), wait)
            raise TooManyWrites(kind, most, wait)
        yield conn


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
