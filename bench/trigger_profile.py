"""Where the triggers' time goes: per-function times of 2,000 single-row INSERTs.

    python -m bench.trigger_profile      (embedded PostgreSQL, or DATABASE_URL: a superuser URL)

Inserts into bench_plain_comments (no triggers) then comments, on one connection, with
`track_functions = 'all'`, and prints the ms per insert and pg_stat_user_functions.
"""

from __future__ import annotations

import random
import time

import psycopg

from bench.lib.database import database

N = 2000


def main() -> None:
    with database(200, 50) as world:
        with psycopg.connect(world.url, autocommit=True) as conn:
            conn.execute("SET track_functions = 'all'")
            conn.execute("SELECT pg_stat_reset()")
            for table in ("bench_plain_comments", "comments"):
                start = time.monotonic()
                for _ in range(N):
                    conn.execute(
                        f"INSERT INTO {table} (track_id, user_id, content, timestamp) VALUES (%s, %s, 'x', 1)",
                        (random.choice(world.tracks), random.choice(world.users)),
                    )
                print(f"{table}: {(time.monotonic() - start) / N * 1000:.3f} ms per insert")
        # A session's function statistics are published when it ends (PostgreSQL 15 flushes a
        # live session's at most once a second): read them from a new one.
        with psycopg.connect(world.url, autocommit=True) as conn:
            print("function, calls, total ms, self ms, self µs per call")
            for row in conn.execute(
                "SELECT schemaname || '.' || funcname, calls, round(total_time::numeric, 1),"
                " round(self_time::numeric, 1), round((1000 * self_time / calls)::numeric, 1)"
                " FROM pg_stat_user_functions WHERE calls > 0 ORDER BY self_time DESC LIMIT 12"
            ):
                print(*row, sep=", ")


if __name__ == "__main__":
    main()
