"""Holes a hostile reader or a careless SQL writer would find, closed, through real replicas.

The NOTIFY channels (any role that can connect may LISTEN and NOTIFY), re-created tracks, access
taken away from open sockets, sockets opened all at once, statements and outages too big for a
payload, and a pool that runs dry. docs/security.md lists each with its test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
import pytest
from psycopg import sql as pgsql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from app.auth import issue_token
from app.channels import track_channel, user_channel
from app.embedded import EmbeddedPostgres
from tests.support import (
    SECRET,
    Replica,
    Socket,
    TcpProxy,
    World,
    async_wait_until,
    new_track,
    open_socket,
    replicas,
    seed,
)
from tests.test_realtime import insert_comment, post_comment, sql

pytestmark = pytest.mark.timeout(180)

SECRET_WORDS = "the band splits up after this album"


@contextlib.asynccontextmanager
async def hostile_role(db_url: str) -> AsyncIterator[str]:
    """A role that may connect and nothing more (no grant on any table or on the schema
    tracktalk), as any other application's role on a shared server; its connection URL."""
    name = f"hostile_{uuid.uuid4().hex[:8]}"
    await sql(db_url, pgsql.SQL("CREATE ROLE {} LOGIN").format(pgsql.Identifier(name)).as_string(None))
    params = conninfo_to_dict(db_url)
    params["user"] = name
    try:
        yield make_conninfo(**params)
    finally:
        await sql(db_url, pgsql.SQL("DROP ROLE {}").format(pgsql.Identifier(name)).as_string(None))


async def latest_seq(db_url: str, track: str) -> int:
    return int(
        (await sql(db_url, "SELECT last_seq FROM tracktalk.track_state WHERE track_id = %s", (track,)))[0][0]
    )


# ---------------------------------------------------------------------------------------------
# 1. The NOTIFY channels
# ---------------------------------------------------------------------------------------------


async def test_a_role_without_grants_reads_no_private_content_from_any_channel(
    pair: list[Replica], world: World, db_url: str
) -> None:
    async with (
        hostile_role(db_url) as url,
        await psycopg.AsyncConnection.connect(url, autocommit=True) as spy,
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await spy.execute("SELECT * FROM tracktalk.events")
        for channel in (
            track_channel(world.private),
            user_channel(world.users["carol"]),
            user_channel(world.users["tina"]),
            "tracktalk",
        ):
            await spy.execute(pgsql.SQL("LISTEN {}").format(pgsql.Identifier(channel)))
        async with open_socket(pair[0].ws, world.private, world.tokens["carol"]) as carol:
            await carol.expect("connected")
            async with httpx.AsyncClient(base_url=pair[1].http, timeout=10) as client:
                posted = await client.post(
                    f"/api/tracks/{world.private}/comments",
                    json={"content": f"@carol {SECRET_WORDS}", "timestamp": 1},
                    headers=world.auth("tina"),
                )
            assert posted.status_code == 201
            cid = posted.json()["id"]
            await sql(
                db_url, "UPDATE comments SET content = %s WHERE id = %s", (f"{SECRET_WORDS}, edited", cid)
            )
            event = await carol.expect("new_comment", ignore=("notification", "mention"))
            assert SECRET_WORDS in event["comment"]["content"]  # the real socket got the content
            # The spy heard the events happen, but not what they said.
            heard = [n async for n in spy.notifies(timeout=2)]
    assert heard, "the spy heard nothing: the test would not show a leak"
    for notice in heard:
        assert SECRET_WORDS not in notice.payload and "band splits" not in notice.payload, notice


async def test_forged_payloads_neither_add_events_nor_hide_real_ones(
    pair: list[Replica], world: World, db_url: str
) -> None:
    track = world.other
    async with (
        hostile_role(db_url) as url,
        await psycopg.AsyncConnection.connect(url, autocommit=True) as forger,
        open_socket(pair[0].ws, track, world.tokens["alice"]) as on_a,
        open_socket(pair[1].ws, track, world.tokens["bob"]) as on_b,
    ):
        start = (await on_a.expect("connected"))["seq"]
        await on_b.expect("connected")
        fake = {
            "type": "new_comment",
            "track_id": track,
            "comment": {"id": 999999, "content": "forged", "user_id": 1, "username": "x"},
            "metrics": {"likes": 0, "comments": 0, "shares": 0},
        }
        channels = (track_channel(track), "tracktalk")  # the track's, and the one channel of old
        forgeries = [
            # a jump of a billion, then the next seq with made-up content, signed or not
            {"k": "track", "track_id": track, "first": start + 10**9, "last": start + 10**9},
            {
                "k": "track",
                "track_id": track,
                "first": start + 1,
                "last": start + 1,
                "events": [{**fake, "seq": start + 1}],
            },
        ]
        for channel in channels:
            for forged in forgeries:
                body = json.dumps(forged)
                for payload in (body, "0" * 64 + " " + body):
                    await forger.execute("SELECT pg_notify(%s, %s)", (channel, payload))
            await forger.execute(
                "SELECT pg_notify(%s, %s)",
                (channel, "e:" + "A" * 80),  # a sealed typing notice without the key
            )
        await forger.execute(
            "SELECT pg_notify(%s, %s)",
            (
                user_channel(world.users["alice"]),
                json.dumps({"k": "user", "user": world.users["alice"], "ids": [1]}),
            ),
        )
        real = [await insert_comment(db_url, track, world.users["dave"], f"real {i}") for i in range(3)]
        for sock in (on_a, on_b):
            got = await sock.events(3)
            assert [e["seq"] for e in got] == [start + 1, start + 2, start + 3]
            assert [e["comment"]["id"] for e in got] == real
            assert [m["type"] for m in sock.received] == [
                "connected",
                "new_comment",
                "new_comment",
                "new_comment",
            ]


# ---------------------------------------------------------------------------------------------
# 2. A deleted and re-created track
# ---------------------------------------------------------------------------------------------


async def test_a_deleted_and_remade_track_works_at_once_for_api_sql_and_sockets(
    pair: list[Replica], world: World, db_url: str
) -> None:
    track = f"t-remade-{uuid.uuid4().hex[:6]}"
    new_track(db_url, track_id=track)
    await post_comment(pair[0].http, world, "alice", track, "before the delete")
    async with open_socket(pair[1].ws, track, world.tokens["bob"]) as old:
        before = (await old.expect("connected"))["seq"]
        await sql(db_url, "DELETE FROM tracks WHERE id = %s", (track,))
        code, reason = await old.closed(timeout=5)
    assert (code, reason) == (1008, "track not found: access to it was taken away")
    new_track(db_url, track_id=track)
    async with open_socket(pair[0].ws, track, world.tokens["bob"]) as fresh:
        start = (await fresh.expect("connected"))["seq"]
        assert start >= before  # numbering goes on: no seq is ever used twice
        by_api = await post_comment(pair[1].http, world, "alice", track, "after, by the API")
        by_sql = await insert_comment(db_url, track, world.users["dave"], "after, by SQL")
        got = await fresh.events(2)
    assert [e["comment"]["id"] for e in got] == [by_api["id"], by_sql]
    assert [e["seq"] for e in got] == [start + 1, start + 2]
    assert got[1]["metrics"]["comments"] == 2  # the old track's comments are not counted


async def test_a_track_deleted_and_remade_in_one_transaction_makes_open_sockets_reload(
    pair: list[Replica], world: World, db_url: str
) -> None:
    track = f"t-swap-{uuid.uuid4().hex[:6]}"
    new_track(db_url, track_id=track)
    await insert_comment(db_url, track, world.users["alice"], "old")
    async with open_socket(pair[0].ws, track, world.tokens["bob"]) as sock:
        await sock.expect("connected")
        async with await psycopg.AsyncConnection.connect(db_url) as conn:
            await conn.execute("DELETE FROM tracks WHERE id = %s", (track,))
            await conn.execute(
                "INSERT INTO tracks (id, album_id, title) SELECT %s, album_id, 'swapped' FROM tracks WHERE id = %s",
                (track, world.public),
            )
            await conn.commit()
        resync = await sock.expect("resync")
        new = await insert_comment(db_url, track, world.users["alice"], "new")
        event = (await sock.events(1))[0]
    assert event["comment"]["id"] == new and event["seq"] == resync["seq"] + 1


# ---------------------------------------------------------------------------------------------
# 3. A hole in the middle of what is kept
# ---------------------------------------------------------------------------------------------


async def test_a_hole_in_the_middle_of_a_replay_page_gives_resync_not_a_silent_gap(
    pair: list[Replica], world: World, db_url: str
) -> None:
    track = world.timed
    left_at = await latest_seq(db_url, track)
    for i in range(5):
        await insert_comment(db_url, track, world.users["bob"], f"kept {i}")
    await sql(db_url, "DELETE FROM tracktalk.events WHERE track_id = %s AND seq = %s", (track, left_at + 3))
    async with open_socket(pair[0].ws, track, world.tokens["alice"], since=left_at) as back:
        latest = (await back.expect("connected"))["seq"]
        got = await back.events(2)
        resync = await back.expect("resync")
    assert [e["seq"] for e in got] == [left_at + 1, left_at + 2]  # up to the hole, then reload
    assert resync["seq"] == latest


# ---------------------------------------------------------------------------------------------
# 6. Access taken away from open sockets
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def revocable(db_url: str, world: World) -> Iterator[Callable[[], Any]]:
    """Undo what the revocation tests change in the shared seed."""
    yield lambda: None
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("UPDATE tracks SET is_private = false WHERE id = %s", (world.other,))
        conn.execute("UPDATE users SET is_team = true WHERE id = %s", (world.users["tina"],))


async def test_a_track_made_private_closes_the_sockets_of_those_who_may_no_longer_see_it(
    pair: list[Replica], world: World, db_url: str, revocable: Any
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        outsiders = [
            await stack.enter_async_context(open_socket(replica.ws, world.other, world.tokens[who]))
            for replica in pair
            for who in ("alice", "bob")
        ]
        insiders = [
            await stack.enter_async_context(open_socket(replica.ws, world.other, world.tokens[who]))
            for replica in pair
            for who in ("carol", "tina")
        ]
        for sock in outsiders + insiders:
            await sock.expect("connected")
        began = time.monotonic()
        await sql(db_url, "UPDATE tracks SET is_private = true WHERE id = %s", (world.other,))
        closes = await asyncio.gather(*(sock.closed(timeout=5) for sock in outsiders))
        took = time.monotonic() - began
        assert closes == [(1008, "track not found: access to it was taken away")] * len(outsiders)
        assert took < 5
        marker = await insert_comment(db_url, world.other, world.users["carol"], "insiders only")
        for sock in insiders:
            assert (await sock.events(1))[0]["comment"]["id"] == marker


async def test_a_user_off_the_team_or_deleted_loses_their_sockets_on_every_replica(
    pair: list[Replica], world: World, db_url: str, revocable: Any
) -> None:
    doomed = (
        await sql(
            db_url,
            "INSERT INTO users (username, is_team) VALUES (%s, true) RETURNING id",
            (f"temp-{uuid.uuid4().hex[:6]}",),
        )
    )[0][0]
    doomed_token = issue_token(SECRET, int(doomed), 600)
    async with contextlib.AsyncExitStack() as stack:
        tina = [
            await stack.enter_async_context(open_socket(r.ws, world.private, world.tokens["tina"]))
            for r in pair
        ]
        tina_public = await stack.enter_async_context(
            open_socket(pair[0].ws, world.public, world.tokens["tina"])
        )
        gone = [await stack.enter_async_context(open_socket(r.ws, world.public, doomed_token)) for r in pair]
        for sock in [*tina, tina_public, *gone]:
            await sock.expect("connected")
        await sql(db_url, "UPDATE users SET is_team = false WHERE id = %s", (world.users["tina"],))
        await sql(db_url, "DELETE FROM users WHERE id = %s", (doomed,))
        for sock in [*tina, *gone]:
            assert await sock.closed(timeout=5) == (1008, "track not found: access to it was taken away")
        # Off the team, tina still watches the public track.
        marker = await insert_comment(db_url, world.public, world.users["alice"], "public news")
        assert (await tina_public.events(1))[0]["comment"]["id"] == marker


# ---------------------------------------------------------------------------------------------
# 7. The per-user socket limit, under concurrent connects
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_per_user(db_url: str, world: World, log_dir: Path) -> Iterator[Replica]:
    with replicas(db_url, log_dir, 1, TRACKTALK_SOCKETS_PER_USER="2") as started:
        yield started[0]


async def test_thirty_sockets_opened_at_once_cannot_pass_a_limit_of_two(
    two_per_user: Replica, world: World
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        socks: list[Socket] = await asyncio.gather(
            *(
                stack.enter_async_context(open_socket(two_per_user.ws, world.public, world.tokens["dave"]))
                for _ in range(30)
            )
        )

        async def outcome(sock: Socket) -> str:
            first = await sock.recv()
            if first["type"] == "connected":
                return "connected"
            raise AssertionError(first)

        results = await asyncio.gather(*(outcome(s) for s in socks), return_exceptions=True)
        connected = [s for s, r in zip(socks, results, strict=True) if r == "connected"]
        refused = [s for s in socks if s not in connected]
        assert len(connected) == 2
        for sock in refused:
            code, reason = await sock.closed()
            assert code == 1008 and reason is not None and reason.startswith("too many sockets")


# ---------------------------------------------------------------------------------------------
# 8. Statements and outages too big for a payload reach sockets as events
# ---------------------------------------------------------------------------------------------


async def test_deleting_a_comment_with_200_replies_sends_201_events_not_resync(
    pair: list[Replica], world: World, db_url: str
) -> None:
    track = world.timed
    parent = await insert_comment(db_url, track, world.users["alice"], "a popular comment")
    await sql(
        db_url,
        "INSERT INTO comments (track_id, user_id, parent_id, content)"
        " SELECT %s, %s, %s, 'reply ' || i FROM generate_series(1, 200) i",
        (track, world.users["bob"], parent),
    )
    before = await latest_seq(db_url, track)
    async with (
        open_socket(pair[0].ws, track, world.tokens["dave"]) as on_a,
        open_socket(pair[1].ws, track, world.tokens["carol"]) as on_b,
    ):
        for sock in (on_a, on_b):
            start = (await sock.expect("connected"))["seq"]
            await sock.events(before - start)  # what the inserts made, if this replica was behind
        await sql(db_url, "DELETE FROM comments WHERE id = %s", (parent,))
        for sock in (on_a, on_b):
            got = await sock.events(201)
            assert [e["seq"] for e in got] == list(range(before + 1, before + 202))
            assert {e["type"] for e in got} == {"comment_deleted"}
            assert min(e["comment_id"] for e in got) == parent
            assert "resync" not in [m["type"] for m in sock.received]


async def _write_steadily(url: str, track: str, user: int, rate: float, stop: asyncio.Event) -> int:
    """Comments at `rate` a second until `stop`; writes that fail (the server restarting) are
    retried. Returns how many were written."""
    written = 0
    conn: psycopg.AsyncConnection[Any] | None = None
    while not stop.is_set():
        try:
            if conn is None or conn.closed:
                conn = await psycopg.AsyncConnection.connect(url, autocommit=True, connect_timeout=2)
            await conn.execute(
                "INSERT INTO comments (track_id, user_id, content) VALUES (%s, %s, %s)",
                (track, user, f"steady {written}"),
            )
            written += 1
        except psycopg.OperationalError:
            conn = None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1 / rate)
    if conn is not None:
        await conn.close()
    return written


STEADY = 60
"""Events written before an outage and after it (over half a second at 100 a second)."""


async def _written_past(url: str, track: str, seq: int, when: str) -> None:
    """Wait until the track's latest seq is STEADY past `seq`: the writer is in steady state."""

    async def there() -> bool:
        rows = await sql(url, "SELECT last_seq FROM tracktalk.track_state WHERE track_id = %s", (track,))
        return bool(rows) and int(rows[0][0]) >= seq + STEADY

    await async_wait_until(there, 30, f"{STEADY} comments written {when}", interval=0.05)


async def _everyone_gets_everything(socks: list[Socket], starts: list[int], url: str, track: str) -> None:
    latest = await latest_seq(url, track)
    for sock, start in zip(socks, starts, strict=True):
        got = await sock.events(latest - start, timeout=60)
        assert [e["seq"] for e in got] == list(range(start + 1, latest + 1)), "a gap or a duplicate"
        assert "resync" not in [m["type"] for m in sock.received]


@pytest.mark.parametrize("outage", ["postgres restarts", "a replica's network to postgres is cut for 3 s"])
async def test_an_outage_under_100_comments_a_second_ends_in_events_not_resync(
    outage: str, new_database: Callable[[], str], pg: EmbeddedPostgres, log_dir: Path
) -> None:
    """Three replicas, six sockets, 100 comments a second through the outage: every socket gets
    every event, in order, once; none is told to resync (a cut of 3 s leaves its replica more
    than 300 events to catch up on)."""
    url = new_database()
    world = seed(url)
    port = urlsplit(pg.url).port
    assert port is not None
    proxy = TcpProxy(port).start()
    parts = urlsplit(url)
    through_proxy = urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}"))
    try:
        with (
            replicas(url, log_dir, 2) as started,
            replicas(url, log_dir, 1, TRACKTALK_LISTEN_URL=through_proxy) as cut,
        ):
            async with contextlib.AsyncExitStack() as stack:
                socks = [
                    await stack.enter_async_context(open_socket(r.ws, world.public, world.tokens[who]))
                    for r in [*started, *cut]
                    for who in ("alice", "bob")
                ]
                starts = [(await sock.expect("connected"))["seq"] for sock in socks]
                stop = asyncio.Event()
                writer = asyncio.create_task(
                    _write_steadily(url, world.public, world.users["dave"], 100, stop)
                )
                await _written_past(url, world.public, max(starts), "before the outage")
                if outage == "postgres restarts":
                    await asyncio.to_thread(pg.restart)
                else:
                    proxy.cut()
                    await asyncio.sleep(3)  # the outage's length
                    proxy.start()
                await _written_past(url, world.public, await latest_seq(url, world.public), "after it")
                stop.set()
                assert await writer > 100
                for replica in [*started, *cut]:
                    await asyncio.to_thread(replica.wait_ready, 30)
                await _everyone_gets_everything(socks, starts, url, world.public)
    finally:
        proxy.cut()


# ---------------------------------------------------------------------------------------------
# 10. A pool run dry holds up no live event
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_pool(db_url: str, world: World, log_dir: Path) -> Iterator[Replica]:
    with replicas(db_url, log_dir, 1, TRACKTALK_POOL_MAX="2", TRACKTALK_POOL_TIMEOUT="8") as started:
        yield started[0]


async def test_live_events_flow_while_the_pool_is_exhausted(
    small_pool: Replica, world: World, db_url: str
) -> None:
    """The pool's two connections are held (two posts waiting on a lock); the listener loses its
    connection and comes back, which makes the feed check every track against the database, and
    a socket arrives for a track nobody watches here yet. Neither may hold up a live event."""
    track = f"t-pool-{uuid.uuid4().hex[:6]}"  # watched by this replica alone: its channel names its listener
    new_track(db_url, track_id=track)
    channel = track_channel(track)
    async with open_socket(small_pool.ws, track, world.tokens["carol"]) as watcher:
        await watcher.expect("connected")
        async with await psycopg.AsyncConnection.connect(db_url) as locker:
            await locker.execute("LOCK TABLE comments IN ACCESS EXCLUSIVE MODE")
            async with httpx.AsyncClient(base_url=small_pool.http, timeout=30) as client:
                stuck = [
                    asyncio.create_task(
                        client.post(
                            f"/api/tracks/{world.public}/comments",
                            json={"content": "stuck", "timestamp": 1},
                            headers=world.auth(who),
                        )
                    )
                    for who in ("alice", "bob")
                ]
                await async_wait_until(
                    lambda: _waiting_on_locks(db_url, 2), 10, "both posts to wait on the lock"
                )
                killed_at = (await sql(db_url, "SELECT now()"))[0][0]
                await sql(  # every replica's listener: this one's among them
                    db_url,
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name = 'tracktalk-listener' AND datname = current_database()",
                )
                await async_wait_until(
                    lambda: _listening_again(db_url, killed_at, channel), 10, "the listener to be back"
                )
                joining = asyncio.create_task(_first_message(small_pool, world.other, world.tokens["dave"]))
                began = time.monotonic()
                await sql(
                    db_url,
                    "INSERT INTO track_likes (track_id, user_id) VALUES (%s, %s)",
                    (track, world.users["bob"]),
                )
                metrics = await watcher.expect("track_metrics", timeout=5)
                assert time.monotonic() - began < 1.0, "the live event waited for the pool"
                assert metrics["likes"] == 1
                await locker.rollback()
                for answer in await asyncio.gather(*stuck):
                    assert answer.status_code in (201, 503)
                assert (await joining)["type"] == "connected"


async def _waiting_on_locks(db_url: str, count: int) -> bool:
    rows = await sql(
        db_url,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND application_name = 'tracktalk' AND wait_event_type = 'Lock'",
    )
    return int(rows[0][0]) >= count


async def _listening_again(db_url: str, since: Any, channel: str) -> bool:
    """A listener that connected after `since` has LISTENed on `channel` (once back, a listener
    LISTENs on all its channels in one statement)."""
    rows = await sql(
        db_url,
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'tracktalk-listener'"
        " AND backend_start > %s AND query LIKE %s",
        (since, f"%{channel}%"),
    )
    return int(rows[0][0]) >= 1


async def _first_message(replica: Replica, track: str, token: str) -> dict[str, Any]:
    async with open_socket(replica.ws, track, token) as sock:
        return await sock.recv(timeout=20)
