"""Comments and their likes, in SQL. Permission checks are the handlers'; these only read and write."""

from __future__ import annotations

from dataclasses import dataclass

from psycopg.errors import ForeignKeyViolation
from psycopg.rows import class_row, tuple_row

from app.data.db import Conn
from app.problems import NotFound, Unprocessable
from app.wire import Comment, LikeState

_SELECT = """
    SELECT o.*,
           EXISTS (SELECT 1 FROM comment_likes l
                    WHERE l.comment_id = o.id AND l.user_id = %(viewer)s) AS user_has_liked
      FROM tracktalk.comment_objects o
"""


@dataclass(frozen=True, slots=True)
class CommentAccess:
    """What a permission check needs to know of a comment."""

    id: int
    track_id: str
    user_id: int
    creator_id: int


async def page(
    conn: Conn, track_id: str, viewer_id: int | None, *, after_id: int, limit: int
) -> list[Comment]:
    """Comments of a track in the order they were written, `limit` of them after `after_id`."""
    async with conn.cursor(row_factory=class_row(Comment)) as cur:
        await cur.execute(
            _SELECT + " WHERE o.track_id = %(track)s AND o.id > %(after)s ORDER BY o.id LIMIT %(limit)s",
            {"viewer": viewer_id, "track": track_id, "after": after_id, "limit": limit},
        )
        return await cur.fetchall()


async def get(conn: Conn, comment_id: int, viewer_id: int | None) -> Comment:
    """One comment as the viewer sees it (404 when it is gone)."""
    async with conn.cursor(row_factory=class_row(Comment)) as cur:
        await cur.execute(_SELECT + " WHERE o.id = %(id)s", {"viewer": viewer_id, "id": comment_id})
        comment = await cur.fetchone()
    if comment is None:
        raise NotFound(f"comment {comment_id}")
    return comment


async def access(conn: Conn, comment_id: int, viewer_id: int | None) -> CommentAccess:
    """The comment's owner and track, if the viewer may see its track; 404 otherwise."""
    async with conn.cursor(row_factory=class_row(CommentAccess)) as cur:
        await cur.execute(
            """
            SELECT c.id, c.track_id, c.user_id, a.created_by_id AS creator_id
              FROM comments c
              JOIN tracks t ON t.id = c.track_id
              JOIN albums a ON a.id = t.album_id
             WHERE c.id = %s AND tracktalk.can_see(%s, c.track_id)
            """,
            (comment_id, viewer_id),
        )
        found = await cur.fetchone()
    if found is None:
        raise NotFound(f"comment {comment_id}")
    return found


async def parent_track(conn: Conn, parent_id: int) -> str | None:
    """The track of comment `parent_id`, None when there is no such comment."""
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute("SELECT track_id FROM comments WHERE id = %s", (parent_id,))
        row = await cur.fetchone()
    return str(row[0]) if row else None


async def insert(
    conn: Conn, track_id: str, user_id: int, content: str, timestamp: float, parent_id: int | None
) -> int:
    """Write a comment; return its id. The triggers make it go live."""
    async with conn.cursor(row_factory=tuple_row) as cur:
        try:
            await cur.execute(
                """
                INSERT INTO comments (track_id, user_id, parent_id, content, "timestamp")
                VALUES (%s, %s, %s, %s, %s)
                RETURNING id
                """,
                (track_id, user_id, parent_id, content, timestamp),
            )
        except ForeignKeyViolation as exc:
            if exc.diag.constraint_name != "comments_parent_same_track_fkey":
                raise
            raise Unprocessable(f"parent_id: comment {parent_id} was just deleted") from None
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def update_content(conn: Conn, comment_id: int, content: str) -> bool:
    """Replace a comment's content (the trigger marks it edited); False when it is gone."""
    cur = await conn.execute("UPDATE comments SET content = %s WHERE id = %s", (content, comment_id))
    return cur.rowcount == 1


async def delete(conn: Conn, comment_id: int) -> bool:
    """Delete a comment and its replies; False when it was already gone."""
    cur = await conn.execute("DELETE FROM comments WHERE id = %s", (comment_id,))
    return cur.rowcount == 1


async def set_like(conn: Conn, comment_id: int, user_id: int, *, liked: bool) -> LikeState:
    """Like or unlike (idempotent: a second like or unlike changes nothing) and say the result."""
    if liked:
        try:
            await conn.execute(
                "INSERT INTO comment_likes (comment_id, user_id) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                (comment_id, user_id),
            )
        except ForeignKeyViolation:  # the comment was deleted since the handler's check
            raise NotFound(f"comment {comment_id}") from None
    else:
        await conn.execute(
            "DELETE FROM comment_likes WHERE comment_id = %s AND user_id = %s", (comment_id, user_id)
        )
    async with conn.cursor(row_factory=class_row(LikeState)) as cur:
        await cur.execute(
            """
            SELECT c.id AS comment_id,
                   coalesce(s.likes, 0) AS like_count,
                   EXISTS (SELECT 1 FROM comment_likes l
                            WHERE l.comment_id = c.id AND l.user_id = %s) AS user_has_liked
              FROM comments c LEFT JOIN tracktalk.comment_stats s ON s.comment_id = c.id
             WHERE c.id = %s
            """,
            (user_id, comment_id),
        )
        state = await cur.fetchone()
    if state is None:
        raise NotFound(f"comment {comment_id}")
    return state
