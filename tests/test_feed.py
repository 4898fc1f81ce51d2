"""The resume protocol in-process: the feed, the hub and the subscriber over an in-memory event log.

Fast (no server, no database): gaps, resync, a database that went back in time, a client ahead of
the replica, the seam between replay and live, and a catch-up that must not hold other tracks up.
The same behaviour is tested through real servers and PostgreSQL in test_realtime.py and others.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import msgspec
import pytest

from app import close_codes
from app.channels import Opened, track_channel, user_channel
from app.feed import Feed
from app.hub import Hub, ShuttingDown, TooManySockets
from app.subscriber import ANONYMOUS, Subscriber
from app.wire import Ephemeral, Revoke, TrackBatch, UserBatch
from tests.fakes import FakeChannels, FakeSocket, MemoryLog
from tests.support import async_wait_until

LIMIT = 64 * 1024
T, U = "t1", "t2"


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
    channels: FakeChannels
    feed: Feed
    stack: contextlib.AsyncExitStack

    def notice(
        self, track_id: str, rows: list[tuple[int, bytes]], events: bool = True, at: float = 0.0
    ) -> None:
        """The listener hands over the signed NOTIFY of a statement that made `rows`."""
        batch = TrackBatch(
            track_id=track_id,
            first=rows[0][0],
            last=rows[-1][0],
            at=at or time.time(),
            events=[msgspec.Raw(message) for _, message in rows] if events else None,
        )
        self.feed.on_notice(Opened(batch))

    async def socket(
        self, track_id: str = T, user: int = 1, since: int | None = None
    ) -> tuple[Subscriber, FakeSocket, int]:
        """A socket as app/handlers/sockets.py runs one: join, replay, go live."""
        sock = FakeSocket()
        sub = Subscriber(sock, user, track_id, LIMIT)
        start = await self.stack.enter_async_context(self.feed.subscription(sub, 1.0))
        if since is not None:
            async for frames in self.feed.replay(sub, since, start):
                sub.write_now(frames)
        sub.go_live()
        return sub, sock, start


@pytest.fixture
async def world() -> AsyncIterator[World]:
    hub = Hub(sockets_per_user=3)
    log = MemoryLog()
    channels = FakeChannels()
    feed = Feed(hub, log, channels, page=3)
    async with contextlib.AsyncExitStack() as stack:
        yield World(hub, log, channels, feed, stack)
        await feed.stop()


# ---------------------------------------------------------------------------------------------
# Subscriber and hub
# ---------------------------------------------------------------------------------------------


def test_a_live_subscriber_writes_each_offer_at_once_and_several_frames_in_one_write() -> None:
    sock = FakeSocket()
    sub = Subscriber(sock, 1, T, LIMIT)
    sub.go_live()
    sub.offer(1, b"\x81\x01a")
    sub.offer_many([(2, b"\x81\x01b"), (3, b"\x81\x01c")])
    assert sock.writes == [b"\x81\x01a", b"\x81\x01b\x81\x01c"]


def test_frames_held_during_a_replay_go_out_after_it_without_what_it_sent() -> None:
    sock = FakeSocket()
    sub = Subscriber(sock, 1, T, LIMIT)
    sub.offer(5, b"five")
    sub.offer(6, b"six")
    sub.offer(0, b"typing")
    assert sock.writes == []
    sub.write_now(b"replayed 4 and 5")
    sub.skip_through = 5
    sub.go_live()
    assert sock.writes == [b"replayed 4 and 5", b"sixtyping"]


def test_a_socket_that_cannot_keep_up_is_closed_with_1013_and_counted_once_it_leaves() -> None:
    hub = Hub()
    sock = FakeSocket()
    sub = Subscriber(sock, 1, T, LIMIT)
    hub.add(sub)
    sub.go_live()
    hub.send_track(T, [(1, b"x")])
    sock.backlog = LIMIT + 1
    hub.send_track(T, [(2, b"y")])
    assert sock.closed_with == (close_codes.TRY_AGAIN, close_codes.TOO_SLOW)
    assert not sub.offer(3, b"z")
    assert hub.dropped_slow == 0
    hub.remove(sub)
    assert hub.dropped_slow == 1


def test_frames_held_past_the_bound_close_the_socket_too() -> None:
    sock = FakeSocket()
    sub = Subscriber(sock, 1, T, limit=10)
    assert sub.offer(1, b"12345678")
    assert not sub.offer(2, b"12345678")
    assert sock.closed_with == (close_codes.TRY_AGAIN, close_codes.TOO_SLOW)


def test_expired_tokens_close_their_sockets_with_4001() -> None:
    hub = Hub()
    old, fresh = FakeSocket(), FakeSocket()
    hub.add(Subscriber(old, 1, T, LIMIT, expires_at=100.0))
    hub.add(Subscriber(fresh, 2, T, LIMIT, expires_at=200.0))
    hub.close_expired(150.0)
    assert old.closed_with == (close_codes.TOKEN_EXPIRED, close_codes.EXPIRED)
    assert fresh.closed_with is None


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
    assert start == 0 and sock.seqs == [1, 2]
    assert world.log.reads == 0


async def test_a_gap_is_filled_from_the_log_in_order(world: World) -> None:
    _, sock, _ = await world.socket()
    world.log.write(T, 5)  # 1..5 committed; their NOTIFY was lost (the listener was away)
    world.notice(T, world.log.write(T, 1))  # 6 arrives: 1..5 are missing
    await until(lambda: sock.seqs == [1, 2, 3, 4, 5, 6], "the gap filled from the log")
    world.notice(T, world.log.write(T, 1))  # live again (or read by the catch-up, if it is ending)
    await until(lambda: sock.seqs == list(range(1, 8)), "the next event")


async def test_a_payload_that_fails_its_signature_is_only_a_hint_to_read_the_log(world: World) -> None:
    _, sock, _ = await world.socket()
    world.log.write(T, 1)  # a real event whose NOTIFY was lost, and a forgery on the channel
    world.feed.on_hint(track_channel(T))
    await until(lambda: sock.seqs == [1], "the real event, read from the log")
    assert sock.messages == [
        {"type": "comment_liked", "track_id": T, "seq": 1, "comment_id": 1, "like_count": 1}
    ]


async def test_hints_read_the_log_at_most_once_a_second_and_change_nothing(world: World) -> None:
    _, sock, _ = await world.socket()
    for _ in range(100):  # a flood of forgeries on the track's channel
        world.feed.on_hint(track_channel(T))
    world.feed.on_hint("tracktalk:t:" + "0" * 32)  # a channel nobody watches: nothing
    await until(lambda: not world.feed._tracks[T].filling, "the one check")
    assert world.log.reads == 1
    world.notice(T, world.log.write(T, 1))
    assert sock.seqs == [1] and [m["type"] for m in sock.messages] == ["comment_liked"]


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
    world.log.last[T] = 3  # a failover lost commits 4 and 5
    world.log.prune(T, [4, 5])
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
    await until(lambda: not world.feed._tracks[T].filling, "the catch-up to end")
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
    assert track_channel(T) not in world.channels.listening
    world.channels.hold.set()
    _, sock, start = await joining
    assert track_channel(T) in world.channels.listening and user_channel(1) in world.channels.listening
    assert start == 3
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
    assert start in (2, 3)  # the cursor read, or after the catch-up of what the notice named
    await until(lambda: sock.seqs == [3], "3, read from the log")
    assert world.log.reads > 0
    world.notice(T, world.log.write(T, 1))
    assert sock.seqs == [3, 4]  # once each, in order


async def test_replay_sends_exactly_the_missed_events_in_pages_then_live(world: World) -> None:
    world.log.write(T, 10)
    _, first, start = await world.socket()
    assert start == 10 and first.seqs == []
    _, back, start = await world.socket(user=2, since=4)
    world.notice(T, world.log.write(T, 2))
    assert back.seqs == list(range(5, 13))
    assert len(back.writes) == 2 + 1  # two pages of three, then one live write


async def test_live_events_during_a_replay_come_after_it_without_gap_or_duplicate(world: World) -> None:
    world.log.write(T, 7)
    await world.socket()  # the track is watched: its cursor is 7
    sock = FakeSocket()
    sub = Subscriber(sock, 2, T, LIMIT)
    start = await world.stack.enter_async_context(world.feed.subscription(sub, 1.0))
    replay = world.feed.replay(sub, 2, start)
    sub.write_now(await anext(replay))  # 3, 4, 5
    world.notice(T, world.log.write(T, 2))  # 8, 9 come live, mid-replay: held
    async for frames in replay:
        sub.write_now(frames)  # 6, 7
    sub.go_live()
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
    sub, sock, start = await world.socket(user=2, since=5)  # the client saw 5 on another one
    assert (start, sub.skip_through) == (3, 5)
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
        await until(world.feed._user_lane.empty, "the lane to go through its queue")
    finally:
        lane.cancel()
    assert [m["type"] for m in mine.messages] == ["notification"]
    assert theirs.messages == []


async def test_typing_that_opened_goes_to_the_tracks_sockets(world: World) -> None:
    _, sock, _ = await world.socket()
    typing = msgspec.Raw(
        b'{"type":"user_typing","track_id":"t1","user_id":2,"username":"b","is_typing":true}'
    )
    world.feed.on_notice(Opened(Ephemeral(track_id=T, message=typing)))
    assert [m["type"] for m in sock.messages] == ["user_typing"]


async def test_revoked_access_closes_the_sockets_that_lost_it(world: World) -> None:
    _, kept, _ = await world.socket(user=1)
    _, lost, _ = await world.socket(user=2)
    _, anonymous, _ = await world.socket(user=ANONYMOUS)
    checker = asyncio.create_task(world.feed.enforce_access())
    try:
        world.log.visible_pairs = {(1, T)}
        epoch = world.feed.access_epoch
        world.feed.on_notice(Opened(Revoke(track_id=T, at=time.time() - 3600)))  # old: dropped
        assert world.feed.access_epoch == epoch
        world.feed.on_notice(Opened(Revoke(track_id=T, at=time.time())))
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
        hub.add(Subscriber(FakeSocket(), 1, T, LIMIT))
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
    sub = Subscriber(FakeSocket(), 1, T, LIMIT)
    with pytest.raises(TimeoutError):
        async with world.feed.subscription(sub, 0.05):
            pass
    assert track_channel(T) in world.channels.listening  # its start is still reading the cursor
    world.log.fail = True
    world.log.slow.set()
    await until(lambda: track_channel(T) not in world.channels.listening, "the channel to be let go")


async def test_a_deleted_and_remade_track_makes_its_sockets_resync_from_the_latest_seq(world: World) -> None:
    _, sock, _ = await world.socket()
    world.notice(T, world.log.write(T, 2))
    world.log.write(T, 3)  # more comments, then the track deleted in the same transaction
    world.log.delete_track(T)  # (their events went with it; the numbering stays at 5)
    world.feed.on_notice(Opened(Revoke(track_id=T, gone=True, at=time.time())))
    await until(lambda: any(m["type"] == "resync" for m in sock.messages), "the resync")
    assert sock.messages[-1] == {
        "type": "resync",
        "track_id": T,
        "seq": 5,
        "message": "events were missed: reload the comments",
    }
    world.notice(T, world.log.write(T, 1))  # the new track's first event goes on from 5
    await until(lambda: sock.seqs == [1, 2, 6], "the new track's first event")
    world.feed.on_notice(Opened(Revoke(track_id=T, gone=True, at=time.time() - 1)))  # seen: no more
    assert [m["type"] for m in sock.messages].count("resync") == 1


async def test_a_catch_up_ends_when_the_log_lacks_events_the_track_numbered(world: World) -> None:
    """A track's events deleted with it (its numbering kept) while a replica was behind: the
    catch-up finds nothing after its cursor, reloads from the latest seq and stops."""
    _, sock, _ = await world.socket()
    world.log.write(T, 4)  # 1..4 committed, their notices not yet here ...
    world.log.delete_track(T)  # ... and gone with the track
    world.feed.on_notice(Opened(TrackBatch(track_id=T, first=4, last=4, at=time.time())))
    await until(lambda: not world.feed._tracks[T].filling, "the catch-up to end", turns=200)
    assert [m["type"] for m in sock.messages] == ["resync"] and sock.messages[0]["seq"] == 4
    assert world.log.reads <= 2
