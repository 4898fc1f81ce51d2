"""Writers: comments at a steady rate, half by SQL and half through the API, and the frames each must produce."""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import psycopg

from bench.lib.database import World
from bench.lib.settings import TRACKTALK


@dataclass
class Written:
    sent: int = 0
    errors: int = 0
    writer_time: dict[int, float] = field(default_factory=dict)
    """comment id -> time.time() right after the commit returned (SQL) or the POST answered (API)."""
    via_api: set[int] = field(default_factory=set)
    table: str = "comments"


def frames_for(comment_id: int, track_id: str, user_id: int, seq: int) -> list[str]:
    """What the baselines send for a comment: the one frame tracktalk sends (a new_comment that
    carries the track's counters, in jsonb's layout)."""
    comment = {
        "id": comment_id,
        "user_id": user_id,
        "username": f"listener{user_id}",
        "author_is_creator": False,
        "author_is_team": False,
        "track_id": track_id,
        "parent_id": None,
        "content": "bench comment",
        "timestamp": 1.0,
        "is_edited": False,
        "created_at": "2025-01-01T00:00:00+00:00",
        "last_edited_at": None,
        "like_count": 0,
        "user_has_liked": False,
    }
    metrics = {"likes": 0, "shares": 0, "comments": seq}
    return [
        json.dumps(
            {"seq": seq, "type": "new_comment", "comment": comment, "metrics": metrics, "track_id": track_id}
        )
    ]


class Writer:
    """Writes `rate` comments a second for `duration` seconds on random tracks, for one design
    (tracktalk: by SQL, or every other one through the API of the replicas in turn when `api`)."""

    def __init__(
        self,
        design: str,
        world: World,
        tracks: list[str],
        api: list[str],
        extra: dict[str, Any],
        connections: int = 4,
    ):
        self.design = design
        self.world = world
        self.tracks = tracks
        self.api = api
        self.extra = extra
        self.connections = connections
        self.out = Written(table="comments" if design in TRACKTALK else "bench_plain_comments")
        self.seq: dict[str, int] = {}

    async def run(self, rate: float, duration: float) -> Written:
        conns = [
            await psycopg.AsyncConnection.connect(self.world.url, autocommit=True)
            for _ in range(self.connections)
        ]
        free: asyncio.Queue[psycopg.AsyncConnection[Any]] = asyncio.Queue()
        for c in conns:
            free.put_nowait(c)
        redis_client = None
        floor_ws = None
        if self.design == "redis":
            import redis.asyncio as aioredis

            redis_client = aioredis.from_url(self.extra["redis_url"])
        if self.design == "floor":
            from websockets.asyncio.client import connect

            floor_ws = await connect(f"ws://127.0.0.1:{self.extra['floor_port']}/publish", compression=None)
        http = httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_connections=16))
        tasks: set[asyncio.Task[None]] = set()
        sem = asyncio.Semaphore(32)
        start = time.monotonic()
        n = int(rate * duration)
        try:
            for i in range(n):
                delay = start + i / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await sem.acquire()
                task = asyncio.create_task(self._one(i, free, http, redis_client, floor_ws))
                task.add_done_callback(lambda _t: sem.release())
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.wait(tasks, timeout=15)
        finally:
            await http.aclose()
            for c in conns:
                await c.close()
            if redis_client is not None:
                await redis_client.aclose()
            if floor_ws is not None:
                await floor_ws.close()
        return self.out

    async def _one(
        self, i: int, free: Any, http: httpx.AsyncClient, redis_client: Any, floor_ws: Any
    ) -> None:
        track = random.choice(self.tracks)
        user = random.choice(self.world.users)
        self.out.sent += 1
        try:
            if self.design == "floor":
                cid = 10_000_000 + i
                seq = self.seq[track] = self.seq.get(track, 0) + 1
                payload = json.dumps({"track_id": track, "frames": frames_for(cid, track, user, seq)})
                self.out.writer_time[cid] = time.time()
                await floor_ws.send(payload)
                return
            if self.design in TRACKTALK and self.api and i % 2 == 1:
                base = self.api[i // 2 % len(self.api)]
                r = await http.post(
                    f"{base}/api/tracks/{track}/comments",
                    json={"content": f"bench api {i}", "timestamp": 1.0},
                    headers={"Authorization": f"Bearer {self.world.tokens[user]}"},
                )
                done = time.time()
                if r.status_code != 201:
                    self.out.errors += 1
                    return
                cid = int(r.json()["id"])
                self.out.writer_time[cid] = done
                self.out.via_api.add(cid)
                return
            conn = await free.get()
            try:
                if self.design in TRACKTALK:
                    cur = await conn.execute(
                        "INSERT INTO comments (track_id, user_id, content, timestamp) VALUES (%s, %s, %s, 1) RETURNING id",
                        (track, user, f"bench sql {i}"),
                    )
                    row = await cur.fetchone()
                    self.out.writer_time[int(row[0])] = time.time()
                    return
                seq = self.seq[track] = self.seq.get(track, 0) + 1
                async with conn.transaction():
                    cur = await conn.execute(
                        "INSERT INTO bench_plain_comments (track_id, user_id, content, timestamp) VALUES (%s, %s, %s, 1) RETURNING id",
                        (track, user, f"bench {i}"),
                    )
                    row = await cur.fetchone()
                    cid = int(row[0])
                    frames = frames_for(cid, track, user, seq)
                    if self.design == "channels":
                        for frame in frames:
                            await conn.execute("SELECT pg_notify(%s, %s)", (f"track_{track}", frame))
                committed = time.time()
                if self.design == "redis":
                    await redis_client.publish("comments", json.dumps({"track_id": track, "frames": frames}))
                self.out.writer_time[cid] = committed
            finally:
                free.put_nowait(conn)
        except Exception as exc:
            self.out.errors += 1
            if self.out.errors <= 3:
                print(f"  writer error: {type(exc).__name__}: {exc}", file=sys.stderr)
