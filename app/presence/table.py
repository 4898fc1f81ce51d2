"""Presence in PostgreSQL: the replicas' heartbeats and their listeners per topic (the tables
tracktalk.replicas and tracktalk.presence, sql/schema.sql). Only SQL here; app/presence/tracker.py
decides when each statement runs and what the rows mean.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from psycopg.rows import tuple_row
from psycopg_pool import AsyncConnectionPool

from app.data.db import Conn


class Beat(Enum):
    """What a heartbeat found."""

    KEPT = "kept"
    """The replica's row was there, with this process's instance."""
    LOST = "lost"
    """The row was gone (a crash emptied the unlogged tables, or the others forgot this replica
    after a long absence): it is back, and the replica's rows must all be written again."""
    TAKEN = "taken"
    """Another live process has claimed the same replica id."""


@dataclass(frozen=True, slots=True)
class Row:
    """One replica's listeners on one topic."""

    replica: str
    topic: str
    users: list[int]
    anonymous: int


@dataclass(frozen=True, slots=True)
class Peer:
    """A replica as its heartbeat shows it."""

    instance: str
    age: float
    """Seconds since its last heartbeat, by the database's clock."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What one read found: every replica, the rows asked for, and where the next read starts."""

    peers: dict[str, Peer]
    rows: list[Row]
    horizon: int
    """The read's snapshot xmin: every row committed after this read has `changed` >= it."""


_CLAIM = """
    INSERT INTO tracktalk.replicas AS r (id, instance) VALUES (%(replica)s, %(instance)s)
    ON CONFLICT (id) DO UPDATE SET instance = excluded.instance, seen_at = now(), started_at = now()
"""

_CLEAR = "DELETE FROM tracktalk.presence WHERE replica = %(replica)s"
"""After _CLAIM, in its transaction: a statement of its own, so that its snapshot comes after the
claim took the heartbeat row, and so has every row that a write of the old holder committed."""

_BEAT = """
    WITH forgotten AS (
        DELETE FROM tracktalk.replicas
         WHERE seen_at < now() - %(forget)s * interval '1 second' AND id <> %(replica)s
        RETURNING id
    ), cleared AS (
        DELETE FROM tracktalk.presence p USING forgotten f WHERE p.replica = f.id
    ), beat AS (
        INSERT INTO tracktalk.replicas AS r (id, instance) VALUES (%(replica)s, %(instance)s)
        ON CONFLICT (id) DO UPDATE SET seen_at = now() WHERE r.instance = excluded.instance
        RETURNING (xmax = 0) AS inserted
    )
    SELECT inserted FROM beat
"""

_WRITE = """
    WITH mine AS (
        SELECT true FROM tracktalk.replicas
         WHERE id = %(replica)s AND instance = %(instance)s
           FOR SHARE
    ), written AS (
        INSERT INTO tracktalk.presence AS p (replica, topic, users, anonymous)
        SELECT %(replica)s, w.topic, w.users::bigint[], w.anonymous
          FROM unnest(%(topics)s::text[], %(users)s::text[], %(anonymous)s::int[])
               AS w (topic, users, anonymous)
         WHERE EXISTS (SELECT FROM mine)
        ON CONFLICT (replica, topic) DO UPDATE
           SET users = excluded.users, anonymous = excluded.anonymous,
               changed = pg_current_xact_id(), changed_at = now()
    ), dropped AS (
        DELETE FROM tracktalk.presence
         WHERE replica = %(replica)s AND topic = ANY(%(drop)s::text[])
           AND topic <> ALL(%(topics)s::text[]) AND users = '{}' AND anonymous = 0
           AND EXISTS (SELECT FROM mine)
    )
    SELECT EXISTS (SELECT FROM mine)
"""

_READ = """
    SELECT h.xmin::text, r.id, r.instance, extract(epoch FROM now() - r.seen_at)::float8,
           p.topic, p.users, p.anonymous
      FROM (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin) AS h
      LEFT JOIN (tracktalk.replicas r
                 LEFT JOIN tracktalk.presence p
                        ON p.replica = r.id AND r.id <> %(exclude)s
                       AND (p.changed >= %(since)s::xid8 OR p.topic = ANY(%(fresh)s::text[])))
             ON true
"""
"""`exclude` is the reader: its own rows would only come back to be skipped (its sockets are the
truth), and while its sockets come and go it rewrites them up to four times a second."""

_RELEASE = """
    WITH mine AS (
        DELETE FROM tracktalk.replicas WHERE id = %(replica)s AND instance = %(instance)s RETURNING id
    )
    DELETE FROM tracktalk.presence p USING mine m WHERE p.replica = m.id
"""

_COUNT = """
    WITH live AS (
        SELECT p.users, p.anonymous
          FROM tracktalk.presence p JOIN tracktalk.replicas r ON r.id = p.replica
         WHERE p.topic = %(topic)s AND p.replica <> %(replica)s
           AND r.seen_at >= now() - %(alive)s * interval '1 second'
    )
    SELECT (SELECT count(DISTINCT u) FROM live, unnest(live.users) AS u)
           + (SELECT coalesce(sum(live.anonymous), 0) FROM live)
"""


class PresenceTable:
    """The statements of presence, each one round trip on a connection of the request pool (but
    the claim, once a start: a transaction of two statements)."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def claim(self, replica: str, instance: str) -> None:
        """Take `replica` for this process: its heartbeat is now, and every row under it goes (of
        an earlier run, or of another process that held it: that one's writes stop at once)."""
        async with self._pool.connection() as conn, conn.transaction():
            # The heartbeat row first: it waits for a write of the old holder in flight (which
            # locks the row), and every later write of the old holder finds it no longer its own.
            await conn.execute(_CLAIM, {"replica": replica, "instance": instance})
            await conn.execute(_CLEAR, {"replica": replica})

    async def beat(self, replica: str, instance: str, forget: float) -> Beat:
        """The heartbeat; replicas silent for `forget` seconds are deleted with their rows."""
        async with self._pool.connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
            await cur.execute(_BEAT, {"replica": replica, "instance": instance, "forget": forget})
            row = await cur.fetchone()
        if row is None:
            return Beat.TAKEN
        return Beat.LOST if row[0] else Beat.KEPT

    async def write(self, replica: str, instance: str, rows: list[Row], drop: list[str]) -> bool:
        """Write this replica's rows of topics whose listeners changed, and delete its empty rows
        of `drop`, in one statement, if this process (`instance`) still holds `replica`. False
        when it does not (the heartbeat row is gone, or another process claimed it): nothing
        was written."""
        async with self._pool.connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
            await cur.execute(
                _WRITE,
                {
                    "replica": replica,
                    "instance": instance,
                    "topics": [row.topic for row in rows],
                    "users": [_array(row.users) for row in rows],
                    "anonymous": [row.anonymous for row in rows],
                    "drop": drop,
                },
            )
            row = await cur.fetchone()
        return bool(row and row[0])

    async def read(self, since: int, fresh: list[str], exclude: str) -> Snapshot:
        """Every replica's heartbeat, and of the replicas other than `exclude` the rows changed
        since `since` (a horizon; 0: all rows) and all rows of the topics in `fresh`."""
        async with self._pool.connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
            await cur.execute(_READ, {"since": str(since), "fresh": fresh, "exclude": exclude})
            found = await cur.fetchall()
        peers: dict[str, Peer] = {}
        rows: list[Row] = []
        for _, replica, instance, age, topic, users, anonymous in found:
            if replica is not None:
                peers[replica] = Peer(instance, age)
            if topic is not None:
                rows.append(Row(replica, topic, users, anonymous))
        return Snapshot(peers, rows, int(found[0][0]))

    async def release(self, replica: str, instance: str) -> None:
        """Leave: this process's heartbeat and rows go (the others stop counting them at once)."""
        async with self._pool.connection() as conn:
            await conn.execute(_RELEASE, {"replica": replica, "instance": instance})

    async def count(self, conn: Conn, topic: str, exclude: str, alive: float) -> int:
        """Distinct users and anonymous sockets on a topic, from the rows of the replicas other
        than `exclude` that were seen within `alive` seconds (one statement)."""
        async with conn.cursor(row_factory=tuple_row) as cur:
            await cur.execute(_COUNT, {"topic": topic, "replica": exclude, "alive": alive})
            row = await cur.fetchone()
        return int(row[0]) if row else 0


def _array(users: list[int]) -> str:
    """A bigint[] literal: `{1,2,3}` (the rows' arrays differ in length, so they travel as text)."""
    return "{" + ",".join(map(str, users)) + "}"
