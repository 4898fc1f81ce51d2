"""/api/ws, one socket of many topics, through real replicas and PostgreSQL: resume per topic across
a cut, the same seqs on two replicas, revocation of one topic, refusals, per-audience events
published by SQL, and the log's pages cut in bytes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool

from app.data.events import EventLog
from tests.support.processes import Replica
from tests.support.seed import World, new_track
from tests.support.sockets import TopicSocket, open_socket, open_topics
from tests.support.writes import insert_comment, post_comment, sql

pytestmark = pytest.mark.timeout(180)


def shape(events: list[dict[str, Any]]) -> list[tuple[int, str, Any]]:
    """What two sockets must agree on: seq, type and the comment concerned."""
    return [(e["seq"], e["type"], e.get("comment", {}).get("id", e.get("comment_id"))) for e in events]


def durable(sock: TopicSocket, topic: str) -> list[dict[str, Any]]:
    return [m for m in sock.by_topic[topic] if "seq" in m and m["type"] not in ("subscribed", "resync")]


async def last_seq(db_url: str, topic: str) -> int:
    rows = await sql(
        db_url, "SELECT coalesce((SELECT last_seq FROM tracktalk.topic_state WHERE topic = %s), 0)", (topic,)
    )
    return int(rows[0][0])


async def test_three_topics_cut_off_and_resumed_with_three_since_get_every_event_once_in_order(
    pair: list[Replica], world: World, db_url: str
) -> None:
    a, b = pair
    tracks = [new_track(db_url) for _ in range(3)]
    topics = [f"track:{t}" for t in tracks]
    per_track = 15

    async def write() -> None:
        for i in range(per_track):
            for track in tracks:
                await insert_comment(db_url, track, world.users["bob"], f"c{i}")
            await asyncio.sleep(0.01)

    seen: dict[str, list[dict[str, Any]]] = {topic: [] for topic in topics}
    async with open_topics(a.ws, world.tokens["alice"]) as first:
        for topic in topics:
            assert (await first.subscribe(topic))["seq"] == 0
        writer = asyncio.create_task(write())
        await first.until(lambda: sum(len(durable(first, t)) for t in topics) >= 6, "a few events")
        first.conn.transport.abort()  # cut off mid-stream, without a closing handshake
        for topic in topics:
            seen[topic] += durable(first, topic)
    for track in tracks:  # what commits while the socket is away (the writer goes on too)
        await insert_comment(db_url, track, world.users["dave"], "while away")
    resume = {topic: seen[topic][-1] if seen[topic] else None for topic in topics}
    async with open_topics(b.ws, world.tokens["alice"]) as second:  # back on the other replica
        for topic in topics:
            last = resume[topic]
            await second.subscribe(topic, since=last["seq"] if last else 0, tag=last["tag"] if last else None)
        await writer
        final = {topic: await last_seq(db_url, topic) for topic in topics}
        assert all(final[t] == per_track + 1 for t in topics)
        await second.until(
            lambda: all(len(seen[t]) + len(durable(second, t)) >= final[t] for t in topics), "every event"
        )
        await asyncio.sleep(0.2)  # nothing more (a duplicate would come now)
        with contextlib.suppress(TimeoutError):
            await second.recv(0.2)
        for topic in topics:
            got = [m["seq"] for m in seen[topic]] + second.seqs(topic)
            assert got == list(range(1, final[topic] + 1)), (topic, got)
            assert not second.answers(topic, "resync")


async def test_two_replicas_one_topic_the_same_seqs_as_each_other_and_as_the_track_socket(
    pair: list[Replica], world: World, db_url: str
) -> None:
    a, b = pair
    track = new_track(db_url)
    topic = f"track:{track}"
    async with (
        open_topics(a.ws, world.tokens["alice"]) as on_a,
        open_topics(b.ws, world.tokens["bob"]) as on_b,
        open_socket(a.ws, track, world.tokens["dave"]) as classic,
    ):
        assert (await on_a.subscribe(topic))["seq"] == (await on_b.subscribe(topic))["seq"] == 0
        await classic.expect("connected")
        await insert_comment(db_url, track, world.users["bob"], "by psql")
        await post_comment(a.http, world, "alice", track, "by the API")
        await sql(
            db_url,
            "INSERT INTO track_likes (track_id, user_id) VALUES (%s, %s)",
            (track, world.users["dave"]),
        )
        for sock in (on_a, on_b):
            await sock.until(lambda s=sock: len(durable(s, topic)) >= 3, "three events")  # type: ignore[misc]
        track_events = await classic.events(3)
        assert shape(durable(on_a, topic)) == shape(durable(on_b, topic)) == shape(track_events)
        assert [e["seq"] for e in track_events] == [1, 2, 3]
        assert all("topic" not in e for e in track_events)  # the track socket's contract: no topic
        assert {k: v for k, v in durable(on_a, topic)[0].items() if k != "topic"} == track_events[0]


async def test_a_revoked_topic_is_unsubscribed_within_5_s_and_the_socket_keeps_the_others(
    replica: Replica, world: World, db_url: str
) -> None:
    kept, lost = new_track(db_url), new_track(db_url)
    async with (
        open_topics(replica.ws, world.tokens["alice"]) as alice,
        open_topics(replica.ws, world.tokens["tina"]) as tina,
    ):
        for topic in (f"track:{kept}", f"track:{lost}"):
            await alice.subscribe(topic)
        await tina.subscribe(f"track:{lost}")
        await sql(db_url, "UPDATE tracks SET is_private = true WHERE id = %s", (lost,))
        await alice.until(
            lambda: bool(alice.answers(f"track:{lost}", "unsubscribed")), "the revocation", timeout=5
        )
        # A private track exists only for who may see it: to alice it is not found.
        assert alice.answers(f"track:{lost}", "unsubscribed")[0]["reason"] == "not found"
        await insert_comment(db_url, lost, world.users["carol"], "after")
        await insert_comment(db_url, kept, world.users["bob"], "kept")
        await alice.until(lambda: bool(durable(alice, f"track:{kept}")), "the kept topic's event")
        await tina.until(lambda: bool(durable(tina, f"track:{lost}")), "the team member's event")  # tina may
        assert durable(alice, f"track:{lost}") == [] and alice.conn.close_code is None


async def test_refusals_through_the_database(replica: Replica, world: World, db_url: str) -> None:
    async with open_topics(replica.ws, world.tokens["alice"]) as alice:
        for topic, reason in [
            ("track:no-such-track", "not found"),
            (f"track:{world.private}", "not found"),  # private: not known of, as over HTTP
            ("unknownkind:1", "not found"),
            ("thread:x", "invalid topic"),
        ]:
            await alice.send({"type": "subscribe", "topic": topic})
            await alice.until(lambda t=topic: bool(alice.answers(t, "subscribe_error")), topic)  # type: ignore[misc]
            assert alice.answers(topic, "subscribe_error")[0]["reason"] == reason, topic
        assert (await alice.subscribe(f"track:{world.public}"))["type"] == "subscribed"
    async with open_topics(replica.ws, world.tokens["carol"]) as carol:  # the album's creator may
        await carol.subscribe(f"track:{world.private}")


async def test_an_event_published_with_a_restricted_variant_reaches_moderators_and_author_only(
    replica: Replica, world: World, db_url: str
) -> None:
    """The hook issue 20 builds on: tracktalk.publish_track with a restricted variant, called as
    tracktalk's owner (as a trigger would); carol (the creator) and alice (the author) get the
    variant, bob gets `skip` with the same seq."""
    track = new_track(db_url)
    topic = f"track:{track}"
    socks = {}
    async with contextlib.AsyncExitStack() as stack:
        for name in ("carol", "alice", "bob"):
            socks[name] = await stack.enter_async_context(open_topics(replica.ws, world.tokens[name]))
            await socks[name].subscribe(topic)
        await sql(
            db_url,
            'SELECT tracktalk.publish_track(%s, ARRAY[\'{"type": "skip"}\'::jsonb],'
            ' restricted => ARRAY[\'{"type": "comment_pinned", "comment_id": 1, "pinned": true}\'::jsonb],'
            " authors => ARRAY[%s::bigint])",
            (track, world.users["alice"]),
        )
        for sock in socks.values():
            await sock.until(lambda s=sock: bool(durable(s, topic)), "the event")  # type: ignore[misc]
        got = {name: durable(sock, topic)[0] for name, sock in socks.items()}
        assert {name: (m["seq"], m["type"]) for name, m in got.items()} == {
            "carol": (1, "comment_pinned"),
            "alice": (1, "comment_pinned"),
            "bob": (1, "skip"),
        }
        assert got["bob"]["track_id"] == track and "comment_id" not in got["bob"]


@pytest.fixture
async def pool(db_url: str) -> AsyncIterator[AsyncConnectionPool]:
    async with AsyncConnectionPool(db_url, min_size=1, max_size=2, open=False) as opened:
        yield opened


async def test_a_page_of_the_log_is_cut_past_its_bytes_without_reading_the_rest(
    pool: AsyncConnectionPool, world: World, db_url: str
) -> None:
    track = new_track(db_url)
    for i in range(5):
        await insert_comment(db_url, track, world.users["bob"], f"{i}" + "x" * 90_000)
    log = EventLog(pool)
    whole = await log.page(f"track:{track}", 0, max_bytes=10_000_000)
    assert [row.seq for row in whole.rows] == [1, 2, 3, 4, 5] and not whole.more
    cut = await log.page(f"track:{track}", 0, max_bytes=200_000)
    assert [row.seq for row in cut.rows] == [1, 2, 3] and cut.more  # 3 rows: the third passes 200,000
    one = await log.page(f"track:{track}", 0, max_bytes=1)
    assert [row.seq for row in one.rows] == [1] and one.more  # at least one
    last = await log.page(f"track:{track}", 3, max_bytes=200_000)
    assert [row.seq for row in last.rows] == [4, 5] and not last.more and last.latest.seq == 5


async def test_a_kind_whose_access_function_raises_refuses_only_its_topics_and_says_nothing_of_why(
    replica: Replica, world: World, db_url: str
) -> None:
    """A kind registered by tracktalk.topic_kind whose may_see raises: its topic is `forbidden`
    (logged as a WARNING by the server), the subscribes asked in the same query are answered, and
    the error's text reaches no client. A function of another signature is refused at
    registration."""
    await sql(
        db_url,
        "CREATE OR REPLACE FUNCTION public.kind_raises(user_id bigint, topic text) RETURNS boolean"
        " LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'a secret detail'; END $$",
    )
    await sql(db_url, "SELECT tracktalk.topic_kind('boom', 'public.kind_raises(bigint, text)')")
    try:
        with pytest.raises(Exception, match="must be \\(user_id bigint, topic text\\) RETURNS boolean"):
            await sql(db_url, "SELECT tracktalk.topic_kind('bad', 'pg_catalog.upper(text)')")
        track = new_track(db_url)
        async with open_topics(replica.ws, world.tokens["alice"]) as alice:
            for topic in ("boom:1", f"track:{track}", "boom:2"):
                await alice.send({"type": "subscribe", "topic": topic})
            await alice.until(
                lambda: (
                    bool(
                        alice.answers("boom:1", "subscribe_error")
                        and alice.answers("boom:2", "subscribe_error")
                    )
                    and bool(alice.answers(f"track:{track}", "subscribed"))
                ),
                "the three answers",
            )
            refused = alice.answers("boom:1", "subscribe_error")[0]
            assert refused["reason"] == "forbidden" and "secret" not in str(alice.received)
    finally:
        await sql(db_url, "DELETE FROM tracktalk.topic_kinds WHERE kind = 'boom'")


async def test_a_topic_unsubscribed_during_its_replay_and_subscribed_again_gets_its_live_events(
    replica: Replica, world: World, db_url: str
) -> None:
    """The first subscribe's replay is reading the log when the unsubscribe ends it: psycopg
    cancels that query and waits for it, while the second subscribe is answered. The first one's
    end must not take the second one's subscription with it."""
    track = new_track(db_url)
    topic = f"track:{track}"
    await sql(
        db_url,
        "INSERT INTO comments (track_id, user_id, content, timestamp)"
        " SELECT %s, %s, repeat('x', 3000), 1 FROM generate_series(1, 2000)",
        (track, world.users["bob"]),
    )
    async with open_topics(replica.ws, world.tokens["alice"]) as alice:
        await alice.subscribe(topic, since=0)  # its replay (6 MB of the log) begins
        await alice.send({"type": "unsubscribe", "topic": topic})
        await alice.send({"type": "subscribe", "topic": topic})
        await alice.until(lambda: len(alice.answers(topic, "subscribed")) == 2, "the second subscribed")
        comment = await insert_comment(db_url, track, world.users["bob"], "live")
        await alice.until(
            lambda: any(
                m.get("comment", {}).get("id") == comment for m in alice.answers(topic, "new_comment")
            ),
            "the live comment",
        )
