"""tracktalk.client.Topics against a replica's /api/ws: three topics on one socket, a refused one
let go, the replica restarted while comments keep coming on two tracks: every event of each topic
once, in order; the user's own mention once per socket."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.wire import Mention, NewComment
from tests.support.processes import Replica
from tests.support.seed import World, new_track
from tests.support.waiting import async_wait_until
from tests.support.writes import insert_comment
from tracktalk.client import Subscribed, SubscribeError, TopicMessage, Topics

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def own_replica(db_url: str, world: World, log_dir: Path) -> Iterator[Replica]:
    replica = Replica(db_url).start(log_dir)
    try:
        yield replica
    finally:
        with contextlib.suppress(AssertionError):
            replica.stop()


async def test_topics_follow_their_tracks_across_a_replica_restart(
    own_replica: Replica, world: World, db_url: str, log_dir: Path
) -> None:
    one, two = new_track(db_url), new_track(db_url)
    alice = world.users["alice"]
    got: list[TopicMessage] = []
    topics = Topics(own_replica.http, token=world.tokens["bob"])
    for topic in (f"track:{one}", f"track:{two}", f"track:{world.private}"):
        await topics.subscribe(topic)

    async def read() -> None:
        async for item in topics:
            got.append(item)

    reader = asyncio.create_task(read())

    def comments(topic: str) -> list[tuple[int, str]]:
        return [
            (m.message.seq, m.message.comment.content)
            for m in got
            if m.topic == topic and isinstance(m.message, NewComment)
        ]

    await async_wait_until(
        lambda: sum(isinstance(m.message, (Subscribed, SubscribeError)) for m in got) >= 3, 10, "answers"
    )
    refused = [m for m in got if isinstance(m.message, SubscribeError)]
    assert [(m.topic, m.message.reason) for m in refused] == [(f"track:{world.private}", "not found")]
    written: dict[str, list[str]] = {one: [], two: []}

    async def write(n: int) -> None:
        for i in range(n):
            track = (one, two)[i % 2]
            written[track].append(f"{track} {len(written[track])}")
            await insert_comment(db_url, track, alice, written[track][-1])

    await write(4)
    await insert_comment(db_url, one, alice, "hi @bob")
    written[one].append("hi @bob")
    await async_wait_until(lambda: any(isinstance(m.message, Mention) for m in got), 10, "the mention")
    writing = asyncio.create_task(write(30))
    await asyncio.to_thread(own_replica.stop, signal.SIGTERM)
    await asyncio.to_thread(own_replica.start, log_dir)
    await writing
    await write(4)
    await async_wait_until(
        lambda: (
            len(comments(f"track:{one}")) == len(written[one])
            and len(comments(f"track:{two}")) == len(written[two])
        ),
        20,
        "every comment",
    )
    for track in (one, two):
        seen = comments(f"track:{track}")
        assert [c for _, c in seen] == written[track]
        seqs = [s for s, _ in seen]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    mentions = [m for m in got if isinstance(m.message, Mention)]
    assert len(mentions) == 1 and mentions[0].topic is None
    assert topics.connections >= 2
    await topics.aclose()
    await asyncio.wait_for(reader, 5)
