"""The event log (tracktalk.events) and the NOTIFY channel, as the app reads and writes them."""

from __future__ import annotations

from psycopg.rows import tuple_row
from psycopg_pool import AsyncConnectionPool

CHANNEL = "tracktalk"
"""The one NOTIFY channel of tracktalk (see the head of sql/triggers.sql)."""

PAGE = 500
"""Events read per query when replaying or catching up."""


class EventLog:
    """Reads of the durable events, through the request pool (never the LISTEN connection)."""

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

    async def range(self, track_id: str, after: int, through: int) -> list[tuple[int, str]]:
        """Up to PAGE events of a track with after < seq <= through, in order, as JSON text."""
        async with self._pool.connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
            await cur.execute(
                """
                SELECT seq, message::text FROM tracktalk.events
                 WHERE track_id = %s AND seq > %s AND seq <= %s
                 ORDER BY seq LIMIT %s
                """,
                (track_id, after, through, PAGE),
            )
            return [(int(seq), str(text)) for seq, text in await cur.fetchall()]

    async def user_messages(self, notification_ids: list[int]) -> list[tuple[int, str]]:
        """The (user id, message) pairs that announce notifications `notification_ids`."""
        async with self._pool.connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
            await cur.execute(
                "SELECT user_id, message::text FROM tracktalk.user_messages(%s::bigint[])",
                (notification_ids,),
            )
            return [(int(user), str(text)) for user, text in await cur.fetchall()]

    async def notify(self, payload: str) -> None:
        """Send an ephemeral payload to every replica's listener."""
        async with self._pool.connection() as conn:
            await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))

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
