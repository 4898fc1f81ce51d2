"""Moderation (issue 20) in SQL: marks on comments, reports, the queue, track settings, mutes.

Every write here is a row change that the triggers of sql/triggers.sql make live, exactly as the
same change made by any SQL client. Permission checks are the handlers'; these only read and write.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from psycopg.errors import ForeignKeyViolation
from psycopg.rows import class_row, tuple_row

from app.data.comments import SELECT_COMMENTS
from app.data.db import Conn
from app.problems import Conflict, NotFound
from app.wire import Comment, QueueItem, Report, TrackSettingsState

Mark = Literal["pin", "unpin", "heart", "unheart", "hide", "unhide", "approve"]

_MARKS: dict[Mark, str] = {
    "pin": "UPDATE comments SET pinned_at = coalesce(pinned_at, now()) WHERE id = %(id)s",
    "unpin": "UPDATE comments SET pinned_at = NULL WHERE id = %(id)s AND pinned_at IS NOT NULL",
    "heart": "UPDATE comments SET hearted_at = coalesce(hearted_at, now()) WHERE id = %(id)s",
    "unheart": "UPDATE comments SET hearted_at = NULL WHERE id = %(id)s AND hearted_at IS NOT NULL",
    # Hiding a held comment decides its review: hidden, no longer held (it leaves the queue).
    "hide": """
        UPDATE comments
           SET hidden_at = coalesce(hidden_at, now()),
               hidden_by = CASE WHEN hidden_at IS NULL THEN %(by)s ELSE hidden_by END,
               held_at = NULL
         WHERE id = %(id)s AND (hidden_at IS NULL OR held_at IS NOT NULL)
    """,
    "unhide": "UPDATE comments SET hidden_at = NULL, hidden_by = NULL WHERE id = %(id)s AND hidden_at IS NOT NULL",
    # Its reports go first (they send nothing), so that the event of the approval carries none.
    "approve": """
        WITH cleared AS (DELETE FROM comment_reports WHERE comment_id = %(id)s)
        UPDATE comments SET held_at = NULL, hidden_at = NULL, hidden_by = NULL
         WHERE id = %(id)s AND (held_at IS NOT NULL OR hidden_at IS NOT NULL)
    """,
}
"""Each action as one statement (its triggers make it live: comment_pinned, comment_hearted,
comment_hidden / comment_moderated / comment_restored)."""


@dataclass(frozen=True, slots=True)
class Target:
    """A comment a moderation route acts on, as the caller may see it."""

    id: int
    track_id: str
    user_id: int
    moderator: bool
    """The caller moderates the comment's track (its album's creator, or the team)."""
    deleted: bool
    """A tombstone: deleted, kept (empty) for its replies."""


async def target(conn: Conn, comment_id: int, viewer_id: int) -> Target:
    """The comment, if the viewer may see it (its track; and, hidden or held, its author and the
    track's moderators only); 404 otherwise."""
    async with conn.cursor(row_factory=class_row(Target)) as cur:
        await cur.execute(
            """
            SELECT c.id, c.track_id, c.user_id, m.moderator, c.deleted_at IS NOT NULL AS deleted
              FROM comments c
             CROSS JOIN LATERAL (SELECT tracktalk.moderates_track(%(viewer)s, c.track_id) AS moderator) m
             WHERE c.id = %(id)s AND tracktalk.can_see(%(viewer)s, c.track_id)
               AND (c.hidden_at IS NULL AND c.held_at IS NULL OR c.user_id = %(viewer)s OR m.moderator)
            """,
            {"id": comment_id, "viewer": viewer_id},
        )
        found = await cur.fetchone()
    if found is None:
        raise NotFound(f"comment {comment_id}")
    return found


async def mark(conn: Conn, comment_id: int, action: Mark, by: int) -> None:
    """Pin, heart, hide or approve a comment (or take it back); nothing when it is so already."""
    await conn.execute(_MARKS[action], {"id": comment_id, "by": by})


async def moderates_track(conn: Conn, track_id: str, viewer_id: int) -> bool:
    """Does the viewer moderate the track (its album's creator, or the team)?"""
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute("SELECT tracktalk.moderates_track(%s, %s)", (viewer_id, track_id))
        row = await cur.fetchone()
    return bool(row and row[0])


async def report(conn: Conn, comment_id: int, user_id: int, reason: str) -> Report:
    """Report a comment, once per user (Conflict for a second); the triggers hold it at
    tracktalk.settings.reports_to_hide distinct reports."""
    async with conn.cursor(row_factory=class_row(Report)) as cur:
        try:
            await cur.execute(
                """
                WITH made AS (
                    INSERT INTO comment_reports (comment_id, user_id, reason) VALUES (%s, %s, %s)
                    ON CONFLICT ON CONSTRAINT comment_reports_once DO NOTHING
                    RETURNING comment_id, user_id, reason, created_at
                )
                SELECT m.comment_id, m.user_id, u.username, m.reason, m.created_at
                  FROM made m JOIN users u ON u.id = m.user_id
                """,
                (comment_id, user_id, reason),
            )
        except ForeignKeyViolation:  # the comment was deleted since the handler's check
            raise NotFound(f"comment {comment_id}") from None
        made = await cur.fetchone()
    if made is None:
        raise Conflict(f"you reported comment {comment_id} already: a comment is reported once per user")
    return made


async def queue(conn: Conn, viewer_id: int, track_id: str | None, limit: int) -> list[QueueItem]:
    """Held comments, and reported ones that are not hidden, of the tracks the viewer moderates
    (or of `track_id` only), oldest first, each with its reports."""
    async with conn.cursor(row_factory=class_row(_QueueRow)) as cur:
        await cur.execute(
            """
            WITH candidates AS (
                SELECT c.id FROM comments c WHERE c.held_at IS NOT NULL
                UNION
                SELECT r.comment_id FROM comment_reports r
            )
            SELECT o.id FROM candidates x
              JOIN tracktalk.comment_objects o ON o.id = x.id
              JOIN tracks t ON t.id = o.track_id
              JOIN albums a ON a.id = t.album_id
             WHERE (a.created_by_id = %(viewer)s OR EXISTS (SELECT 1 FROM users u WHERE u.id = %(viewer)s AND u.is_team))
               AND (%(track)s::text IS NULL OR o.track_id = %(track)s::text)
               AND (o.held OR NOT o.hidden)
             ORDER BY o.created_at, o.id
             LIMIT %(limit)s
            """,
            {"viewer": viewer_id, "track": track_id, "limit": limit},
        )
        ids = [row.id for row in await cur.fetchall()]
    if not ids:
        return []
    async with conn.cursor(row_factory=class_row(Comment)) as cur:
        await cur.execute(
            SELECT_COMMENTS + " CROSS JOIN (SELECT true AS marks) v WHERE o.id = ANY(%(ids)s)",
            {"viewer": viewer_id, "ids": ids},
        )
        found = {comment.id: comment for comment in await cur.fetchall()}
    async with conn.cursor(row_factory=class_row(Report)) as cur:
        await cur.execute(
            """
            SELECT r.comment_id, r.user_id, u.username, r.reason, r.created_at
              FROM comment_reports r JOIN users u ON u.id = r.user_id
             WHERE r.comment_id = ANY(%s)
             ORDER BY r.id
            """,
            (ids,),
        )
        reports: dict[int, list[Report]] = {}
        for made in await cur.fetchall():
            reports.setdefault(made.comment_id, []).append(made)
    return [QueueItem(comment=found[i], reports=reports.get(i, [])) for i in ids if i in found]


@dataclass(frozen=True, slots=True)
class _QueueRow:
    id: int


async def set_track_settings(
    conn: Conn, track_id: str, comments_enabled: bool | None, slow_mode_seconds: int | None
) -> TrackSettingsState:
    """Change a track's settings (what is None stays); the trigger sends track_settings."""
    async with conn.cursor(row_factory=class_row(TrackSettingsState)) as cur:
        await cur.execute(
            """
            UPDATE tracks
               SET comments_enabled = coalesce(%s, comments_enabled),
                   slow_mode_seconds = coalesce(%s, slow_mode_seconds)
             WHERE id = %s
            RETURNING id AS track_id, comments_enabled, slow_mode_seconds
            """,
            (comments_enabled, slow_mode_seconds, track_id),
        )
        state = await cur.fetchone()
    if state is None:
        raise NotFound(f"track {track_id!r}")
    return state


@dataclass(frozen=True, slots=True)
class PostingRules:
    """What a new comment on a track must pass, for its author."""

    comments_enabled: bool
    moderator: bool


async def posting_rules(conn: Conn, track_id: str, user_id: int) -> PostingRules:
    """Whether the track takes comments, and whether the user moderates it. (Slow mode is the
    comments' insert trigger's, for every writer: comments.insert raises its 429.)"""
    async with conn.cursor(row_factory=class_row(PostingRules)) as cur:
        await cur.execute(
            """
            SELECT t.comments_enabled, tracktalk.moderates_track(%(user)s, t.id) AS moderator
              FROM tracks t WHERE t.id = %(track)s
            """,
            {"user": user_id, "track": track_id},
        )
        rules = await cur.fetchone()
    if rules is None:
        raise NotFound(f"track {track_id!r}")
    return rules


async def mute(conn: Conn, creator_id: int, user_id: int, *, muted: bool) -> None:
    """Mute (or unmute) a user on all of the creator's tracks; idempotent. 404 for no such user."""
    if muted:
        try:
            await conn.execute(
                "INSERT INTO muted_users (creator_id, user_id) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                (creator_id, user_id),
            )
        except ForeignKeyViolation:
            raise NotFound(f"user {user_id}") from None
    else:
        cur = await conn.execute("SELECT 1 FROM users WHERE id = %s", (user_id,))
        if await cur.fetchone() is None:
            raise NotFound(f"user {user_id}")
        await conn.execute(
            "DELETE FROM muted_users WHERE creator_id = %s AND user_id = %s", (creator_id, user_id)
        )


async def is_creator(conn: Conn, user_id: int) -> bool:
    """A creator (users.is_creator, or the creator of an album): may mute users."""
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(
            "SELECT EXISTS (SELECT 1 FROM users WHERE id = %(u)s AND is_creator)"
            " OR EXISTS (SELECT 1 FROM albums WHERE created_by_id = %(u)s)",
            {"u": user_id},
        )
        row = await cur.fetchone()
    return bool(row and row[0])
