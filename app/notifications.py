"""A user's notifications (made by the triggers; here only read and marked read)."""

from __future__ import annotations

from psycopg.rows import class_row, tuple_row

from app.db import Conn
from app.wire import Notification


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
    """How many of the user's notifications are unread."""
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(
            "SELECT count(*) FROM notifications WHERE user_id = %s AND read_at IS NULL", (user_id,)
        )
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def mark_read(conn: Conn, user_id: int, ids: list[int] | None) -> None:
    """Mark the user's notifications `ids` read, or all of them when `ids` is None."""
    await conn.execute(
        """
        UPDATE notifications SET read_at = now()
         WHERE user_id = %(user)s AND read_at IS NULL
           AND (%(ids)s::bigint[] IS NULL OR id = ANY (%(ids)s::bigint[]))
        """,
        {"user": user_id, "ids": ids},
    )
