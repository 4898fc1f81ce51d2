"""What topics cost: a socket's memory per topic, and how long a page's 100 subscribes take.

    python -m bench.topics [--sockets 1000] [--crowd 2000] [--rounds 5]

One replica over a fresh database on the embedded PostgreSQL (bench/lib/database.py):

1. memory, in the replica: `--sockets` sockets of /api/ws (distinct users) each subscribed to one
   topic, then to 99 more (the topics are watched already by another socket, so that what is
   measured is the subscriptions, not the topics' cursors and channels): RSS before and after,
   per socket. The RSS also keeps what the subscribes needed for a moment (a task each, their
   frames): one socket's 99 subscribes at once leave about 0.5 MB of arenas, so many sockets
   (default 1,000) make that a small share of the figure. Twice: on topics of a kind without presence (a kind `benchtopic` registered with
   tracktalk.topic_kind, anyone may see it), and on tracks' topics (presence counts each user on
   each topic: a dict entry per user and topic). The replica's RSS is read after a settle; Python
   frees little, so a second measure of the same kind can only be lower.
2. memory, in this process: the hub and the connections alone (app/live/hub.py,
   app/live/connection.py), tracemalloc's bytes per subscription, exact.
3. subscribe time: `--crowd` sockets open on the replica (each on a track of its own), then one
   socket subscribes to 100 topics at once with `since=` (each topic holds 5 events; since=2: a
   replay of 3 each), and the time from the first subscribe sent to the last topic's replay
   received; `--rounds` times on topics new to the replica (their channels listened on, their
   cursors read: cold) and as many on topics it already watches (warm).

Figures go to bench/results/topics-<time>.json and docs/performance.md ("Topics").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import statistics
import time
import tracemalloc
from pathlib import Path
from typing import Any

import psycopg
from websockets.asyncio.client import ClientConnection, connect

from app.live.connection import Connection
from app.live.hub import Hub
from bench.lib.database import World, database
from bench.lib.processes import Server, rss_kib, start_tracktalk, stop_all
from bench.lib.report import machine
from bench.lib.settings import RESULTS

TOPICS = 100
EVENTS = 5
SINCE = 2
CROWD_TRACKS = 500
"""The crowd's sockets are spread over this many tracks, none of the page's."""


async def open_socket(server: Server, token: str) -> ClientConnection:
    sock = await connect(f"ws://127.0.0.1:{server.port}/api/ws?token={token}", max_size=2**22)
    assert json.loads(await sock.recv())["type"] == "connected"
    return sock


async def subscribe(sock: ClientConnection, topics: list[str], since: int | None = None) -> None:
    """Subscribe to `topics` at once; return when each is subscribed and its replay is in."""
    wanted = {t: EVENTS - (since or 0) if since is not None else 0 for t in topics}
    for topic in topics:
        message: dict[str, Any] = {"type": "subscribe", "topic": topic}
        if since is not None:
            message["since"] = since
        await sock.send(json.dumps(message))
    subscribed: set[str] = set()
    got = dict.fromkeys(topics, 0)
    while len(subscribed) < len(topics) or any(got[t] < wanted[t] for t in topics):
        message = json.loads(await asyncio.wait_for(sock.recv(), 30))
        topic = message.get("topic")
        if message["type"] == "subscribed":
            subscribed.add(topic)
        elif message["type"] == "subscribe_error":
            raise RuntimeError(f"refused: {message}")
        elif topic in got and "seq" in message and message["type"] != "resync":
            got[topic] += 1


async def settle(server: Server, socks: list[ClientConnection]) -> int:
    """The replica's RSS once it is steady, every socket read meanwhile (a client that does not
    read leaves the replica holding the frames it sends, such as presence's counts, in its
    buffers)."""

    async def drain(sock: ClientConnection) -> None:
        with contextlib.suppress(Exception):
            while True:
                await sock.recv()

    readers = [asyncio.create_task(drain(sock)) for sock in socks]
    try:
        last = rss_kib(server.pid)
        for _ in range(20):
            await asyncio.sleep(1.0)
            now = rss_kib(server.pid)
            if abs(now - last) <= last * 0.002:
                break
            last = now
        return now
    finally:
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)


async def memory_in_the_replica(
    server: Server, world: World, sockets: int, topics: list[str]
) -> dict[str, Any]:
    """RSS per socket of `sockets` sockets with one topic, then with all of `topics`."""
    warm = await open_socket(server, world.tokens[world.users[-1]])
    await subscribe(warm, topics)  # the topics' cursors and channels, paid once
    socks = [await open_socket(server, world.tokens[world.users[i]]) for i in range(sockets)]
    for sock in socks:
        await subscribe(sock, topics[:1])
    one = await settle(server, [warm, *socks])
    for sock in socks:
        await subscribe(sock, topics[1:])
    many = await settle(server, [warm, *socks])
    for sock in [warm, *socks]:
        await sock.close()
    return {
        "sockets": sockets,
        "topics": len(topics),
        "rss_one_topic_kib": one,
        "rss_all_topics_kib": many,
        "extra_kib_per_socket": round((many - one) / sockets, 2),
    }


def memory_in_process(sockets: int = 2000) -> dict[str, Any]:
    """tracemalloc's bytes of the hub's and the connections' structures per subscription."""

    class Quiet:
        def write_frames(self, data: bytes) -> bool:
            return True

        def buffered(self) -> int:
            return 0

        async def drained(self) -> None:
            return None

        def close_now(self, code: int, reason: str) -> None:
            return None

    hub = Hub()
    topics = [f"track:t{n}" for n in range(TOPICS)]
    conns = [Connection(Quiet(), user, 1 << 20, tagged=True) for user in range(1, sockets + 1)]
    for conn in conns:
        hub.add(conn)
        hub.subscribe(conn, topics[0])
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for conn in conns:
        for topic in topics[1:]:
            hub.subscribe(conn, topic)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    return {
        "sockets": sockets,
        "extra_topics": TOPICS - 1,
        "bytes_per_subscription": round(grown / (sockets * (TOPICS - 1)), 1),
        "extra_bytes_per_socket": round(grown / sockets),
    }


async def subscribe_times(server: Server, world: World, crowd: int, rounds: int) -> dict[str, Any]:
    """The crowd opens; then a page's 100 subscribes with since=, timed, cold and warm."""
    tracks = world.tracks
    spread = tracks[rounds * TOPICS : rounds * TOPICS + CROWD_TRACKS]  # none of the page's
    crowd_socks = []
    for i in range(crowd):
        sock = await open_socket(server, world.tokens[world.users[i % len(world.users)]])
        await subscribe(sock, [f"track:{spread[i % len(spread)]}"])
        crowd_socks.append(sock)
    cold, warm = [], []
    for r in range(rounds):
        topics = [f"track:{t}" for t in tracks[r * TOPICS : (r + 1) * TOPICS]]
        page = await open_socket(server, world.tokens[world.users[r]])
        started = time.perf_counter()
        await subscribe(page, topics, since=SINCE)
        cold.append((time.perf_counter() - started) * 1000)
        again = await open_socket(server, world.tokens[world.users[r + rounds]])
        started = time.perf_counter()
        await subscribe(again, topics, since=SINCE)
        warm.append((time.perf_counter() - started) * 1000)
        await page.close()
        await again.close()
    for sock in crowd_socks:
        await sock.close()
    return {
        "crowd_sockets": crowd,
        "topics": TOPICS,
        "replayed_per_topic": EVENTS - SINCE,
        "cold_ms": [round(ms, 1) for ms in cold],
        "warm_ms": [round(ms, 1) for ms in warm],
        "cold_median_ms": round(statistics.median(cold), 1),
        "warm_median_ms": round(statistics.median(warm), 1),
    }


def prepare(world: World, rounds: int) -> list[str]:
    """Events on the tracks the page subscribes to; the kind `benchtopic` and its topics."""
    with psycopg.connect(world.url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO comments (track_id, user_id, content, timestamp)"
            " SELECT t, %s, 'event ' || g, 1 FROM unnest(%s::text[]) t, generate_series(1, %s) g",
            (world.users[0], world.tracks[: rounds * TOPICS], EVENTS),
        )
        conn.execute("SELECT tracktalk.topic_kind('benchtopic')")
    return [f"benchtopic:{n}" for n in range(TOPICS)]


async def main(args: argparse.Namespace) -> dict[str, Any]:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    logdir = RESULTS / f"topics-{stamp}"
    logdir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"machine": machine(), "in_process": memory_in_process()}
    print("in process:", result["in_process"], flush=True)
    users = max(args.sockets, 2 * args.rounds, 200) + 1
    with database(args.rounds * TOPICS + CROWD_TRACKS + TOPICS, users) as world:
        plain = prepare(world, args.rounds)
        servers: list[Server] = []
        try:
            server = start_tracktalk(world.url, logdir)
            servers.append(server)
            result["memory_kind_without_presence"] = await memory_in_the_replica(
                server, world, args.sockets, plain
            )
            print("replica, a kind without presence:", result["memory_kind_without_presence"], flush=True)
            tracks = [f"track:{t}" for t in world.tracks[-TOPICS:]]
            result["memory_tracks"] = await memory_in_the_replica(server, world, args.sockets, tracks)
            print("replica, tracks (presence):", result["memory_tracks"], flush=True)
        finally:
            stop_all(servers)
        servers = []
        try:
            server = start_tracktalk(world.url, logdir)
            servers.append(server)
            result["subscribe"] = await subscribe_times(server, world, args.crowd, args.rounds)
            print("subscribe 100 topics with since=:", result["subscribe"], flush=True)
        finally:
            stop_all(servers)
    out = RESULTS / f"topics-{stamp}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out.relative_to(Path.cwd()) if out.is_relative_to(Path.cwd()) else out}")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--crowd", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    asyncio.run(main(parser.parse_args()))
