"""What presence ("N listening") costs PostgreSQL and each replica, measured.

    python -m bench.presence [--seconds 20] [--rate 200] [--listeners 400] [--tracks 20]

Two replicas over a fresh database on the embedded PostgreSQL (with pg_stat_statements), run
twice: with presence, and without it (the same server with presence's task and its hook on each
socket made no-ops: `python -m bench.presence --without serve --port P`), each through the same
three phases:

1. idle: `--listeners` sockets on replica B spread over `--tracks` tracks, nothing changes;
2. churn: on replica A, `--rate` sockets a second open on those tracks (random users, a tenth
   without a token), each closes after 0.5-1.5 s: `--rate` connects and as many closes a second;
3. memory: the RSS per idle socket of replica B, from its RSS before and after the listeners.

Each phase reports the statements PostgreSQL ran (pg_stat_statements: calls a second and
execution ms a second, presence's own apart), PostgreSQL's CPU (every server process), each
replica's CPU, and the frames each replica handed to its sockets.
The figures go to bench/results/presence-<time>.json and into docs/performance.md ("Presence").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
from websockets.asyncio.client import connect

from bench.lib.database import World, database, db_cpu
from bench.lib.processes import Server, cpu_seconds, rss_kib, start_server, stop_all, wait_ready
from bench.lib.report import machine
from bench.lib.settings import PY, RESULTS, SECRET

_PRESENCE_TABLES = ("tracktalk.presence", "tracktalk.replicas")


def start_replica(world: World, logdir: Path, presence: bool) -> Server:
    """`tracktalk serve` (through `serve` below), ready."""
    env = {
        "DATABASE_URL": world.url,
        "TRACKTALK_SECRET": SECRET,
        "TRACKTALK_COMMENTS_PER_MINUTE": "0",
        "TRACKTALK_SOCKETS_PER_USER": "1000000",
        "TRACKTALK_ANONYMOUS_SOCKETS": "1",
        "TRACKTALK_ANONYMOUS_SOCKETS_PER_ADDRESS": "0",  # every socket comes from 127.0.0.1
    }
    args = [PY, "-m", "bench.presence", *([] if presence else ["--without"]), "serve", "--port", "{port}"]
    return wait_ready(start_server(args, env, logdir, "presence" if presence else "without"))


def socket_url(server: Server, track: str, token: str | None) -> str:
    query = f"?token={token}" if token else ""
    return f"ws://127.0.0.1:{server.port}/api/ws/track/{track}{query}"


class Database:
    """pg_stat_statements and the table counters of the bench's database."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.conn = psycopg.connect(world.url, autocommit=True)
        self.conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")

    def reset(self) -> None:
        self.conn.execute("SELECT pg_stat_statements_reset()")

    def statements(self) -> list[tuple[str, int, float]]:
        """(query, calls, total execution ms) of this database, the bench's own queries left out."""
        rows = self.conn.execute(
            """SELECT query, calls, total_exec_time FROM pg_stat_statements
                WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
                  AND query NOT LIKE '%pg_stat_statements%'"""
        ).fetchall()
        return [(str(q), int(c), float(t)) for q, c, t in rows]


def presence_frames(server: Server) -> float:
    """Frames the replica handed to its sockets (tracktalk_events_delivered_total)."""
    text = httpx.get(f"http://127.0.0.1:{server.port}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith("tracktalk_events_delivered_total "):
            return float(line.split()[1])
    return 0.0


@contextlib.contextmanager
def measured(db: Database, replicas: dict[str, Server]) -> Iterator[dict[str, Any]]:
    """Counters before the block and after it, as rates per second (filled in at the end)."""
    result: dict[str, Any] = {}
    time.sleep(1.0)  # what the phase before left in flight settles
    db.reset()
    time.sleep(0.2)
    cpu = {name: cpu_seconds(server.pid) for name, server in replicas.items()}
    pg = db_cpu(db.world)
    frames = {name: presence_frames(server) for name, server in replicas.items()}
    started = time.monotonic()
    yield result
    elapsed = time.monotonic() - started
    statements = db.statements()
    ours = [(q, c, t) for q, c, t in statements if any(table in q for table in _PRESENCE_TABLES)]
    result.update(
        seconds=round(elapsed, 1),
        statements_per_s=round(sum(c for _, c, _ in statements) / elapsed, 1),
        statements_ms_per_s=round(sum(t for _, _, t in statements) / elapsed, 2),
        presence_statements_per_s=round(sum(c for _, c, _ in ours) / elapsed, 2),
        presence_ms_per_s=round(sum(t for _, _, t in ours) / elapsed, 3),
        postgres_cpu_pct=round(100 * (db_cpu(db.world) - pg) / elapsed, 1),
        by_statement=[
            {
                "query": " ".join(q.split())[:90],
                "per_s": round(c / elapsed, 2),
                "ms_per_call": round(t / c, 3),
            }
            for q, c, t in sorted(ours, key=lambda x: -x[1])
        ],
    )
    for name, server in replicas.items():
        result[f"{name}_cpu_pct"] = round(100 * (cpu_seconds(server.pid) - cpu[name]) / elapsed, 1)
        result[f"{name}_frames_per_s"] = round((presence_frames(server) - frames[name]) / elapsed, 1)


async def hold(urls: list[str]) -> list[Any]:
    """Open the sockets (each waits for `connected`) and return them, open."""
    sem = asyncio.Semaphore(50)

    async def one(url: str) -> Any:
        async with sem:
            conn = await connect(url, open_timeout=30)
            await conn.recv()
            return conn

    return list(await asyncio.gather(*(one(url) for url in urls)))


async def churn(urls: list[str], rate: float, seconds: float) -> dict[str, int]:
    """Open `rate` sockets a second for `seconds`, each closing after 0.5-1.5 s."""
    done = {"opened": 0, "failed": 0}
    rng = random.Random(16)

    async def one(url: str) -> None:
        try:
            async with connect(url, open_timeout=10, close_timeout=2) as conn:
                await asyncio.wait_for(conn.recv(), 10)
                done["opened"] += 1
                await asyncio.sleep(rng.uniform(0.5, 1.5))
        except Exception:
            done["failed"] += 1

    tasks = []
    start = time.monotonic()
    for n in range(int(rate * seconds)):
        await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))
        tasks.append(asyncio.create_task(one(rng.choice(urls))))
    await asyncio.gather(*tasks)
    return done


def run_mode(world: World, logdir: Path, presence: bool, args: argparse.Namespace) -> dict[str, Any]:
    a = start_replica(world, logdir, presence)
    b = start_replica(world, logdir, presence)
    replicas = {"replica_a": a, "replica_b": b}
    db = Database(world)
    tracks = world.tracks[: args.tracks]
    users = world.users
    mode: dict[str, Any] = {"presence": presence}
    try:
        rss_before = rss_kib(b.pid)
        listeners = [
            socket_url(b, tracks[n % len(tracks)], world.tokens[users[n % len(users)]])
            for n in range(args.listeners)
        ]
        loop = asyncio.new_event_loop()
        held = loop.run_until_complete(hold(listeners))
        time.sleep(2.0)
        mode["rss_per_idle_socket_kib"] = round((rss_kib(b.pid) - rss_before) / len(held), 2)
        with measured(db, replicas) as idle:
            time.sleep(args.seconds / 2)
        mode["idle"] = idle
        churners = [
            socket_url(a, rng_track, world.tokens[rng_user] if n % 10 else None)
            for n, (rng_track, rng_user) in enumerate(
                zip(
                    random.Random(1).choices(tracks, k=500),
                    random.Random(2).choices(users, k=500),
                    strict=True,
                )
            )
        ]
        with measured(db, replicas) as busy:
            counts = loop.run_until_complete(churn(churners, args.rate, args.seconds))
        busy.update(counts)
        mode["churn"] = busy
        for conn in held:
            loop.run_until_complete(conn.close())
        loop.close()
    finally:
        db.conn.close()
        stop_all([a, b])
    return mode


def serve(argv: list[str], presence: bool) -> None:
    """`tracktalk serve`, with presence made a no-op unless `presence`."""
    import app.presence.tracker
    from app.cli import main as tracktalk

    if not presence:

        @contextlib.asynccontextmanager
        async def running(self: Any) -> AsyncIterator[None]:
            yield

        app.presence.tracker.Presence.running = running  # type: ignore[method-assign]
        app.presence.tracker.Presence.join = lambda self, conn, topic: None  # type: ignore[method-assign]
        app.presence.tracker.Presence.leave = lambda self, conn, topic: None  # type: ignore[method-assign]
    tracktalk(["serve", *argv])


def main() -> None:
    argv = sys.argv[1:]
    without = argv[:1] == ["--without"]
    if argv[without:][:1] == ["serve"]:
        serve(argv[without + 1 :], presence=not without)
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the churn (idle: half)")
    parser.add_argument("--rate", type=float, default=200.0, help="sockets opened (and closed) a second")
    parser.add_argument("--listeners", type=int, default=400, help="idle sockets on replica B")
    parser.add_argument("--tracks", type=int, default=20, help="tracks they are spread over")
    args = parser.parse_args()
    from app.dev import embedded

    embedded._FAST_SETTINGS = (*embedded._FAST_SETTINGS, "shared_preload_libraries=pg_stat_statements")
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    logdir = RESULTS / f"presence-{stamp}"
    logdir.mkdir()
    report: dict[str, Any] = {"machine": machine(), "args": vars(args), "modes": []}
    with database(max(args.tracks, 1), 300) as world:
        for presence in (True, False):
            print(f"{'with' if presence else 'without'} presence ...", flush=True)
            report["modes"].append(run_mode(world, logdir, presence, args))
    out = RESULTS / f"presence-{stamp}.json"
    out.write_text(json.dumps(report, indent=2))
    print(summary(report))
    print(f"written: {out}")


def summary(report: dict[str, Any]) -> str:
    """The figures as a Markdown table, presence on and off side by side."""
    keys = [
        ("presence_statements_per_s", "presence statements/s"),
        ("presence_ms_per_s", "presence execution ms/s"),
        ("statements_per_s", "all statements/s"),
        ("postgres_cpu_pct", "PostgreSQL CPU %"),
        ("replica_a_cpu_pct", "replica A CPU % (the churn)"),
        ("replica_b_cpu_pct", "replica B CPU % (the listeners)"),
        ("replica_b_frames_per_s", "frames/s to B's listeners (all kinds)"),
    ]
    on, off = report["modes"]
    lines = [
        "| | idle, with | idle, without | churn, with | churn, without |",
        "|---|---|---|---|---|",
    ]
    for key, label in keys:
        cells = [str(mode[phase].get(key, "")) for phase in ("idle", "churn") for mode in (on, off)]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append(
        f"| RSS per idle socket, KiB | {on['rss_per_idle_socket_kib']} | {off['rss_per_idle_socket_kib']} | | |"
    )
    lines.append(
        f"| churn sockets opened (failed) | | | {on['churn']['opened']} ({on['churn']['failed']}) | "
        f"{off['churn']['opened']} ({off['churn']['failed']}) |"
    )
    lines.append("")
    lines.append("presence's statements (with presence, churn):")
    for row in on["churn"]["by_statement"]:
        lines.append(f"  {row['per_s']:>7}/s  {row['ms_per_call']:>7} ms  {row['query']}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
