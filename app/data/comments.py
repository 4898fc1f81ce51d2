"""Comments and their likes, in SQL. Permission checks are the handlers'; these only read and write."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from psycopg.errors import CheckViolation, ForeignKeyViolation
from psycopg.rows import class_row, tuple_row

from app.data.db import Conn
from app.problems import NotFound, TooMany, Unprocessable, whole_seconds
from app.wire import Comment, LikeState

SELECT_COMMENTS = """
    SELECT o.id, o.user_id, o.username, o.author_is_creator, o.author_is_team, o.track_id,
           o.parent_id, o.content, o."timestamp", o.is_edited, o.created_at, o.last_edited_at,
           o.like_count,
           EXISTS (SELECT 1 FROM comment_likes l
                    WHERE l.comment_id = o.id AND l.user_id = %(viewer)s) AS user_has_liked,
           o.pinned, o.hearted, o.deleted,
           CASE WHEN v.marks OR o.user_id = %(viewer)s THEN o.hidden END AS hidden,
           CASE WHEN v.marks OR o.user_id = %(viewer)s THEN o.held END AS held,
           CASE WHEN v.marks OR o.user_id = %(viewer)s THEN o.report_count END AS report_count
      FROM tracktalk.comment_objects o
"""
"""A comment as the viewer sees it: with its marks (hidden, held, report_count) for its author and
the track's moderators (`v.marks`, joined by each query)."""

_SEEN = " AND (v.marks OR o.user_id = %(viewer)s OR NOT (o.hidden OR o.held))"
"""A hidden or held comment exists only for its author and the track's moderators."""

Sort = Literal["timestamp", "newest", "top"]

_PLACED = "c.id = %(after)s AND c.track_id = %(track)s AND c.pinned_at IS NULL"
"""A cursor that places the page: a comment of the track, not the pinned one."""

_ORDER: dict[str, tuple[str, str]] = {
    # (the cursor's condition: after comment %(after)s in this order, the order)
    "timestamp": (
        ' AND (o."timestamp", o.id) > (coalesce((SELECT c."timestamp" FROM comments c'
        f" WHERE {_PLACED}), -1), %(after)s)",
        ' ORDER BY o."timestamp", o.id',
    ),
    "newest": (
        " AND (o.id < %(after)s OR EXISTS (SELECT 1 FROM comments c WHERE c.id = %(after)s"
        " AND c.track_id = %(track)s AND c.pinned_at IS NOT NULL))",
        " ORDER BY o.id DESC",
    ),
    "top": (
        f" AND (NOT EXISTS (SELECT 1 FROM comments c WHERE {_PLACED})"
        " OR (-o.like_count, o.id) > (-coalesce((SELECT s.likes FROM tracktalk.comment_stats s"
        " WHERE s.comment_id = %(after)s), 0), %(after)s))",
        " ORDER BY o.like_count DESC, o.id",
    ),
}
"""How each order of GET /api/tracks/{id}/comments walks (the pinned comment comes first, on the
first page, whatever the order). The cursor is placed by its comment of this track, hidden or held
from the viewer or not (a listener's last comment hidden since their last page goes on from it;
the page shows nothing of it). A cursor that is no comment of the track (deleted since, or another
track's) is placed nowhere: `timestamp` and `top` start over, so that nothing is skipped and
another track's comment tells nothing; `newest` goes on below its id, which tells nothing. The
track's pinned comment places nothing in any order (the order starts over, without it): it is
the last of a first page that it fills alone (limit 1), and sits anywhere in the order, so that
going on after its place would skip the comments before it."""


@dataclass(frozen=True, slots=True)
class CommentAccess:
    """What a permission check needs to know of a comment."""

    id: int
    track_id: str
    user_id: int
    creator_id: int
    deleted: bool
    """A tombstone: deleted, kept (empty) for its replies."""


async def page(
    conn: Conn,
    track_id: str,
    viewer_id: int | None,
    *,
    after_id: int,
    limit: int,
    sort: Sort = "timestamp",
) -> list[Comment]:
    """A page of a track's comments in `sort` order, `limit` of them after comment `after_id` (0:
    the first page, which starts with the pinned comment, if any). Hidden and held comments only
    for their author and the track's moderators."""
    after_clause, order = _ORDER[sort]
    params = {"viewer": viewer_id, "track": track_id, "after": after_id, "limit": limit}
    marks = " CROSS JOIN (SELECT tracktalk.moderates_track(%(viewer)s, %(track)s) AS marks) v"
    found: list[Comment] = []
    async with conn.cursor(row_factory=class_row(Comment)) as cur:
        if after_id == 0:
            await cur.execute(
                SELECT_COMMENTS + marks + " WHERE o.track_id = %(track)s AND o.pinned" + _SEEN, params
            )
            found = await cur.fetchall()
        cursor = after_clause if after_id else ""
        params["limit"] = limit - len(found)  # the pinned comment takes its place on the page
        await cur.execute(
            SELECT_COMMENTS
            + marks
            + " WHERE o.track_id = %(track)s AND NOT o.pinned"
            + _SEEN
            + cursor
            + order
            + " LIMIT %(limit)s",
            params,
        )
        return found + await cur.fetchall()


async def get(conn: Conn, comment_id: int, viewer_id: int | None) -> Comment:
    """One comment as the viewer sees it (404 when it is gone, or hidden or held from them)."""
    async with conn.cursor(row_factory=class_row(Comment)) as cur:
        await cur.execute(
            SELECT_COMMENTS
            + " CROSS JOIN LATERAL (SELECT tracktalk.moderates_track(%(viewer)s, o.track_id) AS marks) v"
            " WHERE o.id = %(id)s" + _SEEN,
            {"viewer": viewer_id, "id": comment_id},
        )
        comment = await cur.fetchone()
    if comment is None:
        raise NotFound(f"comment {comment_id}")
    return comment


async def thread(conn: Conn, comment: Comment, viewer_id: int | None, limit: int) -> list[Comment]:
    """The replies to `comment` the viewer may see, oldest first, at most `limit`."""
    async with conn.cursor(row_factory=class_row(Comment)) as cur:
        await cur.execute(
            SELECT_COMMENTS
            + " CROSS JOIN (SELECT tracktalk.moderates_track(%(viewer)s, %(track)s) AS marks) v"
            " WHERE o.parent_id = %(id)s AND o.track_id = %(track)s"
            + _SEEN
            + " ORDER BY o.id LIMIT %(limit)s",
            {"viewer": viewer_id, "id": comment.id, "track": comment.track_id, "limit": limit},
        )
        return await cur.fetchall()


async def access(conn: Conn, comment_id: int, viewer_id: int | None) -> CommentAccess:
    """The comment's owner and track, if the viewer may see it (its track; and, hidden or held, its
    author and the track's moderators only); 404 otherwise."""
    async with conn.cursor(row_factory=class_row(CommentAccess)) as cur:
        await cur.execute(
            """
            SELECT c.id, c.track_id, c.user_id, a.created_by_id AS creator_id, c.deleted_at IS NOT NULL AS deleted
              FROM comments c
              JOIN tracks t ON t.id = c.track_id
              JOIN albums a ON a.id = t.album_id
             WHERE c.id = %(id)s AND tracktalk.can_see(%(viewer)s, c.track_id)
               AND (c.hidden_at IS NULL AND c.held_at IS NULL OR c.user_id = %(viewer)s
                    OR tracktalk.moderates_track(%(viewer)s, c.track_id))
            """,
            {"id": comment_id, "viewer": viewer_id},
        )
        found = await cur.fetchone()
    if found is None:
        raise NotFound(f"comment {comment_id}")
    return found


def refuse_tombstone(comment_id: int, deleted: bool, what: str) -> None:
    """Unprocessable when the comment is a tombstone (deleted, kept empty for its replies): there
    is nothing to `what` (pin, like, edit ...)."""
    if deleted:
        raise Unprocessable(
            f"comment {comment_id} was deleted (kept, empty, for its replies): nothing to {what}"
        )


async def parent_track(conn: Conn, parent_id: int, viewer_id: int, moderator: bool) -> str | None:
    """The track of comment `parent_id`, None when there is no such comment for the viewer (hidden
    or held, it exists for its author and the track's moderators only: `moderator`, the viewer
    moderates the track the reply is for, which a parent must share)."""
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(
            "SELECT track_id FROM comments WHERE id = %s"
            " AND (hidden_at IS NULL AND held_at IS NULL OR user_id = %s OR %s)",
            (parent_id, viewer_id, moderator),
        )
        row = await cur.fetchone()
    return str(row[0]) if row else None


_SLOW_MODE_WAIT = re.compile(r"wait ([0-9.]+) s of ([0-9]+)")
"""The DETAIL of the trigger's slow-mode refusal (tracktalk.take_slow_mode_turn): the seconds to
wait, and the track's slow mode."""


class SlowMode(TooMany):
    """A comment within the track's slow mode of the author's last post there, deleted or not (429)."""

    def __init__(self, detail: str | None) -> None:
        found = _SLOW_MODE_WAIT.search(detail or "")
        wait, every = (float(found[1]), found[2]) if found else (1.0, "some")
        seconds = whole_seconds(wait)
        super().__init__(
            f"slow mode: one comment every {every} s on this track (deleted ones count): post again in {seconds} s",
            seconds,
        )


async def insert(
    conn: Conn, track_id: str, user_id: int, content: str, timestamp: float, parent_id: int | None
) -> int:
    """Write a comment; return its id. The triggers make it go live, and hold it to the track's
    slow mode (SlowMode) but for its moderators."""
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
        except CheckViolation as exc:
            if exc.diag.constraint_name != "comments_slow_mode":
                raise
            raise SlowMode(exc.diag.message_detail) from None
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
