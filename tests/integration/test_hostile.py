"""Holes a hostile reader or a careless SQL writer would find, closed, through real replicas.

The NOTIFY channels (any role that can connect may LISTEN and NOTIFY on a channel it can name),
re-created tracks, access taken away from open sockets, sockets opened all at once, statements
and outages too big for a payload, and a pool that runs dry. docs/security.md lists each with its
test.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
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
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from app.auth.hs256 import issue_token
from app.data.events import read_channel_key
from app.dev.embedded import EmbeddedPostgres
from app.live.notices import Codec
from tests.support.metrics import metric
from tests.support.processes import SECRET, Replica, replicas
from tests.support.proxies import TcpProxy
from tests.support.seed import World, new_track, seed
from tests.support.sockets import RECV_TIMEOUT, Socket, open_socket
from tests.support.waiting import async_wait_until
from tests.support.writes import insert_comment, post_comment, sql

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
        (
            await sql(
                db_url,
                "SELECT coalesce((SELECT last_seq FROM tracktalk.topic_state WHERE topic = 'track:' || %s), 0)",
                (track,),
            )
        )[0][0]
    )


async def key_holder(db_url: str) -> Codec:
    """What only tracktalk's roles have: the channel key (read here as the superuser), as a Codec
    that names the channels and signs. The tests hand its channel names to the forger, as to one
    that learned them somehow (the worst case): it still has no key to sign with."""
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        return Codec(await read_channel_key(conn))


def outsiders_names(track_ids: list[str], user_ids: list[int]) -> list[str]:
    """Every channel name an outsider could compute before names came from the key: the one
    channel of old, the md5 of each track id, each user id."""
    return [
        "tracktalk",
        *(f"tracktalk:t:{hashlib.md5(t.encode()).hexdigest()}" for t in track_ids),
        *(f"tracktalk:u:{u}" for u in user_ids),
    ]


class Arrivals:
    """A socket's messages with the moment each arrived (time.monotonic()), read by a task of
    their own from the moment this is made (so the stamp is the arrival, not when a test looks)."""

    def __init__(self, sock: Socket) -> None:
        self.sock = sock
        self.got: list[tuple[float, dict[str, Any]]] = []
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                message = await self.sock.recv(timeout=3600)
                self.got.append((time.monotonic(), message))

    def of(self, kind: str) -> list[tuple[float, dict[str, Any]]]:
        return [(at, m) for at, m in self.got if m["type"] == kind]

    async def comments(self, count: int, timeout: float) -> dict[int, float]:
        """Wait for `count` new_comment messages; comment id -> arrival."""
        await async_wait_until(lambda: len(self.of("new_comment")) >= count, timeout, f"{count} comments")
        return {m["comment"]["id"]: at for at, m in self.of("new_comment")}

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def write_comments(
    db_url: str, track: str, user: int, rate: float, stop: asyncio.Event
) -> dict[int, float]:
    """Comments on `track` at `rate` a second until `stop`: comment id -> when its commit
    returned (time.monotonic())."""
    committed: dict[int, float] = {}
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        began = time.monotonic()
        while not stop.is_set():
            cur = await conn.execute(
                "INSERT INTO comments (track_id, user_id, content) VALUES (%s, %s, 'busy') RETURNING id",
                (track, user),
            )
            row = await cur.fetchone()
            assert row is not None
            committed[int(row[0])] = time.monotonic()
            wait = began + len(committed) / rate - time.monotonic()
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), wait)
    return committed


def lateness(committed: dict[int, float], arrived: dict[int, float]) -> list[float]:
    """Seconds from each comment's commit to its arrival (every committed one must have come)."""
    missing = set(committed) - set(arrived)
    assert not missing, f"{len(missing)} comments never arrived"
    return sorted(arrived[c] - committed[c] for c in committed)


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
        names = await key_holder(db_url)  # the spy is told the real names: the worst case
        for channel in (
            names.track_channel(world.private),
            names.user_channel(world.users["carol"]),
            names.user_channel(world.users["tina"]),
            *outsiders_names([world.private], [world.users["carol"], world.users["tina"]]),
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
    """Forgeries that would pass every other check (a fresh `at`, the right `prev` tag: the
    forger listened), on the track's real channel (the forger learned its name), on the names of
    old: unsigned, signed with zeros, signed with another key. Only the signature stops them."""
    track = world.other
    names = await key_holder(db_url)
    async with (
        hostile_role(db_url) as url,
        await psycopg.AsyncConnection.connect(url, autocommit=True) as forger,
        open_socket(pair[0].ws, track, world.tokens["alice"]) as on_a,
        open_socket(pair[1].ws, track, world.tokens["bob"]) as on_b,
    ):
        hello = await on_a.expect("connected")
        start, tag = hello["seq"], hello["tag"]
        assert (await on_b.expect("connected"))["tag"] == tag
        fake = {
            "type": "new_comment",
            "track_id": track,
            "comment": {
                "id": 999999,
                "user_id": 1,
                "username": "x",
                "author_is_creator": False,
                "author_is_team": False,
                "track_id": track,
                "parent_id": None,
                "content": "forged",
                "timestamp": 1.0,
                "is_edited": False,
                "created_at": "2026-01-01T00:00:00Z",
                "last_edited_at": None,
                "like_count": 0,
                "user_has_liked": False,
            },
            "metrics": {"likes": 0, "comments": 0, "shares": 0},
        }
        forgeries = [
            # a jump of a billion, then the next seq with made-up content
            {"k": "track", "track_id": track, "first": start + 10**9, "last": start + 10**9, "tag": "f" * 16},
            {
                "k": "track",
                "track_id": track,
                "first": start + 1,
                "last": start + 1,
                "tag": "f" * 16,
                "prev": tag,
                "events": [{**fake, "seq": start + 1, "tag": "f" * 16}],
            },
        ]
        stranger = Codec(os.urandom(32))
        for channel in (names.track_channel(track), *outsiders_names([track], [])):
            for forged in forgeries:
                body = json.dumps({**forged, "at": time.time()})
                for payload in (body, "0" * 64 + " " + body, stranger.sign(body.encode()).decode()):
                    await forger.execute("SELECT pg_notify(%s, %s)", (channel, payload))
            await forger.execute(
                "SELECT pg_notify(%s, %s)",
                (channel, "e:" + "A" * 80),  # a sealed typing notice without the key
            )
        for channel in (names.user_channel(world.users["alice"]), f"tracktalk:u:{world.users['alice']}"):
            body = json.dumps({"k": "user", "user": world.users["alice"], "ids": [1], "at": time.time()})
            await forger.execute("SELECT pg_notify(%s, %s)", (channel, stranger.sign(body.encode()).decode()))
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


async def test_a_forger_on_a_busy_tracks_channel_makes_no_resync_and_delays_nothing(
    pair: list[Replica], world: World, db_url: str
) -> None:
    """Issue 23, item 2: a forged payload once a second on a busy track's channel (its real name:
    the forger learned it) made the replicas read the log in two reads, and a commit between them
    sent `resync` to every socket of the track (7 in 30 s at ~190 writes/s). Two tracks, 100
    comments a second on each, a forger on each once a second, for 8 s: no `resync`, and no
    comment later than 0.5 s after its commit."""
    tracks = [new_track(db_url) for _ in range(2)]
    names = await key_holder(db_url)
    stop = asyncio.Event()
    async with hostile_role(db_url) as url, contextlib.AsyncExitStack() as stack:
        forger = await stack.enter_async_context(await psycopg.AsyncConnection.connect(url, autocommit=True))
        watchers: list[tuple[str, Arrivals]] = []
        for track in tracks:
            for replica, who in zip(pair, ("alice", "bob"), strict=True):
                sock = await stack.enter_async_context(open_socket(replica.ws, track, world.tokens[who]))
                await sock.expect("connected")
                watchers.append((track, Arrivals(sock)))
        writers = [
            asyncio.create_task(write_comments(db_url, track, world.users["dave"], 100, stop))
            for track in tracks
        ]
        for second in range(8):
            for track in tracks:
                body = json.dumps({"k": "track", "track_id": track, "first": 1, "last": 1, "at": time.time()})
                for channel in (names.track_channel(track), *outsiders_names([track], [])):
                    await forger.execute("SELECT pg_notify(%s, %s)", (channel, body))
            await asyncio.sleep(1.0)
            assert not any(w.done() for w in writers), f"a writer stopped after {second} s"
        stop.set()
        committed = dict(zip(tracks, await asyncio.gather(*writers), strict=True))
        worst = 0.0
        for track, arrivals in watchers:
            arrived = await arrivals.comments(len(committed[track]), timeout=30)
            await arrivals.stop()
            assert arrivals.of("resync") == []
            worst = max(worst, lateness(committed[track], arrived)[-1])
    assert sum(map(len, committed.values())) > 1200
    assert worst <= 0.5, f"a comment arrived {worst:.2f} s after its commit"


async def test_a_notify_flood_on_every_name_an_outsider_can_compute_delays_no_comment(
    pair: list[Replica], world: World, db_url: str
) -> None:
    """Issue 23, item 3: channel names came from public ids (the md5 of a track's id, a user's id),
    so a flood of 1M unsigned NOTIFYs on them reached every replica, which checked each: a comment
    on another track arrived 1.5 s late. Now no outsider can name a channel a replica listens on:
    1.5M NOTIFYs over every name an outsider can compute for the tracks and users in play (and
    the one channel of old), then a comment on each track, which arrives within 0.5 s."""
    watched, other = new_track(db_url), new_track(db_url)
    users = [world.users[who] for who in ("alice", "bob", "carol", "dave")]
    flooded = outsiders_names([watched, other, world.public], users)
    async with hostile_role(db_url) as url, contextlib.AsyncExitStack() as stack:
        flooder = await stack.enter_async_context(await psycopg.AsyncConnection.connect(url, autocommit=True))
        arrivals = []
        for replica, who, track in (
            (pair[0], "alice", watched),
            (pair[1], "bob", other),
            (pair[1], "carol", watched),
        ):
            sock = await stack.enter_async_context(open_socket(replica.ws, track, world.tokens[who]))
            await sock.expect("connected")
            arrivals.append(Arrivals(sock))
        async with flooder.transaction():  # one commit: the replicas meet the whole flood at once
            for part in range(6):
                await flooder.execute(
                    'SELECT pg_notify((%s::text[])[1 + i %% %s], \'{"k":"track","track_id":"x","first":\''
                    " || i || ',\"last\":' || i || ',\"at\":' || extract(epoch FROM now()) || '}')"
                    " FROM generate_series(%s::bigint, %s::bigint) AS i",
                    (flooded, len(flooded), part * 250_000 + 1, (part + 1) * 250_000),
                )
        committed = {}
        for track in (watched, other):
            comment = await insert_comment(db_url, track, world.users["dave"], "after the flood")
            committed[comment] = time.monotonic()
        for sock in arrivals:
            arrived = await sock.comments(1, timeout=30)
            await sock.stop()
            late = [arrived[c] - committed[c] for c in arrived]
            assert late and max(late) <= 0.5, f"a comment arrived {max(late):.2f} s after its commit"


async def test_a_tag_that_is_not_an_events_is_refused_with_a_reason(
    pair: list[Replica], world: World
) -> None:
    token = world.tokens["alice"]
    for query, reason in (
        ("tag=abc", "invalid tag: give it with since=, as the tag of the event at that seq"),
        ("since=1&tag=XYZ", "invalid tag: give the tag of the event at since=, up to 32 hex digits"),
        ("since=1&tag=" + "a" * 33, "invalid tag: give the tag of the event at since=, up to 32 hex digits"),
    ):
        url = f"{pair[0].ws}/api/ws/track/{world.public}?token={token}&{query}"
        async with connect(url, open_timeout=RECV_TIMEOUT, close_timeout=2) as conn:
            assert await Socket(conn).closed() == (1008, reason)


async def test_the_channel_names_of_the_sql_are_the_replicas(db_url: str, world: World) -> None:
    names = await key_holder(db_url)
    rows = await sql(
        db_url,
        "SELECT tracktalk.track_channel(%s), tracktalk.track_channel('🎵'), tracktalk.user_channel(%s)",
        (world.public, world.users["alice"]),
    )
    assert rows[0] == (
        names.track_channel(world.public),
        names.track_channel("🎵"),
        names.user_channel(world.users["alice"]),
    )


async def test_rotating_the_channel_key_with_sockets_open_loses_nothing_and_delays_little(
    pair: list[Replica], world: World, db_url: str
) -> None:
    """A new key renames every channel: the replicas must hear of it, LISTEN under the new names
    and read what committed meanwhile. Two replicas, a writer at 50 comments a second through
    `SELECT tracktalk.rotate_channel_key()`: every comment arrives, in order, none more than 2 s
    after its commit; the old names are no longer listened on."""
    track = new_track(db_url)
    old_names = await key_holder(db_url)
    reconnects = [await metric(r, "tracktalk_listener_reconnects_total") for r in pair]
    stop = asyncio.Event()
    async with contextlib.AsyncExitStack() as stack:
        watching = []
        for replica, who in zip(pair, ("alice", "bob"), strict=True):
            sock = await stack.enter_async_context(open_socket(replica.ws, track, world.tokens[who]))
            await sock.expect("connected")
            watching.append(Arrivals(sock))
        writer = asyncio.create_task(write_comments(db_url, track, world.users["dave"], 50, stop))
        await asyncio.sleep(1.0)
        await sql(db_url, "SELECT tracktalk.rotate_channel_key()")
        await asyncio.sleep(2.0)
        stop.set()
        committed = await writer
        for arrivals in watching:
            arrived = await arrivals.comments(len(committed), timeout=30)
            await arrivals.stop()
            assert arrivals.of("resync") == []
            seqs = [m["seq"] for _, m in arrivals.got if "seq" in m and m["type"] != "connected"]
            assert seqs == sorted(seqs) and len(seqs) == len(set(seqs))
            worst = lateness(committed, arrived)[-1]
            assert worst <= 2.0, f"a comment arrived {worst:.2f} s after its commit"
    assert (await key_holder(db_url)).track_channel(track) != old_names.track_channel(track)
    for replica, before in zip(pair, reconnects, strict=True):
        # Each followed the rotation through the notice (not its minute's reading), on the same
        # connection (not by a reconnect's catch-up).
        assert await metric(replica, "tracktalk_channel_key_changes_total") >= 1
        assert await metric(replica, "tracktalk_listener_reconnects_total") == before


async def test_a_comment_signed_before_a_rotation_and_committed_after_it_arrives(
    pair: list[Replica], world: World, db_url: str
) -> None:
    """A transaction that wrote (and signed, under the old key) before the rotation and commits
    after the replicas moved to the new names sends its NOTIFY where nobody listens any more: the
    replicas read the log again as the transactions that were running at the rotation end."""
    track = new_track(db_url)
    async with contextlib.AsyncExitStack() as stack:
        socks = []
        for replica, who in zip(pair, ("alice", "bob"), strict=True):
            sock = await stack.enter_async_context(open_socket(replica.ws, track, world.tokens[who]))
            await sock.expect("connected")
            socks.append(sock)
        changes = [await metric(r, "tracktalk_channel_key_changes_total") for r in pair]
        reconnects = [await metric(r, "tracktalk_listener_reconnects_total") for r in pair]
        slow = await stack.enter_async_context(await psycopg.AsyncConnection.connect(db_url))
        cur = await slow.execute(
            "INSERT INTO comments (track_id, user_id, content) VALUES (%s, %s, 'slow') RETURNING id",
            (track, world.users["dave"]),
        )
        row = await cur.fetchone()
        assert row is not None
        await sql(db_url, "SELECT tracktalk.rotate_channel_key()")
        for replica, before in zip(pair, changes, strict=True):
            await async_wait_until(
                lambda r=replica, n=before: _more(r, n), 10, "the replica to take the new key"
            )
        await slow.commit()
        committed = time.monotonic()
        for sock in socks:
            event = (await sock.events(1, timeout=10))[0]
            assert event["comment"]["id"] == row[0]
        assert time.monotonic() - committed < 3.0
        # Read from the log as the transactions of the rotation ended, not by a reconnect.
        assert [await metric(r, "tracktalk_listener_reconnects_total") for r in pair] == reconnects


async def _more(replica: Replica, than: float) -> bool:
    return await metric(replica, "tracktalk_channel_key_changes_total") > than


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
    await sql(
        db_url, "DELETE FROM tracktalk.events WHERE topic = 'track:' || %s AND seq = %s", (track, left_at + 3)
    )
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
        # Off the team, tina still watches the public track: told to reload (she no longer
        # moderates it: what only moderators see goes from her page), then its events go on.
        await tina_public.expect("resync")
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
        # The whole thread, as a DBA removes one (with replies, a comment alone would stay as a
        # tombstone: one event): one statement, 201 rows.
        async with await psycopg.AsyncConnection.connect(db_url) as conn, conn.transaction():
            await conn.execute("SET LOCAL tracktalk.delete_threads = on")
            await conn.execute("DELETE FROM comments WHERE id = %s", (parent,))
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
        rows = await sql(
            url,
            "SELECT coalesce((SELECT last_seq FROM tracktalk.topic_state WHERE topic = 'track:' || %s), 0)",
            (track,),
        )
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
    channel = (await key_holder(db_url)).track_channel(track)
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
