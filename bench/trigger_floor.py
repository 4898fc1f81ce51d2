"""What the write path must cost at least: the mechanism of issue 3 built up step by step.

    python -m bench.trigger_floor      (embedded PostgreSQL, or DATABASE_URL: a superuser URL)

On a scratch database, single-row autocommit INSERTs into `comments` from 4 connections for a
few seconds each, with `comments_after_insert` replaced by ever more of what issue 3 asks of
every write (the notifications of issue 4 come on top):

    none        tracktalk's triggers disabled (the baseline)
    statement   an AFTER ... FOR EACH STATEMENT trigger with a transition table, doing nothing
    counter     + the per-track counter row (seq numbering in commit order)
    event       + the event row in tracktalk.events (resume and catch-up)
    notify      + one pg_notify with a small payload
    tracktalk   the real triggers: messages, counters, notifications, their announcement

and prints comments/s and the cost against the baseline.
"""

from __future__ import annotations

import asyncio
import sys

import psycopg

from bench.lib.database import database
from bench.lib.scenarios import comment_triggers, sql_insert_rate

SECONDS = 4.0
WORKERS = 4

_STEPS = {
    "statement": "",
    "counter": """
        UPDATE tracktalk.track_state SET last_seq = last_seq + r.n, comments = comments + r.n
         WHERE track_id = r.track_id RETURNING last_seq INTO s;""",
    "event": """
        INSERT INTO tracktalk.events (track_id, seq, message)
        VALUES (r.track_id, s, json_build_object('type', 'new_comment', 'id', r.first_id));""",
    "notify": """
        PERFORM pg_notify('tracktalk', format('{"k":"track","track_id":%s,"first":%s,"last":%s}',
                                              to_json(r.track_id), s, s));""",
}


def _stand_in(steps: list[str]) -> str:
    """comments_after_insert doing only `steps`, once per track of the statement."""
    body = "".join(_STEPS[step] for step in steps)
    return f"""
CREATE OR REPLACE FUNCTION tracktalk.comments_after_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    r record;
    s bigint;
BEGIN
    FOR r IN SELECT track_id, count(*) AS n, min(id) AS first_id
               FROM new_rows GROUP BY track_id ORDER BY track_id
    LOOP{body}
    END LOOP;
    RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS comments_before_write ON comments;
DROP TRIGGER comments_after_insert ON comments;
CREATE TRIGGER comments_after_insert
    AFTER INSERT ON comments REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tracktalk.comments_after_insert();
"""


def main() -> None:
    print(f"{WORKERS} connections, {SECONDS:g} s each, single-row autocommit INSERTs", file=sys.stderr)
    with database(1000, 200) as world:
        with comment_triggers(world.url, enabled=False):
            baseline = asyncio.run(sql_insert_rate(world, WORKERS, SECONDS))
        print(f"{'none':<10} {baseline:>8.0f} comments/s")
        real = asyncio.run(sql_insert_rate(world, WORKERS, SECONDS))
        steps = list(_STEPS)
        for i in range(len(steps)):
            with psycopg.connect(world.url, autocommit=True) as conn:
                conn.execute(_stand_in(steps[: i + 1]))
            rate = asyncio.run(sql_insert_rate(world, WORKERS, SECONDS))
            print(f"{steps[i]:<10} {rate:>8.0f} comments/s   cost {100 * (1 - rate / baseline):5.1f} %")
        print(f"{'tracktalk':<10} {real:>8.0f} comments/s   cost {100 * (1 - real / baseline):5.1f} %")


if __name__ == "__main__":
    main()
