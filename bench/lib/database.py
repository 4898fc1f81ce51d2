"""The benchmark's database: a fresh one, seeded, and what it is asked while a scenario runs."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

import psutil
import psycopg

from app.auth.hs256 import issue_token
from app.data.db import migrate
from bench.lib.processes import cpu_seconds
from bench.lib.settings import RESULTS, SECRET


@dataclass
class World:
    url: str
    tracks: list[str]
    users: list[int]
    tokens: dict[int, str]
    commit_ts: bool
    """The server records commit timestamps (track_commit_timestamp): latency is measured from them."""
    postmaster: int | None = None


PLAIN_TABLE = """
CREATE TABLE IF NOT EXISTS bench_plain_comments (LIKE comments INCLUDING DEFAULTS INCLUDING CONSTRAINTS
                                                 INCLUDING INDEXES INCLUDING IDENTITY);
ALTER TABLE bench_plain_comments DROP CONSTRAINT IF EXISTS bench_plain_track_fk;
ALTER TABLE bench_plain_comments ADD CONSTRAINT bench_plain_track_fk
    FOREIGN KEY (track_id) REFERENCES tracks (id) ON DELETE CASCADE;
ALTER TABLE bench_plain_comments DROP CONSTRAINT IF EXISTS bench_plain_user_fk;
ALTER TABLE bench_plain_comments ADD CONSTRAINT bench_plain_user_fk
    FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE;
"""
"""The comments table without tracktalk's triggers (same columns, checks, indexes and foreign keys)."""


def seed(url: str, n_tracks: int, n_users: int) -> tuple[list[str], list[int]]:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO users (username, is_creator) VALUES ('bench-creator', true) RETURNING id"
        ).fetchone()
        assert row is not None
        album = conn.execute(
            "INSERT INTO albums (title, created_by_id) VALUES ('Bench', %s) RETURNING id", (row[0],)
        ).fetchone()
        assert album is not None
        users = [
            int(r[0])
            for r in conn.execute(
                "INSERT INTO users (username) SELECT 'listener' || g FROM generate_series(1, %s) g RETURNING id",
                (n_users,),
            ).fetchall()
        ]
        tracks = [f"bt-{i:05d}" for i in range(n_tracks)]
        conn.execute(
            "INSERT INTO tracks (id, album_id, title) SELECT t, %s, t FROM unnest(%s::text[]) t",
            (album[0], tracks),
        )
        conn.execute(PLAIN_TABLE)
    return tracks, users


@contextlib.contextmanager
def database(n_tracks: int, n_users: int) -> Iterator[World]:
    """A fresh, migrated, seeded database on the embedded server (or on DATABASE_URL's server)."""
    name = f"bench_{int(time.time())}_{os.getpid()}"
    external = os.environ.get("DATABASE_URL")
    with contextlib.ExitStack() as stack:
        postmaster = None
        if external:
            admin = external
        else:
            from app.dev import embedded

            # Commit timestamps, so that latency runs from the commit the database recorded.
            embedded._FAST_SETTINGS = (*embedded._FAST_SETTINGS, "track_commit_timestamp=on")
            pg = stack.enter_context(embedded.EmbeddedPostgres(RESULTS / "pg", fast=True))
            admin = pg.url_for("postgres")
            postmaster = pg.pid
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
            commit_ts = conn.execute("SHOW track_commit_timestamp").fetchone() == ("on",)
        url = _with_db(admin, name)
        try:
            migrate(url)
            tracks, users = seed(url, n_tracks, n_users)
            tokens = {u: issue_token(SECRET, u, 3 * 3600) for u in users}
            yield World(url, tracks, users, tokens, commit_ts, postmaster)
        finally:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _with_db(url: str, name: str) -> str:
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(url)
    params["dbname"] = name
    return make_conninfo(**params)


def db_cpu(world: World) -> float:
    """CPU seconds of the PostgreSQL server processes alive now (embedded server only)."""
    if world.postmaster is None:
        return 0.0
    try:
        procs = [psutil.Process(world.postmaster), *psutil.Process(world.postmaster).children(recursive=True)]
    except psutil.Error:
        return 0.0
    return sum(cpu_seconds(p.pid) for p in procs)


def listener_backends(world: World) -> list[int]:
    """The PIDs of the replicas' LISTEN sessions on the server (embedded server only)."""
    if world.postmaster is None:
        return []
    with psycopg.connect(world.url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'tracktalk-listener'"
            " AND datname = current_database()"
        ).fetchall()
    return [int(row[0]) for row in rows]


def commit_times(world: World, table: str, ids: list[int]) -> dict[int, float]:
    if not world.commit_ts or not ids:
        return {}
    with psycopg.connect(world.url, autocommit=True) as conn:
        rows = conn.execute(
            f"SELECT id, extract(epoch FROM pg_xact_commit_timestamp(xmin))::float8 FROM {table} WHERE id = ANY(%s)",
            (ids,),
        ).fetchall()
    return {int(i): float(t) for i, t in rows if t is not None}
