"""tracktalk's benchmark: latency, fan-out, memory and write cost, side by side with the baselines.

    python -m bench.run [--quick] [--only SCENARIO,...] [--designs tracktalk,floor,redis,channels]

Starts PostgreSQL (the embedded one, under bench/results/pg, unless DATABASE_URL is set), makes a
fresh database, migrates and seeds it, then runs each scenario with real server processes and
picows client processes, and writes bench/results/bench-<time>.json and .png. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec
import numpy as np
import psutil
import psycopg

from app.auth.hs256 import issue_token
from app.data.db import migrate
from bench.httpload import post_until

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SECRET = "bench-secret-0123456789-abcdefghijklmnop"
PY = sys.executable
DESIGNS = ("tracktalk", "floor", "redis", "channels")
SCENARIOS = ("idle", "hot", "catalog", "fanout", "elsewhere", "write")


# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------


@dataclass
class Sizes:
    idle_sockets: int
    idle_tracks: int
    idle_small_sockets: int
    idle_small_tracks: int
    hot_sockets: int
    hot_rate: float
    cat_replicas: int
    cat_sockets: int
    cat_tracks: int
    cat_rate: float
    fan_sockets: int
    fan_rate: float
    elsewhere_sockets: int
    elsewhere_rate: float
    duration: float
    write_seconds: float
    write_workers: int
    clients: int
    users: int
    settle: float = 1.0
    """Seconds between the last socket opened and the RSS reading, and for the last frames to arrive."""


FULL = Sizes(
    idle_sockets=10_000,
    idle_tracks=1_000,
    idle_small_sockets=2_000,
    idle_small_tracks=200,
    hot_sockets=1_000,
    hot_rate=50,
    cat_replicas=2,
    cat_sockets=2_000,
    cat_tracks=200,
    cat_rate=200,
    fan_sockets=5_000,
    fan_rate=30,  # 150,000 frames/s offered: more than any design delivers here, so the figure is capacity
    elsewhere_sockets=100,
    elsewhere_rate=1_000,
    duration=20,
    write_seconds=10,
    write_workers=4,
    clients=2,
    users=200,
)
QUICK = Sizes(
    idle_sockets=800,
    idle_tracks=100,
    idle_small_sockets=400,
    idle_small_tracks=40,
    hot_sockets=300,
    hot_rate=50,
    cat_replicas=2,
    cat_sockets=200,
    cat_tracks=20,
    cat_rate=100,
    fan_sockets=300,
    fan_rate=40,
    elsewhere_sockets=20,
    elsewhere_rate=300,
    duration=1.5,
    write_seconds=1.0,
    write_workers=2,
    clients=2,
    users=40,
    settle=0.5,
)


# ---------------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return float(times.user + times.system)


def rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}): {log.read_text()[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"server on port {port} did not start: {log.read_text()[-2000:]}")


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    grace: float = 15.0
    """Seconds to wait after SIGTERM (the baselines do not close their sockets: they get 1 s)."""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(self.grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def stop_all(servers: list[Server]) -> None:
    for server in servers:
        if server.proc.poll() is None:
            server.proc.send_signal(signal.SIGTERM)
    for server in servers:
        server.stop()


def start_server(args: list[str], env: dict[str, str], logdir: Path, name: str) -> Server:
    port = free_port()
    log = logdir / f"{name}-{port}.log"
    argv = [a.replace("{port}", str(port)) for a in args]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, cwd=ROOT, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT
        )
    server = Server(proc, port, log)
    wait_port(port, proc, log)
    return server


def start_tracktalk(url: str, logdir: Path) -> Server:
    env = {
        "DATABASE_URL": url,
        "TRACKTALK_SECRET": SECRET,
        # No comments-per-minute limit: the writers post far faster than any limit allows. (The
        # limit costs each POST one more statement, reading at most the limit's number of rows.)
        "TRACKTALK_COMMENTS_PER_MINUTE": "0",
        "TRACKTALK_SOCKETS_PER_USER": "1000000",
    }
    args = [PY, "-m", "app", "serve", "--port", "{port}"]
    return wait_ready(start_server(args, env, logdir, "tracktalk"))


def wait_ready(server: Server, timeout: float = 30) -> Server:
    """`server` once its /readyz answers 200; an error with its log's end after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{server.port}/readyz", timeout=1).status_code == 200:
                return server
        time.sleep(0.1)
    raise RuntimeError(f"server not ready (log {server.log}): {server.log.read_text()[-2000:]}")


class Clients:
    """The picows load-client processes, sockets spread over them."""

    def __init__(self, urls: list[str], count: int, workdir: Path) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        self.outs: list[str] = []
        self.frames = [0] * count
        self.closed = [0] * count
        self.ready: list[tuple[int, int]] = []
        for i in range(count):
            out = str(workdir / f"client-{i}-{time.monotonic_ns()}.json")
            config = {"urls": urls[i::count], "out": out, "concurrency": 40}
            path = out + ".config"
            Path(path).write_text(json.dumps(config))
            proc = subprocess.Popen(
                [PY, "-m", "bench.client", path],
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            self.procs.append(proc)
            self.outs.append(out)
        for proc in self.procs:
            assert proc.stdout is not None
            line = proc.stdout.readline().split()
            if not line or line[0] != "ready":
                raise RuntimeError(f"client failed to start: {line}")
            self.ready.append((int(line[1]), int(line[2])))
        for i, proc in enumerate(self.procs):
            threading.Thread(target=self._read, args=(i, proc), daemon=True).start()

    def _read(self, i: int, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            parts = line.split()
            if parts and parts[0] == "stat":
                self.frames[i] = int(parts[1])
                self.closed[i] = int(parts[2])

    @property
    def opened(self) -> int:
        return sum(r[0] for r in self.ready)

    @property
    def failed(self) -> int:
        return sum(r[1] for r in self.ready)

    def command(self, text: str) -> None:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(text + "\n")
            proc.stdin.flush()

    def cpu(self) -> float:
        return sum(cpu_seconds(p.pid) for p in self.procs)

    def stop(self) -> dict[str, Any]:
        self.command("stop")
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        frames = closed = 0
        ids: list[np.ndarray] = []
        times: list[np.ndarray] = []
        for out in self.outs:
            with contextlib.suppress(FileNotFoundError):
                data = json.loads(Path(out).read_text())
                frames += data["frames"]
                closed += data["closed"]
                ids.append(np.fromfile(out + ".ids", dtype=np.int64))
                times.append(np.fromfile(out + ".times", dtype=np.float64))
        return {
            "frames": frames,
            "closed": closed,
            "ids": np.concatenate(ids) if ids else np.zeros(0, np.int64),
            "times": np.concatenate(times) if times else np.zeros(0),
        }


# ---------------------------------------------------------------------------------------------
# Database
# ---------------------------------------------------------------------------------------------


@dataclass
class World:
    url: str
    tracks: list[str]
    users: list[int]
    tokens: dict[int, str]
    commit_ts: bool
    """The server records commit timestamps (track_commit_timestamp): latency is measured from them."""
    postmaster: int | None = None


PLAIN_TABLE = """
CREATE TABLE IF NOT EXISTS bench_plain_comments (LIKE comments INCLUDING DEFAULTS INCLUDING CONSTRAINTS
                                                 INCLUDING INDEXES INCLUDING IDENTITY);
ALTER TABLE bench_plain_comments DROP CONSTRAINT IF EXISTS bench_plain_track_fk;
ALTER TABLE bench_plain_comments ADD CONSTRAINT bench_plain_track_fk
    FOREIGN KEY (track_id) REFERENCES tracks (id) ON DELETE CASCADE;
ALTER TABLE bench_plain_comments DROP CONSTRAINT IF EXISTS bench_plain_user_fk;
ALTER TABLE bench_plain_comments ADD CONSTRAINT bench_plain_user_fk
    FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE;
"""
"""The comments table without tracktalk's triggers (same columns, checks, indexes and foreign keys)."""


def seed(url: str, n_tracks: int, n_users: int) -> tuple[list[str], list[int]]:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO users (username, is_creator) VALUES ('bench-creator', true) RETURNING id"
        ).fetchone()
        assert row is not None
        album = conn.execute(
            "INSERT INTO albums (title, created_by_id) VALUES ('Bench', %s) RETURNING id", (row[0],)
        ).fetchone()
        assert album is not None
        users = [
            int(r[0])
            for r in conn.execute(
                "INSERT INTO users (username) SELECT 'listener' || g FROM generate_series(1, %s) g RETURNING id",
                (n_users,),
            ).fetchall()
        ]
        tracks = [f"bt-{i:05d}" for i in range(n_tracks)]
        conn.execute(
            "INSERT INTO tracks (id, album_id, title) SELECT t, %s, t FROM unnest(%s::text[]) t",
            (album[0], tracks),
        )
        conn.execute(PLAIN_TABLE)
    return tracks, users


@contextlib.contextmanager
def database(n_tracks: int, n_users: int) -> Iterator[World]:
    """A fresh, migrated, seeded database on the embedded server (or on DATABASE_URL's server)."""
    name = f"bench_{int(time.time())}_{os.getpid()}"
    external = os.environ.get("DATABASE_URL")
    with contextlib.ExitStack() as stack:
        postmaster = None
        if external:
            admin = external
        else:
            from app.dev import embedded

            # Commit timestamps, so that latency runs from the commit the database recorded.
            embedded._FAST_SETTINGS = (*embedded._FAST_SETTINGS, "track_commit_timestamp=on")
            pg = stack.enter_context(embedded.EmbeddedPostgres(RESULTS / "pg", fast=True))
            admin = pg.url_for("postgres")
            postmaster = pg.pid
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
            commit_ts = conn.execute("SHOW track_commit_timestamp").fetchone() == ("on",)
        url = _with_db(admin, name)
        try:
            migrate(url)
            tracks, users = seed(url, n_tracks, n_users)
            tokens = {u: issue_token(SECRET, u, 3 * 3600) for u in users}
            yield World(url, tracks, users, tokens, commit_ts, postmaster)
        finally:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _with_db(url: str, name: str) -> str:
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(url)
    params["dbname"] = name
    return make_conninfo(**params)


def db_cpu(world: World) -> float:
    """CPU seconds of the PostgreSQL server processes alive now (embedded server only)."""
    if world.postmaster is None:
        return 0.0
    try:
        procs = [psutil.Process(world.postmaster), *psutil.Process(world.postmaster).children(recursive=True)]
    except psutil.Error:
        return 0.0
    return sum(cpu_seconds(p.pid) for p in procs)


def listener_backends(world: World) -> list[int]:
    """The PIDs of the replicas' LISTEN sessions on the server (embedded server only)."""
    if world.postmaster is None:
        return []
    with psycopg.connect(world.url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'tracktalk-listener'"
            " AND datname = current_database()"
        ).fetchall()
    return [int(row[0]) for row in rows]


def commit_times(world: World, table: str, ids: list[int]) -> dict[int, float]:
    if not world.commit_ts or not ids:
        return {}
    with psycopg.connect(world.url, autocommit=True) as conn:
        rows = conn.execute(
            f"SELECT id, extract(epoch FROM pg_xact_commit_timestamp(xmin))::float8 FROM {table} WHERE id = ANY(%s)",
            (ids,),
        ).fetchall()
    return {int(i): float(t) for i, t in rows if t is not None}


# ---------------------------------------------------------------------------------------------
# Writers: comments at a steady rate, half by SQL and half through the API
# ---------------------------------------------------------------------------------------------


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
        self.out = Written(table="comments" if design == "tracktalk" else "bench_plain_comments")
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
            if self.design == "tracktalk" and self.api and i % 2 == 1:
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
                if self.design == "tracktalk":
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


# ---------------------------------------------------------------------------------------------
# Scenarios
# ---------------------------------------------------------------------------------------------


def pct(values: np.ndarray, q: float) -> float | None:
    return round(float(np.percentile(values, q)) * 1000, 2) if values.size else None


def latencies(got: dict[str, Any], written: Written, world: World) -> dict[str, Any]:
    ids, times = got["ids"], got["times"]
    db = commit_times(world, written.table, list(written.writer_time)) if written.table else {}
    source = "database commit timestamp" if db else "writer clock after commit"
    reference = db or written.writer_time
    if not reference or ids.size == 0:
        return {"samples": 0, "source": source}
    keys = np.fromiter(reference.keys(), dtype=np.int64)
    vals = np.fromiter(reference.values(), dtype=np.float64)
    order = np.argsort(keys)
    keys, vals = keys[order], vals[order]
    pos = np.clip(np.searchsorted(keys, ids), 0, len(keys) - 1)
    known = keys[pos] == ids
    lat = times[known] - vals[pos[known]]
    api_ids = np.fromiter(written.via_api, dtype=np.int64) if written.via_api else np.zeros(0, np.int64)
    is_api = np.isin(ids[known], api_ids)
    out = {
        "source": source,
        "samples": int(lat.size),
        "p50_ms": pct(lat, 50),
        "p90_ms": pct(lat, 90),
        "p99_ms": pct(lat, 99),
        "max_ms": round(float(lat.max()) * 1000, 2) if lat.size else None,
    }
    if api_ids.size:
        out["sql_p50_ms"] = pct(lat[~is_api], 50)
        out["api_p50_ms"] = pct(lat[is_api], 50)
    return out


def queue_sampler(world: World, stop: threading.Event, peak: list[float]) -> None:
    with contextlib.suppress(psycopg.Error), psycopg.connect(world.url, autocommit=True) as conn:
        while not stop.is_set():
            row = conn.execute("SELECT pg_notification_queue_usage()").fetchone()
            peak[0] = max(peak[0], float(row[0]) if row else 0.0)
            stop.wait(0.25)


@dataclass
class Env:
    world: World
    logdir: Path
    sizes: Sizes
    redis_url: str = ""


def start_design(design: str, env: Env, replicas: int) -> list[Server]:
    if design == "tracktalk":
        return [start_tracktalk(env.world.url, env.logdir) for _ in range(replicas)]
    base = [PY, "-m", "bench.baselines", design, "--port", "{port}"]
    if design == "redis":
        base += ["--redis-url", env.redis_url]
    if design == "channels":
        base += ["--database-url", env.world.url]
    if design == "floor":
        replicas = 1  # the floor has no way between replicas: one process
    servers = [start_server(base, {}, env.logdir, design) for _ in range(replicas)]
    for server in servers:
        server.grace = 0.3
    return servers


def socket_urls(design: str, servers: list[Server], tracks: list[str], world: World, count: int) -> list[str]:
    urls = []
    for i in range(count):
        server = servers[i % len(servers)]
        track = tracks[i % len(tracks)]
        if design == "tracktalk":
            user = world.users[i % len(world.users)]
            urls.append(f"ws://127.0.0.1:{server.port}/api/ws/track/{track}?token={world.tokens[user]}")
        else:
            urls.append(f"ws://127.0.0.1:{server.port}/ws/{track}")
    return urls


def load(
    env: Env,
    scenario: str,
    design: str,
    replicas: int,
    sockets: int,
    tracks: list[str],
    rate: float,
    duration: float,
    profile: bool = False,
    write_tracks: list[str] | None = None,
    connections: int = 4,
) -> dict[str, Any]:
    """One run: servers up, sockets open (RSS before/after), writes at `rate` (on `write_tracks`,
    by default the sockets' tracks), then the figures."""
    world = env.world
    servers = start_design(design, env, replicas)
    result: dict[str, Any] = {
        "scenario": scenario,
        "design": design,
        "replicas": len(servers),
        "sockets": sockets,
        "tracks": len(tracks),
        "rate": rate,
        "duration": duration,
    }
    clients = None
    began = time.monotonic()
    try:
        time.sleep(0.3)
        rss_before = [rss_kib(s.pid) for s in servers]
        t0 = time.monotonic()
        clients = Clients(socket_urls(design, servers, tracks, world, sockets), env.sizes.clients, env.logdir)
        result["open_seconds"] = round(time.monotonic() - t0, 2)
        result["opened"], result["failed"] = clients.opened, clients.failed
        time.sleep(env.sizes.settle)
        rss_after = [rss_kib(s.pid) for s in servers]
        result["rss_before_mib"] = round(sum(rss_before) / 1024, 1)
        result["rss_after_mib"] = round(sum(rss_after) / 1024, 1)
        result["rss_per_socket_kib"] = round((sum(rss_after) - sum(rss_before)) / max(1, clients.opened), 1)
        if rate <= 0:
            return result
        clients.command("mark")
        cpu0 = [cpu_seconds(s.pid) for s in servers]
        ccpu0, dcpu0 = clients.cpu(), db_cpu(world)
        listeners = listener_backends(world) if design == "tracktalk" else []
        lcpu0 = sum(cpu_seconds(pid) for pid in listeners)
        stop, peak = threading.Event(), [0.0]
        sampler = threading.Thread(target=queue_sampler, args=(world, stop, peak), daemon=True)
        sampler.start()
        spy = start_profile(servers[0].pid, env.logdir, scenario, duration) if profile else None
        writer = Writer(
            design,
            world,
            write_tracks or tracks,
            [],
            {"redis_url": env.redis_url, "floor_port": servers[0].port},
            connections,
        )
        progress = threading.Event()

        def show() -> None:
            start = time.monotonic()
            last = 0
            while not progress.wait(1.0):
                frames = sum(clients.frames) if clients else 0
                print(
                    f"\r  {scenario:<9} {design:<9} {time.monotonic() - start:5.1f}s  "
                    f"comments {writer.out.sent:>6}  frames {frames:>9}  ({frames - last:>7}/s)  "
                    f"closed {sum(clients.closed) if clients else 0}   ",
                    end="",
                    flush=True,
                )
                last = frames

        shower = threading.Thread(target=show, daemon=True)
        shower.start()
        t_start = time.monotonic()
        written = asyncio.run(writer.run(rate, duration))
        time.sleep(env.sizes.settle)  # let the last frames arrive
        elapsed = time.monotonic() - t_start
        cpu1 = [cpu_seconds(s.pid) for s in servers]
        ccpu1, dcpu1 = clients.cpu(), db_cpu(world)
        lcpu1 = sum(cpu_seconds(pid) for pid in listeners)
        progress.set()
        stop.set()
        print()
        got = clients.stop()
        clients = None
        if spy is not None:
            result["profile"] = finish_profile(spy)
        server_cpu = sum(cpu1) - sum(cpu0)
        useful = int(got["ids"].size)
        result.update(
            useful_deliveries=useful,
            useful_per_cpu_s=round(useful / server_cpu) if server_cpu > 0 else None,
            cpu_us_per_comment=round(1e6 * server_cpu / written.sent, 1) if written.sent else None,
            comments=written.sent,
            write_errors=written.errors,
            frames=got["frames"],
            closed_during=got["closed"],
            window_s=round(elapsed, 2),
            messages_per_s=round(got["frames"] / elapsed),
            server_cpu_s=round(server_cpu, 2),
            server_cpu_pct=round(100 * server_cpu / elapsed, 1),
            cpu_us_per_message=round(1e6 * server_cpu / got["frames"], 2) if got["frames"] else None,
            client_cpu_s=round(ccpu1 - ccpu0, 2),
            client_cpu_pct=round(100 * (ccpu1 - ccpu0) / elapsed, 1),
            db_cpu_s=round(dcpu1 - dcpu0, 2),
            listener_backend_cpu_us_per_comment=(
                round(1e6 * (lcpu1 - lcpu0) / written.sent, 1) if listeners and written.sent else None
            ),
            notify_queue_peak=peak[0],
            latency=latencies(got, written, world),
        )
        return result
    finally:
        if clients is not None:
            clients.stop()
        stop_all(servers)
        result["wall_s"] = round(time.monotonic() - began, 1)


def start_profile(pid: int, logdir: Path, scenario: str, duration: float) -> dict[str, Any] | None:
    spy = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
    if not Path(spy).exists():
        return None
    out = RESULTS / f"profile-{scenario}.txt"
    raw = logdir / f"profile-{scenario}.raw"
    proc = subprocess.Popen(
        [
            spy,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(int(max(2, duration))),
            "--format",
            "raw",
            "--output",
            str(raw),
            "--rate",
            "200",
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    return {"proc": proc, "raw": raw, "out": out}


def finish_profile(spy: dict[str, Any]) -> dict[str, Any]:
    proc: subprocess.Popen[bytes] = spy["proc"]
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return {"error": "py-spy did not finish"}
    raw: Path = spy["raw"]
    if not raw.exists():
        return {"error": (err or b"").decode(errors="replace")[-500:]}
    own: dict[str, int] = {}
    total_fn: dict[str, int] = {}
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = stack.split(";")
        leaf = frames[-1]
        own[leaf] = own.get(leaf, 0) + n
        for f in set(frames):
            total_fn[f] = total_fn.get(f, 0) + n
    top_own = sorted(own.items(), key=lambda kv: -kv[1])[:25]
    top_total = sorted(total_fn.items(), key=lambda kv: -kv[1])[:40]
    lines = [f"py-spy record, {samples} samples", "", "own time (leaf functions):"]
    lines += [f"{100 * n / samples:6.1f}%  {name}" for name, n in top_own]
    lines += ["", "total time (function on the stack):"]
    lines += [f"{100 * n / samples:6.1f}%  {name}" for name, n in top_total]
    spy["out"].write_text("\n".join(lines) + "\n")
    shutil.copy(raw, spy["out"].with_suffix(".raw"))
    return {"samples": samples, "file": str(spy["out"].relative_to(ROOT)), "top_own": top_own[:10]}


@contextlib.contextmanager
def comment_triggers(url: str, enabled: bool) -> Iterator[None]:
    """tracktalk's triggers on `comments` on or off (ALTER TABLE ... DISABLE TRIGGER USER: the
    foreign keys' own triggers stay, comments_before_write's row checks go with the rest);
    always on again at the end, and the track counters recounted."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"ALTER TABLE comments {'ENABLE' if enabled else 'DISABLE'} TRIGGER USER")
    try:
        yield
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("ALTER TABLE comments ENABLE TRIGGER USER")
            if not enabled:
                conn.execute("SELECT tracktalk.recount(id) FROM tracks")


async def sql_insert_rate(world: World, workers: int, seconds: float) -> float:
    """Comments/s from `workers` connections of single-row autocommit INSERTs on random tracks."""
    stop_at = time.monotonic() + seconds
    count = 0

    async def worker() -> None:
        nonlocal count
        async with await psycopg.AsyncConnection.connect(world.url, autocommit=True) as conn:
            while time.monotonic() < stop_at:
                await conn.execute(
                    "INSERT INTO comments (track_id, user_id, content, timestamp) VALUES (%s, %s, 'bench write', 1)",
                    (random.choice(world.tracks), random.choice(world.users)),
                )
                count += 1

    start = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(workers)))
    return count / (time.monotonic() - start)


WRITE_ROUNDS = 3
"""The write scenario alternates without/with the triggers this many times (each phase gets
write_seconds / WRITE_ROUNDS a round): a machine whose speed drifts during the run (shared
cores, a background job) then shifts both sides alike. The medians are reported."""


def write_cost(env: Env) -> dict[str, Any]:
    """Comments/s into `comments` by SQL and through the API, without tracktalk's triggers then
    with them, in alternating rounds."""
    world, sizes = env.world, env.sizes
    seconds = sizes.write_seconds / WRITE_ROUNDS
    out: dict[str, Any] = {
        "scenario": "write",
        "workers": sizes.write_workers,
        "seconds": sizes.write_seconds,
        "rounds": WRITE_ROUNDS,
    }

    async def api_rate(port: int, seconds: float = seconds) -> tuple[float, dict[int, int]]:
        stop_at = time.monotonic() + seconds
        body = msgspec.json.encode({"content": "bench api write", "timestamp": 1.0})

        def request_as(user: int) -> Callable[[], tuple[str, bytes, str]]:
            token = world.tokens[user]
            return lambda: (f"/api/tracks/{random.choice(world.tracks)}/comments", body, token)

        start = time.monotonic()
        per_client = await asyncio.gather(
            *(
                post_until("127.0.0.1", port, stop_at, request_as(world.users[k % len(world.users)]))
                for k in range(4 * sizes.write_workers)
            )
        )
        statuses: dict[int, int] = {}
        for counts in per_client:
            for status, n in counts.items():
                statuses[status] = statuses.get(status, 0) + n
        return statuses.get(201, 0) / (time.monotonic() - start), statuses

    rounds: dict[str, list[float]] = {}
    server = start_tracktalk(world.url, env.logdir)
    try:
        # Warm up (not measured): the server's pool and code paths, PostgreSQL's caches.
        asyncio.run(sql_insert_rate(world, sizes.write_workers, 0.5))
        asyncio.run(api_rate(server.port, 0.5))
        for round_ in range(1, WRITE_ROUNDS + 1):
            for enabled, name in ((False, "plain"), (True, "triggers")):
                with comment_triggers(world.url, enabled):
                    sql_rate = asyncio.run(sql_insert_rate(world, sizes.write_workers, seconds))
                    cpu0, client0 = cpu_seconds(server.pid), cpu_seconds(os.getpid())
                    api, statuses = asyncio.run(api_rate(server.port))
                    server_cpu = cpu_seconds(server.pid) - cpu0
                    client_cpu = cpu_seconds(os.getpid()) - client0
                for key, value in (
                    (f"sql_{name}", sql_rate),
                    (f"api_{name}", api),
                    (f"api_{name}_server_cpu_s", server_cpu),
                    (f"api_{name}_client_cpu_s", client_cpu),
                ):
                    rounds.setdefault(key, []).append(value)
                for status, n in statuses.items():
                    tally = out.setdefault(f"api_{name}_statuses", {})
                    tally[status] = tally.get(status, 0) + n
                print(
                    f"  write     round {round_}/{WRITE_ROUNDS}, {name:<8}  SQL {sql_rate:>7.0f}/s  "
                    f"API {api:>6.0f}/s  (server CPU {server_cpu:.2f} s, client CPU {client_cpu:.2f} s, "
                    f"statuses {statuses})"
                )
    finally:
        server.stop()
    for key, values in rounds.items():
        name = key if key.endswith("_s") else f"{key}_per_s"
        out[name] = round(statistics.median(values), 2 if key.endswith("_s") else None)
        out[f"{key}_rounds"] = [round(v, 2) for v in values]
    out["trigger_cost_pct"] = round(100 * (1 - out["sql_triggers_per_s"] / out["sql_plain_per_s"]), 1)
    out["api_trigger_cost_pct"] = round(100 * (1 - out["api_triggers_per_s"] / out["api_plain_per_s"]), 1)
    out["api_trigger_cost_pct_rounds"] = [
        round(100 * (1 - t / p), 1) for p, t in zip(rounds["api_plain"], rounds["api_triggers"], strict=True)
    ]
    out["trigger_cost_pct_rounds"] = [
        round(100 * (1 - t / p), 1) for p, t in zip(rounds["sql_plain"], rounds["sql_triggers"], strict=True)
    ]
    return out


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def table(results: list[dict[str, Any]]) -> str:
    head = (
        f"{'scenario':<9} {'design':<9} {'repl':>4} {'sockets':>7} {'tracks':>6} {'rate/s':>6} "
        f"{'msgs/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'cpu %':>6} {'us/msg':>7} {'useful/cpu-s':>12} "
        f"{'us/comment':>10} {'KiB/sock':>8} {'open s':>6} {'client%':>7} {'closed':>6}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        if r["scenario"] == "write":
            continue
        lat = r.get("latency", {})
        lines.append(
            f"{r['scenario']:<9} {r['design']:<9} {r['replicas']:>4} "
            f"{r.get('opened', 0):>7} {r['tracks']:>6} {r['rate']:>6g} "
            f"{_f(r.get('messages_per_s')):>8} {_f(lat.get('p50_ms')):>7} {_f(lat.get('p99_ms')):>7} "
            f"{_f(r.get('server_cpu_pct')):>6} {_f(r.get('cpu_us_per_message')):>7} "
            f"{_f(r.get('useful_per_cpu_s')):>12} {_f(r.get('cpu_us_per_comment')):>10} "
            f"{_f(r.get('rss_per_socket_kib')):>8} {_f(r.get('open_seconds')):>6} "
            f"{_f(r.get('client_cpu_pct')):>7} {_f(r.get('closed_during')):>6}"
        )
    for r in results:
        if r["scenario"] == "write":
            lines.append(
                f"write cost: SQL {r['sql_plain_per_s']}/s without triggers, {r['sql_triggers_per_s']}/s with "
                f"({r['trigger_cost_pct']}% cost; {r['workers']} connections); API on one replica "
                f"{r['api_plain_per_s']}/s without, {r['api_triggers_per_s']}/s with ({r['api_trigger_cost_pct']}% cost; "
                f"{4 * r['workers']} clients); {r['seconds']} s each, in {r.get('rounds', 1)} alternating rounds "
                f"(cost per round: SQL {r.get('trigger_cost_pct_rounds')}, API {r.get('api_trigger_cost_pct_rounds')})"
            )
    return "\n".join(lines)


def _f(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.1f}" if v < 1000 else f"{v:.0f}"
    return str(v)


def ratios(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for scenario in ("hot", "catalog", "fanout"):
        ours = _pick(results, scenario, "tracktalk")
        if ours is None:
            continue
        for r in results:
            if r["scenario"] != scenario or r["design"] == "tracktalk":
                continue
            row: dict[str, Any] = {"scenario": scenario, "versus": r["design"]}
            for key, get in (
                ("messages_per_s", lambda x: x.get("messages_per_s")),
                ("useful_per_cpu_s", lambda x: x.get("useful_per_cpu_s")),
                ("p50_ms", lambda x: x.get("latency", {}).get("p50_ms")),
                ("p99_ms", lambda x: x.get("latency", {}).get("p99_ms")),
                ("cpu_us_per_message", lambda x: x.get("cpu_us_per_message")),
                ("rss_per_socket_kib", lambda x: x.get("rss_per_socket_kib")),
            ):
                a, b = get(ours), get(r)
                row[key] = round(a / b, 2) if a is not None and b else None
            out.append(row)
    return out


def _pick(results: list[dict[str, Any]], scenario: str, design: str, **match: Any) -> dict[str, Any] | None:
    return next(
        (
            r
            for r in results
            if r["scenario"] == scenario
            and r["design"] == design
            and all(r.get(k) == v for k, v in match.items())
        ),
        None,
    )


def targets(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 13's targets against this run: each row's figure, its target, and whether it is met."""
    rows: list[dict[str, Any]] = []

    def row(figure: str, measured: float | None, target: float, better: str, unit: str = "") -> None:
        met = None if measured is None else (measured <= target if better == "lower" else measured >= target)
        rows.append({"figure": figure, "measured": measured, "target": target, "unit": unit, "met": met})

    def ratio(a: dict[str, Any] | None, b: dict[str, Any] | None, key: str) -> float | None:
        x, y = (a or {}).get(key), (b or {}).get(key)
        return round(x / y, 2) if x is not None and y else None

    hot, cat = _pick(results, "hot", "tracktalk"), _pick(results, "catalog", "tracktalk")
    if hot is not None:
        row("hot: p99 commit -> socket", hot.get("latency", {}).get("p99_ms"), 20, "lower", "ms")
        row(
            "hot: useful/cpu-s vs channels",
            ratio(hot, _pick(results, "hot", "channels"), "useful_per_cpu_s"),
            1.5,
            "higher",
            "x",
        )
        row(
            "hot: useful/cpu-s vs seed (redis)",
            ratio(hot, _pick(results, "hot", "redis"), "useful_per_cpu_s"),
            1.2,
            "higher",
            "x",
        )
    if cat is not None:
        row(
            "catalog: useful/cpu-s vs channels",
            ratio(cat, _pick(results, "catalog", "channels"), "useful_per_cpu_s"),
            1.5,
            "higher",
            "x",
        )
        row("catalog: p99 commit -> socket", cat.get("latency", {}).get("p99_ms"), 2, "lower", "ms")
        row("catalog: open the sockets (2 replicas)", cat.get("open_seconds"), 1.5, "lower", "s")
    fan = _pick(results, "fanout", "tracktalk")
    if fan is not None:
        row(
            "fan-out: CPU per frame vs floor",
            ratio(fan, _pick(results, "fanout", "floor"), "cpu_us_per_message"),
            1.0,
            "lower",
            "x",
        )
    for r in results:
        if r["scenario"] == "idle":
            row(f"idle: KiB per socket at {r.get('opened')}", r.get("rss_per_socket_kib"), 20, "lower", "KiB")
    away = _pick(results, "elsewhere", "tracktalk")
    if away is not None:
        row("elsewhere: CPU per comment on other tracks", away.get("cpu_us_per_comment"), 15, "lower", "us")
    return rows


def chart(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"tracktalk": "#2b6cb0", "floor": "#718096", "redis": "#c53030", "channels": "#2f855a"}
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.4))
    panels = [
        (
            "hot",
            "hot: commit → receive p50 / p99 (ms)",
            lambda r: (r.get("latency", {}).get("p50_ms"), r.get("latency", {}).get("p99_ms")),
        ),
        ("hot", "hot: new_comment deliveries per server CPU-s", lambda r: (r.get("useful_per_cpu_s"), None)),
        ("catalog", "catalog: deliveries per server CPU-s", lambda r: (r.get("useful_per_cpu_s"), None)),
        ("fanout", "fan-out: server CPU µs per frame", lambda r: (r.get("cpu_us_per_message"), None)),
    ]
    for ax, (scenario, title, get) in zip(axes, panels, strict=True):
        rows = [r for r in results if r["scenario"] == scenario]
        names = [r["design"] for r in rows]
        first = [get(r)[0] or 0 for r in rows]
        ax.bar(names, first, color=[colors.get(n, "#999") for n in names])
        second = [get(r)[1] for r in rows]
        if any(v is not None for v in second):
            ax.scatter(
                names, [v or 0 for v in second], color="black", marker="_", s=300, zorder=3, label="p99"
            )
            ax.legend(fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.set_yscale("log" if title.startswith("hot: commit") else "linear")
        ax.tick_params(labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def redis_server(logdir: Path) -> Iterator[str]:
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError(
            "redis-server not found: apt-get install redis-server (or --designs without redis)"
        )
    port = free_port()
    proc = subprocess.Popen(
        [
            exe,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(logdir),
        ],
        stdout=(logdir / "redis.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_port(port, proc, logdir / "redis.log")  # type: ignore[arg-type]
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small numbers, under a minute")
    parser.add_argument("--only", default=",".join(SCENARIOS), help="scenarios to run")
    parser.add_argument("--designs", default=",".join(DESIGNS), help="designs to compare")
    parser.add_argument("--profile", action="store_true", help="py-spy record a replica during fan-out")
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    only = set(args.only.split(","))
    designs = [d for d in args.designs.split(",") if d]
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    info = {"machine": machine(), "quick": args.quick, "sizes": sizes.__dict__, "started": stamp}
    print(
        f"tracktalk bench ({'quick' if args.quick else 'full'}) on {info['machine']['cpu']}, "
        f"{info['machine']['cores']} cores, load {info['machine']['load_at_start'][0]:.2f}"
    )
    results: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        # Logs and the clients' files, kept for a look after the run (git-ignored, like all of results/).
        logdir = RESULTS / f"run-{stamp}"
        logdir.mkdir()
        n_tracks = max(sizes.idle_tracks, sizes.cat_tracks, sizes.idle_small_tracks, 1)
        world = stack.enter_context(database(n_tracks, sizes.users))
        info["latency_clock"] = (
            "database commit timestamp" if world.commit_ts else "writer clock after commit"
        )
        env = Env(world, logdir, sizes)
        if "redis" in designs and ({"hot", "catalog", "fanout"} & only):
            env.redis_url = stack.enter_context(redis_server(logdir))
        if "idle" in only:
            for count, spread in (
                (sizes.idle_small_sockets, sizes.idle_small_tracks),
                (sizes.idle_sockets, sizes.idle_tracks),
            ):
                print(f"idle: 1 replica, {count} sockets over {spread} tracks")
                r = load(env, "idle", "tracktalk", 1, count, world.tracks[:spread], 0, 0)
                print(
                    f"  {r['opened']} open ({r['failed']} failed) in {r['open_seconds']} s: "
                    f"{r['rss_per_socket_kib']} KiB per socket (RSS {r['rss_before_mib']} -> {r['rss_after_mib']} MiB)"
                )
                results.append(r)
        if "hot" in only:
            print(
                f"hot: 1 replica, {sizes.hot_sockets} sockets on one track, {sizes.hot_rate:g} comments/s by SQL "
                f"for {sizes.duration:g} s"
            )
            for design in designs:
                results.append(
                    load(
                        env,
                        "hot",
                        design,
                        1,
                        sizes.hot_sockets,
                        world.tracks[:1],
                        sizes.hot_rate,
                        sizes.duration,
                    )
                )
        if "catalog" in only:
            tracks = world.tracks[: sizes.cat_tracks]
            print(
                f"catalog: {sizes.cat_replicas} replicas, {sizes.cat_sockets} sockets over {len(tracks)} tracks, "
                f"{sizes.cat_rate:g} comments/s by SQL for {sizes.duration:g} s"
            )
            for design in designs:
                results.append(
                    load(
                        env,
                        "catalog",
                        design,
                        sizes.cat_replicas,
                        sizes.cat_sockets,
                        tracks,
                        sizes.cat_rate,
                        sizes.duration,
                    )
                )
        if "fanout" in only:
            print(
                f"fan-out: 1 replica, {sizes.fan_sockets} sockets on one track, {sizes.fan_rate:g} comments/s "
                f"({sizes.fan_rate * sizes.fan_sockets:,.0f} frames/s offered)"
            )
            for design in designs:
                results.append(
                    load(
                        env,
                        "fanout",
                        design,
                        1,
                        sizes.fan_sockets,
                        world.tracks[:1],
                        sizes.fan_rate,
                        sizes.duration,
                        profile=args.profile and design == "tracktalk",
                    )
                )
        if "elsewhere" in only:
            watched = world.tracks[:10]
            print(
                f"elsewhere: 1 replica, {sizes.elsewhere_sockets} sockets on {len(watched)} tracks; "
                f"{sizes.elsewhere_rate:g} comments/s by SQL on {len(world.tracks) - len(watched)} other tracks"
            )
            r = load(
                env,
                "elsewhere",
                "tracktalk",
                1,
                sizes.elsewhere_sockets,
                watched,
                sizes.elsewhere_rate,
                sizes.duration,
                write_tracks=world.tracks[len(watched) :],
                connections=8,
            )
            print(
                f"  {r['comments']} comments elsewhere: {r['cpu_us_per_comment']} µs of the replica's CPU each, "
                f"{r['listener_backend_cpu_us_per_comment']} µs of its LISTEN session's in PostgreSQL"
            )
            results.append(r)
        if "write" in only:
            print(f"write cost: {sizes.write_workers} SQL connections, {sizes.write_seconds:g} s each")
            results.append(write_cost(env))
    info["results"] = results
    info["ratios"] = ratios(results)
    info["targets"] = targets(results)
    out = RESULTS / f"bench-{stamp}{'-quick' if args.quick else ''}.json"
    out.write_text(json.dumps(info, indent=2, default=str))
    png = out.with_suffix(".png")
    if any(r["scenario"] in ("hot", "catalog", "fanout") for r in results):
        chart(results, png)
    print()
    print(table(results))
    if info["ratios"]:
        print("\ntracktalk / other (msgs/s, useful/cpu-s: >1 is better; latency, CPU, memory: <1 is better)")
        for row in info["ratios"]:
            print("  " + "  ".join(f"{k}={v}" for k, v in row.items()))
    if info["targets"]:
        print(
            "\ntargets (issue 13)"
            + (": set for the full sizes, only indicative at --quick's" if args.quick else "")
        )
        for t in info["targets"]:
            verdict = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
            print(
                f"  {t['figure']:<45} {_f(t['measured']):>8} {t['unit']:<3} target {t['target']:g}  {verdict}"
            )
    print(f"\nwrote {out.relative_to(ROOT)}" + (f" and {png.relative_to(ROOT)}" if png.exists() else ""))


if __name__ == "__main__":
    main()
