"""The scenarios: each run against each design, with latencies, throughput, CPU and memory measured, and the write cost."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import psycopg

from bench.httpload import post_until
from bench.lib.database import World, commit_times, db_cpu, listener_backends
from bench.lib.processes import Clients, Server, cpu_seconds, rss_kib, start_server, start_tracktalk, stop_all
from bench.lib.settings import PY, RESULTS, ROOT, TRACKTALK, Sizes
from bench.lib.writers import Writer, Written


def pct(values: np.ndarray, q: float) -> float | None:
    return round(float(np.percentile(values, q)) * 1000, 2) if values.size else None


def arrivals(got: dict[str, Any], written: Written, world: World) -> tuple[str, np.ndarray, np.ndarray]:
    """The clock latency is measured from, and for each arrival of a written comment its id and
    latency in seconds (arrival time - the row's commit timestamp, or the writer's clock)."""
    ids, times = got["ids"], got["times"]
    db = commit_times(world, written.table, list(written.writer_time)) if written.table else {}
    source = "database commit timestamp" if db else "writer clock after commit"
    reference = db or written.writer_time
    if not reference or ids.size == 0:
        return source, np.zeros(0, np.int64), np.zeros(0)
    keys = np.fromiter(reference.keys(), dtype=np.int64)
    vals = np.fromiter(reference.values(), dtype=np.float64)
    order = np.argsort(keys)
    keys, vals = keys[order], vals[order]
    pos = np.clip(np.searchsorted(keys, ids), 0, len(keys) - 1)
    known = keys[pos] == ids
    return source, ids[known], times[known] - vals[pos[known]]


def latencies(got: dict[str, Any], written: Written, world: World) -> dict[str, Any]:
    source, known_ids, lat = arrivals(got, written, world)
    if lat.size == 0:
        return {"samples": 0, "source": source}
    api_ids = np.fromiter(written.via_api, dtype=np.int64) if written.via_api else np.zeros(0, np.int64)
    is_api = np.isin(known_ids, api_ids)
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
    if design in TRACKTALK:
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
        elif design == "topics":  # the client subscribes to `subscribe` (the server ignores the parameter)
            user = world.users[i % len(world.users)]
            urls.append(
                f"ws://127.0.0.1:{server.port}/api/ws?token={world.tokens[user]}&subscribe=track:{track}"
            )
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
        listeners = listener_backends(world) if design in TRACKTALK else []
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
