"""The forum in SQL: categories, threads, posts and post likes. Permission checks are the
handlers'; these read and write, and say NotFound for what the viewer may not see (a private
category's threads and posts do not exist for anyone off the team: tracktalk.can_see_category)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from psycopg.errors import ForeignKeyViolation
from psycopg.rows import class_row, tuple_row

from app.bounds import MAX_CATEGORIES_LISTED
from app.data.db import Conn
from app.problems import NotFound, Unprocessable
from app.wire import Category, Post, PostLikeState, Thread

_POSTS = """
    SELECT o.*,
           EXISTS (SELECT 1 FROM forum_post_likes l
                    WHERE l.post_id = o.id AND l.user_id = %(viewer)s) AS user_has_liked
      FROM tracktalk.post_objects o
"""


@dataclass(frozen=True, slots=True)
class ThreadPlace:
    """Where a thread stands in its category's list (pinned first, then the newest post first):
    the cursor of the page after it."""

    is_pinned: bool
    last_post_at: datetime
    id: int


@dataclass(frozen=True, slots=True)
class ThreadAccess:
    """What a permission check needs to know of a thread."""

    id: int
    user_id: int
    is_locked: bool


@dataclass(frozen=True, slots=True)
class PostAccess:
    """What a permission check needs to know of a post (and of its thread)."""

    id: int
    thread_id: int
    user_id: int
    thread_is_locked: bool


async def categories(conn: Conn, viewer_id: int | None) -> list[Category]:
    """The categories the viewer may see, in the order they were made, with their thread counts."""
    async with conn.cursor(row_factory=class_row(Category)) as cur:
        await cur.execute(
            """
            SELECT c.id, c.slug, c.title, c.description, c.is_private,
                   (SELECT count(*) FROM forum_threads t WHERE t.category_id = c.id) AS thread_count
              FROM forum_categories c
             WHERE tracktalk.can_see_category(%s, c.id)
             ORDER BY c.id
             LIMIT %s
            """,
            (viewer_id, MAX_CATEGORIES_LISTED),
        )
        return await cur.fetchall()


async def category_id(conn: Conn, slug: str, viewer_id: int | None) -> int:
    """The id of the category `slug` if the viewer may see it; 404 otherwise."""
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(
            "SELECT id FROM forum_categories c WHERE c.slug = %s AND tracktalk.can_see_category(%s, c.id)",
            (slug, viewer_id),
        )
        row = await cur.fetchone()
    if row is None:
        raise NotFound(f"category {slug!r}")
    return int(row[0])


async def threads(conn: Conn, category: int, *, after: ThreadPlace | None, limit: int) -> list[Thread]:
    """A page of the category's threads: pinned first, then by last_post_at, newest first (then
    the newest thread first), `limit` of them after `after`."""
    async with conn.cursor(row_factory=class_row(Thread)) as cur:
        await cur.execute(
            """
            SELECT o.* FROM tracktalk.thread_objects o
              JOIN forum_threads t ON t.id = o.id
             WHERE t.category_id = %(category)s
               AND (%(after_id)s::bigint IS NULL
                    OR (t.is_pinned, t.last_post_at, t.id) < (%(pinned)s::boolean, %(at)s::timestamptz, %(after_id)s))
             ORDER BY t.is_pinned DESC, t.last_post_at DESC, t.id DESC
             LIMIT %(limit)s
            """,
            {
                "category": category,
                "after_id": after.id if after else None,
                "pinned": after.is_pinned if after else None,
                "at": after.last_post_at if after else None,
                "limit": limit,
            },
        )
        return await cur.fetchall()


async def thread(conn: Conn, thread_id: int, viewer_id: int | None) -> Thread:
    """One thread as the viewer sees it (404 when it is gone, or in a category they may not see)."""
    async with conn.cursor(row_factory=class_row(Thread)) as cur:
        await cur.execute(
            "SELECT o.* FROM tracktalk.thread_objects o"
            " WHERE o.id = %s AND tracktalk.can_see_category(%s, o.category_id)",
            (thread_id, viewer_id),
        )
        found = await cur.fetchone()
    if found is None:
        raise NotFound(f"thread {thread_id}")
    return found


async def thread_access(
    conn: Conn, thread_id: int, viewer_id: int | None, *, lock: bool = False
) -> ThreadAccess:
    """The thread's author and lock, if the viewer may see it; 404 otherwise. `lock`: its row is
    locked to the end of the transaction (FOR NO KEY UPDATE, as the posts' trigger locks it to
    count them), so that it cannot be locked between the check and the post."""
    async with conn.cursor(row_factory=class_row(ThreadAccess)) as cur:
        await cur.execute(
            "SELECT t.id, t.user_id, t.is_locked FROM forum_threads t"
            " WHERE t.id = %s AND tracktalk.can_see_category(%s, t.category_id)"
            + (" FOR NO KEY UPDATE OF t" if lock else ""),
            (thread_id, viewer_id),
        )
        found = await cur.fetchone()
    if found is None:
        raise NotFound(f"thread {thread_id}")
    return found


async def insert_thread(conn: Conn, category: int, user_id: int, title: str) -> int:
    """Start a thread; return its id. The triggers make it go live."""
    async with conn.cursor(row_factory=tuple_row) as cur:
        try:
            await cur.execute(
                "INSERT INTO forum_threads (category_id, user_id, title) VALUES (%s, %s, %s) RETURNING id",
                (category, user_id, title),
            )
        except ForeignKeyViolation:  # the category was deleted since the handler's check
            raise NotFound(f"category {category}") from None
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def update_thread(
    conn: Conn, thread_id: int, *, title: str | None, is_locked: bool | None, is_pinned: bool | None
) -> None:
    """Change what is given of a thread's title, lock and pin (the triggers tell its sockets)."""
    await conn.execute(
        """
        UPDATE forum_threads
           SET title = coalesce(%s, title),
               is_locked = coalesce(%s, is_locked),
               is_pinned = coalesce(%s, is_pinned)
         WHERE id = %s
        """,
        (title, is_locked, is_pinned, thread_id),
    )


async def posts(
    conn: Conn, thread_id: int, viewer_id: int | None, *, after_id: int, limit: int
) -> list[Post]:
    """Posts of a thread in the order they were written, `limit` of them after `after_id`."""
    async with conn.cursor(row_factory=class_row(Post)) as cur:
        await cur.execute(
            _POSTS + " WHERE o.thread_id = %(thread)s AND o.id > %(after)s ORDER BY o.id LIMIT %(limit)s",
            {"viewer": viewer_id, "thread": thread_id, "after": after_id, "limit": limit},
        )
        return await cur.fetchall()


async def post(conn: Conn, post_id: int, viewer_id: int | None) -> Post:
    """One post as the viewer sees it (404 when it is gone)."""
    async with conn.cursor(row_factory=class_row(Post)) as cur:
        await cur.execute(_POSTS + " WHERE o.id = %(id)s", {"viewer": viewer_id, "id": post_id})
        found = await cur.fetchone()
    if found is None:
        raise NotFound(f"post {post_id}")
    return found


async def post_access(conn: Conn, post_id: int, viewer_id: int | None) -> PostAccess:
    """The post's author and thread, if the viewer may see its category; 404 otherwise."""
    async with conn.cursor(row_factory=class_row(PostAccess)) as cur:
        await cur.execute(
            """
            SELECT p.id, p.thread_id, p.user_id, t.is_locked AS thread_is_locked
              FROM forum_posts p
              JOIN forum_threads t ON t.id = p.thread_id
             WHERE p.id = %s AND tracktalk.can_see_category(%s, t.category_id)
            """,
            (post_id, viewer_id),
        )
        found = await cur.fetchone()
    if found is None:
        raise NotFound(f"post {post_id}")
    return found


async def parent_thread(conn: Conn, parent_id: int) -> int | None:
    """The thread of post `parent_id`, None when there is no such post."""
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute("SELECT thread_id FROM forum_posts WHERE id = %s", (parent_id,))
        row = await cur.fetchone()
    return int(row[0]) if row else None


async def insert_post(conn: Conn, thread_id: int, user_id: int, content: str, parent_id: int | None) -> int:
    """Write a post; return its id. The triggers count it and make it go live."""
    async with conn.cursor(row_factory=tuple_row) as cur:
        try:
            await cur.execute(
                "INSERT INTO forum_posts (thread_id, user_id, parent_id, content) VALUES (%s, %s, %s, %s)"
                " RETURNING id",
                (thread_id, user_id, parent_id, content),
            )
        except ForeignKeyViolation as exc:
            if exc.diag.constraint_name != "forum_posts_parent_same_thread_fkey":
                raise
            raise Unprocessable(f"parent_id: post {parent_id} was just deleted") from None
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def update_post(conn: Conn, post_id: int, content: str) -> None:
    """Replace a post's content (the trigger marks it edited)."""
    await conn.execute("UPDATE forum_posts SET content = %s WHERE id = %s", (content, post_id))


async def delete_post(conn: Conn, post_id: int) -> None:
    """Delete a post (its replies stay, without their parent)."""
    await conn.execute("DELETE FROM forum_posts WHERE id = %s", (post_id,))


async def set_like(conn: Conn, post_id: int, user_id: int, *, liked: bool) -> PostLikeState:
    """Like or unlike (idempotent: a second like or unlike changes nothing) and say the result."""
    if liked:
        try:
            await conn.execute(
                "INSERT INTO forum_post_likes (post_id, user_id) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                (post_id, user_id),
            )
        except ForeignKeyViolation:  # the post was deleted since the handler's check
            raise NotFound(f"post {post_id}") from None
    else:
        await conn.execute(
            "DELETE FROM forum_post_likes WHERE post_id = %s AND user_id = %s", (post_id, user_id)
        )
    async with conn.cursor(row_factory=class_row(PostLikeState)) as cur:
        await cur.execute(
            """
            SELECT p.id AS post_id,
                   coalesce(s.likes, 0) AS like_count,
                   EXISTS (SELECT 1 FROM forum_post_likes l
                            WHERE l.post_id = p.id AND l.user_id = %s) AS user_has_liked
              FROM forum_posts p LEFT JOIN tracktalk.post_stats s ON s.post_id = p.id
             WHERE p.id = %s
            """,
            (user_id, post_id),
        )
        state = await cur.fetchone()
    if state is None:
        raise NotFound(f"post {post_id}")
    return state
