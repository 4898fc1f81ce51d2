"""The demo data loader: users, tracks with real audio, idempotence, and what the triggers made of it."""

from __future__ import annotations

import io
import wave
from collections.abc import Callable

import psycopg
import pytest
from psycopg import sql

from app.dev.demo import DemoSummary, load_demo

COUNTED_TABLES = ("users", "albums", "tracks", "comments", "comment_likes", "track_likes", "track_shares")


@pytest.fixture(scope="module")
def demo_db_url(db_url: str) -> str:
    """The module's own database (schema applied), for the demo alone."""
    return db_url


@pytest.fixture(scope="module")
def loaded(demo_db_url: str) -> DemoSummary:
    """The demo, loaded once into the scratch database."""
    return load_demo(demo_db_url)


def _counts(url: str) -> dict[str, int]:
    """Row counts of the tables the demo writes, and of what the triggers write."""
    counts: dict[str, int] = {}
    with psycopg.connect(url) as conn:
        for table in (*COUNTED_TABLES, "notifications", "tracktalk.track_audio", "tracktalk.events"):
            row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.SQL(table))).fetchone()
            assert row is not None
            counts[table] = int(row[0])
    return counts


def test_load_demo_returns_users_and_tracks(demo_db_url: str, loaded: DemoSummary) -> None:
    assert not loaded.already_loaded
    assert set(loaded.users) == {"carol", "tina", "alice", "bob", "dave"}
    assert len(set(loaded.users.values())) == 5
    assert loaded.track_ids == ["sunrise", "night-drive", "b-side"]
    assert 10 <= loaded.comments <= 16
    with psycopg.connect(demo_db_url) as conn:
        users = conn.execute("SELECT username, is_creator, is_team FROM users").fetchall()
        tracks = conn.execute(
            "SELECT t.id, t.is_private, t.audio_url, a.created_by_id, a.title"
            " FROM tracks t JOIN albums a ON a.id = t.album_id ORDER BY t.id"
        ).fetchall()
        comments = conn.execute("SELECT count(*) FROM comments").fetchone()
    flags = {name: (is_creator, is_team) for name, is_creator, is_team in users}
    assert flags["carol"] == (True, False)
    assert flags["tina"] == (False, True)
    assert flags["alice"] == flags["bob"] == flags["dave"] == (False, False)
    assert {t[0]: t[1] for t in tracks} == {"sunrise": False, "night-drive": False, "b-side": True}
    assert all(t[2] == f"/api/tracks/{t[0]}/audio" for t in tracks)
    assert {t[3] for t in tracks} == {loaded.users["carol"]}
    assert comments == (loaded.comments,)


def test_audio_is_a_wav_as_long_as_its_track(demo_db_url: str, loaded: DemoSummary) -> None:
    with psycopg.connect(demo_db_url) as conn:
        rows = conn.execute(
            "SELECT t.id, t.duration_seconds, a.content_type, a.data"
            " FROM tracks t JOIN tracktalk.track_audio a ON a.track_id = t.id"
        ).fetchall()
    assert sorted(r[0] for r in rows) == sorted(loaded.track_ids)
    for track_id, duration, content_type, data in rows:
        assert content_type == "audio/wav"
        with wave.open(io.BytesIO(bytes(data)), "rb") as audio:
            assert (audio.getnchannels(), audio.getsampwidth(), audio.getframerate()) == (1, 2, 22050)
            seconds = audio.getnframes() / audio.getframerate()
            frames = audio.readframes(audio.getnframes())
        assert 20 <= duration <= 40, track_id
        assert abs(seconds - duration) < 0.1, track_id
        assert frames.strip(b"\x00"), f"{track_id} is silent"


def test_comments_sit_within_their_tracks(demo_db_url: str, loaded: DemoSummary) -> None:
    with psycopg.connect(demo_db_url) as conn:
        outside = conn.execute(
            "SELECT c.id FROM comments c JOIN tracks t ON t.id = c.track_id"
            " WHERE c.timestamp > t.duration_seconds"
        ).fetchall()
        replies = conn.execute("SELECT count(*) FROM comments WHERE parent_id IS NOT NULL").fetchone()
        private_writers = conn.execute(
            "SELECT DISTINCT u.username FROM comments c JOIN users u ON u.id = c.user_id"
            " WHERE c.track_id = 'b-side' ORDER BY 1"
        ).fetchall()
    assert outside == []
    assert replies is not None and replies[0] >= 3
    assert private_writers == [("carol",), ("tina",)]


def test_load_demo_twice_writes_nothing(demo_db_url: str, loaded: DemoSummary) -> None:
    before = _counts(demo_db_url)
    again = load_demo(demo_db_url)
    assert again.already_loaded
    assert again.users == loaded.users
    assert again.track_ids == loaded.track_ids
    assert again.comments == loaded.comments
    assert _counts(demo_db_url) == before


def test_triggers_notified_mentions_and_replies(demo_db_url: str, loaded: DemoSummary) -> None:
    with psycopg.connect(demo_db_url) as conn:
        notes = conn.execute(
            "SELECT u.username, n.kind, a.username, n.track_id"
            " FROM notifications n JOIN users u ON u.id = n.user_id JOIN users a ON a.id = n.actor_id"
        ).fetchall()
    assert ("bob", "mention", "alice", "sunrise") in notes
    assert ("carol", "mention", "tina", "b-side") in notes
    assert ("alice", "reply", "carol", "sunrise") in notes
    assert any(kind == "comment_like" for _, kind, _, _ in notes)
    # Listeners never hear about the private track.
    assert not [n for n in notes if n[3] == "b-side" and n[0] not in {"carol", "tina"}]


def test_track_state_counters_equal_row_counts(demo_db_url: str, loaded: DemoSummary) -> None:
    with psycopg.connect(demo_db_url) as conn:
        rows = conn.execute(
            "SELECT s.track_id, s.comments, s.likes, s.shares,"
            " (SELECT t.last_seq FROM tracktalk.topic_state t WHERE t.topic = 'track:' || s.track_id),"
            " (SELECT count(*) FROM comments c WHERE c.track_id = s.track_id),"
            " (SELECT count(*) FROM track_likes l WHERE l.track_id = s.track_id),"
            " (SELECT count(*) FROM track_shares h WHERE h.track_id = s.track_id),"
            " (SELECT count(*) FROM tracktalk.events e WHERE e.topic = 'track:' || s.track_id)"
            " FROM tracktalk.track_state s ORDER BY s.track_id"
        ).fetchall()
        stats = conn.execute(
            "SELECT s.likes, (SELECT count(*) FROM comment_likes l WHERE l.comment_id = c.id)"
            " FROM comments c LEFT JOIN tracktalk.comment_stats s ON s.comment_id = c.id"
        ).fetchall()
    assert sorted(r[0] for r in rows) == sorted(loaded.track_ids)
    for track_id, comments, likes, shares, last_seq, *counted in rows:
        assert [comments, likes, shares] == counted[:3], track_id
        assert last_seq == counted[3] > 0, track_id
    assert sum(r[1] for r in rows) == loaded.comments
    assert sum(r[3] for r in rows) == 1
    assert all((likes or 0) == counted for likes, counted in stats)
    assert sum(counted for _, counted in stats) >= 5


def test_the_forum_has_a_team_only_category_a_pinned_locked_welcome_and_a_lively_thread(
    demo_db_url: str, loaded: DemoSummary
) -> None:
    assert loaded.forum_threads == 4
    with psycopg.connect(demo_db_url) as conn:
        categories = conn.execute("SELECT slug, is_private FROM forum_categories ORDER BY id").fetchall()
        threads = conn.execute(
            "SELECT t.title, t.is_pinned, t.is_locked, t.post_count, t.last_post_at,"
            " (SELECT count(*) FROM forum_posts p WHERE p.thread_id = t.id),"
            " (SELECT max(created_at) FROM forum_posts p WHERE p.thread_id = t.id)"
            " FROM forum_threads t ORDER BY t.id"
        ).fetchall()
        likes = conn.execute(
            "SELECT sum(likes), (SELECT count(*) FROM forum_post_likes) FROM tracktalk.post_stats"
        ).fetchone()
        notes = conn.execute(
            "SELECT u.username, n.kind, a.username, th.title FROM notifications n"
            " JOIN users u ON u.id = n.user_id JOIN users a ON a.id = n.actor_id"
            " JOIN forum_threads th ON th.id = n.thread_id"
        ).fetchall()
    assert categories == [("general", False), ("feedback", False), ("backstage", True)]
    assert threads[0][:3] == ("Welcome: read me first", True, True)
    lively = threads[1]
    assert lively[0] == "Your favourite moment on Sunrise?" and lively[3] == lively[5] == 8
    for title, _, _, post_count, last_post_at, posts, newest in threads:
        assert (post_count, last_post_at) == (posts, newest), title
    assert likes is not None and likes[0] == likes[1] == 9
    assert ("alice", "post_mention", "dave", "Your favourite moment on Sunrise?") in notes
    assert ("alice", "post_reply", "bob", "Your favourite moment on Sunrise?") in notes
    # Nobody off the team hears of the backstage (not even carol, whom it mentions).
    assert not [n for n in notes if n[3] == "Deluxe edition: track list"]


def test_a_demo_loaded_before_the_forum_gets_the_forum(new_database: Callable[[], str]) -> None:
    url = new_database()
    load_demo(url)
    with psycopg.connect(url) as conn:
        conn.execute("DELETE FROM forum_categories")
    again = load_demo(url)
    assert again.already_loaded and again.forum_threads == 4
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM forum_threads").fetchone() == (4,)
    assert load_demo(url).forum_threads == 4  # and once only
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM forum_threads").fetchone() == (4,)
