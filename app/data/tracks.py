"""Tracks: who may see them, their metrics, likes, shares and audio."""

from __future__ import annotations

from dataclasses import dataclass

from psycopg.rows import class_row, tuple_row

from app.bounds import MAX_TRACKS_LISTED
from app.data.db import Conn
from app.problems import NotFound
from app.wire import Track, TrackMetrics


@dataclass(frozen=True, slots=True)
class TrackAccess:
    """What a permission check needs to know of a track."""

    id: str
    duration_seconds: float | None
    creator_id: int


async def visible_track(conn: Conn, track_id: str, viewer_id: int | None) -> TrackAccess:
    """The track if `viewer_id` may see it; 404 otherwise (a private track does not exist for outsiders)."""
    async with conn.cursor(row_factory=class_row(TrackAccess)) as cur:
        await cur.execute(
            """
            SELECT t.id, t.duration_seconds, a.created_by_id AS creator_id
              FROM tracks t JOIN albums a ON a.id = t.album_id
             WHERE t.id = %s AND tracktalk.can_see(%s, t.id)
            """,
            (track_id, viewer_id),
        )
        track = await cur.fetchone()
    if track is None:
        raise NotFound(f"track {track_id!r}")
    return track


async def list_tracks(conn: Conn, viewer_id: int | None) -> list[Track]:
    """Every track the viewer may see, album by album."""
    async with conn.cursor(row_factory=class_row(Track)) as cur:
        await cur.execute(
            """
            SELECT t.id, t.title, t.album_id, a.title AS album_title, t.duration_seconds,
                   t.is_private, t.audio_url, a.created_by_id AS creator_id, t.comments_enabled,
                   t.slow_mode_seconds
              FROM tracks t JOIN albums a ON a.id = t.album_id
             WHERE tracktalk.can_see(%s, t.id)
             ORDER BY a.id, t.created_at, t.id
             LIMIT %s
            """,
            (viewer_id, MAX_TRACKS_LISTED),
        )
        return await cur.fetchall()


async def get_track(conn: Conn, track_id: str, viewer_id: int | None) -> Track:
    """One track the viewer may see (404 otherwise)."""
    async with conn.cursor(row_factory=class_row(Track)) as cur:
        await cur.execute(
            """
            SELECT t.id, t.title, t.album_id, a.title AS album_title, t.duration_seconds,
                   t.is_private, t.audio_url, a.created_by_id AS creator_id, t.comments_enabled,
                   t.slow_mode_seconds
              FROM tracks t JOIN albums a ON a.id = t.album_id
             WHERE t.id = %s AND tracktalk.can_see(%s, t.id)
            """,
            (track_id, viewer_id),
        )
        track = await cur.fetchone()
    if track is None:
        raise NotFound(f"track {track_id!r}")
    return track


async def metrics(conn: Conn, track_id: str, viewer_id: int | None) -> TrackMetrics:
    """The track's counters (kept by the triggers: no COUNT(*)) and whether the viewer liked it."""
    async with conn.cursor(row_factory=class_row(TrackMetrics)) as cur:
        await cur.execute(
            """
            SELECT s.track_id, s.likes, s.comments, s.shares,
                   EXISTS (SELECT 1 FROM track_likes l
                            WHERE l.track_id = s.track_id AND l.user_id = %s) AS user_has_liked
              FROM tracktalk.track_state s
             WHERE s.track_id = %s
            """,
            (viewer_id, track_id),
        )
        found = await cur.fetchone()
    return found or TrackMetrics(track_id=track_id, likes=0, comments=0, shares=0, user_has_liked=False)


async def like(conn: Conn, track_id: str, user_id: int) -> None:
    """Like the track (again: no change)."""
    await conn.execute(
        "INSERT INTO track_likes (track_id, user_id) VALUES (%s, %s) ON CONFLICT DO NOTHING",
        (track_id, user_id),
    )


async def unlike(conn: Conn, track_id: str, user_id: int) -> None:
    """Take the like back (none: no change)."""
    await conn.execute("DELETE FROM track_likes WHERE track_id = %s AND user_id = %s", (track_id, user_id))


async def share(conn: Conn, track_id: str, user_id: int) -> None:
    """Count a share."""
    await conn.execute("INSERT INTO track_shares (track_id, user_id) VALUES (%s, %s)", (track_id, user_id))


async def audio(conn: Conn, track_id: str) -> tuple[str, bytes] | None:
    """The content type and bytes of audio that tracktalk serves itself for the track."""
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(
            "SELECT content_type, data FROM tracktalk.track_audio WHERE track_id = %s", (track_id,)
        )
        row = await cur.fetchone()
    return (str(row[0]), bytes(row[1])) if row else None
