"""app/presence_table.py against PostgreSQL: the statements of presence on the module's own
database (the schema applied by `migrate`), each test starting from empty tables.

tests/test_presence_counting.py runs presence over an in-memory copy of these semantics; here
they are the real ones: a write that takes effect only while its process holds the replica id.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from app.config import Settings
from app.db import create_pool
from app.presence_table import Beat, PresenceTable, Row
from tests.support import async_wait_until

FORGET = 600.0
"""The service's forget time (Timing.forget_replica)."""


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
    """Every row of tracktalk.presence: (replica, track) -> (users, anonymous)."""
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT replica, track_id, users, anonymous FROM tracktalk.presence")
        return {(r, t): (list(users), anonymous) for r, t, users, anonymous in await cur.fetchall()}


async def instances(pool: AsyncConnectionPool) -> dict[str, str]:
    """Every row of tracktalk.replicas: id -> instance."""
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT id, instance FROM tracktalk.replicas")
        return dict(await cur.fetchall())


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
                "SELECT 1 FROM tracktalk.presence WHERE replica = 'r1' AND track_id = 'x' FOR UPDATE"
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
