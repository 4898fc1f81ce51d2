"""What a creator's moderation_words cost a comment (issue 20): single-row INSERTs into `comments`
(with the triggers) on one track whose creator has no words, 10 words, then 10,000 words.

    .venv/bin/python -m bench.moderation_words            (embedded PostgreSQL, or DATABASE_URL)

Each phase runs ROUNDS times, alternating, so that a machine whose speed drifts shifts them alike;
each round times INSERTS sequential autocommit INSERTs of a 40-word comment that holds none of the
words (the common case: every word of the comment is looked up) from one connection, and prints
the median time per INSERT of each phase. The comment is held when it does hold a word: checked
once at the end.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg

from app.data.db import migrate

ROUNDS = 3
INSERTS = 1000
CONTENT = " ".join(f"word{i} and the synth" for i in range(10))
"""40 words, none a moderation word."""


def _seed(conn: psycopg.Connection[tuple[object, ...]]) -> tuple[int, int, str]:
    """A creator with an album and a track, and a listener: (creator, listener, track)."""
    row = conn.execute(
        "WITH c AS (INSERT INTO users (username, is_creator) VALUES ('words-creator', true) RETURNING id),"
        " l AS (INSERT INTO users (username) VALUES ('words-listener') RETURNING id),"
        " a AS (INSERT INTO albums (title, created_by_id) SELECT 'Words', id FROM c RETURNING id, created_by_id),"
        " t AS (INSERT INTO tracks (id, album_id, title) SELECT 'words-track', id, 'Words' FROM a RETURNING id)"
        " SELECT a.created_by_id, l.id, t.id FROM a, l, t"
    ).fetchone()
    assert row is not None
    return int(str(row[0])), int(str(row[1])), str(row[2])


def _set_words(conn: psycopg.Connection[tuple[object, ...]], creator: int, count: int) -> None:
    conn.execute("DELETE FROM moderation_words WHERE creator_id = %s", (creator,))
    if count:
        conn.execute(
            "INSERT INTO moderation_words (creator_id, word) SELECT %s, 'banned' || g FROM generate_series(1, %s) g",
            (creator, count),
        )
    conn.execute("ANALYZE moderation_words")


def _round(conn: psycopg.Connection[tuple[object, ...]], track: str, user: int) -> float:
    """Seconds per INSERT, over INSERTS of them."""
    start = time.perf_counter()
    for _ in range(INSERTS):
        conn.execute(
            "INSERT INTO comments (track_id, user_id, content, timestamp) VALUES (%s, %s, %s, 1)",
            (track, user, CONTENT),
        )
    return (time.perf_counter() - start) / INSERTS


@contextlib.contextmanager
def _database() -> Iterator[str]:
    """A migrated database: DATABASE_URL's, or a scratch embedded server's (only this script's
    dependencies: bench/lib needs the bench extras)."""
    if url := os.environ.get("DATABASE_URL"):
        migrate(url)
        yield url
        return
    from app.dev.embedded import EmbeddedPostgres

    root = Path(tempfile.mkdtemp(prefix="tracktalk-words-"))
    root.chmod(0o755)
    try:
        with EmbeddedPostgres(root, fast=True) as server:
            with psycopg.connect(server.url, autocommit=True) as conn:
                conn.execute("CREATE DATABASE words")
            migrate(server.url_for("words"))
            yield server.url_for("words")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    with _database() as url, psycopg.connect(url, autocommit=True) as conn:
        creator, user, track = _seed(conn)
        times: dict[int, list[float]] = {0: [], 10: [], 10_000: []}
        _round(conn, track, user)  # warm up: plans, caches
        for _ in range(ROUNDS):
            for count, seconds in times.items():
                _set_words(conn, creator, count)
                seconds.append(_round(conn, track, user))
        held = conn.execute(
            "INSERT INTO comments (track_id, user_id, content) VALUES (%s, %s, 'that BANNED9999 riff')"
            " RETURNING held_at IS NOT NULL",
            (track, user),
        ).fetchone()
        assert held == (True,), "the 10,000th word did not hold the comment"
        base = statistics.median(times[0])
        print(f"{INSERTS} single-row INSERTs x {ROUNDS} rounds, a 40-word comment; median per INSERT:")
        for count, seconds in times.items():
            median = statistics.median(seconds)
            print(
                f"  {count:>6} words: {median * 1e6:7.0f} us  ({(median / base - 1) * 100:+.1f} % against none)"
            )


if __name__ == "__main__":
    main()
