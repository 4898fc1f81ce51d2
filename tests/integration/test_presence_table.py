"""app/presence/table.py against PostgreSQL: the statements of presence on the module's own
database (the schema applied by `migrate`), each test starting from empty tables.

tests/unit/test_presence_counting.py runs presence over an in-memory copy of these semantics; here
they are the real ones: the heartbeat's three answers, the 12 s a replica counts for, the 10
minutes after which it is forgotten, the count, the transaction-id horizon of a read, a write
that takes effect only while its process holds the replica id.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from app.config import Settings
from app.data.db import create_pool
from app.presence.table import Beat, PresenceTable, Row, Snapshot
from tests.support.waiting import async_wait_until

FORGET = 600.0
"""The service's forget time (Timing.forget_replica)."""
ALIVE = 12.0
"""The service's dead-after time (Timing.dead_after)."""
OTHER = "reader"
"""The replica that reads, when the rows read are another's."""


@pytest.fixture(scope="module")
async def pool(db_url: str) -> AsyncIterator[AsyncConnectionPool]:
    """The request pool, as the service makes it."""
    made = create_pool(Settings(database_url=db_url, secret="s" * 32))
    await made.open(wait=True, timeout=10)
    try:
        yield made
    finally:
        await made.close()


@pytest.fixture
async def table(pool: AsyncConnectionPool) -> PresenceTable:
    """A PresenceTable over empty presence tables."""
    await run(pool, "DELETE FROM tracktalk.presence")
    await run(pool, "DELETE FROM tracktalk.replicas")
    return PresenceTable(pool)


async def run(pool: AsyncConnectionPool, sql: str, *params: object) -> None:
    async with pool.connection() as conn:
        await conn.execute(sql, params or None)


async def stored(pool: AsyncConnectionPool) -> dict[tuple[str, str], tuple[list[int], int]]:
    """Every row of tracktalk.presence: (replica, topic) -> (users, anonymous)."""
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT replica, topic, users, anonymous FROM tracktalk.presence")
        return {(r, t): (list(users), anonymous) for r, t, users, anonymous in await cur.fetchall()}


async def instances(pool: AsyncConnectionPool) -> dict[str, str]:
    """Every row of tracktalk.replicas: id -> instance."""
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT id, instance FROM tracktalk.replicas")
        return dict(await cur.fetchall())


async def age(pool: AsyncConnectionPool, replica: str, seconds: float) -> None:
    """Make a replica's last heartbeat `seconds` old."""
    await run(
        pool,
        "UPDATE tracktalk.replicas SET seen_at = now() - %s * interval '1 second' WHERE id = %s",
        seconds,
        replica,
    )


async def count(table: PresenceTable, pool: AsyncConnectionPool, track: str, exclude: str) -> int:
    async with pool.connection() as conn:
        return await table.count(conn, track, exclude, ALIVE)


def found(snapshot: Snapshot) -> dict[tuple[str, str], tuple[list[int], int]]:
    return {(row.replica, row.topic): (row.users, row.anonymous) for row in snapshot.rows}


# ---------------------------------------------------------------------------------------------
# Heartbeats, writes, reads
# ---------------------------------------------------------------------------------------------


async def test_claim_beat_write_and_read_round_trip(table: PresenceTable, pool: AsyncConnectionPool) -> None:
    await table.claim("r1", "i1")
    assert await table.beat("r1", "i1", FORGET) is Beat.KEPT
    rows = [Row("r1", "x", [2, 1], 1), Row("r1", "y", [], 3)]
    assert await table.write("r1", "i1", rows, []) is True
    snapshot = await table.read(0, [], OTHER)
    assert set(snapshot.peers) == {"r1"} and snapshot.peers["r1"].instance == "i1"
    assert 0 <= snapshot.peers["r1"].age < 5
    assert found(snapshot) == {("r1", "x"): ([2, 1], 1), ("r1", "y"): ([], 3)}
    mine = await table.read(0, ["x"], "r1")  # a replica's own rows never come back to it
    assert found(mine) == {} and set(mine.peers) == {"r1"}
    assert await table.write("r1", "i1", [Row("r1", "x", [7], 0)], []) is True  # replaced whole
    assert await stored(pool) == {("r1", "x"): ([7], 0), ("r1", "y"): ([], 3)}


async def test_a_heartbeat_finds_its_row_kept_taken_or_lost(
    table: PresenceTable, pool: AsyncConnectionPool
) -> None:
    await table.claim("r1", "i1")
    assert await table.beat("r1", "i1", FORGET) is Beat.KEPT
    assert await table.beat("r1", "someone-else", FORGET) is Beat.TAKEN
    assert await instances(pool) == {"r1": "i1"}  # a heartbeat never takes the id
    await run(pool, "DELETE FROM tracktalk.replicas")  # what a crash does to unlogged tables
    assert await table.beat("r1", "i1", FORGET) is Beat.LOST
    assert await instances(pool) == {"r1": "i1"}  # back
    assert await table.beat("r1", "i1", FORGET) is Beat.KEPT


async def test_a_write_deletes_only_the_empty_rows_it_is_told_to_drop(
    table: PresenceTable, pool: AsyncConnectionPool
) -> None:
    await table.claim("r1", "i1")
    await table.write("r1", "i1", [Row("r1", t, [], 0) for t in ("x", "y")] + [Row("r1", "z", [1], 0)], [])
    assert await table.write("r1", "i1", [Row("r1", "y", [], 0)], ["x", "y", "z"]) is True
    # x went; y was written in the same statement; z is not empty
    assert await stored(pool) == {("r1", "y"): ([], 0), ("r1", "z"): ([1], 0)}


async def test_a_read_returns_the_rows_changed_since_its_horizon_and_the_fresh_tracks(
    table: PresenceTable, pool: AsyncConnectionPool, db_url: str
) -> None:
    await table.claim("r1", "i1")
    await table.write("r1", "i1", [Row("r1", "x", [1], 0), Row("r1", "y", [2], 0)], [])
    first = await table.read(0, [], OTHER)
    assert set(found(first)) == {("r1", "x"), ("r1", "y")}

    async def quiet_horizon() -> Snapshot | None:
        """A read after which nothing changed. A horizon is the oldest transaction running
        anywhere in the server, and another test's may be running at the moment of a read: its
        horizon then lets the rows through again (harmless, and the next read is clean)."""
        nonlocal first
        first = await table.read(0, [], OTHER)
        return first if not found(await table.read(first.horizon, [], OTHER)) else None

    await async_wait_until(quiet_horizon, 10, "a read after which nothing changed")
    await table.write("r1", "i1", [Row("r1", "x", [1, 3], 0)], [])
    assert found(await table.read(first.horizon, [], OTHER)) == {("r1", "x"): ([1, 3], 0)}
    assert set(found(await table.read(first.horizon, ["y"], OTHER))) == {("r1", "x"), ("r1", "y")}
    # A row whose transaction began before a read and commits after it is in the next read.
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as late:
        async with late.transaction():
            await late.execute(
                "INSERT INTO tracktalk.presence (replica, topic, users) VALUES ('r1', 'late', '{9}')"
            )
            during = await table.read(first.horizon, [], OTHER)
            assert ("r1", "late") not in found(during)
        after = await table.read(during.horizon, [], OTHER)
    assert found(after)[("r1", "late")] == ([9], 0)


async def test_release_deletes_this_process_heartbeat_and_rows_only(
    table: PresenceTable, pool: AsyncConnectionPool
) -> None:
    for replica in ("r1", "r2"):
        await table.claim(replica, f"{replica}-i")
        await table.write(replica, f"{replica}-i", [Row(replica, "x", [1], 0)], [])
    await table.release("r1", "another-process")  # not the one holding r1: nothing goes
    assert set(await stored(pool)) == {("r1", "x"), ("r2", "x")}
    await table.release("r1", "r1-i")
    assert await instances(pool) == {"r2": "r2-i"}
    assert set(await stored(pool)) == {("r2", "x")}


# ---------------------------------------------------------------------------------------------
# Who counts
# ---------------------------------------------------------------------------------------------


async def test_count_is_the_other_live_replicas_distinct_users_and_anonymous_sockets(
    table: PresenceTable, pool: AsyncConnectionPool
) -> None:
    written = {"me": ([4], 5), "r2": ([1, 2], 1), "r3": ([2, 3], 2)}
    for replica, (users, anonymous) in written.items():
        await table.claim(replica, f"{replica}-i")
        await table.write(replica, f"{replica}-i", [Row(replica, "x", users, anonymous)], [])
    assert await count(table, pool, "x", "me") == 3 + 3  # 1, 2, 3 and 1 + 2 anonymous; not me's
    assert await count(table, pool, "x", "r2") == 3 + 7  # 2, 3, 4 and 2 + 5
    assert await count(table, pool, "nowhere", "me") == 0


async def test_a_replica_not_seen_for_12_s_is_not_counted(
    table: PresenceTable, pool: AsyncConnectionPool
) -> None:
    for replica, users in (("r2", [1, 2]), ("r3", [2, 3])):
        await table.claim(replica, f"{replica}-i")
        await table.write(replica, f"{replica}-i", [Row(replica, "x", users, 1)], [])
    await age(pool, "r3", 11)
    assert await count(table, pool, "x", "me") == 3 + 2
    await age(pool, "r3", 13)
    assert await count(table, pool, "x", "me") == 2 + 1  # r3's user 3 and anonymous socket went
    assert (await table.read(0, [], OTHER)).peers["r3"].age >= 13  # what the others' rosters go by


async def test_a_replica_silent_for_the_forget_time_is_deleted_with_its_rows(
    table: PresenceTable, pool: AsyncConnectionPool
) -> None:
    for replica in ("me", "r2", "r3"):
        await table.claim(replica, f"{replica}-i")
        await table.write(replica, f"{replica}-i", [Row(replica, "x", [1], 0)], [])
    await age(pool, "r2", FORGET + 1)
    await age(pool, "r3", FORGET - 60)
    await age(pool, "me", FORGET + 100)  # a heartbeat never forgets its own replica
    assert await table.beat("me", "me-i", FORGET) is Beat.KEPT
    assert await instances(pool) == {"me": "me-i", "r3": "r3-i"}
    assert set(await stored(pool)) == {("me", "x"), ("r3", "x")}


# ---------------------------------------------------------------------------------------------
# A replica id claimed by another process
# ---------------------------------------------------------------------------------------------


async def test_writes_take_effect_only_while_the_process_holds_the_replica_id(
    table: PresenceTable, pool: AsyncConnectionPool
) -> None:
    await table.claim("r1", "old")
    assert await table.write("r1", "old", [Row("r1", "x", [1], 0)], []) is True
    await table.claim("r1", "new")  # another process with the same id: the id's rows go
    assert await stored(pool) == {}
    assert await table.write("r1", "new", [Row("r1", "y", [], 0)], []) is True
    # The old process, before its heartbeat tells it: its writes neither add nor delete a row.
    assert await table.write("r1", "old", [Row("r1", "x", [1, 2], 0)], ["y"]) is False
    assert await stored(pool) == {("r1", "y"): ([], 0)}
    assert await table.beat("r1", "old", FORGET) is Beat.TAKEN
    await run(pool, "DELETE FROM tracktalk.replicas")  # no heartbeat row: no one holds it
    assert await table.write("r1", "new", [Row("r1", "z", [3], 0)], []) is False
    assert await stored(pool) == {("r1", "y"): ([], 0)}


async def test_a_claim_waits_for_a_write_in_flight_and_then_deletes_its_rows(
    table: PresenceTable, pool: AsyncConnectionPool, db_url: str
) -> None:
    """The old holder's write began before the claim: whichever commits first, no row of it is
    left under the id once the claim is done."""
    await table.claim("r1", "old")
    await table.write("r1", "old", [Row("r1", "x", [1], 0)], [])

    async def waiting(n: int) -> bool:
        """`n` sessions of this database wait for a lock."""
        async with pool.connection() as conn:
            cur = await conn.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            row = await cur.fetchone()
        return row is not None and row[0] == n

    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as blocker:
        async with blocker.transaction():
            # Hold row x, so that the write stops in the middle: after it checked its claim,
            # before it commits (it also writes a row y that no snapshot before its commit has).
            await blocker.execute(
                "SELECT 1 FROM tracktalk.presence WHERE replica = 'r1' AND topic = 'x' FOR UPDATE"
            )
            write = asyncio.create_task(
                table.write("r1", "old", [Row("r1", "x", [1, 2], 0), Row("r1", "y", [3], 0)], [])
            )
            await async_wait_until(lambda: waiting(1), 5, "the write to wait for row x")
            claim = asyncio.create_task(table.claim("r1", "new"))
            await async_wait_until(lambda: waiting(2), 5, "the claim to wait for the write")
        assert await asyncio.wait_for(write, 5) is True  # it still held the id when it checked
        await asyncio.wait_for(claim, 5)
    assert await stored(pool) == {}
    assert await instances(pool) == {"r1": "new"}
