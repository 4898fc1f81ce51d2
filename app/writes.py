"""The writes-per-minute limit (TRACKTALK_WRITES_PER_MINUTE): each user's edits, comment likes
and unlikes, track likes, unlikes and shares, counted in the database across all replicas
(tracktalk.write_wait). Comment posts have their own limit (app.comments.seconds_until_allowed).

A write counts when its transaction commits, whatever it changed: liking twice is two writes
(each is a request, a transaction and a trip to the track's rows); a write refused or failed
(403, 404) rolls back and does not count."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from psycopg.rows import tuple_row

from app.db import Conn
from app.problems import TooMany
from app.services import Services

_WINDOW = 60.0
"""Seconds over which the limit counts."""


class TooManyWrites(TooMany):
    """The user made as many writes within a minute as the limit allows (answered with 429)."""

    def __init__(self, most: int, wait: float) -> None:
        seconds = max(1, math.ceil(wait))
        super().__init__(f"at most {most} writes a minute: try again in {seconds} s", seconds)


async def seconds_until_allowed(conn: Conn, user_id: int, most: int) -> float:
    """0 when the user may write now (and the write is counted, unless the transaction rolls
    back), else how long to wait. Holds the user's lock to commit (tracktalk.write_wait)."""
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(
            "SELECT tracktalk.write_wait(%s::bigint, %s::integer, make_interval(secs => %s))",
            (user_id, most, _WINDOW),
        )
        row = await cur.fetchone()
    return float(row[0]) if row and row[0] is not None else 0.0


@asynccontextmanager
async def counted_write(services: Services, user_id: int) -> AsyncIterator[Conn]:
    """A connection, in a transaction, for one write of the user's: TooManyWrites when the limit
    is reached (on this replica's word while the database's last refusal lasts, else on the
    database's), counted when the transaction commits."""
    most = services.settings.writes_per_minute
    if most and (wait := services.refused_writes.wait(user_id)):
        raise TooManyWrites(most, wait)
    async with services.pool.connection() as conn, conn.transaction():
        if most and (wait := await seconds_until_allowed(conn, user_id, most)):
            services.refused_writes.refuse(user_id, wait)
            raise TooManyWrites(most, wait)
        yield conn
