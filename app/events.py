"""The event log (tracktalk.events) and the other reads of the live path, through the request pool.

EventLog never uses the LISTEN connection (it only listens; it reads the channel key with
`read_channel_key` on its own). Every query here is one short statement.
"""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import tuple_row
from psycopg_pool import AsyncConnectionPool

PAGE = 500
"""Events read per query when replaying or catching up."""


class EventLog:
    """Reads of the durable events, the notifications' messages and who may see what."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def latest(self, track_ids: list[str]) -> dict[str, int]:
        """The last seq of each track (0 for a track with no events, or none at all)."""
        async with self._pool.connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
            await cur.execute(
                "SELECT track_id, last_seq FROM tracktalk.track_state WHERE track_id = ANY (%s)",
                (track_ids,),
            )
            found = {str(track): int(seq) for track, seq in await cur.fetchall()}
        return {track: found.get(track, 0) for track in track_ids}

    async def after(
        self, track_id: str, after: int, limit: int = PAGE, through: int | None = None
    ) -> list[tuple[int, bytes]]:
        """Up to `limit` events of a track with seq > `after` (and <= `through`), in order, as
        UTF-8 JSON. What is kept may have holes (pruning): the caller checks every seq."""
        async with self._pool.connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
            await cur.execute(
                """
                SELECT seq, message::text FROM tracktalk.events
                 WHERE track_id = %s AND seq > %s AND seq <= %s
                 ORDER BY seq LIMIT %s
                """,
                (track_id, after, through if through is not None else 2**63 - 1, limit),
            )
            return [(int(seq), str(text).encode()) for seq, text in await cur.fetchall()]

    async def user_messages(self, notification_ids: list[int]) -> list[tuple[int, bytes]]:
        """The (user id, message) pairs that announce notifications `notification_ids`."""
        async with self._pool.connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
            await cur.execute(
                "SELECT user_id, message::text FROM tracktalk.user_messages(%s::bigint[])",
                (notification_ids,),
            )
            return [(int(user), str(text).encode()) for user, text in await cur.fetchall()]

    async def visible(self, pairs: list[tuple[int, str]]) -> set[tuple[int, str]]:
        """Which (user id, track id) pairs may still watch: the track exists, the user (0: anonymous)
        exists and may see it."""
        if not pairs:
            return set()
        users, tracks = zip(*pairs, strict=True)
        async with self._pool.connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
            await cur.execute(
                """
                SELECT p.user_id, p.track_id
                  FROM unnest(%s::bigint[], %s::text[]) AS p (user_id, track_id)
                 WHERE (p.user_id = 0 OR EXISTS (SELECT 1 FROM users u WHERE u.id = p.user_id))
                   AND coalesce(tracktalk.can_see(nullif(p.user_id, 0), p.track_id), false)
                """,
                (list(users), list(tracks)),
            )
            return {(int(user), str(track)) for user, track in await cur.fetchall()}

    async def channel_key(self) -> bytes:
        """The key that signs and seals what travels on tracktalk's channels."""
        async with self._pool.connection() as conn:
            return await read_channel_key(conn)

    async def notify(self, channel: str, payload: str) -> None:
        """Send a payload on a channel, to every replica that listens on it."""
        async with self._pool.connection() as conn:
            await conn.execute("SELECT pg_notify(%s, %s)", (channel, payload))

    async def queue_usage(self) -> float:
        """pg_notification_queue_usage(): the fraction of the server's NOTIFY queue in use."""
        async with self._pool.connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
            await cur.execute("SELECT pg_notification_queue_usage()")
            row = await cur.fetchone()
        return float(row[0]) if row else 0.0

    async def prune(self) -> int:
        """Delete events older than the retention; return how many went."""
        async with self._pool.connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
            await cur.execute("SELECT tracktalk.prune_events()")
            row = await cur.fetchone()
        return int(row[0]) if row else 0


async def read_channel_key(conn: AsyncConnection[Any]) -> bytes:
    """The key that signs and seals what travels on tracktalk's channels, read on `conn`."""
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute("SELECT key FROM tracktalk.channel_key")
        row = await cur.fetchone()
    if row is None:
        raise RuntimeError("tracktalk.channel_key is empty: run `tracktalk migrate`")
    return bytes(row[0])
