"""A user's notifications (made by the triggers; here only read and marked read)."""

from __future__ import annotations

from psycopg.rows import class_row, tuple_row

from app.data.db import Conn
from app.wire import Notification

_MARK_BATCH = 10_000
"""Notifications marked read by one statement when the user marks all of them read."""


async def page(conn: Conn, user_id: int, *, before_id: int | None, limit: int) -> list[Notification]:
    """The user's notifications, newest first, `limit` of them older than `before_id`."""
    async with conn.cursor(row_factory=class_row(Notification)) as cur:
        await cur.execute(
            """
            SELECT * FROM tracktalk.notification_objects
             WHERE user_id = %(user)s AND (%(before)s::bigint IS NULL OR id < %(before)s)
             ORDER BY id DESC
             LIMIT %(limit)s
            """,
            {"user": user_id, "before": before_id, "limit": limit},
        )
        return await cur.fetchall()


async def unread(conn: Conn, user_id: int) -> int:
    """How many of the user's notifications are unread, leaving out those of tracks and forum
    threads the user may no longer see, and of comments hidden or held since that are neither
    theirs nor on a track they moderate (as tracktalk.notification_objects does)."""
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(
            """
            SELECT (SELECT count(*) FROM notifications WHERE user_id = %(user)s AND read_at IS NULL)
                 - CASE WHEN EXISTS (SELECT 1 FROM users r WHERE r.id = %(user)s AND r.is_team) THEN 0 ELSE
                       (SELECT count(*)
                          FROM notifications n
                          JOIN tracks t ON t.id = n.track_id AND t.is_private
                          JOIN albums a ON a.id = t.album_id AND a.created_by_id <> n.user_id
                         WHERE n.user_id = %(user)s AND n.read_at IS NULL)
                     + (SELECT count(*)
                          FROM notifications n
                          JOIN forum_threads th ON th.id = n.thread_id
                          JOIN forum_categories c ON c.id = th.category_id AND c.is_private
                         WHERE n.user_id = %(user)s AND n.read_at IS NULL)
                     + (SELECT count(*)  -- (a private track's are left out above already)
                          FROM notifications n
                          JOIN comments c ON c.id = n.comment_id AND c.user_id <> n.user_id
                                         AND (c.hidden_at IS NOT NULL OR c.held_at IS NOT NULL)
                          JOIN tracks t ON t.id = n.track_id AND NOT t.is_private
                          JOIN albums a ON a.id = t.album_id AND a.created_by_id <> n.user_id
                         WHERE n.user_id = %(user)s AND n.read_at IS NULL)
                   END
            """,
            {"user": user_id},
        )
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def mark_read(conn: Conn, user_id: int, ids: list[int] | None) -> None:
    """Mark the user's notifications `ids` read, or all of them when `ids` is None (in batches of
    _MARK_BATCH, each its own short statement: few rows locked at a time, and never past the
    statement timeout, however many are unread)."""
    if ids is not None:
        await conn.execute(
            "UPDATE notifications SET read_at = now() WHERE user_id = %s AND read_at IS NULL AND id = ANY (%s)",
            (user_id, ids),
        )
        return
    while True:
        # The batch's ids from the unread index, then each row by its primary key (`IN (SELECT
        # ...)` is planned as a scan of the whole table, expecting many rows).
        cur = await conn.execute(
            """
            UPDATE notifications SET read_at = now()
             WHERE id = ANY (ARRAY(SELECT id FROM notifications WHERE user_id = %(user)s AND read_at IS NULL
                                    LIMIT %(batch)s))
               AND read_at IS NULL
            """,
            {"user": user_id, "batch": _MARK_BATCH},
        )
        if cur.rowcount < _MARK_BATCH:
            return
