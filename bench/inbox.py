"""Is the inbox fast for a user with 100,000 notifications? The unread count and mark-all-read.

    python -m bench.inbox [--notifications N] [--others N] [--rounds R] [--drop INDEX ...]

(the embedded PostgreSQL, data under bench/results/pg-inbox; or the server of DATABASE_URL, a
superuser URL: a database inbox_<pid> is made on it and dropped at the end.)

Fills `notifications` with N (100,000) for one user and `--others` (200,000) spread over 1,000
other users, then times, in three states of that user's inbox (all unread; all read but 20; none
unread):

- the app's statements (app.notifications.unread, mark_read without ids, and with the ids of
  the two newest), on one connection of its own, each run `--rounds` times (the last once): median
  and slowest, in ms;
- the routes through a real `tracktalk serve`: `GET /api/notifications` (a page and the unread
  count) and `POST /api/notifications/read` with no ids (mark all read, then the unread count).

Marking all read changes the state, so before each timed mark the state is set again by SQL
(untimed, then VACUUM ANALYZE). `--drop notifications_created_at` (for example) times the same
without one of the indexes of sql/schema.sql: the figures before an index was added.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from app.auth.hs256 import issue_token
from app.data import notifications
from app.data.db import migrate
from tests.support.children import popen

ROOT = Path(__file__).resolve().parent.parent
SECRET = "bench-secret-0123456789-abcdefghijklmnop"
STATES = {
    "all unread": "UPDATE notifications SET read_at = NULL WHERE user_id = %(u)s",
    "all read but 20": """
        UPDATE notifications SET read_at = CASE WHEN id > (SELECT id FROM notifications WHERE user_id = %(u)s
                                                            ORDER BY id DESC OFFSET 20 LIMIT 1)
                                                THEN NULL ELSE coalesce(read_at, now()) END
         WHERE user_id = %(u)s""",
    "none unread": "UPDATE notifications SET read_at = now() WHERE user_id = %(u)s AND read_at IS NULL",
}


@contextlib.contextmanager
def database() -> Iterator[str]:
    """A fresh, migrated database; dropped at the end."""
    name = f"inbox_{os.getpid()}"
    with contextlib.ExitStack() as stack:
        admin = os.environ.get("DATABASE_URL")
        if not admin:
            from app.dev.embedded import EmbeddedPostgres

            pg = stack.enter_context(EmbeddedPostgres(ROOT / "bench" / "results" / "pg-inbox", fast=True))
            admin = pg.url_for("postgres")
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        url = make_conninfo(**{**conninfo_to_dict(admin), "dbname": name})
        try:
            migrate(url)
            yield url
        finally:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def fill(url: str, mine: int, others: int, drop: list[str]) -> int:
    """The reader's `mine` notifications and `others` of 1,000 other users; the reader's id."""
    with psycopg.connect(url, autocommit=True) as conn:
        for index in drop:
            conn.execute(f"DROP INDEX {index}")  # only what the caller names, on a scratch database
        actor = conn.execute("INSERT INTO users (username, is_creator) VALUES ('actor', true) RETURNING id")
        actor_id = actor.fetchone()[0]  # type: ignore[index]
        album = conn.execute(
            "INSERT INTO albums (title, created_by_id) VALUES ('A', %s) RETURNING id", (actor_id,)
        )
        conn.execute(
            "INSERT INTO tracks (id, album_id, title) VALUES ('inbox', %s, 'Inbox')", album.fetchone()
        )
        reader = conn.execute("INSERT INTO users (username) VALUES ('reader') RETURNING id").fetchone()[0]  # type: ignore[index]
        conn.execute("INSERT INTO users (username) SELECT 'other' || g FROM generate_series(1, 1000) g")
        first_other = conn.execute("SELECT min(id) FROM users WHERE username LIKE 'other%'").fetchone()[0]  # type: ignore[index]
        started = time.monotonic()
        # Over the last 60 days, in the order they came: other users' interleaved with the reader's.
        conn.execute(
            """
            INSERT INTO notifications (user_id, kind, actor_id, track_id, created_at)
            SELECT x.user_id, (ARRAY['comment', 'reply', 'mention'])[1 + x.n %% 3], %(actor)s, 'inbox', x.at
              FROM (SELECT %(reader)s AS user_id, g AS n, now() - interval '60 days' * (1 - g / %(mine)s::float8) AS at
                      FROM generate_series(1, %(mine)s) g
                    UNION ALL
                    SELECT %(first_other)s + g %% 1000, g, now() - interval '60 days' * (1 - g / %(others)s::float8)
                      FROM generate_series(1, %(others)s) g) AS x
             ORDER BY x.at
            """,
            {"mine": mine, "others": others, "reader": reader, "actor": actor_id, "first_other": first_other},
        )
        counted = conn.execute("SELECT count(*) FROM notifications WHERE user_id = %s", (reader,)).fetchone()
        total = conn.execute("SELECT count(*) FROM notifications").fetchone()
        conn.execute("VACUUM ANALYZE notifications")
        print(
            f"filled {total[0]:,} notifications, {counted[0]:,} of them the reader's, in {time.monotonic() - started:.1f} s"
        )  # type: ignore[index]
        indexes = conn.execute(
            "SELECT string_agg(indexname, ', ' ORDER BY indexname) FROM pg_indexes WHERE tablename = 'notifications'"
        ).fetchone()
        print(f"indexes of notifications: {indexes[0]}")  # type: ignore[index]
    return int(reader)


def set_state(url: str, reader: int, state: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(STATES[state], {"u": reader})
        conn.execute("VACUUM ANALYZE notifications")


def summary(times: list[float]) -> str:
    return f"{statistics.median(times) * 1000:8.2f} {max(times) * 1000:8.2f}"


async def timed(action: Callable[[], Awaitable[object]]) -> float:
    began = time.perf_counter()
    await action()
    return time.perf_counter() - began


async def measure(url: str, base: str, reader: int, rounds: int) -> None:
    token = issue_token(SECRET, reader, 3600)
    auth = {"Authorization": f"Bearer {token}"}
    print(f"\n{'state':<16} {'what':<44} {'median':>8} {'slowest':>8}  (ms, {rounds} rounds)")
    async with (
        await psycopg.AsyncConnection.connect(url, autocommit=True) as conn,
        httpx.AsyncClient(base_url=base, timeout=60) as client,
    ):

        async def get_inbox() -> None:
            answer = await client.get("/api/notifications", headers=auth)
            answer.raise_for_status()

        async def mark_all() -> None:
            answer = await client.post("/api/notifications/read", headers=auth)
            answer.raise_for_status()

        for state in STATES:
            await asyncio.to_thread(set_state, url, reader, state)
            unread = await notifications.unread(conn, reader)
            rows = [
                (
                    "unread count (SQL)",
                    [await timed(lambda: notifications.unread(conn, reader)) for _ in range(rounds)],
                ),
                ("GET /api/notifications", [await timed(get_inbox) for _ in range(rounds)]),
            ]
            sql_marks, http_marks = [], []
            for _ in range(rounds):
                await asyncio.to_thread(set_state, url, reader, state)
                sql_marks.append(await timed(lambda: notifications.mark_read(conn, reader, None)))
                await asyncio.to_thread(set_state, url, reader, state)
                http_marks.append(await timed(mark_all))
            rows += [("mark all read (SQL)", sql_marks), ("POST /api/notifications/read, no ids", http_marks)]
            newest = [n.id for n in await notifications.page(conn, reader, before_id=None, limit=2)]
            began = time.perf_counter()
            await notifications.mark_read(conn, reader, newest)
            rows.append(("mark 2 read by ids (SQL)", [time.perf_counter() - began]))
            for what, times in rows:
                print(f"{state + f' ({unread:,})':<16} {what:<44} {summary(times)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notifications", type=int, default=100_000)
    parser.add_argument("--others", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--drop", action="append", default=[], metavar="INDEX")
    args = parser.parse_args()
    with database() as url:
        reader = fill(url, args.notifications, args.others, args.drop)
        port = free_port()
        env = {
            **os.environ,
            "DATABASE_URL": url,
            "TRACKTALK_SECRET": SECRET,
            "TRACKTALK_WRITES_PER_MINUTE": "0",
        }
        server = popen(  # it dies with this run, however it ends
            [sys.executable, "-m", "app", "serve", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_ready(f"http://127.0.0.1:{port}", server)
            asyncio.run(measure(url, f"http://127.0.0.1:{port}", reader, args.rounds))
        finally:
            server.terminate()
            server.wait(15)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(base: str, server: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"tracktalk serve exited with {server.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError("tracktalk serve did not become ready")


if __name__ == "__main__":
    main()
