"""/api/ws in-process: app/handlers/topic_sockets.py over fake services (tests/support/fakes.py),
the real feed, hub and connections.

Subscribe and unsubscribe, the limits (100 topics, the subscribe bucket), bad input, revocation of
one topic, resume with since= per topic, typing, the user's messages once per socket, and the
per-audience forms of an event. The same through real replicas: tests/integration/test_topics.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import msgspec
import psycopg
import pytest

from app.auth.hs256 import issue_token
from app.bounds import MAX_TOPICS, SUBSCRIBE_BURST
from app.data.batch import Batched
from app.edge.addresses import PerAddress
from app.handlers import topic_sockets
from app.handlers.sockets import PATH as TRACK_PATH
from app.handlers.sockets import TrackSockets
from app.handlers.topic_sockets import PATH, TopicSockets
from app.live import close_codes
from app.live.notices import Opened
from app.live.wsprotocol import EXTENSION
from app.wire import Revoke, TopicBatch, UserBatch
from tests.support.fakes import FakeConnection, FakeServices

SECRET = "unit-secret-0123456789-abcdefghijklmnop"
ALICE, BOB, CAROL = 1, 2, 3
USERS = {ALICE: "alice", BOB: "bob", CAROL: "carol"}
T1, T2, TH = "track:t1", "track:t2", "thread:7"
ENDS = 2.0


async def until(check: Any, what: str, turns: int = 5000) -> None:
    """Let the loop run until `check()` is true (in-memory work: a bounded number of turns)."""
    for _ in range(turns):
        if check():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"never happened: {what}")


@dataclass
class Client:
    """One /api/ws socket: its connection and its handler's task."""

    conn: FakeConnection
    task: asyncio.Task[None]

    @property
    def messages(self) -> list[dict[str, Any]]:
        return self.conn.messages

    def of(self, topic: str) -> list[dict[str, Any]]:
        """The messages about `topic`."""
        return [m for m in self.messages if m.get("topic") == topic]

    def seqs(self, topic: str) -> list[int]:
        """The durable events of `topic`, by seq."""
        return [m["seq"] for m in self.of(topic) if m["type"] not in ("subscribed", "resync") and "seq" in m]

    def types(self, topic: str | None = None) -> list[str]:
        return [m["type"] for m in (self.messages if topic is None else self.of(topic))]

    def send(self, **message: Any) -> None:
        self.conn.client_sends(json.dumps(message))

    async def connected(self) -> dict[str, Any]:
        await until(lambda: self.conn.writes or self.task.done(), "the handshake's answer")
        assert self.messages and self.messages[0]["type"] == "connected", (
            self.messages,
            self.conn.closed_with,
        )
        return self.messages[0]

    async def answered(self, topic: str, kind: str, count: int = 1) -> dict[str, Any]:
        """The `count`-th message of `kind` about `topic`."""
        await until(
            lambda: len([m for m in self.of(topic) if m["type"] == kind]) >= count, f"{kind} of {topic}"
        )
        return [m for m in self.of(topic) if m["type"] == kind][count - 1]

    async def subscribe(self, topic: str, **extra: Any) -> dict[str, Any]:
        self.send(type="subscribe", topic=topic, **extra)
        return await self.answered(topic, "subscribed")

    async def ended(self) -> tuple[int, str] | None:
        await asyncio.wait_for(asyncio.shield(self.task), ENDS)
        return self.conn.closed_with


async def connect(services: FakeServices, user: int | None = ALICE) -> Client:
    """Open /api/ws as the ASGI server would hand it to the handler (`user` None: no token)."""
    conn = FakeConnection()
    query = f"token={issue_token(SECRET, user, 600)}" if user is not None else ""
    scope = {
        "type": "websocket",
        "path": PATH,
        "query_string": query.encode(),
        "headers": [],
        "client": ("127.0.0.1", 50_000),
        "extensions": {EXTENSION: conn},
    }
    handler = TopicSockets(lambda: services, PerAddress())  # type: ignore[arg-type,return-value]
    task = asyncio.create_task(handler(scope, conn.receive, conn.send))
    services.handlers.append((conn, task))
    client = Client(conn, task)
    await client.connected()
    return client


def notice(services: FakeServices, topic: str, rows: list[tuple[int, bytes]], events: bool = True) -> None:
    """The listener hands over the signed NOTIFY of a statement that made `rows`."""
    first, last = rows[0][0], rows[-1][0]
    batch = TopicBatch(
        topic=topic,
        first=first,
        last=last,
        at=time.time(),
        events=[msgspec.Raw(message) for _, message in rows] if events else None,
        tag=services.log.tag(topic, last),
        prev=services.log.tag(topic, first - 1),
    )
    services.feed.on_notice(Opened(batch))


@pytest.fixture
async def services() -> AsyncIterator[FakeServices]:
    made = FakeServices.make(SECRET, USERS, anonymous_sockets=True)
    try:
        yield made
    finally:
        for conn, task in made.handlers:
            if not task.done():
                conn.client_leaves()
                await asyncio.wait_for(task, ENDS)
        await made.feed.stop()


# ---------------------------------------------------------------------------------------------
# Subscribing
# ---------------------------------------------------------------------------------------------


async def test_three_topics_on_one_socket_each_numbered_with_their_topic_and_no_more_once_unsubscribed(
    services: FakeServices,
) -> None:
    services.log.write(T1, 2)
    client = await connect(services)
    assert [(await client.subscribe(topic))["seq"] for topic in (T1, T2, TH)] == [2, 0, 0]
    notice(services, T1, services.log.write(T1, 1))
    notice(services, TH, services.log.write(TH, 2))
    notice(services, T2, services.log.write(T2, 1))
    assert (client.seqs(T1), client.seqs(T2), client.seqs(TH)) == ([3], [1], [1, 2])
    new = client.of(T1)[-1]
    assert new["track_id"] == "t1" and next(iter(new)) == "topic"  # the track's message, the topic in front
    assert "track_id" not in client.of(TH)[-1]
    client.send(type="unsubscribe", topic=T1)
    await client.answered(T1, "unsubscribed")
    notice(services, T1, services.log.write(T1, 1))
    notice(services, T2, services.log.write(T2, 1))
    assert (client.seqs(T1), client.seqs(T2)) == ([3], [1, 2])
    assert services.hub.topic_sockets(T1) == [] and len(services.hub.topic_sockets(T2)) == 1


async def test_an_event_is_framed_once_for_every_socket_of_each_kind(services: FakeServices) -> None:
    """One message, two forms: the track socket's and /api/ws's; each form built once."""
    clients = [await connect(services, user) for user in (ALICE, BOB)]
    for client in clients:
        await client.subscribe(T1)
    notice(services, T1, services.log.write(T1, 1))
    first, second = (client.conn.writes[-1] for client in clients)
    assert first is second  # the same bytes object: spliced and framed once, not per socket


async def test_the_user_s_notifications_come_once_per_socket_whatever_it_subscribes_to(
    services: FakeServices,
) -> None:
    lane = asyncio.create_task(services.feed.deliver_user_messages())
    try:
        client = await connect(services)
        for topic in (T1, T2, TH):
            await client.subscribe(topic)
        services.log.messages[5] = (ALICE, b'{"type":"notification","track_id":"t1","notification":{"id":5}}')
        services.feed.on_notice(Opened(UserBatch(user=ALICE, ids=[5], at=time.time())))
        await until(lambda: "notification" in client.types(), "the notification")
        await asyncio.sleep(0.01)
    finally:
        lane.cancel()
    assert client.types().count("notification") == 1


async def test_the_forum_s_notifications_go_to_api_ws_sockets_only_a_track_s_to_both(
    services: FakeServices,
) -> None:
    """The track socket's contract knows a track's `mention` (a comment) and `notification` (a
    track_id): the forum's (a post, a thread_id) go only to the user's /api/ws sockets."""
    lane = asyncio.create_task(services.feed.deliver_user_messages())
    try:
        topics = await connect(services)
        await topics.subscribe(TH)
        track = await connect_track(services)
        services.log.messages[5] = (ALICE, b'{"type":"notification","track_id":"t1","notification":{"id":5}}')
        services.log.messages[6] = (
            ALICE,
            b'{"type":"mention","thread_id":7,"post":{"id":6},"from_user":"bob"}',
        )
        services.log.forum.add(6)
        services.feed.on_notice(Opened(UserBatch(user=ALICE, ids=[5, 6], at=time.time())))
        await until(lambda: "mention" in topics.types(), "the forum's mention on /api/ws")
        await until(lambda: "notification" in track.types(), "the track's notification on the track socket")
        await asyncio.sleep(0.01)
    finally:
        lane.cancel()
    assert topics.types().count("notification") == 1 and topics.types().count("mention") == 1
    assert track.types().count("notification") == 1 and "mention" not in track.types()


async def connect_track(services: FakeServices, track: str = "t1") -> Any:
    """A track socket of ALICE's (app/handlers/sockets.py) on the same replica."""
    conn = FakeConnection()
    scope = {
        "type": "websocket",
        "path": TRACK_PATH + track,
        "query_string": f"token={issue_token(SECRET, ALICE, 600)}".encode(),
        "headers": [],
        "client": ("127.0.0.1", 50_001),
        "extensions": {EXTENSION: conn},
    }
    handler = TrackSockets(lambda: services)  # type: ignore[arg-type,return-value]
    task = asyncio.create_task(handler(scope, conn.receive, conn.send))
    services.handlers.append((conn, task))
    client = Client(conn, task)
    await client.connected()
    return client


async def test_a_socket_holds_100_topics_and_a_101st_is_refused_while_the_socket_stays_open(
    services: FakeServices,
) -> None:
    client = await connect(services)
    for n in range(MAX_TOPICS):
        client.send(type="subscribe", topic=f"track:t{n}")
    await until(lambda: client.types().count("subscribed") == MAX_TOPICS, "100 subscribed", turns=100_000)
    client.send(type="subscribe", topic="track:one-too-many")
    refused = await client.answered("track:one-too-many", "subscribe_error")
    assert refused["reason"] == "too many topics" and "100" in refused["message"]
    client.send(type="unsubscribe", topic="track:t0")
    assert (await client.subscribe("track:one-too-many"))["seq"] == 0  # room again
    assert client.conn.closed_with is None


async def test_a_topic_whose_replay_runs_counts_once_toward_the_100(services: FakeServices) -> None:
    """A topic subscribed to whose replay is still running is both subscribed and being
    subscribed: it counted twice, and a page's 100th topic was refused (bench/topics.py found it)."""
    services.log.write(T1, 5)
    services.log.gate[T1] = asyncio.Event()  # T1's replay waits on its read of the log
    client = await connect(services)
    client.send(type="subscribe", topic=T1, since=0)
    await client.answered(T1, "subscribed")
    for n in range(MAX_TOPICS - 1):
        client.send(type="subscribe", topic=f"track:other{n}")
    await until(lambda: client.types().count("subscribed") == MAX_TOPICS, "100 subscribed", turns=100_000)
    assert "subscribe_error" not in client.types()
    services.log.gate[T1].set()
    await until(lambda: client.seqs(T1) == [1, 2, 3, 4, 5], "T1's replay")


async def test_a_subscribe_flood_is_refused_past_the_burst_with_when_to_try_again(
    services: FakeServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(topic_sockets, "SUBSCRIBE_RATE", 0.001)  # nothing refills during the test
    client = await connect(services)
    for n in range(SUBSCRIBE_BURST):
        client.send(type="subscribe", topic=f"track:x{n}")
        client.send(type="unsubscribe", topic=f"track:x{n}")
    client.send(type="subscribe", topic="track:flood")
    refused = await client.answered("track:flood", "subscribe_error")
    assert refused["reason"] == "too many topics" and "too fast" in refused["message"]
    assert refused["retry_after"] > 0
    assert client.conn.closed_with is None
    assert len(services.access.asked) <= SUBSCRIBE_BURST  # what was refused asked nothing


@pytest.mark.parametrize(
    ("topic", "reason"),
    [
        ("", "invalid topic"),
        ("Track:t1", "invalid topic"),
        ("track:", "invalid topic"),
        ("thread:abc", "invalid topic"),
        ("thread:0", "invalid topic"),
        ("x" * 300, "invalid topic"),
        ("a\x00b", "invalid topic"),
        ("track:missing", "not found"),
        ("nokind:1", "not found"),
        ("track:secret", "forbidden"),
    ],
)
async def test_bad_topics_get_subscribe_error_and_the_socket_goes_on(
    services: FakeServices, topic: str, reason: str
) -> None:
    services.access.missing |= {"track:missing", "nokind:1"}
    services.access.hidden.add(("track:secret", ALICE))
    client = await connect(services)
    client.send(type="subscribe", topic=topic)
    await until(lambda: "subscribe_error" in client.types(), "the refusal")
    refused = next(m for m in client.messages if m["type"] == "subscribe_error")
    assert refused["reason"] == reason and refused["message"]
    assert refused["topic"] == topic[:300]
    assert (await client.subscribe(T1))["seq"] == 0 and client.conn.closed_with is None
    if reason == "invalid topic":
        assert all(asked[0] != topic for asked in services.access.asked)  # the database was not asked


@pytest.mark.parametrize(
    "frame",
    [
        '{"type": "hello"}',
        '{"type": "subscribe"}',
        '{"type": "subscribe", "topic": 5}',
        '{"type": "subscribe", "topic": "track:t1", "since": -1}',
        '{"type": "subscribe", "topic": "track:t1", "tag": "not hex"}',
        '{"type": "unsubscribe"}',
        '{"type": "typing", "topic": "track:t1"}',
    ],
)
async def test_a_malformed_message_gets_an_error_and_the_socket_goes_on(
    services: FakeServices, frame: str
) -> None:
    client = await connect(services)
    client.conn.client_sends(frame)
    await until(lambda: "error" in client.types(), "the error")
    assert next(m for m in client.messages if m["type"] == "error")["message"]
    assert (await client.subscribe(T2))["seq"] == 0 and client.conn.closed_with is None


async def test_a_frame_that_is_not_json_closes_with_1003(services: FakeServices) -> None:
    client = await connect(services)
    client.conn.client_sends("not json")
    assert (await client.ended() or (0,))[0] == close_codes.UNSUPPORTED


async def test_subscribing_twice_is_an_error_and_keeps_the_subscription(services: FakeServices) -> None:
    client = await connect(services)
    await client.subscribe(T1)
    client.send(type="subscribe", topic=T1)
    assert (await client.answered(T1, "error"))["message"].startswith("already subscribed")
    notice(services, T1, services.log.write(T1, 1))
    assert client.seqs(T1) == [1]


async def test_subscribes_of_many_sockets_are_asked_of_the_database_together(services: FakeServices) -> None:
    fake = services.access
    services.access = Batched(fake.many)  # type: ignore[assignment]
    clients = [await connect(services, user) for user in (ALICE, BOB)]
    for client in clients:
        for n in range(50):
            client.send(type="subscribe", topic=f"track:t{n}")
    await until(lambda: all(c.types().count("subscribed") == 50 for c in clients), "100 subscribed")
    connects, subscribes = fake.batches[:2], fake.batches[2:]
    # The first alone (no wait), the rest gathered; each topic new to the replica is asked twice
    # (its channel was newly listened on during its admission: a revocation may have gone by).
    assert connects == [1, 1] and 100 <= sum(subscribes) <= 200
    assert len(subscribes) <= 4, subscribes


async def test_an_anonymous_socket_subscribes_to_public_topics_only(services: FakeServices) -> None:
    services.access.hidden.add(("track:private", None))
    client = await connect(services, user=None)
    assert (await client.subscribe(T1))["seq"] == 0
    client.send(type="subscribe", topic="track:private")
    assert (await client.answered("track:private", "subscribe_error"))["reason"] == "forbidden"
    client.send(type="typing", topic=T1, is_typing=True)
    assert "sign in" in (await client.answered(T1, "error"))["message"]


@pytest.mark.parametrize(
    ("failure", "closed"),
    [
        (psycopg.OperationalError("connection refused"), (close_codes.TRY_AGAIN, close_codes.DATABASE_DOWN)),
        (RuntimeError("a bug"), (close_codes.INTERNAL, close_codes.SERVER_FAILED)),
    ],
    ids=["database-down", "a-failure"],
)
async def test_a_subscribe_that_cannot_be_answered_closes_the_socket_to_be_resumed(
    services: FakeServices, failure: BaseException, closed: tuple[int, str]
) -> None:
    client = await connect(services)
    await client.subscribe(T2)
    services.access.fail = failure
    client.send(type="subscribe", topic=T1)
    assert await client.ended() == closed
    assert services.hub.sockets == 0 and services.hub.topics == {}


# ---------------------------------------------------------------------------------------------
# Revocation
# ---------------------------------------------------------------------------------------------


async def test_a_revoked_topic_ends_with_unsubscribed_and_the_others_go_on(services: FakeServices) -> None:
    checker = asyncio.create_task(services.feed.enforce_access())
    try:
        client = await connect(services)
        for topic in (T1, T2, TH):
            await client.subscribe(topic)
        services.log.visible_pairs = {(ALICE, T2), (ALICE, TH)}
        services.feed.on_notice(Opened(Revoke(topic=T1, at=time.time())))
        gone = await client.answered(T1, "unsubscribed")
    finally:
        checker.cancel()
    assert gone["reason"] == "forbidden"
    notice(services, T1, services.log.write(T1, 1))
    notice(services, T2, services.log.write(T2, 1))
    notice(services, TH, services.log.write(TH, 1))
    assert (client.seqs(T1), client.seqs(T2), client.seqs(TH)) == ([], [1], [1])
    assert client.conn.closed_with is None


async def test_a_revocation_during_the_admission_is_asked_again_before_anything_is_sent(
    services: FakeServices,
) -> None:
    client = await connect(services)
    await client.subscribe(T2)  # the user's channel and T2's are listened on
    services.access.hold = asyncio.Event()
    client.send(type="subscribe", topic=T1)
    await until(lambda: services.access.held, "the admission to have its answer")
    services.access.hidden.add((T1, ALICE))  # then access is taken, and the feed hears it
    services.feed.on_notice(Opened(Revoke(topic=T1, at=time.time())))
    services.access.hold.set()
    assert (await client.answered(T1, "subscribe_error"))["reason"] == "forbidden"
    assert "subscribed" not in client.types(T1)


# ---------------------------------------------------------------------------------------------
# Resuming with since=
# ---------------------------------------------------------------------------------------------


async def test_each_topic_resumes_after_its_own_since_exactly_once_and_in_order(
    services: FakeServices,
) -> None:
    services.log.write(T1, 5)
    services.log.write(TH, 3)
    client = await connect(services)
    await client.subscribe(T1, since=2)
    await client.subscribe(TH, since=0)
    await until(lambda: client.seqs(T1) == [3, 4, 5] and client.seqs(TH) == [1, 2, 3], "the replays")
    notice(services, T1, services.log.write(T1, 1))
    notice(services, TH, services.log.write(TH, 1))  # live, or held until its replay is over
    await until(lambda: client.seqs(TH) == [1, 2, 3, 4], "the live event")
    assert client.seqs(T1) == [3, 4, 5, 6]


async def test_a_tag_of_another_history_resyncs_that_topic_only(services: FakeServices) -> None:
    services.log.write(T1, 3)
    services.log.write(T2, 3)
    client = await connect(services)
    await client.subscribe(T1, since=3, tag="0" * 16)
    await client.subscribe(T2, since=3, tag=services.log.tag(T2, 3))
    resync = await client.answered(T1, "resync")
    assert resync["seq"] == 3 and resync["track_id"] == "t1"
    assert "resync" not in client.types(T2)


async def test_a_revocation_during_a_replay_stops_it_after_unsubscribed(services: FakeServices) -> None:
    checker = asyncio.create_task(services.feed.enforce_access())
    try:
        services.log.write(T1, 10)
        services.log.gate[T1] = asyncio.Event()  # its read of the log waits
        client = await connect(services)
        client.send(type="subscribe", topic=T1, since=0)
        await client.answered(T1, "subscribed")
        services.log.visible_pairs = set()
        services.feed.on_notice(Opened(Revoke(topic=T1, at=time.time())))
        await client.answered(T1, "unsubscribed")
        services.log.gate[T1].set()
        await asyncio.sleep(0.01)
    finally:
        checker.cancel()
    assert client.types(T1) == ["subscribed", "unsubscribed"]  # nothing of the replay after it
    assert client.conn.closed_with is None


async def test_an_unsubscribe_during_a_replay_stops_it(services: FakeServices) -> None:
    services.log.write(T1, 10)
    services.log.gate[T1] = asyncio.Event()  # its read of the log waits
    client = await connect(services)
    client.send(type="subscribe", topic=T1, since=0)
    await client.answered(T1, "subscribed")
    client.send(type="unsubscribe", topic=T1)
    await client.answered(T1, "unsubscribed")
    services.log.gate[T1].set()
    await asyncio.sleep(0.01)
    assert client.types(T1) == ["subscribed", "unsubscribed"]
    assert services.hub.topic_sockets(T1) == []


# ---------------------------------------------------------------------------------------------
# Typing
# ---------------------------------------------------------------------------------------------


async def test_typing_in_a_subscribed_topic_is_relayed_sealed_on_its_channel(services: FakeServices) -> None:
    client = await connect(services)
    await client.subscribe(TH)
    client.send(type="typing", topic=T1, is_typing=True)  # not subscribed: refused
    assert "subscribe to" in (await client.answered(T1, "error"))["message"]
    client.send(type="typing", topic=TH, is_typing=True)
    client.send(type="typing", topic=TH, is_typing=True)  # within the second: dropped
    client.send(type="hello")  # its error says the frames before it were handled
    await until(lambda: "error" in client.types() and len(client.types()) > 3, "the frames handled")
    [(channel, payload)] = services.events.notified
    assert channel == services.codec.topic_channel(TH) and b"alice" not in payload.encode()


# ---------------------------------------------------------------------------------------------
# Per-audience events
# ---------------------------------------------------------------------------------------------


async def test_a_restricted_event_reaches_its_audience_in_its_form_and_everyone_else_as_skip(
    services: FakeServices,
) -> None:
    services.access.moderates.add((T1, CAROL))
    moderator, author, listener = [await connect(services, user) for user in (CAROL, ALICE, BOB)]
    for client in (moderator, author, listener):
        await client.subscribe(T1)
    hidden = (b'{"type": "comment_moderated", "track_id": "t1", "comment_id": 9}', ALICE)
    rows = services.log.write(T1, 1, message=b'{"type": "skip", "track_id": "t1"}', restricted=hidden)
    notice(services, T1, rows, events=False)  # a restricted event's payload carries numbers only
    await until(lambda: all(c.seqs(T1) == [1] for c in (moderator, author, listener)), "the event")
    assert [c.of(T1)[-1]["type"] for c in (moderator, author, listener)] == [
        "comment_moderated",
        "comment_moderated",
        "skip",
    ]
    late = await connect(services, CAROL)
    await late.subscribe(T1, since=0)  # a replay builds the same forms
    await until(lambda: late.seqs(T1) == [1], "the replay")
    assert late.of(T1)[-1]["type"] == "comment_moderated"


async def test_a_subscribe_again_after_an_unsubscribe_during_a_replay_keeps_its_subscription(
    services: FakeServices,
) -> None:
    services.log.write(T1, 10)
    services.log.gate[T1] = asyncio.Event()  # the first subscribe's replay waits on the log
    cancelled = asyncio.Event()
    read = services.log.page

    async def page(*args: Any, **kwargs: Any) -> Any:
        try:
            return await read(*args, **kwargs)
        except asyncio.CancelledError:
            # As psycopg does: a query whose wait is cancelled is cancelled in the server, and
            # waited for, before the cancellation goes on.
            await cancelled.wait()
            raise

    services.log.page = page  # type: ignore[method-assign]
    client = await connect(services)
    client.send(type="subscribe", topic=T1, since=0)
    await client.answered(T1, "subscribed")
    client.send(type="unsubscribe", topic=T1)
    client.send(type="subscribe", topic=T1)  # taken again, live from now on
    await client.answered(T1, "subscribed", count=2)
    cancelled.set()  # the first subscribe's read ends now
    await asyncio.sleep(0.01)
    notice(services, T1, services.log.write(T1, 1))
    await until(lambda: client.seqs(T1) == [11], "the live event of the second subscription")
    assert [conn.user_id for conn in services.hub.topic_sockets(T1)] == [ALICE]


async def test_a_moderator_who_loses_the_role_is_told_to_reload_then_gets_the_public_forms(
    services: FakeServices,
) -> None:
    """Off the team (a revocation): the subscription stays (the topic is public), a `resync` at the
    latest seq makes the client reload what it may now see, and the next restricted event comes in
    its public form. A moderator who still is one (asked in the same pass) is not told anything."""
    hidden = (b'{"type": "comment_moderated", "track_id": "t1", "comment_id": 9}', ALICE)
    skip = b'{"type": "skip", "track_id": "t1"}'
    checker = asyncio.create_task(services.feed.enforce_access())
    try:
        for user in (CAROL, BOB):
            services.access.moderates.add((T1, user))
            services.log.moderators.add((user, T1))
        carol, bob = await connect(services, CAROL), await connect(services, BOB)
        for client in (carol, bob):
            await client.subscribe(T1)
        notice(services, T1, services.log.write(T1, 1, message=skip, restricted=hidden), events=False)
        await until(lambda: carol.seqs(T1) == bob.seqs(T1) == [1], "the first event")
        services.log.moderators.discard((CAROL, T1))
        services.feed.on_notice(Opened(Revoke(topic=T1, at=time.time())))  # both asked again, in one pass
        resync = await carol.answered(T1, "resync")
    finally:
        checker.cancel()
    assert resync["seq"] == 1
    notice(services, T1, services.log.write(T1, 1, message=skip, restricted=hidden), events=False)
    await until(lambda: carol.seqs(T1) == bob.seqs(T1) == [1, 2], "the second event")
    assert [m["type"] for m in carol.of(T1) if m["type"] != "subscribed"] == [
        "comment_moderated",
        "resync",
        "skip",
    ]
    assert [m["type"] for m in bob.of(T1) if m["type"] != "subscribed"] == ["comment_moderated"] * 2
    assert carol.conn.closed_with is None
