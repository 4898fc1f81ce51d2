"""Where a replica on a fan-out node reads (app/data/events.py, app/data/nodes.py), against two real
databases: the primary's, and a node's copy that is behind it (made here by copying a prefix of
the primary's log, so that the node's answers can be told from the primary's).

A page and the latest seq come from the node while it has what is asked; from the primary when the
node's latest is below where the reader is (a replica that came from a faster node) or below what
it needs; a subscribe is answered by the node when it says yes, by the primary otherwise (a user,
track or grant the node has not received yet)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from app.data.events import EventLog, access_where_listening
from app.data.nodes import NodeState, Reads
from tests.support.seed import World, new_track
from tests.support.writes import insert_comment

NODE = NodeState("tracktalk_test", True, True, True, True, datetime.now(UTC), None)


def copy_prefix(primary: str, node: str, topic: str, through: int) -> None:
    """The node's copy of `topic`: the primary's events up to `through` (each marked "node"), and
    its numbering at that event; and the primary's users, albums and tracks."""
    with psycopg.connect(primary) as p, psycopg.connect(node, autocommit=True) as n:
        for table in ("users", "albums", "tracks"):
            rows = p.execute(f"SELECT * FROM {table}").fetchall()
            marks = ", ".join(["%s"] * len(p.execute(f"SELECT * FROM {table} LIMIT 0").description or []))
            for row in rows:
                n.execute(f"INSERT INTO {table} VALUES ({marks}) ON CONFLICT DO NOTHING", row)
        for seq, message, tag, prev, size in p.execute(
            "SELECT seq, message::text, tag, prev_tag, size FROM tracktalk.events WHERE topic = %s AND seq <= %s",
            (topic, through),
        ).fetchall():
            n.execute(
                "INSERT INTO tracktalk.events (topic, seq, message, tag, prev_tag, size)"
                " VALUES (%s, %s, (%s::jsonb || '{\"node\": true}')::json, %s, %s, %s)",
                (topic, seq, message, tag, prev, size),
            )
        tag = p.execute(
            "SELECT tag FROM tracktalk.events WHERE topic = %s AND seq = %s", (topic, through)
        ).fetchone()
        n.execute(
            "INSERT INTO tracktalk.topic_state (topic, last_seq, last_tag) VALUES (%s, %s, %s)",
            (topic, through, tag[0] if tag else None),
        )


@pytest.fixture
async def reads(db_url: str, new_database: Callable[[], str]) -> AsyncIterator[tuple[Reads, str]]:
    node = new_database()
    async with AsyncConnectionPool(db_url, kwargs={"autocommit": True}, open=False) as primary:
        reads = Reads(primary)
        await reads.use(node, NODE)
        try:
            yield reads, node
        finally:
            await reads.close()


async def test_a_page_comes_from_the_node_unless_it_is_behind_what_is_read(
    db_url: str, world: World, reads: tuple[Reads, str]
) -> None:
    on, node = reads
    track = new_track(db_url)
    topic = f"track:{track}"
    for i in range(8):
        await insert_comment(db_url, track, world.users["dave"], f"c{i}")
    copy_prefix(db_url, node, topic, 5)  # the node has 1..5 of 8
    log = EventLog(on.primary, on)

    def where(page_rows: list[bytes]) -> set[str]:
        return {"node" if b'"node": true' in row else "primary" for row in page_rows}

    assert (await log.latest([topic]))[topic].seq == 5  # the node's: its notices are what comes next
    page = await log.page(topic, 2)
    assert [r.seq for r in page.rows] == [3, 4, 5] and page.latest.seq == 5
    assert where([r.message for r in page.rows]) == {"node"}
    page = await log.page(topic, 2, through=4)
    assert where([r.message for r in page.rows]) == {"node"}
    # A reader at 6 (it came from a faster node): the node has nothing for it, the primary has.
    page = await log.page(topic, 6)
    assert [r.seq for r in page.rows] == [7, 8] and page.latest.seq == 8
    assert where([r.message for r in page.rows]) == {"primary"}
    # A replay through 8, which the node has not reached.
    page = await log.page(topic, 3, through=8)
    assert [r.seq for r in page.rows] == [4, 5, 6, 7, 8] and where([r.message for r in page.rows]) == {
        "primary"
    }


async def test_a_subscribe_is_answered_by_the_node_when_it_says_yes_else_by_the_primary(
    db_url: str, world: World, reads: tuple[Reads, str]
) -> None:
    on, node = reads
    private = new_track(db_url, private=True)
    copy_prefix(db_url, node, f"track:{private}", 0)
    late = new_track(db_url)  # made on the primary after the node's copy: the node does not know it
    with psycopg.connect(db_url, autocommit=True) as conn:
        newcomer = conn.execute("INSERT INTO users (username) VALUES ('newcomer') RETURNING id").fetchone()
        assert newcomer is not None
    answers = await access_where_listening(
        on,
        [
            (f"track:{world.public}", world.users["alice"]),
            (f"track:{late}", world.users["alice"]),  # the node: not found; the primary: yes
            (f"track:{private}", world.users["alice"]),  # both: not found
            (f"track:{world.public}", int(newcomer[0])),  # the node: no such user; the primary: yes
            (f"track:{private}", world.users["carol"]),
        ],
    )
    assert [(a.username, a.may_see) for a in answers] == [
        ("alice", True),
        ("alice", True),
        ("alice", None),
        ("newcomer", True),
        ("carol", True),
    ]
    assert answers[4].moderator is True


async def test_notifications_a_node_announced_are_read_once_their_transaction_is_visible_on_the_primary(
    db_url: str, world: World
) -> None:
    """A node sends a notification's announcement once the writer's commit is flushed on the
    primary, which can be a moment before the primary's own sessions see it (seen here: the read
    found nothing, and the notification never reached the socket). The announcement carries the
    writer's transaction ("x"): the read waits until it is visible. Here the writer has not even
    committed while the read is asked; it gets the notification once it does."""
    track = new_track(db_url)
    async with (
        AsyncConnectionPool(db_url, kwargs={"autocommit": True}, open=False) as pool,
        await psycopg.AsyncConnection.connect(db_url) as writer,
    ):
        await writer.execute(
            "INSERT INTO comments (track_id, user_id, content) VALUES (%s, %s, 'for carol')",
            (track, world.users["dave"]),
        )
        cur = await writer.execute(
            "SELECT n.id, pg_current_xact_id()::text::bigint FROM notifications n JOIN comments c"
            " ON c.id = n.comment_id WHERE c.track_id = %s AND n.user_id = %s",
            (track, world.users["carol"]),
        )
        row = await cur.fetchone()
        assert row is not None
        notification, xid = row
        read = asyncio.create_task(EventLog(pool).user_messages([notification], [xid]))
        done, _ = await asyncio.wait([read], timeout=0.3)  # what a read not waiting gives: at once
        assert not done, read.result()
        await writer.commit()
        got = await asyncio.wait_for(read, 5)
        assert [(user, about) for user, _, about in got] == [(world.users["carol"], True)]
        assert b'"type":"notification"' in got[0][1].replace(b" ", b"")
        # Without a transaction to wait for (direct mode: the primary's own NOTIFY), no wait.
        assert len(await asyncio.wait_for(EventLog(pool).user_messages([notification]), 1)) == 1


async def test_a_recheck_after_a_nodes_revocation_asks_the_primary_once_the_revocation_is_visible_there(
    db_url: str, world: World, reads: tuple[Reads, str]
) -> None:
    """The node has a track made private (and the revocation) before the primary's own sessions
    see it: the node says no, the primary, asked at once, would still say yes and keep a
    subscription that lost access. With the revocation's transaction ("x") the primary is asked
    once it is visible there. Here the writer has not committed yet while the recheck is asked."""
    on, node = reads
    track = new_track(db_url)
    copy_prefix(db_url, node, f"track:{track}", 0)
    with psycopg.connect(node, autocommit=True) as conn:  # the node is ahead
        conn.execute("UPDATE tracks SET is_private = true WHERE id = %s", (track,))
    pair = [(f"track:{track}", world.users["alice"])]
    async with await psycopg.AsyncConnection.connect(db_url) as writer:
        await writer.execute("UPDATE tracks SET is_private = true WHERE id = %s", (track,))
        cur = await writer.execute("SELECT pg_current_xact_id()::text::bigint")
        row = await cur.fetchone()
        assert row is not None
        recheck = asyncio.create_task(access_where_listening(on, pair, [row[0]]))
        done, _ = await asyncio.wait([recheck], timeout=0.3)  # what a recheck not waiting gives: at once
        assert not done, [(a.username, a.may_see) for a in recheck.result()]
        await writer.commit()
        (answer,) = await asyncio.wait_for(recheck, 5)
        assert (answer.username, answer.may_see) == ("alice", None)
