"""The Python client (`tracktalk.client`) against a scripted WebSocket server in the test's own
process (no tracktalk in it: tests/support/host_app.py): what it yields (each durable event once, in
order; `skip` moves the count; a message it does not know comes as `Other`), when it reconnects (a
gap resumes at once from the last event; 1001 from a live socket at once; 1011 and a dropped
connection after the backoff), how it renews a token (4001) and when it stops (1008, a second
expiry, a handshake answered 404); and the /api/ws topics client: subscriptions sent, resumed per
topic after a drop, refused ones not asked for again. Times are the server's, taken as the
connections arrive."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from app.backoff import Backoff
from app.wire import CommentLiked, Connected
from tests.support.host_app import TRACK, Scripted, ScriptedServer, connected, liked
from tests.support.processes import free_port
from tests.support.waiting import async_wait_until
from tracktalk.client import (
    Other,
    Refused,
    Subscribed,
    SubscribeError,
    TopicMessage,
    Topics,
    TrackFeed,
)

pytestmark = pytest.mark.timeout(60)

WAIT = 10.0


@pytest.fixture
async def scripted() -> AsyncIterator[ScriptedServer]:
    server = ScriptedServer()
    async with serve(server._handle, "127.0.0.1", server.port) as running:
        server.server = running
        yield server


class Reader:
    """An iteration of a feed in a task of its own; what it yielded, and how it ended."""

    def __init__(self, feed: AsyncIterator[Any]) -> None:
        self.items: list[Any] = []
        self.task = asyncio.create_task(self._read(feed))

    async def _read(self, feed: AsyncIterator[Any]) -> None:
        async for item in feed:
            self.items.append(item)

    async def has(self, count: int) -> list[Any]:
        await async_wait_until(lambda: len(self.items) >= count or self.task.done(), WAIT, f"{count} items")
        if len(self.items) < count:
            self.task.result()
        return self.items

    async def ended(self) -> BaseException | None:
        """How the iteration ended: None, or the exception it raised."""
        done, _ = await asyncio.wait({self.task}, timeout=WAIT)
        assert done, "the iteration did not end"
        return self.task.exception()


async def send(conn: Scripted, message: dict[str, Any]) -> None:
    await conn.conn.send(json.dumps(message))


async def test_durable_events_once_in_order_and_a_gap_resumes_from_the_last(scripted: ScriptedServer) -> None:
    feed = TrackFeed(scripted.http, TRACK, token="t0", backoff=Backoff(5.0, 5.0))
    reader = Reader(feed)
    first = await scripted.next()
    assert first.query == {"token": "t0"}
    await first.send(connected(0))
    for seq in (1, 2, 2, 1):  # a duplicate, and an older one
        await first.send(liked(seq))
    await send(first, {"type": "skip", "track_id": TRACK, "seq": 3})  # hidden from this socket
    await send(  # a durable message of a newer server, unknown to this client
        first, {"type": "comment_sparkled", "track_id": TRACK, "seq": 4, "comment_id": 9, "sparkles": 3}
    )
    await send(first, {"type": "wave", "track_id": TRACK})  # ephemeral, unknown
    gap_at = time.monotonic()
    await first.send(liked(6))  # 5 is missing: a gap
    second = await scripted.next()  # at once (not after the backoff's 5 s), from the last event delivered
    assert second.at - gap_at < 2.5
    assert second.query == {"token": "t0", "since": "4"}
    await second.send(connected(6))
    await second.send(liked(5))
    await second.send(liked(6))
    items = await reader.has(8)
    await feed.aclose()
    assert await reader.ended() is None
    kinds = [(type(item).__name__, getattr(item, "seq", None)) for item in items]
    assert kinds == [
        ("Connected", 0),
        ("CommentLiked", 1),
        ("CommentLiked", 2),
        ("Other", 4),
        ("Other", None),
        ("Connected", 6),
        ("CommentLiked", 5),
        ("CommentLiked", 6),
    ]
    assert items[3] == Other(
        "comment_sparkled",
        4,
        {"type": "comment_sparkled", "track_id": TRACK, "seq": 4, "comment_id": 9, "sparkles": 3},
    )
    assert (feed.last_seq, feed.status) == (6, "closed")


async def test_1001_or_1013_from_a_live_socket_resumes_at_once(scripted: ScriptedServer) -> None:
    feed = TrackFeed(scripted.http, TRACK, token="t", backoff=Backoff(5.0, 5.0))
    reader = Reader(feed)
    one = await scripted.next()
    await one.send(connected(3))
    await one.send(liked(4))
    closed_at = await one.close(1001, "server shutting down: reconnect")
    two = await scripted.next()  # not after the backoff's 5 s
    assert two.at - closed_at < 2.5 and two.query["since"] == "4"
    await two.send(connected(4))
    closed_at = await two.close(1013, "too slow: reconnect with since=<last seq>")
    three = await scripted.next()
    assert three.at - closed_at < 2.5 and three.query["since"] == "4"
    await feed.aclose()
    assert await reader.ended() is None


async def test_1011_or_a_cut_connection_resumes_after_the_backoff(scripted: ScriptedServer) -> None:
    feed = TrackFeed(scripted.http, TRACK, token="t", backoff=Backoff(1.2, 1.2))
    reader = Reader(feed)
    one = await scripted.next()
    await one.send(connected(3))
    await one.send(liked(4))
    await reader.has(2)
    closed_at = await one.close(1011, "server error (logged): reconnect with since=<last seq>")
    two = await scripted.next()
    assert two.at - closed_at >= 1.2 and two.query["since"] == "4"
    await two.send(connected(4))
    await reader.has(3)
    two.conn.transport.abort()  # no close frame: a killed replica, a cut network
    cut_at = time.monotonic()
    three = await scripted.next()
    assert three.at - cut_at >= 1.2 * 0.99  # (the client may see the cut a moment before cut_at)
    await feed.aclose()
    assert await reader.ended() is None


async def test_an_expired_token_is_renewed_once_and_a_second_expiry_stops(scripted: ScriptedServer) -> None:
    asked: list[bool] = []

    async def token(*, expired: bool) -> str:
        asked.append(expired)
        return f"token-{len(asked)}"

    feed = TrackFeed(scripted.http, TRACK, token=token)
    reader = Reader(feed)
    one = await scripted.next()
    await one.send(connected(1))
    await one.close(4001, "token expired")
    two = await scripted.next()
    assert (one.query["token"], two.query["token"]) == ("token-1", "token-2")
    await two.close(1008, "token expired")  # at the handshake, before `connected`: the fresh one is no better
    refused = await reader.ended()
    assert isinstance(refused, Refused) and (refused.code, refused.reason) == (1008, "token expired")
    assert asked == [False, True]
    scripted.assert_no_more()


async def test_a_refusal_ends_the_iteration_with_its_reason(scripted: ScriptedServer) -> None:
    reader = Reader(TrackFeed(scripted.http, TRACK, token="t"))
    one = await scripted.next()
    await one.close(1008, "track not found")
    refused = await reader.ended()
    assert isinstance(refused, Refused) and (refused.code, refused.reason) == (1008, "track not found")
    assert reader.items == []
    scripted.assert_no_more()


async def test_a_handshake_answered_with_a_client_error_is_a_refusal() -> None:
    def not_here(conn: ServerConnection, request: Request) -> Response:
        return conn.respond(404, "no such thing here\n")

    async def never(conn: ServerConnection) -> None:
        raise AssertionError("no handshake should succeed")

    port = free_port()
    async with serve(never, "127.0.0.1", port, process_request=not_here):
        with pytest.raises(Refused) as refused:
            async for _ in TrackFeed(f"http://127.0.0.1:{port}", TRACK):
                pass
    assert refused.value.code == 404


def test_what_a_feed_is_given_is_checked() -> None:
    for wrong in ("ftp://x", "127.0.0.1:8000", ""):
        with pytest.raises(ValueError, match="base_url"):
            TrackFeed(wrong, TRACK)
    with pytest.raises(ValueError, match="tag"):
        TrackFeed("http://x", TRACK, tag="abc")
    with pytest.raises(ValueError, match="since"):
        TrackFeed("http://x", TRACK, since=-1)


async def test_topics_are_subscribed_resumed_each_from_its_own_seq_and_refused_ones_let_go(
    scripted: ScriptedServer,
) -> None:
    topics = Topics(scripted.http, token="t")
    await topics.subscribe("track:a")
    await topics.subscribe("thread:7", since=3, tag="abc")
    reader = Reader(topics)
    one = await scripted.next()
    assert one.query == {"token": "t"}
    await async_wait_until(lambda: len(one.frames) == 2, WAIT, "two subscriptions")
    assert one.frames == [
        {"type": "subscribe", "topic": "track:a"},
        {"type": "subscribe", "topic": "thread:7", "since": 3, "tag": "abc"},
    ]
    await topics.subscribe("category:nope")
    await async_wait_until(lambda: len(one.frames) == 3, WAIT, "a third subscription")
    await send(one, {"type": "subscribed", "topic": "track:a", "seq": 0, "tag": None})
    await send(one, {"type": "subscribed", "topic": "thread:7", "seq": 5, "tag": "def"})
    await send(one, {"type": "subscribe_error", "topic": "category:nope", "reason": "not found"})
    await send(one, {"topic": "thread:7", "type": "new_post", "seq": 4, "tag": "e4", "post": {"id": 1}})
    await send(one, {"topic": "track:a", **json.loads(json.dumps(_liked(1)))})
    await send(one, {"topic": "track:a", **_liked(1)})  # a duplicate
    await send(one, {"topic": "thread:7", "type": "new_post", "seq": 5, "tag": "e5", "post": {"id": 2}})
    await send(one, {"type": "hello"})  # the user's own, no topic
    items = await reader.has(7)
    assert [(item.topic, type(item.message).__name__) for item in items] == [
        ("track:a", "Subscribed"),
        ("thread:7", "Subscribed"),
        ("category:nope", "SubscribeError"),
        ("thread:7", "Other"),
        ("track:a", "CommentLiked"),
        ("thread:7", "Other"),
        (None, "Other"),
    ]
    assert items[2] == TopicMessage(
        "category:nope", SubscribeError(topic="category:nope", reason="not found")
    )
    assert isinstance(items[1].message, Subscribed) and isinstance(items[4].message, CommentLiked)
    assert (topics.last_seq("track:a"), topics.last_seq("thread:7"), topics.last_tag("thread:7")) == (
        1,
        5,
        "e5",
    )
    closed_at = await one.close(1001, "server shutting down: reconnect")
    two = await scripted.next()
    assert two.at - closed_at < 1.0
    await async_wait_until(lambda: len(two.frames) == 2, WAIT, "the subscriptions again")
    assert sorted(two.frames, key=lambda frame: frame["topic"]) == [
        {"type": "subscribe", "topic": "thread:7", "since": 5, "tag": "e5"},
        {"type": "subscribe", "topic": "track:a", "since": 1, "tag": "0a"},
    ]
    await topics.unsubscribe("thread:7")
    await topics.typing("track:a", True)
    await async_wait_until(lambda: len(two.frames) == 4, WAIT, "unsubscribe and typing")
    assert two.frames[2:] == [
        {"type": "unsubscribe", "topic": "thread:7"},
        {"type": "typing", "topic": "track:a", "is_typing": True},
    ]
    await topics.aclose()
    assert await reader.ended() is None


def _liked(seq: int) -> dict[str, Any]:
    message = CommentLiked(track_id="a", seq=seq, comment_id=1, like_count=seq, tag="0a")
    return {"type": "comment_liked", **{f: getattr(message, f) for f in message.__struct_fields__}}


_ = Connected  # (the decoded types the assertions name)


async def test_a_subscribe_refused_for_coming_too_fast_is_sent_again_after_the_wait(
    scripted: ScriptedServer,
) -> None:
    topics = Topics(scripted.http, token="t")
    await topics.subscribe("track:a")
    reader = Reader(topics)
    one = await scripted.next()
    await async_wait_until(lambda: len(one.frames) == 1, WAIT, "the subscription")
    refused_at = time.monotonic()
    await send(
        one,
        {
            "type": "subscribe_error",
            "topic": "track:a",
            "reason": "too many topics",
            "message": "subscribing too fast",
            "retry_after": 0.3,
        },
    )
    await async_wait_until(lambda: len(one.frame_times) == 2, WAIT, "the subscription again")
    assert one.frames[1] == {"type": "subscribe", "topic": "track:a"}
    assert one.frame_times[1] - refused_at >= 0.3
    await send(one, {"type": "subscribed", "topic": "track:a", "seq": 2})
    (item,) = await reader.has(1)
    assert item == TopicMessage("track:a", Subscribed(topic="track:a", seq=2))
    await topics.aclose()
    assert await reader.ended() is None


async def test_a_frame_that_is_no_message_is_skipped_and_a_failing_token_callback_tried_again(
    scripted: ScriptedServer,
) -> None:
    calls: list[bool] = []

    def token(*, expired: bool) -> str:
        calls.append(expired)
        if len(calls) == 1:
            raise ConnectionError("the identity provider is away")
        return "t"

    feed = TrackFeed(scripted.http, TRACK, token=token, backoff=Backoff(0.2, 0.2))
    reader = Reader(feed)
    one = await scripted.next()  # after the backoff
    assert one.query == {"token": "t"} and calls == [False, False]
    await one.send(connected(0))
    await one.conn.send("not json")
    await send(one, {"no": "type"})
    await one.send(liked(1))
    items = await reader.has(2)
    assert [type(item).__name__ for item in items] == ["Connected", "CommentLiked"]
    await feed.aclose()
    assert await reader.ended() is None
