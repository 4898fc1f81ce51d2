"""The resume protocol in-process: the feed, the hub and the connections over an in-memory event log.

Fast (no server, no database): gaps, resync, a database that went back in time, a client ahead of
the replica, the seam between replay and live, and a catch-up that must not hold other tracks up.
The same behaviour is tested through real servers and PostgreSQL in test_realtime.py and others.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import msgspec
import pytest

from app.bounds import EVENT_PAGE_BYTES
from app.data.events import Cursor
from app.listener import Listener
from app.live import close_codes
from app.live import cursors as cursors_module
from app.live import frames as frames_module
from app.live.connection import ANONYMOUS, Connection
from app.live.feed import Feed
from app.live.frames import Frames, text_frame
from app.live.hub import Hub, ShuttingDown, TooManySockets
from app.live.notices import Codec, Opened, topic_name, user_name
from app.live.topics import prefix
from app.wire import Ephemeral, Revoke, TopicBatch, UserBatch, encoder
from tests.support.fakes import FakeListening, FakeSocket, MemoryLog
from tests.support.waiting import async_wait_until

LIMIT = 64 * 1024
T, U = "track:t1", "track:t2"
"""Topics (a track's: the feed knows no other kind)."""
KEY = os.urandom(32)


async def until(check: Callable[[], object], what: str, turns: int = 2000) -> None:
    """Let the loop run until `check()` is true (in-memory work: a bounded number of turns)."""
    for _ in range(turns):
        if check():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"never happened: {what}")


@dataclass
class World:
    hub: Hub
    log: MemoryLog
    channels: FakeListening
    feed: Feed
    stack: contextlib.AsyncExitStack

    def batch(
        self, track_id: str, rows: list[tuple[int, bytes]], events: bool = True, at: float = 0.0
    ) -> TopicBatch:
        """The signed NOTIFY of the statement that made `rows` (its tag, and the tag before it)."""
        first, last = rows[0][0], rows[-1][0]
        return TopicBatch(
            topic=track_id,
            first=first,
            last=last,
            at=at or time.time(),
            events=[msgspec.Raw(message) for _, message in rows] if events else None,
            tag=self.log.tag(track_id, last),
            prev=self.log.tag(track_id, first - 1),
        )

    def notice(
        self, track_id: str, rows: list[tuple[int, bytes]], events: bool = True, at: float = 0.0
    ) -> None:
        """The listener hands over the signed NOTIFY of a statement that made `rows`."""
        self.feed.on_notice(Opened(self.batch(track_id, rows, events, at)))

    async def socket(
        self, track_id: str = T, user: int = 1, since: int | None = None, tag: str | None = None
    ) -> tuple[Connection, FakeSocket, Cursor]:
        """A track socket as app/handlers/sockets.py runs one: connect, subscribe, replay, go live."""
        sock = FakeSocket()
        conn = Connection(sock, user, LIMIT)
        await self.stack.enter_async_context(self.feed.connection(conn, 1.0))
        start = await self.feed.subscribe(conn, track_id, 1.0)
        if since is not None:
            async for frames in self.feed.replay(conn, track_id, since, start, tag):
                conn.write_now(frames)
        conn.go_live(track_id)
        return conn, sock, start


@pytest.fixture
async def world() -> AsyncIterator[World]:
    hub = Hub(sockets_per_user=3)
    log = MemoryLog()
    channels = FakeListening()
    feed = Feed(hub, log, channels, page=3)
    async with contextlib.AsyncExitStack() as stack:
        yield World(hub, log, channels, feed, stack)
        await feed.stop()


# ---------------------------------------------------------------------------------------------
# Connection and hub
# ---------------------------------------------------------------------------------------------


def frames(seq: int, message: bytes) -> Frames:
    """A message of topic T, as the feed hands it to the hub."""
    return Frames(seq, message, prefix(T))


def test_a_live_connection_writes_each_offer_at_once_and_several_frames_in_one_write() -> None:
    sock = FakeSocket()
    conn = Connection(sock, 1, LIMIT)
    conn.offer(T, frames(1, b"a"))
    conn.offer_many(T, [frames(2, b"b"), frames(3, b"c")])
    assert sock.writes == [b"\x81\x01a", b"\x81\x01b\x81\x01c"]


def test_frames_held_during_a_replay_go_out_after_it_without_what_it_sent() -> None:
    sock = FakeSocket()
    conn = Connection(sock, 1, LIMIT)
    conn.hold(T)
    conn.offer(T, frames(5, b"five"))
    conn.offer(T, frames(6, b"six"))
    conn.offer(T, frames(0, b"typing"))
    assert sock.writes == []
    conn.write_now(b"replayed 4 and 5")
    conn.skip_through(T, 5)
    conn.go_live(T)
    assert sock.writes == [b"replayed 4 and 5", text_frame(b"six") + text_frame(b"typing")]


def test_a_socket_that_cannot_keep_up_is_closed_with_1013_and_counted_once_it_leaves() -> None:
    hub = Hub()
    sock = FakeSocket()
    conn = Connection(sock, 1, LIMIT)
    hub.add(conn)
    hub.subscribe(conn, T)
    hub.send(T, [frames(1, b"x")])
    sock.backlog = LIMIT + 1
    hub.send(T, [frames(2, b"y")])
    assert sock.closed_with == (close_codes.TRY_AGAIN, close_codes.TOO_SLOW)
    assert not conn.offer(T, frames(3, b"z"))
    assert hub.dropped_slow == 0 and (hub.opened, hub.closed) == (1, 0)
    hub.remove(conn)
    assert hub.dropped_slow == 1 and hub.closed == 1
    hub.remove(conn)  # forgotten once
    assert hub.closed == 1


def test_frames_held_past_the_bound_close_the_socket_too() -> None:
    sock = FakeSocket()
    conn = Connection(sock, 1, limit=10)
    conn.hold(T)
    assert conn.offer(T, frames(1, b"12345678"))
    assert not conn.offer(T, frames(2, b"12345678"))
    assert sock.closed_with == (close_codes.TRY_AGAIN, close_codes.TOO_SLOW)


def test_expired_tokens_close_their_sockets_with_4001() -> None:
    hub = Hub()
    old, fresh = FakeSocket(), FakeSocket()
    hub.add(Connection(old, 1, LIMIT, expires_at=100.0))
    hub.add(Connection(fresh, 2, LIMIT, expires_at=200.0))
    hub.close_expired(150.0)
    assert old.closed_with == (close_codes.TOKEN_EXPIRED, close_codes.EXPIRED)
    assert fresh.closed_with is None
    # The sweep skips the sockets until one is due: one added later that is due sooner than the
    # rest is still closed on time, and the others at theirs.
    sooner = FakeSocket()
    hub.add(Connection(sooner, 3, LIMIT, expires_at=160.0))
    hub.close_expired(155.0)
    assert sooner.closed_with is None
    hub.close_expired(161.0)
    assert sooner.closed_with == (close_codes.TOKEN_EXPIRED, close_codes.EXPIRED)
    assert fresh.closed_with is None
    hub.close_expired(200.0)
    assert fresh.closed_with == (close_codes.TOKEN_EXPIRED, close_codes.EXPIRED)


async def test_sockets_opened_together_cannot_pass_the_per_user_limit(world: World) -> None:
    world.channels.hold = asyncio.Event()  # every join waits on the listener, then all go at once
    joins = [asyncio.create_task(world.socket(user=7)) for _ in range(10)]
    await asyncio.sleep(0)
    world.channels.hold.set()
    results = await asyncio.gather(*joins, return_exceptions=True)
    assert sum(not isinstance(r, BaseException) for r in results) == 3
    assert all(isinstance(r, TooManySockets) for r in results if isinstance(r, BaseException))
    assert len(world.hub.users[7]) == 3
    anonymous = [await world.socket(user=ANONYMOUS) for _ in range(5)]
    assert len(anonymous) == 5  # no per-user limit for anonymous listeners


# ---------------------------------------------------------------------------------------------
# Live delivery and catch-up
# ---------------------------------------------------------------------------------------------


async def test_a_batch_that_follows_the_cursor_is_delivered_as_it_came_and_once(world: World) -> None:
    _, sock, start = await world.socket()
    rows = world.log.write(T, 2)
    world.notice(T, rows)
    world.notice(T, rows)  # the same payload again (a replay by someone listening): dropped
    assert start == Cursor(0) and sock.seqs == [1, 2]
    assert world.log.reads == 0


async def test_a_gap_is_filled_from_the_log_in_order(world: World) -> None:
    _, sock, _ = await world.socket()
    world.log.write(T, 5)  # 1..5 committed; their NOTIFY was lost (the listener was away)
    world.notice(T, world.log.write(T, 1))  # 6 arrives: 1..5 are missing
    await until(lambda: sock.seqs == [1, 2, 3, 4, 5, 6], "the gap filled from the log")
    world.notice(T, world.log.write(T, 1))  # live again (or read by the catch-up, if it is ending)
    await until(lambda: sock.seqs == list(range(1, 8)), "the next event")


async def test_an_old_signed_payload_is_read_from_the_log_not_believed(world: World) -> None:
    _, sock, _ = await world.socket()
    real = world.log.write(T, 1)
    replayed = [(1, b'{"type":"comment_liked","track_id":"t1","seq":1,"comment_id":1,"like_count":99}')]
    world.notice(T, replayed, at=time.time() - 3600)  # captured before a failover, sent again
    await until(lambda: sock.seqs == [1], "the event, from the log")
    assert sock.messages == [json.loads(real[0][1])]  # the log's like_count (1), not the payload's 99


async def test_a_hole_in_the_log_gives_resync_and_then_live_events(world: World) -> None:
    _, sock, _ = await world.socket()
    world.log.write(T, 6)
    world.log.prune(T, [3])  # kept: 1, 2, 4, 5, 6 (pruning cut a hole)
    world.notice(T, world.log.write(T, 1))
    await until(lambda: any(m["type"] == "resync" for m in sock.messages), "the resync")
    resync = next(m for m in sock.messages if m["type"] == "resync")
    assert sock.seqs[:2] == [1, 2] and 4 not in sock.seqs  # nothing after the hole as if whole
    assert resync["seq"] == 7
    world.notice(T, world.log.write(T, 1))
    await until(lambda: sock.seqs[-1] == 8, "the next event")
    assert sock.seqs == [1, 2, 8]


async def test_a_database_that_went_back_in_time_makes_the_sockets_resync(world: World) -> None:
    _, sock, _ = await world.socket()
    world.notice(T, world.log.write(T, 5))
    world.log.lose(T, 2)  # a failover lost commits 4 and 5
    world.feed.on_listen()
    await until(lambda: world.feed.caught_up, "the check after the reconnect")
    assert sock.messages[-1]["type"] == "resync" and sock.messages[-1]["seq"] == 3
    world.notice(T, world.log.write(T, 1))  # the new 4
    assert sock.seqs == [1, 2, 3, 4, 5, 4]


async def test_after_a_reconnect_every_track_catches_up_on_what_it_missed(world: World) -> None:
    _, on_t, _ = await world.socket(T)
    _, on_u, _ = await world.socket(U)
    world.log.write(T, 4)
    world.log.write(U, 2)
    world.feed.on_listen()
    assert not world.feed.caught_up
    await until(lambda: world.feed.caught_up, "the catch-up after the reconnect")
    assert on_t.seqs == [1, 2, 3, 4] and on_u.seqs == [1, 2]


async def test_the_check_after_a_reconnect_holds_up_no_live_event(world: World) -> None:
    _, on_t, _ = await world.socket(T)
    world.log.slow = asyncio.Event()  # the database does not answer yet (the pool is exhausted)
    world.feed.on_listen()
    await until(lambda: world.log.waiting > 0, "the check to wait on the database")
    world.notice(T, world.log.write(T, 1))
    assert on_t.seqs == [1]  # delivered while the check waits
    assert not world.feed.caught_up
    world.log.slow.set()
    await until(lambda: world.feed.caught_up, "the check")


async def test_a_catch_up_in_flight_holds_up_no_other_track(world: World) -> None:
    _, on_t, _ = await world.socket(T)
    _, on_u, _ = await world.socket(U)
    world.log.gate[T] = asyncio.Event()  # the log read of T hangs (a slow database)
    world.log.write(T, 2)
    world.notice(T, world.log.write(T, 1))  # T must read its gap: stuck
    world.notice(U, world.log.write(U, 1))
    assert on_u.seqs == [1]  # U's event went out at once
    world.notice(T, world.log.write(T, 1))  # T's later events wait behind its catch-up ...
    assert on_t.seqs == []
    world.log.gate[T].set()
    await until(lambda: on_t.seqs == [1, 2, 3, 4], "T caught up")  # ... and come in order, once


async def test_a_catch_up_of_2000_events_arrives_as_events_not_resync(world: World) -> None:
    world.feed = Feed(world.hub, world.log, world.channels, page=500)  # pages as a replica reads them
    _, sock, _ = await world.socket()
    world.notice(T, world.log.write(T, 2000), events=False)  # too many for a payload
    await until(lambda: len(sock.seqs) == 2000, "all 2000")
    assert sock.seqs == list(range(1, 2001))
    assert not [m for m in sock.messages if m["type"] == "resync"]
    await until(lambda: not world.feed.cursors._topics[T].filling, "the catch-up to end")
    assert world.log.reads == 5  # four full pages and the short one that ends it
    await world.feed.stop()


async def test_a_failing_database_read_is_retried(world: World) -> None:
    _, sock, _ = await world.socket()
    world.log.fail = True
    world.notice(T, world.log.write(T, 2), events=False)
    await until(lambda: world.log.failures > 0, "a read to fail")
    assert sock.seqs == []
    world.log.fail = False
    await async_wait_until(lambda: sock.seqs == [1, 2], 5, "the retried read")  # after a real back-off


async def test_catch_up_reads_what_went_by_unheard(world: World) -> None:
    _, sock, _ = await world.socket()
    world.log.write(T, 2)  # committed under channel names not yet listened on (a new key)
    world.feed.catch_up()
    await until(lambda: sock.seqs == [1, 2], "the events, from the log")
    assert not sock.resyncs


# ---------------------------------------------------------------------------------------------
# What a forged payload can do: nothing (issue 23, item 2)
# ---------------------------------------------------------------------------------------------


async def turns(count: int = 200) -> None:
    """Let the loop run `count` turns (in-memory work that may or may not happen)."""
    for _ in range(count):
        await asyncio.sleep(0)


async def test_forged_payloads_while_a_writer_commits_read_nothing_hold_up_nothing_resync_nothing(
    world: World,
) -> None:
    """A forger's payload on a busy track's channel made the feed read the log in two reads (the
    events after the cursor, then the latest seq): a commit between them gave `resync`, and a real
    notice that came meanwhile was dropped, its event left waiting for the next one. Here each read
    of the log holds its answer once it has taken its snapshot, while a commit and its signed
    notice arrive."""
    codec = Codec(KEY)
    listener = Listener("", codec)  # only deliver() runs: no connection
    listener.attach(world.feed)
    _, sock, _ = await world.socket()
    world.log.answer_gate[T] = asyncio.Event()
    body = b'{"k":"track","track_id":"t1","first":1,"last":1,"at":%.6f}' % time.time()
    for forged in (body, b"0" * 64 + b" " + body, Codec(os.urandom(32)).sign(body)):
        listener.deliver(forged)
    await turns()
    rows = world.log.write(T, 1)
    listener.deliver(codec.sign(encoder.encode(world.batch(T, rows))))
    assert sock.seqs == [1]  # at once
    world.log.answer_gate[T].set()
    await turns()
    assert sock.seqs == [1] and not sock.resyncs
    assert world.log.reads == 0 and codec.rejected == 3


async def test_a_notice_that_comes_while_a_catch_up_reads_is_delivered_right_after_it(world: World) -> None:
    _, sock, _ = await world.socket()
    world.log.answer_gate[T] = asyncio.Event()
    world.notice(T, world.log.write(T, 1), events=False)  # not in the payload: read from the log
    await until(lambda: world.log.answers_held == 1, "the read to hold its answer (1 in it)")
    world.notice(T, world.log.write(T, 1))  # 2 commits and is notified while that answer waits
    world.log.answer_gate[T].set()
    await until(lambda: sock.seqs == [1, 2], "1, then 2 (not left for a later event)")
    assert not sock.resyncs and world.log.reads == 2


# ---------------------------------------------------------------------------------------------
# A failover that lost commits (issue 23, item 11)
# ---------------------------------------------------------------------------------------------


async def test_a_reconnect_to_a_history_that_lost_events_resyncs_even_past_the_old_last_seq(
    world: World,
) -> None:
    """The new primary lost 4 and 5 and has written 4', 5', 6' by the time the listener is back:
    its latest seq is past the sockets' 5, and only the tags tell."""
    _, sock, _ = await world.socket()
    for _ in range(5):
        world.notice(T, world.log.write(T, 1))
    world.log.lose(T, 2)
    world.log.write(T, 3)
    world.feed.on_listen()
    await until(lambda: world.feed.caught_up, "the check after the reconnect")
    assert sock.seqs == [1, 2, 3, 4, 5]  # none of 4', 5', 6' as if it followed 5
    assert sock.resyncs == [{**sock.resyncs[0], "seq": 6, "tag": world.log.tag(T, 6)}]
    world.notice(T, world.log.write(T, 1))
    assert sock.seqs == [1, 2, 3, 4, 5, 7]


async def test_a_live_batch_of_another_history_is_not_taken_for_the_next_events(world: World) -> None:
    """Before the check after a reconnect has an answer, the new primary's next statement arrives:
    its seqs follow the sockets' last one, its `prev` is not the sockets' last event."""
    _, sock, _ = await world.socket()
    for _ in range(3):
        world.notice(T, world.log.write(T, 1))
    world.log.lose(T, 1)
    world.log.write(T, 1)  # 3'
    world.log.slow = asyncio.Event()  # the reconnect's check waits on the database
    world.feed.on_listen()
    world.notice(T, world.log.write(T, 1))  # 4', whose prev is 3'
    await until(lambda: bool(sock.resyncs), "the resync")
    assert sock.seqs == [1, 2, 3] and sock.resyncs[0]["seq"] == 4
    world.notice(T, world.log.write(T, 1))
    await until(lambda: sock.seqs == [1, 2, 3, 5], "the next event")
    world.log.slow.set()


async def test_a_replayed_payload_of_a_lost_history_changes_nothing(world: World) -> None:
    """A signed payload of events that a failover lost, sent again later (by someone listening):
    its events are not the log's, and the sockets that have the log's keep them."""
    _, sock, _ = await world.socket()
    world.notice(T, world.log.write(T, 2))
    lost = world.batch(T, world.log.write(T, 1))
    world.log.lose(T, 1)
    world.notice(T, world.log.write(T, 1))  # the new 3
    world.feed.on_notice(Opened(lost))  # the old 3 again
    world.notice(T, world.log.write(T, 1))
    await turns()
    assert sock.seqs == [1, 2, 3, 4] and not sock.resyncs
    assert [m["tag"] for m in sock.messages] == [world.log.tag(T, seq) for seq in (1, 2, 3, 4)]


async def test_events_that_follow_a_pruned_cursor_are_taken_as_following_it(world: World) -> None:
    """The event at the cursor is no longer kept (a quiet track, pruned): the next one still says
    which event came before it, so a catch-up needs no `resync`."""
    _, sock, _ = await world.socket()
    world.notice(T, world.log.write(T, 3))
    world.log.prune(T, [1, 2, 3])
    world.log.write(T, 2)  # 4 and 5 commit while the listener is away
    world.feed.on_listen()
    await until(lambda: world.feed.caught_up, "the catch-up after the reconnect")
    assert sock.seqs == [1, 2, 3, 4, 5] and not sock.resyncs


async def test_a_client_that_resumes_from_a_lost_event_gets_resync(world: World) -> None:
    world.log.write(T, 5)
    seen = world.log.tag(T, 5)  # a client had 1..5, then the failover lost 4 and 5
    world.log.lose(T, 2)
    world.log.write(T, 3)  # 4', 5', 6'
    await world.socket()  # the replica's cursor: 6'
    _, behind, _ = await world.socket(user=2, since=5, tag=seen)
    assert [m["type"] for m in behind.messages] == ["resync"] and behind.resyncs[0]["seq"] == 6
    _, same, _ = await world.socket(user=3, since=5, tag=world.log.tag(T, 5))  # a client that had 5'
    assert same.seqs == [6] and not same.resyncs
    _, blind, _ = await world.socket(user=4, since=5)  # no tag: nothing to compare with
    assert blind.seqs == [6]
    _, latest, _ = await world.socket(user=5, since=6, tag=seen)  # at the latest seq, another tag
    assert [m["type"] for m in latest.messages] == ["resync"]
    world.log.write(T, 1)  # 7 commits; its notice has not reached this replica
    _, ahead, _ = await world.socket(user=6, since=7, tag="0" * 16)  # ahead of the replica: checked too
    assert [m["type"] for m in ahead.messages] == ["resync"]
    _, ahead_ok, _ = await world.socket(user=7, since=7, tag=world.log.tag(T, 7))
    assert ahead_ok.messages == []


# ---------------------------------------------------------------------------------------------
# Joining a track, and since= replays
# ---------------------------------------------------------------------------------------------


async def test_the_first_socket_listens_before_reading_the_cursor_and_loses_nothing_between(
    world: World,
) -> None:
    world.log.write(T, 3)
    world.channels.hold = asyncio.Event()
    joining = asyncio.create_task(world.socket())
    await asyncio.sleep(0)
    assert topic_name(T) not in world.channels.listening
    world.channels.hold.set()
    _, sock, start = await joining
    assert topic_name(T) in world.channels.listening and user_name(1) in world.channels.listening
    assert start.seq == 3
    world.notice(T, world.log.write(T, 1))
    assert sock.seqs == [4]


async def test_notices_that_come_while_a_track_starts_are_read_from_the_log(world: World) -> None:
    world.log.write(T, 2)
    world.log.answer_gate[T] = asyncio.Event()
    joining = asyncio.create_task(world.socket(since=2))  # a client that saw 2 comes back
    await until(lambda: world.log.answers_held > 0, "the start to read the cursor (2)")
    world.notice(T, world.log.write(T, 1))  # 3 commits and is notified before the cursor is known
    assert world.log.reads == 0
    world.log.answer_gate[T].set()
    _, sock, start = await joining
    assert start.seq in (2, 3)  # the cursor read, or after the catch-up of what the notice named
    await until(lambda: sock.seqs == [3], "3, read from the log")
    assert world.log.reads > 0
    world.notice(T, world.log.write(T, 1))
    assert sock.seqs == [3, 4]  # once each, in order


async def test_replay_sends_exactly_the_missed_events_in_pages_then_live(world: World) -> None:
    world.log.write(T, 10)
    _, first, start = await world.socket()
    assert start.seq == 10 and first.seqs == []
    _, back, start = await world.socket(user=2, since=4)
    world.notice(T, world.log.write(T, 2))
    assert back.seqs == list(range(5, 13))
    assert len(back.writes) == 2 + 1  # two pages of three, then one live write


async def test_live_events_during_a_replay_come_after_it_without_gap_or_duplicate(world: World) -> None:
    world.log.write(T, 7)
    await world.socket()  # the track is watched: its cursor is 7
    sock = FakeSocket()
    conn = Connection(sock, 2, LIMIT)
    await world.stack.enter_async_context(world.feed.connection(conn, 1.0))
    start = await world.feed.subscribe(conn, T, 1.0)
    replay = world.feed.replay(conn, T, 2, start)
    conn.write_now(await anext(replay))  # 3, 4, 5
    world.notice(T, world.log.write(T, 2))  # 8, 9 come live, mid-replay: held
    async for page in replay:
        conn.write_now(page)  # 6, 7
    conn.go_live(T)
    world.notice(T, world.log.write(T, 1))
    assert sock.seqs == list(range(3, 11))


async def test_replay_across_a_hole_gives_resync(world: World) -> None:
    world.log.write(T, 10)
    world.log.prune(T, [1, 2, 3, 4, 5])
    _, sock, _ = await world.socket(since=2)
    assert [m["type"] for m in sock.messages] == ["resync"]
    world.log.prune(T, [])
    _, other, _ = await world.socket(user=2, since=6)
    assert other.seqs == [7, 8, 9, 10]
    world.log.events[T].pop(8)
    _, holed, _ = await world.socket(user=3, since=6)
    assert [m.get("seq") for m in holed.messages] == [7, 10] and holed.messages[-1]["type"] == "resync"


async def test_a_client_ahead_of_this_replica_gets_nothing_twice(world: World) -> None:
    world.log.write(T, 3)
    await world.socket()  # this replica's cursor: 3
    late = world.log.write(T, 2)  # 4 and 5 committed; their NOTIFY has not reached this replica
    conn, sock, start = await world.socket(user=2, since=5)  # the client saw 5 on another one
    assert (start.seq, conn.skipping(T)) == (3, 5)
    world.notice(T, late)
    world.notice(T, world.log.write(T, 1))
    assert sock.seqs == [6]


async def test_a_since_the_track_never_had_gives_resync(world: World) -> None:
    world.log.write(T, 3)
    _, sock, _ = await world.socket(since=99)
    assert [m["type"] for m in sock.messages] == ["resync"]
    world.notice(T, world.log.write(T, 1))
    assert sock.seqs == [4]


# ---------------------------------------------------------------------------------------------
# Users, typing, access
# ---------------------------------------------------------------------------------------------


async def test_notifications_are_read_once_and_sent_to_their_users_sockets(world: World) -> None:
    _, mine, _ = await world.socket(user=1)
    _, theirs, _ = await world.socket(user=2)
    world.log.messages[41] = (1, b'{"type":"notification","track_id":"t1","notification":{}}')
    lane = asyncio.create_task(world.feed.deliver_user_messages())
    try:
        world.log.messages[42] = (1, b'{"type":"notification","track_id":"t1","notification":{"id":42}}')
        batch = UserBatch(user=1, ids=[41], at=time.time())
        world.feed.on_notice(Opened(batch))
        world.feed.on_notice(Opened(batch))  # replayed: not sent again
        world.feed.on_notice(Opened(UserBatch(user=1, ids=[42], at=time.time() - 3600)))  # old news
        await until(lambda: bool(mine.messages), "the notification")
        await until(world.feed.user_lane._queue.empty, "the lane to go through its queue")
    finally:
        lane.cancel()
    assert [m["type"] for m in mine.messages] == ["notification"]
    assert theirs.messages == []


async def test_what_a_nodes_notices_make_a_replica_read_on_the_primary_waits_for_their_transaction(
    world: World,
) -> None:
    """A fan-out node's announcement and revocation carry the writer's transaction on the primary
    ("x"): the reads they cause there are asked to wait for it (app/data/events.py's wait_visible);
    the primary's own notices carry none, and nothing waits."""
    _, sock, _ = await world.socket(user=1)
    world.log.messages[41] = (1, b'{"type":"notification","track_id":"t1","notification":{}}')
    world.log.messages[42] = (1, b'{"type":"notification","track_id":"t1","notification":{"id":42}}')
    lane = asyncio.create_task(world.feed.deliver_user_messages())
    checker = asyncio.create_task(world.feed.enforce_access())
    try:
        world.feed.on_notice(Opened(UserBatch(user=1, ids=[41], at=time.time())))
        await until(lambda: len(sock.messages) == 1, "the primary's notification")
        world.feed.on_notice(Opened(UserBatch(user=1, ids=[42], at=time.time(), x=77)))
        await until(lambda: len(sock.messages) == 2, "the node's notification")
        world.feed.on_notice(Opened(Revoke(topic=T, at=time.time(), x=78)))
        await until(lambda: len(world.log.waited_for) == 2, "the recheck")
        world.feed.on_notice(Opened(Revoke(user=1, at=time.time(), x=79)))
        await until(lambda: len(world.log.waited_for) == 3, "the user's recheck")
    finally:
        lane.cancel()
        checker.cancel()
    assert world.log.waited_for == [("user_messages", [77]), ("visible", [78]), ("visible", [79])]


async def test_typing_that_opened_goes_to_the_tracks_sockets(world: World) -> None:
    _, sock, _ = await world.socket()
    typing = msgspec.Raw(
        b'{"type":"user_typing","track_id":"t1","user_id":2,"username":"b","is_typing":true}'
    )
    world.feed.on_notice(Opened(Ephemeral(topic=T, message=typing)))
    assert [m["type"] for m in sock.messages] == ["user_typing"]


async def test_revoked_access_closes_the_sockets_that_lost_it(world: World) -> None:
    _, kept, _ = await world.socket(user=1)
    _, lost, _ = await world.socket(user=2)
    _, anonymous, _ = await world.socket(user=ANONYMOUS)
    checker = asyncio.create_task(world.feed.enforce_access())
    try:
        world.log.visible_pairs = {(1, T)}
        epoch = world.feed.access_epoch
        world.feed.on_notice(Opened(Revoke(topic=T, at=time.time() - 3600)))  # old: dropped
        assert world.feed.access_epoch == epoch
        world.feed.on_notice(Opened(Revoke(topic=T, at=time.time())))
        assert world.feed.access_epoch > epoch  # sockets being admitted check again
        await until(lambda: lost.closed_with is not None and anonymous.closed_with is not None, "the closes")
    finally:
        checker.cancel()
    assert lost.closed_with == (close_codes.POLICY, close_codes.ACCESS_REVOKED)
    assert kept.closed_with is None


async def test_a_socket_joining_a_new_track_moves_the_access_epoch(world: World) -> None:
    epoch = world.feed.access_epoch
    await world.socket()  # the track's channel was newly listened on: a revocation may have passed
    assert world.feed.access_epoch > epoch
    epoch = world.feed.access_epoch
    await world.socket()  # the same track and user: nothing new listened on
    assert world.feed.access_epoch == epoch


def test_a_hub_that_closed_its_sockets_takes_no_new_one() -> None:
    hub = Hub()
    hub.close_all(close_codes.GOING_AWAY, close_codes.SHUTTING_DOWN)
    with pytest.raises(ShuttingDown):
        hub.add(Connection(FakeSocket(), 1, LIMIT))
    assert hub.sockets == 0


async def test_two_first_sockets_of_a_user_joining_at_once_both_move_the_access_epoch(world: World) -> None:
    await world.socket(user=1)  # the track's channel is in place
    epoch = world.feed.access_epoch
    world.channels.hold = asyncio.Event()
    joining = [asyncio.create_task(world.socket(user=5)) for _ in range(2)]
    await until(lambda: world.channels.held == 2, "both to wait for the user's channel")
    world.channels.hold.set()
    await asyncio.gather(*joining)
    # Their user's channel was new to both: a revocation sent before it was in place went unheard,
    # and each of their admissions must ask again.
    assert world.feed.access_epoch >= epoch + 2


async def test_a_track_whose_start_failed_is_not_listened_on_once_its_sockets_gave_up(world: World) -> None:
    world.log.slow = asyncio.Event()
    conn = Connection(FakeSocket(), 1, LIMIT)
    with pytest.raises(TimeoutError):
        async with world.feed.connection(conn, 0.05):
            await world.feed.subscribe(conn, T, 0.05)
    assert topic_name(T) in world.channels.listening  # its start is still reading the cursor
    world.log.fail = True
    world.log.slow.set()
    await until(lambda: topic_name(T) not in world.channels.listening, "the channel to be let go")


@contextlib.asynccontextmanager
async def enforcing(world: World) -> AsyncIterator[None]:
    """The access guard at work, as a replica runs it (a gone topic's reload waits for it)."""
    checker = asyncio.create_task(world.feed.enforce_access())
    try:
        yield
    finally:
        checker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await checker


async def idle() -> None:
    """Let every task that can run do so: in-memory work ends within a few turns of the loop."""
    for _ in range(100):
        await asyncio.sleep(0)


async def test_a_deleted_and_remade_track_makes_its_sockets_resync_from_the_latest_seq(world: World) -> None:
    _, sock, _ = await world.socket()
    world.notice(T, world.log.write(T, 2))
    world.log.write(T, 3)  # more comments, then the track deleted in the same transaction
    world.log.delete_track(T)  # (their events went with it; the numbering stays at 5)
    async with enforcing(world):
        world.feed.on_notice(Opened(Revoke(topic=T, gone=True, at=time.time())))
        await until(lambda: any(m["type"] == "resync" for m in sock.messages), "the resync")
    assert sock.messages[-1] == {
        "type": "resync",
        "track_id": "t1",
        "seq": 5,
        "tag": world.log.tag(T, 5),
        "message": "events were missed: reload the comments",
    }
    world.notice(T, world.log.write(T, 1))  # the new track's first event goes on from 5
    await until(lambda: sock.seqs == [1, 2, 6], "the new track's first event")
    world.feed.on_notice(Opened(Revoke(topic=T, gone=True, at=time.time() - 1)))  # seen: no more
    assert [m["type"] for m in sock.messages].count("resync") == 1


async def test_a_topic_gone_while_its_catch_up_reads_the_log_is_reloaded_all_the_same(world: World) -> None:
    """The track deleted and made again while a catch-up of its events is in flight: the catch-up
    reads again and its sockets reload (the reload was dropped when the read in flight found
    nothing more to read)."""
    _, sock, _ = await world.socket()
    world.log.answer_gate[T] = asyncio.Event()
    world.notice(T, world.log.write(T, 1), events=False)  # its events are read from the log
    await until(lambda: world.log.answers_held == 1, "the catch-up's read, in flight")
    world.log.delete_track(T)
    async with enforcing(world):
        world.feed.on_notice(Opened(Revoke(topic=T, gone=True, at=time.time())))
        world.log.answer_gate[T].set()
        await until(lambda: sock.resyncs, "the reload")
    assert sock.seqs == [1] and sock.resyncs[0]["seq"] == 1


async def test_a_reload_whose_read_of_the_log_fails_is_told_when_the_read_is_tried_again(
    world: World,
) -> None:
    """The track deleted and made again, and the catch-up's read fails: the read tried again
    still makes the sockets reload (the failed try had used the reload up)."""
    _, sock, _ = await world.socket()
    world.notice(T, world.log.write(T, 2))
    world.log.delete_track(T)
    world.log.failing_pages = 1
    async with enforcing(world):
        world.feed.on_notice(Opened(Revoke(topic=T, gone=True, at=time.time())))
        await async_wait_until(lambda: sock.resyncs, 5, "the reload, after the read is tried again")
    assert world.log.failing_pages == 0
    assert sock.seqs == [1, 2] and sock.resyncs[0]["seq"] == 2


async def test_a_gone_topic_tells_only_the_subscribers_that_may_still_see_it_to_reload(world: World) -> None:
    """The subject of a topic deleted (and made again, for user 1 only): its subscribers that may
    no longer see it lose the subscription and are never told to reload it first, however late
    the access recheck answers; the others reload from the latest seq."""
    _, kept, _ = await world.socket(user=1)
    _, lost, _ = await world.socket(user=2)
    world.notice(T, world.log.write(T, 2))
    world.log.delete_track(T)
    world.log.visible_pairs = {(1, T)}
    world.log.access_gate = asyncio.Event()  # the recheck answers after the log could be read
    async with enforcing(world):
        world.feed.on_notice(Opened(Revoke(topic=T, gone=True, at=time.time())))
        await until(lambda: world.log.access_held == 1, "the recheck, asked")
        await idle()  # (the reload's read of the log ran here, and told both sockets to reload)
        world.log.access_gate.set()
        await until(lambda: kept.resyncs and lost.closed_with is not None, "the reload and the end")
    assert lost.closed_with == (close_codes.POLICY, close_codes.ACCESS_REVOKED)
    assert [m["type"] for m in lost.messages] == ["comment_liked", "comment_liked"]  # no resync
    assert [m["type"] for m in kept.messages] == ["comment_liked", "comment_liked", "resync"]
    assert kept.resyncs[0]["seq"] == 2


async def test_a_reload_waits_for_a_recheck_that_does_not_answer_only_so_long(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The access recheck does not answer (the database is stuck): the subscribers are told to
    reload all the same once _REFUSALS_WAIT has passed."""
    monkeypatch.setattr(cursors_module, "_REFUSALS_WAIT", 0.05)
    _, sock, _ = await world.socket()
    world.notice(T, world.log.write(T, 2))
    world.log.delete_track(T)
    world.log.access_gate = asyncio.Event()  # never set: the recheck never answers
    async with enforcing(world):
        world.feed.on_notice(Opened(Revoke(topic=T, gone=True, at=time.time())))
        await async_wait_until(lambda: sock.resyncs, 5, "the reload, without the recheck's answer")
        assert world.log.access_held == 1
    assert sock.resyncs[0]["seq"] == 2


async def test_a_catch_up_ends_when_the_log_lacks_events_the_track_numbered(world: World) -> None:
    """A track's events deleted with it (its numbering kept) while a replica was behind: the
    catch-up finds nothing after its cursor, reloads from the latest seq and stops."""
    _, sock, _ = await world.socket()
    world.log.write(T, 4)  # 1..4 committed, their notices not yet here ...
    world.log.delete_track(T)  # ... and gone with the track
    world.feed.on_notice(Opened(TopicBatch(topic=T, first=4, last=4, at=time.time())))
    await until(lambda: not world.feed.cursors._topics[T].filling, "the catch-up to end", turns=200)
    assert [m["type"] for m in sock.messages] == ["resync"] and sock.messages[0]["seq"] == 4
    assert world.log.reads <= 2


# ---------------------------------------------------------------------------------------------
# Per-audience events (issue 20's hook)
# ---------------------------------------------------------------------------------------------


def test_an_event_with_a_restricted_variant_is_built_once_per_form_for_1000_sockets() -> None:
    """1,000 sockets on a track, half of them /api/ws, 5 moderators and the event's author: four
    forms (public and restricted, with and without the topic), each built once, and each socket
    in the audience gets the restricted one."""
    hub = Hub()
    sockets = {}
    for user in range(1, 1001):
        sock = FakeSocket()
        conn = Connection(sock, user, LIMIT, tagged=user % 2 == 0)
        hub.add(conn)
        hub.subscribe(conn, T)
        conn.moderate(T, user <= 5)
        sockets[user] = sock
    event = Frames(
        1, b'{"type":"skip","seq":1}', prefix(T), b'{"type":"comment_moderated","seq":1}', author=500
    )
    hub.send(T, [event])
    written = [sock.writes[-1] for sock in sockets.values()]
    assert len({id(data) for data in written}) == 4  # one object per form, shared by every socket
    kinds = {user: sock.messages[-1]["type"] for user, sock in sockets.items()}
    audience = {1, 2, 3, 4, 5, 500}
    assert {user for user, kind in kinds.items() if kind == "comment_moderated"} == audience
    assert all("topic" in sock.messages[-1] for user, sock in sockets.items() if user % 2 == 0)
    assert hub.delivered == 1000


def test_a_public_event_on_a_track_with_1000_listeners_and_5_moderators_is_one_frame_built_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Moderation does not cost the common case: an event without a restricted variant (a new
    visible comment) is built into a frame once, and that one frame goes to the 1,000 listeners and
    the 5 moderators alike (the frame builds counted where they happen)."""
    builds: list[bytes] = []

    def counted(payload: bytes) -> bytes:
        builds.append(payload)
        return text_frame(payload)

    monkeypatch.setattr(frames_module, "text_frame", counted)
    hub = Hub()
    sockets = []
    for user in range(1, 1006):
        sock = FakeSocket()
        conn = Connection(sock, user, LIMIT)
        hub.add(conn)
        hub.subscribe(conn, T)
        conn.moderate(T, user > 1000)  # 1,000 listeners, 5 moderators
        sockets.append(sock)
    hub.send(T, [Frames(1, b'{"type":"new_comment","seq":1}', prefix(T))])
    assert len(builds) == 1
    assert len({id(sock.writes[-1]) for sock in sockets}) == 1
    assert hub.delivered == 1005


async def test_a_replay_of_large_events_is_read_and_written_a_mebibyte_at_a_time(world: World) -> None:
    """10 events of 400 KB: pages of at most ~1 MiB of messages (the one that passes it ends the
    page), each written to the socket on its own; before, a page was up to 500 events read and
    written at once."""
    world.feed = Feed(world.hub, world.log, world.channels)  # pages as a replica reads them
    big = b'{"type": "comment_edited", "content": "' + b"x" * 400_000 + b'"}'
    world.log.write(T, 10, message=big)
    await world.socket()  # the track is watched: its cursor is 10
    _, sock, _ = await world.socket(user=2, since=0)
    assert sock.seqs == list(range(1, 11))
    assert [read for topic, _, read in world.log.pages if topic == T] == [3, 3, 3, 1]
    assert (
        max(map(len, sock.writes)) < EVENT_PAGE_BYTES + 400_100
    )  # a page: under 1 MiB, plus the event that passed it
    await world.feed.stop()
