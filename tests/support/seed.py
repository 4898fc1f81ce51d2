"""Seed data: the users, their tokens and the tracks most tests start from."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import psycopg

from app.auth.hs256 import issue_token
from tests.support.processes import SECRET


@dataclass(frozen=True)
class World:
    """Seed data: users by name, their tokens, tracks."""

    users: dict[str, int]
    tokens: dict[str, str]
    public: str = "t-public"
    other: str = "t-other"
    private: str = "t-private"
    timed: str = "t-timed"

    def auth(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[name]}"}


def seed(database_url: str) -> World:
    """carol (creator of the album), tina (team), alice, bob, dave; four tracks."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        users = {}
        for name, creator, team in [
            ("carol", True, False),
            ("tina", False, True),
            ("alice", False, False),
            ("bob", False, False),
            ("dave", False, False),
        ]:
            row = conn.execute(
                "INSERT INTO users (username, is_creator, is_team) VALUES (%s, %s, %s) RETURNING id",
                (name, creator, team),
            ).fetchone()
            assert row is not None
            users[name] = int(row[0])
        album = conn.execute(
            "INSERT INTO albums (title, created_by_id) VALUES ('Album', %s) RETURNING id", (users["carol"],)
        ).fetchone()
        assert album is not None
        conn.execute(
            """
            INSERT INTO tracks (id, album_id, title, duration_seconds, is_private) VALUES
              ('t-public', %(a)s, 'Public', NULL, false),
              ('t-other', %(a)s, 'Other', NULL, false),
              ('t-private', %(a)s, 'Private', 100, true),
              ('t-timed', %(a)s, 'Timed', 60, false)
            """,
            {"a": album[0]},
        )
    tokens = {name: issue_token(SECRET, uid, 3600) for name, uid in users.items()}
    return World(users=users, tokens=tokens)


def new_track(db_url: str, private: bool = False, track_id: str | None = None) -> str:
    """A track on the seed album (carol's), public unless `private`: a fresh one, or `track_id`
    (a deleted track made again). Its id."""
    track_id = track_id or f"t-{uuid.uuid4().hex[:10]}"
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO tracks (id, album_id, title, is_private)"
            " SELECT %s, id, 'New', %s FROM albums ORDER BY id LIMIT 1",
            (track_id, private),
        )
    return track_id


MODERATION_ACTIONS = [
    ("POST", "pin"),
    ("DELETE", "pin"),
    ("POST", "heart"),
    ("DELETE", "heart"),
    ("POST", "hide"),
    ("DELETE", "hide"),
    ("POST", "approve"),
]
"""The moderators' actions on a comment: (method, the last part of /api/comments/{comment_id}/…)."""
