"""The browser client's one socket of many topics (`openTopics`, /api/ws), in headless chromium on a
host app's page that loads nothing else: against two real replicas behind nginx, every event of
each topic once and in order across a replica killed under it; and, against a scripted server,
each topic subscribed again after a drop with its own since and tag, duplicates dropped per topic,
a subscribe refused for coming too fast asked again, a revoked topic let go."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from playwright.async_api import Browser, Page

from tests.support.host_app import (
    WAIT_MS,
    HostApp,
    Scripted,
    ScriptedServer,
    host_page,
    start_topics,
    wait_status,
)
from tests.support.metrics import metric
from tests.support.processes import Replica
from tests.support.proxies import Nginx
from tests.support.seed import World, new_track
from tests.support.writes import insert_comment

pytestmark = pytest.mark.timeout(180)

A, B = "track:a", "thread:9"


async def stored(db_url: str, topic: str, after: int) -> list[dict[str, Any]]:
    """The topic's events after `after`, as the server keeps them (and replays them)."""
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT message::text FROM tracktalk.events WHERE topic = %s AND seq > %s ORDER BY seq",
            (topic, after),
        )
        return [json.loads(text) for (text,) in await cur.fetchall()]


async def delivered(page: Page, topic: str) -> list[dict[str, Any]]:
    """The topic's durable events the page was handed, in order, without `topic`."""
    messages: list[dict[str, Any]] = await page.evaluate("(topic) => topicLog.messages[topic] || []", topic)
    return [{k: v for k, v in m.items() if k != "topic"} for m in messages if "seq" in m]


async def test_one_socket_of_two_topics_sees_every_event_of_each_once_in_order_across_a_killed_replica(
    browser: Browser,
    host_app: HostApp,
    nginx: Nginx,
    pair: list[Replica],
    world: World,
    db_url: str,
    log_dir: Path,
) -> None:
    tracks = [new_track(db_url), new_track(db_url)]
    topics = [f"track:{t}" for t in tracks]
    page = await host_page(browser, host_app, f"{nginx.http}/client/tracktalk.js")
    await start_topics(page, world.tokens["bob"], topics, baseUrl=nginx.http)
    await page.wait_for_function("() => topicLog.subscribed.length === 2", timeout=WAIT_MS)
    open_sockets = [await metric(replica, "tracktalk_open_sockets") for replica in pair]
    holder = pair[open_sockets.index(1)]

    async def write(count: int) -> None:
        for n in range(count):
            for track in tracks:
                await insert_comment(db_url, track, world.users["alice"], f"by SQL {n}")

    try:
        await write(3)
        writing = asyncio.create_task(write(12))  # goes on while the replica dies
        holder.stop(signal.SIGKILL)
        await writing
        for topic in topics:
            expected = await stored(db_url, topic, 0)
            assert len(expected) == 15
            await page.wait_for_function(
                "([topic, last]) => subs[topic].lastSeq === last",
                arg=[topic, expected[-1]["seq"]],
                timeout=WAIT_MS,
            )
            assert await delivered(page, topic) == expected  # every event, once, in order
        await wait_status(page, "live", 2)
        again = [m for m in await page.evaluate("() => topicLog.subscribed") if m["resumed"]]
        assert sorted(m["topic"] for m in again) == sorted(topics)  # both resumed after the drop
        assert await page.evaluate("() => log.refusals") == []
    finally:
        await page.evaluate("() => live.close()")
        await page.context.close()
        if holder.process is not None and holder.process.poll() is not None:
            await asyncio.to_thread(holder.start, log_dir)


@pytest.fixture
async def page(browser: Browser, host_app: HostApp, pair: list[Replica]) -> AsyncIterator[Page]:
    """A host page with the module from a real replica."""
    made = await host_page(browser, host_app, f"{pair[0].http}/client/tracktalk.js")
    yield made
    await made.evaluate("() => window.live && live.close()")
    await made.context.close()


async def open_scripted(page: Page, server: ScriptedServer) -> Scripted:
    await start_topics(page, "t0", [A, B], baseUrl=server.http, backoff={"firstMs": 200})
    sock = await server.next()
    await sock.send({"type": "connected", "message": "m", "protocol": 1, "max_topics": 100})
    return sock


def event(topic: str, seq: int, tag: str) -> dict[str, Any]:
    return {"topic": topic, "type": "post_liked", "seq": seq, "tag": tag, "post_id": 1, "like_count": seq}


async def test_after_a_drop_each_topic_is_subscribed_again_with_its_own_since_and_tag(
    page: Page, scripted: ScriptedServer
) -> None:
    first = await open_scripted(page, scripted)
    assert first.query["token"] == "t0"
    assert await first.received(2) == [{"type": "subscribe", "topic": A}, {"type": "subscribe", "topic": B}]
    await first.send({"type": "subscribed", "topic": A, "seq": 4, "tag": "04"})
    await first.send({"type": "subscribed", "topic": B, "seq": 0, "tag": None})
    for message in (
        event(A, 5, "05"),
        event(B, 1, "b1"),
        event(A, 5, "05"),
        event(A, 6, "06"),
        event(B, 1, "b1"),
    ):
        await first.send(message)  # duplicates of each topic on the way
    await page.wait_for_function("() => subs['track:a'].lastSeq === 6 && subs['thread:9'].lastSeq === 1")
    await first.close(1001, "going away")
    second = await scripted.next()
    await second.send({"type": "connected", "message": "m", "protocol": 1, "max_topics": 100})
    assert sorted(await second.received(2), key=lambda f: f["topic"]) == [
        {"type": "subscribe", "topic": B, "since": 1, "tag": "b1"},
        {"type": "subscribe", "topic": A, "since": 6, "tag": "06"},
    ]
    await second.send({"type": "subscribed", "topic": A, "seq": 7, "tag": "07"})
    await second.send(event(A, 6, "06"))  # the seam: already delivered
    await second.send(event(A, 7, "07"))
    await page.wait_for_function("() => subs['track:a'].lastSeq === 7")
    assert [m["seq"] for m in await delivered(page, A)] == [5, 6, 7]
    assert [m["seq"] for m in await delivered(page, B)] == [1]


async def test_a_subscribe_refused_for_coming_too_fast_is_asked_again_and_a_revoked_topic_is_let_go(
    page: Page, scripted: ScriptedServer
) -> None:
    sock = await open_scripted(page, scripted)
    await sock.received(2)
    await sock.send(
        {
            "type": "subscribe_error",
            "topic": A,
            "reason": "too many topics",
            "message": "too fast",
            "retry_after": 0.2,
        }
    )
    await sock.send({"type": "subscribed", "topic": B, "seq": 3, "tag": "03"})
    frames = await sock.received(3)
    assert frames[2] == {"type": "subscribe", "topic": A}  # asked again, after retry_after
    assert sock.frame_times[2] - sock.frame_times[0] >= 0.19
    await sock.send({"type": "unsubscribed", "topic": B, "reason": "forbidden"})
    await sock.send({"type": "mention", "comment": {}, "from_user": "alice", "track_id": "t"})
    await page.wait_for_function("() => topicLog.unsubscribed.length === 1 && topicLog.user.length === 1")
    assert await page.evaluate("() => live.topics") == [A]
    assert [e["reason"] for e in await page.evaluate("() => topicLog.errors")] == ["too many topics"]
    await sock.close(1001, "going away")
    again = await scripted.next()
    await again.send({"type": "connected", "message": "m", "protocol": 1, "max_topics": 100})
    assert await again.received(1) == [{"type": "subscribe", "topic": A}]  # B is not asked for again
    await asyncio.sleep(0.3)
    assert len(again.frames) == 1
