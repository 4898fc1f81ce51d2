"""The writes-per-minute limit (TRACKTALK_WRITES_PER_MINUTE) around each of a user's edits,
comment likes and unlikes, track likes, unlikes and shares (app/limits.py counts them). A write
refused or failed (403, 404) rolls back and does not count."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from app.db import Conn
from app.limits import seconds_until_allowed
from app.problems import TooMany
from app.services import Services


class TooManyWrites(TooMany):
    """The user made as many writes within a minute as the limit allows (answered with 429)."""

    def __init__(self, most: int, wait: float) -> None:
        seconds = max(1, math.ceil(wait))
        super().__init__(f"at most {most} writes a minute: try again in {seconds} s", seconds)


@asynccontextmanager
async def counted_write(services: Services, user_id: int) -> AsyncIterator[Conn]:
    """A connection, in a transaction, for one write of the user's: TooManyWrites when the limit
    is reached (on this replica's word while the database's last refusal lasts, else on the
    database's), counted when the transaction commits."""
    most = services.settings.writes_per_minute
    if most and (wait := services.refused_writes.wait(user_id)):
        raise TooManyWrites(most, wait)
    async with services.pool.connection() as conn, conn.transaction():
        if most and (wait := await seconds_until_allowed(conn, user_id, "write", most)):
            services.refused_writes.refuse(user_id, wait)
            raise TooManyWrites(most, wait)
        yield conn
