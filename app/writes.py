"""The per-user write limits around each write of the API: comment posts
(TRACKTALK_COMMENTS_PER_MINUTE), and edits, comment likes and unlikes, track likes, unlikes and
shares (TRACKTALK_WRITES_PER_MINUTE); app/limits.py counts them. A write refused or failed (403,
404, 422) rolls back and does not count."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from app.db import Conn
from app.limits import Kind, seconds_until_allowed
from app.problems import TooMany, whole_seconds
from app.services import Services


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
