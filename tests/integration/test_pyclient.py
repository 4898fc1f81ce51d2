"""The Python client (`tracktalk.client`, issue 21 item 5) against real replicas: it follows a track
across a replica's restart — stopped cleanly (1001) or killed (no close frame) while comments keep
coming in with SQL — delivering every event exactly once and in order; a refusal (1008) ends the
iteration with `Refused` and its reason; an expired token is renewed through the callback without a
loss; and `Api` posts, lists page by page, likes and reports errors with their detail."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from app.auth.hs256 import issue_token
from app.wire import Connected, NewComment
from tests.support.processes import SECRET, Replica
from tests.support.seed import World, new_track
from tests.support.waiting import async_wait_until
from tests.support.writes import insert_comment
from tracktalk.client import Api, ApiError, Refused, TrackFeed

pytestmark = pytest.mark.timeout(180)

TIMEOUT = 20.0


@pytest.fixture
def own_replica(db_url: str, world: World, log_dir: Path) -> Iterator[Replica]:
    """A replica of the test's own, to restart."""
    replica = Replica(db_url).start(log_dir)
    try:
        yield replica
    finally:
        with contextlib.suppress(AssertionError):
            replica.stop()


class Follower:
    """A TrackFeed read in a task of its own: the comments of its NewComment events, in order,
    with their seqs, and the Connected messages."""

    def __init__(self, feed: TrackFeed) -> None:
        self.feed = feed
        self.events: list[tuple[int, str]] = []
        self.connected: list[Connected] = []
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self.feed:
            if isinstance(message, NewComment):
                self.events.append((message.seq, message.comment.content))
            elif isinstance(message, Connected):
                self.connected.append(message)

    async def has(self, count: int, what: str) -> None:
        def enough() -> bool:
            if self.task.done():
                self.task.result()  # its exception, if it failed
                raise AssertionError("the feed ended")
            return len(self.events) >= count

        await async_wait_until(enough, TIMEOUT, what, interval=0.01)

    async def stop(self) -> None:
        await self.feed.aclose()
        await asyncio.wait_for(self.task, 5)


@contextlib.asynccontextmanager
async def following(feed: TrackFeed) -> AsyncIterator[Follower]:
    follower = Follower(feed)
    try:
        await async_wait_until(lambda: follower.connected, TIMEOUT, "connected")
        yield follower
    finally:
        await follower.stop()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["stopped", "killed"])
async def test_the_client_follows_a_track_across_a_replica_restart(
    own_replica: Replica, world: World, db_url: str, log_dir: Path, sig: signal.Signals
) -> None:
    track = new_track(db_url)
    alice = world.users["alice"]
    written: list[str] = []

    async def write(n: int) -> None:
        for _ in range(n):
            written.append(f"comment {len(written)}")
            await insert_comment(db_url, track, alice, written[-1])

    feed = TrackFeed(own_replica.http, track, token=world.tokens["bob"])
    async with following(feed) as follower:
        await write(5)
        await follower.has(5, "the first five")
        # Comments go on coming while the replica stops and starts again (on the same port).
        writing = asyncio.create_task(write(40))
        port = own_replica.port
        await asyncio.to_thread(own_replica.stop, sig)
        await asyncio.to_thread(own_replica.start, log_dir)
        assert own_replica.port == port, "the replica came back on another port"
        await writing
        await write(5)
        await follower.has(len(written), "every comment")
        assert len(follower.connected) >= 2  # (sockets a stopping replica closed at once are not live)
    seqs = [seq for seq, _ in follower.events]
    assert [content for _, content in follower.events] == written  # each once, in order
    assert seqs == list(range(seqs[0], seqs[0] + len(written)))
    assert feed.last_seq == seqs[-1]


async def test_a_refusal_ends_the_iteration_with_its_reason(replica: Replica, world: World) -> None:
    cases = [
        (TrackFeed(replica.http, "no-such-track", token=world.tokens["alice"]), "track not found"),
        (TrackFeed(replica.http, world.public, token="not-a-token"), "invalid token"),
        (TrackFeed(replica.http, world.private, token=world.tokens["alice"]), "track not found"),
    ]
    for feed, reason in cases:
        started = time.monotonic()
        with pytest.raises(Refused) as refused:
            async for message in feed:
                raise AssertionError(f"a refused socket sent {message}")
        assert (refused.value.code, refused.value.reason) == (1008, reason)
        assert feed.connections == 1 and time.monotonic() - started < 5  # not tried again


async def test_an_expired_token_is_renewed_through_the_callback_without_a_loss(
    replica: Replica, world: World, db_url: str
) -> None:
    track = new_track(db_url)
    bob = world.users["bob"]
    asked: list[bool] = []

    def token(*, expired: bool) -> str:
        asked.append(expired)
        return issue_token(SECRET, bob, ttl=3600 if expired else 2)

    written = [f"before {n}" for n in range(3)]
    feed = TrackFeed(replica.http, track, token=token)
    async with following(feed) as follower:
        for content in written:
            await insert_comment(db_url, track, bob, content)
        await follower.has(3, "the comments before the token expires")
        # The socket closes with 4001 within a second of `exp`; comments meanwhile are caught up.
        deadline = time.monotonic() + 6
        while feed.connections < 2 and time.monotonic() < deadline:
            written.append(f"around {len(written)}")
            await insert_comment(db_url, track, bob, written[-1])
        await async_wait_until(lambda: feed.connections >= 2, TIMEOUT, "a second connection")
        written.append("after")
        await insert_comment(db_url, track, bob, "after")
        await follower.has(len(written), "every comment")
    assert [content for _, content in follower.events] == written
    assert asked[:2] == [False, True]  # the second socket took a fresh token


async def test_the_api_posts_lists_page_by_page_likes_and_says_what_went_wrong(
    replica: Replica, world: World, db_url: str
) -> None:
    track = new_track(db_url)
    async with Api(replica.http, token=world.tokens["alice"]) as alice, Api(replica.http) as anonymous:
        posted = [await alice.post_comment(track, f"bot says {n}", timestamp=n) for n in range(5)]
        assert [c.content for c in posted] == [f"bot says {n}" for n in range(5)]
        reply = await alice.post_comment(track, "a reply", timestamp=1, parent_id=posted[0].id)
        assert reply.parent_id == posted[0].id
        listed = [c.id async for c in anonymous.comments(track, page=2)]
        assert set(listed) >= {c.id for c in posted}
        liked = await alice.like_comment(posted[1].id)
        assert (liked.like_count, liked.user_has_liked) == (1, True)
        assert (await anonymous.metrics(track)).comments == 6
        with pytest.raises(ApiError) as missing:
            await alice.post_comment("no-such-track", "hi", timestamp=1)
        assert missing.value.status == 404 and "not found" in missing.value.detail
        with pytest.raises(ApiError) as unsigned:
            await anonymous.post_comment(track, "hi", timestamp=1)
        assert unsigned.value.status == 401
        await alice.delete_comment(posted[4].id)
        assert posted[4].id not in [c.id async for c in anonymous.comments(track)]


async def test_the_api_renews_an_expired_token_once(replica: Replica, world: World, db_url: str) -> None:
    track = new_track(db_url)
    asked: list[bool] = []

    def token(*, expired: bool) -> str:
        asked.append(expired)
        return issue_token(SECRET, world.users["dave"], ttl=3600 if expired else -10)

    async with Api(replica.http, token=token) as api:
        comment = await api.post_comment(track, "with a fresh token", timestamp=2)
    assert comment.user_id == world.users["dave"] and asked == [False, True]
