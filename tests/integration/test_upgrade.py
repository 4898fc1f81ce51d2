"""`tracktalk migrate` by version: a database made by an older version's SQL (tests/integration/
old_schemas/) takes the steps of sql/upgrade/ above its version, then sql/schema.sql and
sql/triggers.sql, and ends with the catalog of a database made fresh; migrating again changes
nothing."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from app.data.db import SCHEMA_VERSION
from app.dev.embedded import find_bindir
from tests.support.processes import ROOT

OLD_SCHEMAS = Path(__file__).resolve().parent / "old_schemas"


def catalog(url: str) -> str:
    """The database's schema as pg_dump writes it (tables, columns, constraints, indexes, views,
    functions, triggers, grants), without what differs between two dumps of the same schema."""
    bindir = find_bindir()
    assert bindir is not None
    done = subprocess.run(
        [str(bindir / "pg_dump"), "--schema-only", f"--dbname={url}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    kept = [
        line
        for line in done.stdout.splitlines()
        if line.strip()
        and not line.startswith(("--", "SET ", "SELECT pg_catalog.set_config", "\\restrict", "\\unrestrict"))
    ]
    return "\n".join(kept)


def tracktalk_migrate(url: str) -> str:
    """`tracktalk migrate` against `url`, as a DBA runs it; what it printed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKTALK_")}
    done = subprocess.run(
        [sys.executable, "-m", "app", "migrate"],
        cwd=ROOT,
        env={**env, "DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def old_database(make_empty: Callable[[], str], version: int) -> str:
    """An empty database given version `version`'s SQL, and a little of everything in it."""
    url = make_empty()
    with psycopg.connect(url) as conn:
        for name in ("schema.sql", "triggers.sql"):
            conn.execute((OLD_SCHEMAS / f"v{version}" / name).read_text().encode())
        found = conn.execute("SELECT version FROM tracktalk.schema_version").fetchone()
        assert found == (version,)
        conn.execute(
            "INSERT INTO users (id, username, is_creator) VALUES (1, 'carol', true), (2, 'alice', false)"
        )
        conn.execute("INSERT INTO albums (id, title, created_by_id) VALUES (1, 'A', 1)")
        conn.execute("INSERT INTO tracks (id, album_id, title) VALUES ('t1', 1, 'T'), ('gone', 1, 'G')")
        conn.execute(
            "INSERT INTO comments (track_id, user_id, content, timestamp) VALUES ('t1', 2, 'hi @carol', 1)"
        )
        conn.execute("INSERT INTO track_likes (track_id, user_id) VALUES ('t1', 2)")
        conn.execute("DELETE FROM tracks WHERE id = 'gone'")
    return url


@pytest.fixture(scope="module")
def empty_database(pg) -> Callable[[], str]:  # type: ignore[no-untyped-def]
    """Make an empty database (not from the migrated template); dropped with the server."""

    def make() -> str:
        name = f"u_{os.urandom(6).hex()}"
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return str(pg.url_for(name))

    return make


@pytest.mark.parametrize("version", [6, 5, 4, 2])
def test_an_old_database_upgraded_by_migrate_has_the_catalog_of_a_fresh_one(
    version: int, empty_database: Callable[[], str], new_database: Callable[[], str]
) -> None:
    fresh = empty_database()
    tracktalk_migrate(fresh)
    old = old_database(empty_database, version)
    assert f"schema version {SCHEMA_VERSION} applied" in tracktalk_migrate(old)
    assert catalog(old) == catalog(fresh)
    assert catalog(new_database()) == catalog(fresh)  # the template the suite copies: made fresh too
    with psycopg.connect(old) as conn:
        assert conn.execute("SELECT count(*) FROM comments").fetchone() == (1,)
        assert conn.execute(
            "SELECT comments, likes FROM tracktalk.track_state WHERE track_id = 't1'"
        ).fetchone() == (
            1,
            1,
        )
        assert conn.execute("SELECT notification_retention FROM tracktalk.settings").fetchone() is not None
        mentioned = conn.execute("SELECT user_id FROM tracktalk.comment_mentions").fetchall()
        assert mentioned == [(1,)]


def test_a_version_5_log_becomes_the_log_of_the_tracks_topics_and_numbering_goes_on(
    empty_database: Callable[[], str],
) -> None:
    url = old_database(empty_database, 5)
    with psycopg.connect(url) as conn:
        events = conn.execute(
            "SELECT seq, tag, prev_tag, message::text FROM tracktalk.events ORDER BY seq"
        ).fetchall()
        numbering = conn.execute(
            "SELECT track_id, last_seq, last_tag, prev_tag FROM tracktalk.track_state"
        ).fetchall()
    assert [seq for seq, *_ in events] == [1, 2]
    tracktalk_migrate(url)
    with psycopg.connect(url) as conn:
        moved = conn.execute(
            "SELECT topic, seq, tag, prev_tag, message::text, size FROM tracktalk.events ORDER BY seq"
        ).fetchall()
        assert moved == [("track:t1", *event, len(event[3].encode())) for event in events]
        assert sorted(conn.execute("SELECT * FROM tracktalk.topic_state").fetchall()) == sorted(
            ("track:" + track, *rest) for track, *rest in numbering
        )
        conn.execute(
            "INSERT INTO comments (track_id, user_id, content, timestamp) VALUES ('t1', 2, 'after', 2)"
        )
        after = conn.execute("SELECT seq, prev_tag FROM tracktalk.events WHERE seq > 2").fetchall()
    assert after == [(3, events[-1][1])]  # the next seq, and its prev is the last event moved


def test_migrate_twice_changes_nothing(empty_database: Callable[[], str]) -> None:
    url = old_database(empty_database, 4)
    tracktalk_migrate(url)

    def state() -> tuple[str, list[tuple[object, ...]]]:
        with psycopg.connect(url) as conn:
            rows = conn.execute(
                "SELECT track_id, comments, likes, shares FROM tracktalk.track_state ORDER BY track_id"
            ).fetchall()
            rows += conn.execute(
                "SELECT topic, last_seq, last_tag FROM tracktalk.topic_state ORDER BY 1"
            ).fetchall()
            rows += conn.execute("SELECT topic, seq, tag FROM tracktalk.events ORDER BY 1, 2").fetchall()
            rows += conn.execute("SELECT key FROM tracktalk.channel_key").fetchall()
        return catalog(url), rows

    before = state()
    tracktalk_migrate(url)
    assert state() == before


def test_a_version_6_inbox_keeps_its_notifications_and_takes_the_forums(
    empty_database: Callable[[], str],
) -> None:
    url = old_database(empty_database, 6)
    with psycopg.connect(url) as conn:
        before = conn.execute("SELECT id, user_id, kind, track_id, comment_id FROM notifications").fetchall()
    assert [kind for _, _, kind, _, _ in before] == ["mention"]
    tracktalk_migrate(url)
    with psycopg.connect(url) as conn:
        after = conn.execute(
            "SELECT id, user_id, kind, track_id, comment_id, thread_id, post_id FROM notifications"
        ).fetchall()
        assert after == [(*row, None, None) for row in before]
        conn.execute("INSERT INTO forum_categories (slug, title) VALUES ('general', 'General')")
        conn.execute("INSERT INTO forum_threads (category_id, user_id, title) VALUES (1, 1, 'T')")
        conn.execute("INSERT INTO forum_posts (thread_id, user_id, content) VALUES (1, 2, 'hi @carol')")
        told = conn.execute(
            "SELECT kind, track_id, thread_id FROM tracktalk.notification_objects ORDER BY id"
        ).fetchall()
        assert told == [("mention", "t1", None), ("post_mention", None, 1)]
        with pytest.raises(psycopg.errors.CheckViolation):  # about a track or a thread: not both, not neither
            conn.execute("INSERT INTO notifications (user_id, kind, actor_id) VALUES (1, 'post_reply', 2)")


def test_the_psql_lines_of_docs_dba_md_upgrade_a_version_4_database(
    empty_database: Callable[[], str],
) -> None:
    """docs/dba.md, "Applying the SQL by hand": its example for a database at version 4, run as
    written, upgrades one to the catalog of a fresh database (it once left out a step, and failed)."""
    text = (ROOT / "docs" / "dba.md").read_text(encoding="utf-8")
    block = text.split("# say it prints 4", 1)[1].split("```", 1)[0]
    files = re.findall(r"-f (\S+)", block)
    assert files[-2:] == ["sql/schema.sql", "sql/triggers.sql"], block
    fresh = empty_database()
    tracktalk_migrate(fresh)
    old = old_database(empty_database, 4)
    bindir = find_bindir()
    assert bindir is not None
    done = subprocess.run(
        [str(bindir / "psql"), old, "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction"]
        + [arg for name in files for arg in ("-f", name)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert catalog(old) == catalog(fresh)
