"""The event log (tracktalk.events) and the other reads of the live path, through the request pool.

EventLog never uses the LISTEN connection (it only listens; it reads the channel key, and watches
a change of it, with the functions at the end of this module). Every query here is one short
statement: a page of events and the track's latest event come from one snapshot.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from psycopg import AsyncConnection
from psycopg.rows import tuple_row
from psycopg_pool import AsyncConnectionPool

from app.bounds import EVENT_PAGE, MAX_BIGINT


class Cursor(NamedTuple):
    """A point in a track's history: an event's seq and its tag (None: no event yet, or one made
    before events had tags). Two histories that share a seq differ in its tag."""

    seq: int
    tag: str | None = None


class Page(NamedTuple):
    """Events of a track read in one snapshot, with the track's latest event in that snapshot."""

    rows: list[tuple[int, bytes, str | None, str | None]]
    """(seq, message as UTF-8 JSON, tag, prev: the tag of the event before it), in seq order."""
    latest: Cursor


class EventLog:
    """Reads of the durable events, the notifications' messages and who may see what."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def latest(self, track_ids: list[str]) -> dict[str, Cursor]:
        """The latest event of each track (seq 0 for a track with no events, or none at all)."""
        async with self._pool.connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
            await cur.execute(
                "SELECT substr(topic, 7), last_seq, last_tag FROM tracktalk.topic_state WHERE topic = ANY (%s)",
                (["track:" + track for track in track_ids],),
            )
            found = {str(track): Cursor(int(seq), tag) for track, seq, tag in await cur.fetchall()}
        return {track: found.get(track, Cursor(0)) for track in track_ids}

    async def page(
        self, track_id: str, after: int, limit: int = EVENT_PAGE, through: int | None = None
    ) -> Page:
        """Up to `limit` events of a track after `after` (and up to `through`), with the track's
        latest event: one statement, so one snapshot (the log and the latest seq agree: an event
        the log lacks is not kept, not on its way). What is kept may have holes (pruning): the
        caller checks every seq."""
        async with self._pool.connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
            await cur.execute(
                """
                SELECT s.last_seq, s.last_tag, e.seq, e.message::text, e.tag, e.prev_tag
                  FROM (VALUES (%(track)s::text)) AS w (topic)
                  LEFT JOIN tracktalk.topic_state s ON s.topic = w.topic
                  LEFT JOIN LATERAL (
                        SELECT seq, message, tag, prev_tag FROM tracktalk.events
                         WHERE topic = w.topic AND seq > %(after)s AND seq <= %(through)s
                         ORDER BY seq LIMIT %(limit)s
                       ) AS e ON true
                 ORDER BY e.seq
                """,
                {
                    "track": "track:" + track_id,
                    "after": after,
                    "through": through if through is not None else MAX_BIGINT,
                    "limit": limit,
                },
            )
            found = await cur.fetchall()
        last_seq, last_tag = found[0][0], found[0][1]
        rows = [
            (int(seq), str(text).encode(), tag, prev)
            for _, _, seq, text, tag, prev in found
            if seq is not None
        ]
        return Page(rows, Cursor(int(last_seq or 0), last_tag))

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
    key, _ = await read_channel_key_and_snapshot(conn)
    return key


async def read_channel_key_and_snapshot(conn: AsyncConnection[Any]) -> tuple[bytes, str]:
    """The channel key, and a snapshot of the transactions running as it was read (the ones
    that may still send under the key it replaced: see `still_running`)."""
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute("SELECT key, pg_current_snapshot()::text FROM tracktalk.channel_key")
        row = await cur.fetchone()
    if row is None:
        raise RuntimeError("tracktalk.channel_key is empty: run `tracktalk migrate`")
    return bytes(row[0]), str(row[1])


async def still_running(conn: AsyncConnection[Any], snapshot: str) -> int:
    """How many of the transactions that were running at `snapshot` are running still."""
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(
            "SELECT count(*) FROM pg_snapshot_xip(%s::pg_snapshot) AS x"
            " WHERE NOT pg_visible_in_snapshot(x, pg_current_snapshot())",
            (snapshot,),
        )
        row = await cur.fetchone()
    return int(row[0]) if row else 0
