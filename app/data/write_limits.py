"""The per-user write limits, counted in the database across all replicas (tracktalk.wait_to_write).

Two kinds, each with its own count and its own lock: comment posts (TRACKTALK_COMMENTS_PER_MINUTE)
and every other write (TRACKTALK_WRITES_PER_MINUTE: edits, comment likes and unlikes, track
likes, unlikes and shares). A write counts when its transaction commits, whatever it changed:
liking twice is two writes (each a request, a transaction and a trip to the track's rows).
"""

from __future__ import annotations

from typing import Literal

from psycopg.rows import tuple_row

from app.data.db import Conn

WINDOW = 60.0
"""Seconds over which the limits count."""

Kind = Literal["comment", "write"]


async def seconds_until_allowed(conn: Conn, user_id: int, kind: Kind, most: int) -> float:
    """0 when the user may make this write now (and it is counted, unless the transaction rolls
    back), else how long to wait. Holds the user's lock for that kind to commit."""
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(
            "SELECT tracktalk.wait_to_write(%s::bigint, %s, %s::integer, make_interval(secs => %s))",
            (user_id, kind, most, WINDOW),
        )
        row = await cur.fetchone()
    return float(row[0]) if row and row[0] is not None else 0.0
