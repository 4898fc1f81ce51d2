"""A socket that stops reading is cut off at its queue bound and resumes without loss;
the other sockets of its track are not delayed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.metrics import metric
from tests.support.processes import Replica, peak_rss_kib, replicas, reset_peak_rss, rss_kib
from tests.support.seed import World
from tests.support.sockets import open_socket
from tests.support.waiting import async_wait_until
from tests.support.writes import insert_comment, sql

BUFFER_KIB = 256
BIG = "x" * 60_000
HUGE = "🎵" * 100_000  # the longest comment SQL may write: 400 KB of UTF-8
GIVEN_BACK_KIB = 20 * 1024
"""What the replica may keep of the stalled sockets' memory once they are gone (glibc kept
40 to 230 MiB of it, freed, before app/server.py's tune_malloc)."""


@pytest.fixture(scope="module")
def small_queues(db_url: str, world: World, log_dir: Path) -> Iterator[Replica]:
    with replicas(
        db_url, log_dir, 1, TRACKTALK_SOCKET_BUFFER_KIB=str(BUFFER_KIB), TRACKTALK_SOCKETS_PER_USER="1000"
    ) as started:
        yield started[0]


async def test_a_stalled_socket_is_closed_with_1013_and_resumes_with_since(
    small_queues: Replica, world: World, db_url: str
) -> None:
    # The slow client's library stops reading from TCP once a frame is waiting (max_queue=1),
    # and its kernel buffer is small: the server's writes soon block.
    async with (
        open_socket(small_queues.ws, world.public, world.tokens["alice"], max_queue=1, rcvbuf=32_768) as slow,
        open_socket(small_queues.ws, world.public, world.tokens["bob"]) as fast,
    ):
        start = (await slow.expect("connected"))["seq"]
        await fast.expect("connected")
        written = 150

        async def write() -> None:
            for i in range(written):
                await insert_comment(db_url, world.public, world.users["dave"], f"{i} {BIG}")

        # The fast socket gets everything while the slow one sits on its frames.
        _, got_fast = await asyncio.gather(write(), fast.events(written, timeout=60))
        assert [e["seq"] for e in got_fast] == list(range(start + 1, start + written + 1))
        code, reason = await slow.closed(timeout=30)
    assert code == 1013 and reason and "since=" in reason
    seen = [m["seq"] for m in slow.received if m["type"] not in ("connected",)]
    assert seen == list(range(start + 1, start + 1 + len(seen)))
    assert len(seen) < written, "the slow socket was not cut off"
    async with open_socket(small_queues.ws, world.public, world.tokens["alice"], since=seen[-1]) as back:
        await back.expect("connected")
        rest = await back.events(start + written - seen[-1], timeout=60)
    assert [e["seq"] for e in rest] == list(range(seen[-1] + 1, start + written + 1))


async def test_many_stalled_sockets_cost_bounded_memory(
    small_queues: Replica, world: World, db_url: str
) -> None:
    """100 clients that read nothing: every one of them is cut off once the kernel's send buffer
    and its bound are full. The replica's memory at its highest (the kernel's own peak, VmHWM:
    nothing that lasted less than a sample is missed), while they are stalled, stays far below
    what buffering everything for them would take (100 x 28 x 400 KB = 1.1 GB); and once they
    are gone, what they took is given back."""
    clients, writes = 100, 28
    before = reset_peak_rss(small_queues.pid)
    dropped_before = await _dropped_slow(small_queues)
    async with contextlib.AsyncExitStack() as stack:
        stalled = [
            await stack.enter_async_context(
                open_socket(small_queues.ws, world.other, world.tokens["dave"], max_queue=1, rcvbuf=4096)
            )
            for _ in range(clients)
        ]
        for sock in stalled:
            await sock.expect("connected")
        # In one statement: its events do not fit a NOTIFY, so the replica reads them from the
        # log, all in one page (the most a catch-up hands each socket at once).
        await sql(
            db_url,
            "INSERT INTO comments (track_id, user_id, content, timestamp)"
            " SELECT %s, %s, %s, 1 FROM generate_series(1, %s)",
            (world.other, world.users["bob"], HUGE, writes),
        )

        async def all_cut_off() -> bool:
            return await _dropped_slow(small_queues) - dropped_before >= clients

        await async_wait_until(all_cut_off, 60, "every one of the stalled sockets to be cut off")
        grown_mib = (peak_rss_kib(small_queues.pid) - before) / 1024
    print(
        f"\n{clients} stalled sockets x {writes} frames of 400 KB: replica RSS peaked {grown_mib:.1f} MiB higher"
    )
    assert await _dropped_slow(small_queues) - dropped_before == clients
    assert grown_mib < 150

    async def given_back() -> bool:
        return rss_kib(small_queues.pid) - before < GIVEN_BACK_KIB

    await async_wait_until(given_back, 15, "the stalled sockets' memory to be given back")


async def _dropped_slow(replica: Replica) -> float:
    return await metric(replica, "tracktalk_sockets_dropped_slow_total")
