"""The socket handler in-process: app/handlers/sockets.py's TrackSockets over fake services.

Its connection is tests/support/fakes.py's FakeConnection (what app/live/wsprotocol.py's FrameProtocol does for
it), the feed the real one over the in-memory log, the tokens real: admission, `since=`, the
replay's pace, typing, the close codes of a database that cannot be reached, and what the feed
and the hub do for a socket as it comes and goes. Milliseconds each; the same paths through real
replicas are in test_realtime.py, test_backpressure.py and test_security.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote

import msgspec
import psycopg
import pytest
from prometheus_client import generate_latest
from psycopg_pool import PoolTimeout

from app.auth.hs256 import issue_token
from app.handlers import sockets
from app.handlers.sockets import PATH, TrackSockets
from app.live import close_codes
from app.live.connection import EPHEMERAL, WRITE_MOST, Connection
from app.live.frames import Frames, message_frame
from app.live.notices import Opened, topic_name, user_name
from app.live.topics import prefix, track_topic
from app.live.wsprotocol import EXTENSION
from app.ops.prometheus import Metrics
from app.wire import Mention, Revoke, TopicBatch
from tests.support.fakes import FakeConnection, FakeServices, FakeSocket
from tests.support.metrics import parse_metrics
from tests.support.waiting import async_wait_until

SECRET = "unit-secret-0123456789-abcdefghijklmnop"
ALICE, BOB = 1, 2
USERS = {ALICE: "alice", BOB: "bob"}
T, U = "t1", "t2"
ENDS = 2.0
"""Seconds a socket's handler gets to end once it should (in-memory work: far more than enough)."""
TYPING = '{"type": "typing", "is_typing": true}'
UNKNOWN = '{"type": "ping"}'


async def until(check: Any, what: str, turns: int = 2000) -> None:
    """Let the loop run until `check()` is true (in-memory work: a bounded number of turns)."""
    for _ in range(turns):
        if check():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"never happened: {what}")


@dataclass
class Client:
    """One socket: its connection and its handler's task."""

    conn: FakeConnection
    task: asyncio.Task[None]

    @property
    def messages(self) -> list[dict[str, Any]]:
        return self.conn.messages

    def types(self) -> list[str]:
        return [m["type"] for m in self.messages]

    async def connected(self) -> dict[str, Any]:
        await until(lambda: self.conn.writes or self.task.done(), "the handshake's answer")
        assert self.messages and self.messages[0]["type"] == "connected", (
            self.messages,
            self.conn.closed_with,
        )
        return self.messages[0]

    async def ended(self) -> tuple[int, str] | None:
        """How the socket was closed (None: the client left), once its handler is over."""
        await asyncio.wait_for(asyncio.shield(self.task), ENDS)
        return self.conn.closed_with


async def connect(
    services: FakeServices,
    track: str = T,
    user: int | None = ALICE,
    since: str | None = None,
    reading: bool = True,
) -> Client:
    """Open a socket as the ASGI server would hand it to the handler (`user` None: no token;
    `reading` False: a client that reads nothing)."""
    conn = FakeConnection()
    if not reading:
        conn.reading.clear()
    query = []
    if user is not None:
        query.append(f"token={issue_token(SECRET, user, 600)}")
    if since is not None:
        query.append(f"since={quote(since)}")
    scope = {
        "type": "websocket",
        "path": PATH + track,
        "query_string": "&".join(query).encode(),
        "headers": [],
        "client": ("127.0.0.1", 50_000),
        "extensions": {EXTENSION: conn},
    }
    handler = TrackSockets(lambda: services)  # type: ignore[arg-type,return-value]
    task = asyncio.create_task(handler(scope, conn.receive, conn.send))
    services.handlers.append((conn, task))
    return Client(conn, task)


def notice(services: FakeServices, track: str, rows: list[tuple[int, bytes]]) -> None:
    """The listener hands over the signed NOTIFY of a statement that made `rows`."""
    first, last = rows[0][0], rows[-1][0]
    batch = TopicBatch(
        topic=track_topic(track),
        first=first,
        last=last,
        at=time.time(),
        events=[msgspec.Raw(message) for _, message in rows],
        tag=services.log.tag(track_topic(track), last),
        prev=services.log.tag(track_topic(track), first - 1),
    )
    services.feed.on_notice(Opened(batch))


@pytest.fixture
async def services() -> AsyncIterator[FakeServices]:
    made = FakeServices.make(SECRET, USERS, anonymous_sockets=True)
    try:
        yield made
    finally:
        await stop(made)


async def stop(services: FakeServices) -> None:
    """End the sockets' handlers still running (their clients leave), then the feed's tasks."""
    for conn, task in services.handlers:
        if not task.done():
            conn.client_leaves()
            await asyncio.wait_for(task, ENDS)
    await services.feed.stop()


# ---------------------------------------------------------------------------------------------
# Admission
# ---------------------------------------------------------------------------------------------


async def test_a_socket_is_admitted_gets_its_tracks_events_and_leaves_no_trace(
    services: FakeServices,
) -> None:
    client = await connect(services)
    assert (await client.connected())["seq"] == 0
    await until(lambda: services.hub.sockets == 1, "the socket in the hub")
    assert len(services.presence.counted) == 1
    notice(services, T, services.log.write(track_topic(T), 2))
    assert client.conn.seqs == [1, 2]
    client.conn.client_leaves()
    assert await client.ended() is None
    assert (services.hub.sockets, services.presence.counted) == (0, set())


@pytest.mark.parametrize("since", ["abc", "-1", "1.5", "1e3", "+1", " 1", "١٢", "0x1", "9" * 19])
async def test_a_bad_since_is_refused_with_1008_before_the_database_is_asked(
    services: FakeServices, since: str
) -> None:
    client = await connect(services, since=since)
    code, reason = await client.ended() or (None, "")
    assert (code, reason) == (1008, "invalid since: give the last seq you received, a whole number >= 0")
    assert services.access.asked == [] and client.messages == []


@pytest.mark.parametrize("since", ["", "0", "000", "9" * 18])
async def test_a_good_since_is_taken(services: FakeServices, since: str) -> None:
    client = await connect(services, since=since)
    await client.connected()


async def test_access_revoked_while_a_socket_is_admitted_is_checked_again_before_anything_is_sent(
    services: FakeServices,
) -> None:
    # The track's channel and alice's are listened on already (the feed's own reasons to look
    # again do not arise): only the revocation heard during the admission can say so.
    bob = await connect(services, user=BOB)
    await bob.connected()
    elsewhere = await connect(services, track=U, user=ALICE)
    await elsewhere.connected()
    services.access.hold = asyncio.Event()
    alice = await connect(services, user=ALICE)
    await until(lambda: services.access.held, "alice's admission to have its answer")
    # The admission's query said yes; then alice is taken off the team and the feed hears it.
    services.access.hidden.add((track_topic(T), ALICE))
    services.feed.on_notice(Opened(Revoke(topic=track_topic(T), at=time.time())))
    services.access.hold.set()
    assert await alice.ended() == (close_codes.POLICY, close_codes.TRACK_NOT_FOUND)
    assert alice.messages == []
    assert services.access.asked.count((track_topic(T), ALICE)) == 2


async def test_a_token_that_expires_while_the_socket_joins_its_track_is_refused_not_accepted(
    services: FakeServices,
) -> None:
    # The socket is in the hub while it waits for its track's channel; the expiry sweep finds its
    # token expired then, before its handshake is answered (a close that cannot be sent yet).
    elsewhere = await connect(services, track=U, user=ALICE)  # her own channel is listened on
    await elsewhere.connected()
    services.channels.hold = asyncio.Event()
    alice = await connect(services, user=ALICE)
    await until(lambda: services.channels.held == 1, "alice's join to wait on the listener")
    services.hub.close_expired(time.time() + 3_600)  # her tokens' 600 s are over
    services.channels.hold.set()
    assert await alice.ended() == (close_codes.TOKEN_EXPIRED, close_codes.EXPIRED)
    assert alice.messages == []  # no `connected`, nothing of the track
    assert await elsewhere.ended() == (close_codes.TOKEN_EXPIRED, close_codes.EXPIRED)


async def mentioned_while_joining(services: FakeServices) -> tuple[Client, Client]:
    """Alice on another track, then a socket of hers waiting to join T (the listener held) when
    a mention for her is heard: (the other socket, the joining one)."""
    elsewhere = await connect(services, track=U, user=ALICE)  # her own channel is listened on
    await elsewhere.connected()
    services.channels.hold = asyncio.Event()
    alice = await connect(services, user=ALICE)
    await until(lambda: services.channels.held == 1, "alice's join to wait on the listener")
    services.hub.send_user(ALICE, message_frame(Mention(track_id=U, from_user="bob")))
    return elsewhere, alice


async def test_a_mention_heard_while_the_socket_joins_comes_after_connected(
    services: FakeServices,
) -> None:
    """Frames of the user's that come before the handshake is answered wait for it: written
    raw, they would come before the 101 and break the handshake."""
    _, alice = await mentioned_while_joining(services)
    services.channels.hold.set()
    await alice.connected()
    assert alice.types()[:2] == ["connected", "mention"]


@pytest.mark.parametrize("refusal", ["revoked", "expired"])
async def test_a_socket_refused_after_it_joined_gets_nothing_but_its_close(
    services: FakeServices, refusal: str
) -> None:
    """The socket is its user's from the moment it is registered: their mention, heard while it
    waits for its track, waits for the handshake's answer. A refusal then is the answer: only the
    close follows it (docs/protocol.md: `connected` is the first message; a refusal is closed
    before anything is sent). A mention is a live hint: GET /api/notifications has it."""
    elsewhere, alice = await mentioned_while_joining(services)
    await until(lambda: "mention" in elsewhere.types(), "the mention on her other socket")
    if refusal == "revoked":
        services.access.hidden.add((track_topic(T), ALICE))
        services.feed.on_notice(Opened(Revoke(topic=track_topic(T), at=time.time())))
        closed = (close_codes.POLICY, close_codes.TRACK_NOT_FOUND)
    else:
        services.hub.close_expired(time.time() + 3_600)
        closed = (close_codes.TOKEN_EXPIRED, close_codes.EXPIRED)
    services.channels.hold.set()
    assert await alice.ended() == closed
    assert alice.messages == []


async def test_without_a_revocation_the_admission_asks_once(services: FakeServices) -> None:
    bob = await connect(services, user=BOB)
    await bob.connected()
    elsewhere = await connect(services, track=U, user=ALICE)
    await elsewhere.connected()
    alice = await connect(services, user=ALICE)
    await alice.connected()
    assert services.access.asked.count((track_topic(T), ALICE)) == 1


@pytest.mark.parametrize(
    "failure",
    [psycopg.OperationalError("connection refused"), PoolTimeout("no connection in 5 s"), TimeoutError()],
    ids=["operational-error", "pool-timeout", "timeout"],
)
async def test_a_database_that_cannot_be_reached_closes_with_1013_not_1011(
    services: FakeServices, failure: BaseException
) -> None:
    services.access.fail = failure
    client = await connect(services)
    assert await client.ended() == (close_codes.TRY_AGAIN, close_codes.DATABASE_DOWN)


async def test_a_track_that_cannot_be_joined_in_time_closes_with_1013() -> None:
    services = FakeServices.make(SECRET, USERS, pool_timeout=0.05)
    services.channels.hold = asyncio.Event()  # its LISTEN never comes back
    try:
        client = await connect(services)
        assert await client.ended() == (close_codes.TRY_AGAIN, close_codes.DATABASE_DOWN)
    finally:
        await stop(services)


async def test_a_failure_nobody_foresaw_closes_with_1011(services: FakeServices) -> None:
    services.access.fail = RuntimeError("a bug")
    client = await connect(services)
    assert await client.ended() == (close_codes.INTERNAL, close_codes.SERVER_FAILED)


# ---------------------------------------------------------------------------------------------
# Replay
# ---------------------------------------------------------------------------------------------


async def test_a_replay_goes_at_the_clients_pace_then_live(services: FakeServices) -> None:
    services.log.write(track_topic(T), 5)
    client = await connect(services, since="2")
    assert (await client.connected())["seq"] == 5
    await until(
        lambda: all(conn.live(track_topic(T)) for conn in services.hub.topic_sockets(track_topic(T))),
        "the socket live",
    )
    notice(services, T, services.log.write(track_topic(T), 1))
    assert client.conn.seqs == [3, 4, 5, 6]


@pytest.mark.parametrize("since", [None, "5"], ids=["new", "resuming-with-all"])
async def test_with_nothing_to_replay_the_answer_and_the_first_frames_go_in_one_write(
    services: FakeServices, monkeypatch: pytest.MonkeyPatch, since: str | None
) -> None:
    """A reconnect storm's sockets mostly have every event already: each one's `connected` and
    its first presence go in the handshake's one write (a system call per socket less), in
    order. A socket with a replay gets it after `connected`, then its held frames."""
    services.log.write(track_topic(T), 5)

    def greet(conn: Connection, topic: str) -> None:
        conn.offer(topic, Frames(EPHEMERAL, b'{"type": "presence", "listening": 1}', prefix(topic)))

    monkeypatch.setattr(services.presence, "join", greet)
    client = await connect(services, since=since)
    await client.connected()
    assert len(client.conn.writes) == 1
    assert client.types() == ["connected", "presence"]

    replaying = await connect(services, since="3")
    await replaying.connected()
    await until(lambda: len(replaying.messages) == 4, "the replay, then the presence")
    assert replaying.types() == ["connected", "comment_liked", "comment_liked", "presence"]
    assert len(replaying.conn.writes) == 3


async def test_a_replay_left_unread_closes_the_socket_with_1013(
    services: FakeServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sockets, "REPLAY_STALL", 0.05)
    services.log.write(track_topic(T), 5)
    client = await connect(services, since="0", reading=False)
    started = time.monotonic()
    assert await client.ended() == (close_codes.TRY_AGAIN, close_codes.TOO_SLOW)
    assert 0.05 <= time.monotonic() - started < ENDS
    assert client.types() == ["connected"] + ["comment_liked"] * 5
    assert services.hub.sockets == 0


# ---------------------------------------------------------------------------------------------
# Typing
# ---------------------------------------------------------------------------------------------


async def test_typing_is_relayed_sealed_once_a_second_at_most(services: FakeServices) -> None:
    client = await connect(services)
    await client.connected()
    client.conn.client_sends(TYPING)
    client.conn.client_sends(TYPING)  # within the second: dropped
    client.conn.client_sends(UNKNOWN)  # its error says both before it were handled
    await until(lambda: "error" in client.types(), "the frames handled")
    (channel, payload), *more = services.events.notified
    assert (channel, more) == (services.codec.topic_channel(track_topic(T)), [])
    assert b"alice" not in payload.encode(), "typing travels sealed"


async def test_anonymous_typing_gets_an_error_and_is_not_relayed(services: FakeServices) -> None:
    client = await connect(services, user=None)
    await client.connected()
    client.conn.client_sends(TYPING)
    await until(lambda: "error" in client.types(), "the error")
    error = next(m for m in client.messages if m["type"] == "error")
    assert error["message"] == "sign in to say you are typing: reconnect with ?token=<access token>"
    assert services.events.notified == []


# ---------------------------------------------------------------------------------------------
# What the feed and the hub do for sockets
# ---------------------------------------------------------------------------------------------


async def test_a_track_and_a_user_without_sockets_are_unlistened_once_forgotten(
    services: FakeServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("app.live.cursors._FORGET_AFTER", 0.01)
    monkeypatch.setattr("app.live.user_lane._FORGET_AFTER", 0.01)
    client = await connect(services)
    await client.connected()
    channels = {topic_name(track_topic(T)), user_name(ALICE)}
    assert channels <= services.channels.listening
    client.conn.client_leaves()
    await client.ended()
    await async_wait_until(
        lambda: not channels & services.channels.listening, ENDS, "the forgotten channels unlistened"
    )


async def test_a_socket_that_comes_back_in_time_keeps_its_channels(
    services: FakeServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("app.live.cursors._FORGET_AFTER", 0.05)
    monkeypatch.setattr("app.live.user_lane._FORGET_AFTER", 0.05)
    first = await connect(services)
    await first.connected()
    first.conn.client_leaves()
    await first.ended()
    again = await connect(services)
    await again.connected()
    await asyncio.sleep(0.1)  # past the first socket's forgetting: it must have been called off
    assert {topic_name(track_topic(T)), user_name(ALICE)} <= services.channels.listening


async def test_each_frame_handed_to_a_socket_is_counted_once_in_the_delivered_metric(
    services: FakeServices,
) -> None:
    clients = [await connect(services, user=user) for user in (ALICE, BOB)]
    for client in clients:
        await client.connected()
    await until(lambda: services.hub.sockets == 2, "both sockets in the hub")
    metrics = Metrics(services.hub)
    listener = SimpleNamespace(reconnects=0, rekeys=0, channels=0, ready=True)
    metrics.watch(listener, services.codec)  # type: ignore[arg-type]
    before = services.hub.delivered
    notice(services, T, services.log.write(track_topic(T), 3))  # one batch of three events, to two sockets
    notice(services, U, services.log.write(track_topic(U), 1))  # a track nobody here watches
    assert services.hub.delivered - before == 6
    exposed = parse_metrics(generate_latest(metrics.registry).decode())
    assert exposed["tracktalk_events_delivered_total"] == services.hub.delivered
    assert [c.conn.seqs for c in clients] == [[1, 2, 3], [1, 2, 3]]


# ---------------------------------------------------------------------------------------------
# A stalled socket's memory
# ---------------------------------------------------------------------------------------------


class StalledSocket(FakeSocket):
    """A socket whose kernel takes nothing: everything written stays unsent."""

    def buffered(self) -> int:
        return sum(map(len, self.writes))


@pytest.mark.parametrize(
    ("count", "size"), [(28, 400_000), (2_000, 1_000)], ids=["28-frames-of-400-KB", "2000-frames-of-1-KB"]
)
def test_a_page_of_frames_stops_at_the_bound_of_a_stalled_socket(count: int, size: int) -> None:
    """A catch-up hands each socket a page of frames at once: a stalled socket takes them in
    writes of WRITE_MOST at most, and none after its bound is passed (the page is not joined and
    written whole to it)."""
    limit = 256 * 1024
    sock = StalledSocket()
    conn = Connection(sock, ALICE, limit)
    frames = [Frames(seq, bytes(size - 10), prefix(track_topic(T))) for seq in range(1, count + 1)]
    assert not conn.offer_many(track_topic(T), frames)
    assert sock.closed_with == (close_codes.TRY_AGAIN, close_codes.TOO_SLOW)
    assert max(map(len, sock.writes)) <= max(size, WRITE_MOST + size)
    assert sock.buffered() <= limit + WRITE_MOST + size
