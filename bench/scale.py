"""Sockets by the hundred thousand (issue 22, part 2): `python -m bench.scale [--only one,many]`.

- `one`: one replica at 19,000 track sockets (the file limit of a process here is 20,000), 100 per
  track: memory per socket, idle CPU per 10,000 sockets, the latency of a comment on a track of
  100 of them; then a reconnect storm onto one replica: the replica is killed and every socket
  opens again, with `since=`, on a second replica that has a core to itself.
- `many`: 100,000 sockets over 6 replicas on this one machine, 100 per track and each track's spread
  over the replicas, from 6 client processes on their own loopback source addresses: the same
  figures per socket; then one replica is killed under a writer, and its ~16,700 sockets open again
  on the other five.

In both storms every socket checks every seq it gets (bench/swarm.py): no gap, no repeat, no resync,
and its last seq at the end equal to its track's in the database. The figures are printed and
written to `bench/results/scale-<time>.json`; docs/performance.md has the write-up.

Latency: arrival at the client (`time.time()`) minus the row's commit timestamp
(`pg_xact_commit_timestamp`), same machine clock. CPU: user + system of the replica processes from
/proc (psutil). Memory: VmRSS after the sockets opened minus before, divided by the sockets.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import psycopg

from bench.lib.database import World, database
from bench.lib.processes import LoadProcesses, Server, cpu_seconds, rss_kib, start_tracktalk, stop_all
from bench.lib.report import machine
from bench.lib.scenarios import finish_profile, latencies, start_profile
from bench.lib.settings import RESULTS
from bench.lib.writers import Writer, Written

PER_TRACK = 100
"""Sockets per track: "a comment on a track of 100 of them"."""
ADDRESSES = 8
"""Loopback source addresses per client process: a few thousand sockets each to one replica
keeps the kernel's search for a free port at connect() short (bench/swarm.py's `bound`)."""


@dataclass
class Plan:
    name: str
    replicas: int
    sockets: int
    clients: int
    spare: int = 0
    """Replicas that start empty and take the storm (`one`: the second replica)."""
    idle_seconds: float = 60.0
    rate: float = 20.0
    """Comments a second on random tracks while the latency is measured, and during the storm."""
    write_seconds: float = 20.0


PLANS = {
    "one": Plan("one", replicas=1, sockets=19_000, clients=2, spare=1),
    "many": Plan("many", replicas=6, sockets=100_000, clients=6),
}


class Swarms(LoadProcesses):
    """The swarm client processes (bench/swarm.py), each on loopback source addresses of its own."""

    def __init__(self, configs: list[dict[str, Any]], workdir: Path) -> None:
        super().__init__("bench.swarm", configs, workdir)

    def total(self, column: int) -> int:
        """Summed over the swarms: 0 frames, 1 open, 2 reopened, 3 gaps, 4 repeats, 5 resyncs."""
        return sum(s[column] for s in self.stats if s)

    def stop(self) -> dict[str, Any]:
        self.end(60)
        results = [json.loads(Path(out).read_text()) for out in self.outs]
        ids = np.concatenate([np.fromfile(out + ".ids", dtype=np.int64) for out in self.outs])
        times = np.concatenate([np.fromfile(out + ".times", dtype=np.float64) for out in self.outs])
        return {"results": results, "ids": ids, "times": times}


@dataclass
class Run:
    plan: Plan
    world: World
    servers: list[Server]
    logdir: Path
    out: dict[str, Any] = field(default_factory=dict)


def wait_for(what: str, check: Any, timeout: float) -> float:
    """Seconds until `check()` is true; an error naming `what` after `timeout`."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - start


def load() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def xacts(world: World) -> int:
    with psycopg.connect(world.url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
    return int(row[0]) if row else 0


def write(world: World, tracks: list[str], rate: float, seconds: float) -> Written:
    """Comments by SQL at `rate` a second on random tracks (single-row autocommit INSERTs)."""
    return asyncio.run(Writer("tracktalk", world, tracks, [], {}).run(rate, seconds))


def swarm_configs(run: Run, tracks: list[str]) -> list[dict[str, Any]]:
    """Sockets `PER_TRACK` per track; socket i of a track lives on replica i mod replicas; each
    swarm has its own source addresses.

    The sockets of replica 0, the one a storm kills, are dealt over every swarm: a storm's clients
    are many, and when one process reopened all 16,500 of them it was the storm's limit (a core of
    its own, about 1,000 reopens a second in all). Every other replica's sockets are held by one
    swarm, as the client processes of one machine would (the storm's sockets then join them): on
    one machine a frame or a ping that wakes a sleeping client process costs the replica that
    writes it (loopback), and with every replica's sockets dealt over every swarm the replicas'
    idle CPU was a tenth higher and a comment's p99 at 99,000 sockets twice as high (docs/performance.md)."""
    plan = run.plan
    servers = [f"ws://127.0.0.1:{s.port}" for s in run.servers]
    tokens = [run.world.tokens[u] for u in run.world.users]
    per_swarm: list[list[list[Any]]] = [[] for _ in range(plan.clients)]
    for i in range(plan.sockets):
        track = tracks[i // PER_TRACK]
        home = i % plan.replicas
        swarm = (i // plan.replicas) % plan.clients if home == 0 else i % plan.clients
        per_swarm[swarm].append([track, home])
    return [
        {
            "servers": servers,
            "tokens": tokens,
            "sockets": sockets,
            "local_addrs": [f"127.0.{10 + n}.{k}" for k in range(1, 1 + ADDRESSES)],
            "concurrency": 200,
        }
        for n, sockets in enumerate(per_swarm)
    ]


def measure(run: Run, profile: bool = False) -> tuple[Swarms, Written]:
    plan, world = run.plan, run.world
    tracks = world.tracks[: plan.sockets // PER_TRACK]
    live = run.servers[: plan.replicas]
    print(
        f"[{plan.name}] load {load()}: opening {plan.sockets:,} sockets on {plan.replicas} replica(s)",
        flush=True,
    )
    rss0 = [rss_kib(s.pid) for s in live]
    started = time.monotonic()
    swarms = Swarms(swarm_configs(run, tracks), run.logdir)
    opened = sum(int(r[0]) for r in swarms.ready)
    failed = sum(int(r[1]) for r in swarms.ready)
    open_s = time.monotonic() - started
    time.sleep(2)  # settle: the last handshakes' garbage, presence's first heartbeat
    rss1 = [rss_kib(s.pid) for s in live]
    per_replica = [
        plan.sockets // plan.replicas + (1 if i < plan.sockets % plan.replicas else 0)
        for i in range(plan.replicas)
    ]
    kib = [round((b - a) / n, 2) for a, b, n in zip(rss0, rss1, per_replica, strict=True)]
    print(
        f"[{plan.name}] opened {opened:,} (failed {failed}) in {open_s:.1f} s ({opened / open_s:,.0f}/s);"
        f" RSS per socket, KiB: {kib}",
        flush=True,
    )
    run.out.update(
        sockets=plan.sockets,
        replicas=plan.replicas,
        opened=opened,
        failed=failed,
        open_s=round(open_s, 2),
        opens_per_s=round(opened / open_s),
        rss_before_kib=rss0,
        rss_after_kib=rss1,
        kib_per_socket=kib,
        kib_per_socket_max=max(kib),
    )

    # Idle: pings, presence's heartbeats and expiry, the token and access re-checks.
    cpu0 = [cpu_seconds(s.pid) for s in live]
    t0 = time.monotonic()
    spy = (
        start_profile(live[0].pid, run.logdir, f"scale-{plan.name}-idle", plan.idle_seconds - 1)
        if profile
        else None
    )
    time.sleep(plan.idle_seconds)
    idle_s = time.monotonic() - t0
    cpu1 = [cpu_seconds(s.pid) for s in live]
    if spy is not None:
        run.out["idle_profile"] = finish_profile(spy)
    idle_pct = [round(100 * (b - a) / idle_s, 3) for a, b in zip(cpu0, cpu1, strict=True)]
    per_10k = round(100 * (sum(cpu1) - sum(cpu0)) / idle_s / (plan.sockets / 10_000), 3)
    print(
        f"[{plan.name}] idle {idle_s:.0f} s: CPU % of a core per replica {idle_pct}; {per_10k} % per 10,000 sockets",
        flush=True,
    )
    run.out.update(idle_seconds=round(idle_s, 1), idle_cpu_pct=idle_pct, idle_cpu_pct_per_10k=per_10k)

    # A comment on a track of 100 sockets.
    swarms.command("mark")
    cpu0 = [cpu_seconds(s.pid) for s in live]
    t0 = time.monotonic()
    written = write(world, tracks, plan.rate, plan.write_seconds)
    time.sleep(1)
    cpu1 = [cpu_seconds(s.pid) for s in live]
    window = time.monotonic() - t0
    run.out["written"] = written.sent
    run.out["write_cpu_s"] = round(sum(cpu1) - sum(cpu0), 3)
    # What each replica spends a second with its sockets held and comments coming at the storm's
    # rate: the storm's survivors spend it too, storm or not.
    run.out["steady_cpu_per_s"] = [round((b - a) / window, 4) for a, b in zip(cpu0, cpu1, strict=True)]
    return swarms, written


def storm(run: Run, swarms: Swarms, profile: bool = False) -> dict[str, Any]:
    """Kill replica 0 under a writer; every socket it had opens again on the others."""
    plan, world = run.plan, run.world
    tracks = world.tracks[: plan.sockets // PER_TRACK]
    victim = run.servers[0]
    others = [s for s in run.servers if s is not victim]
    had = plan.sockets // plan.replicas + (1 if plan.sockets % plan.replicas else 0)
    written: list[Written] = []
    writer = threading.Thread(
        target=lambda: written.append(write(world, tracks, plan.rate, plan.write_seconds)), daemon=True
    )
    print(
        f"[{plan.name}] load {load()}: storm: killing replica 0 ({had:,} sockets) under {plan.rate:g} comments/s",
        flush=True,
    )
    writer.start()
    time.sleep(3)
    cpu0 = [cpu_seconds(s.pid) for s in others]
    switches0 = [switches(s.pid) for s in others]
    cpu_t0 = time.monotonic()
    clients0, machine0 = swarms.cpu(), psutil.cpu_times()
    x0 = xacts(world)
    reopened0 = swarms.total(2)
    killed_at = time.time()
    spy = start_profile(others[0].pid, run.logdir, f"scale-{plan.name}-storm", 8) if profile else None
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait(10)
    last_said = [time.monotonic()]

    def back() -> bool:
        done = swarms.total(2) - reopened0
        if time.monotonic() - last_said[0] > 5:
            last_said[0] = time.monotonic()
            print(f"[{plan.name}] storm: {done:,} of {had:,} open again", flush=True)
        return done >= had

    back_s = wait_for("every socket open again", back, 300)
    cpu1 = [cpu_seconds(s.pid) for s in others]
    switches1 = [switches(s.pid) for s in others]
    cpu_window = time.monotonic() - cpu_t0
    clients1, machine1 = swarms.cpu(), psutil.cpu_times()
    x1 = xacts(world)
    if spy is not None:
        run.out["storm_profile"] = finish_profile(spy)
        print(f"[{plan.name}] storm profile: {run.out['storm_profile'].get('file')}", flush=True)
    writer.join(plan.write_seconds + 60)
    time.sleep(2)  # the last frames
    got = swarms.stop()
    results = got["results"]
    reopen_times: dict[int, list[float]] = {}
    for r in results:
        for k, v in r["reopen_times"].items():
            reopen_times.setdefault(int(k), []).extend(v)
    rates = {}
    for k, v in sorted(reopen_times.items()):
        v.sort()
        span = v[-1] - v[0] if len(v) > 1 else 0.0
        rates[k] = {
            "sockets": len(v),
            "first_s": round(v[0] - killed_at, 3),
            "last_s": round(v[-1] - killed_at, 3),
            "per_s": round(len(v) / span) if span > 0 else None,
        }
    with psycopg.connect(world.url, autocommit=True) as conn:
        latest = dict(
            conn.execute(
                "SELECT substr(topic, 7), last_seq FROM tracktalk.topic_state WHERE topic LIKE 'track:%'"
            ).fetchall()
        )
    behind = sum(1 for r in results for track, last in r["last"] if last != latest.get(track, 0))
    counts = {
        k: sum(r[k] for r in results) for k in ("gaps", "repeats", "resyncs", "failed_reopens", "reopened")
    }
    storm_cpu = sum(cpu1) - sum(cpu0)
    # The survivors' steady spending over the same window (a spare replica held nothing before).
    steady = run.out["steady_cpu_per_s"]
    held = run.servers[: len(steady)]  # the replicas that held sockets before the storm
    upkeep = cpu_window * sum(rate for server, rate in zip(held, steady, strict=True) if server is not victim)
    above = storm_cpu - upkeep
    out = {
        "killed_sockets": had,
        "back_s": round(back_s, 2),
        "reopens_per_s_overall": round(had / back_s),
        "per_replica": rates,
        "survivors_cpu_s": round(storm_cpu, 2),
        "survivors_cpu_us_per_reopen": round(storm_cpu / had * 1e6),
        "transactions_per_reopen": round((x1 - x0) / had, 3),
        # A survivor's context switches (it waited; it was preempted) per socket it took: each
        # one costs the switch and a working set brought back into the cache.
        "survivor_switches_per_reopen": {
            name: round(sum(b[i] - a[i] for a, b in zip(switches0, switches1, strict=True)) / had, 2)
            for i, name in enumerate(("voluntary", "involuntary"))
        },
        # Where the cores went meanwhile: the load driver shares them (one machine).
        "clients_cpu_s": round(clients1 - clients0, 2),
        "machine_busy_cores": round(busy(machine0, machine1), 2),
        "machine_cores": psutil.cpu_count(),
        "survivor_opens_per_cpu_s": round(had / storm_cpu) if storm_cpu else None,
        "survivors_steady_cpu_s": round(upkeep, 2),
        "survivors_cpu_us_per_reopen_above_steady": round(above / had * 1e6),
        "survivor_opens_per_cpu_s_above_steady": round(had / above) if above > 0 else None,
        "sockets_behind_at_end": behind,
        **counts,
        "written_during_storm": written[0].sent if written else None,
    }
    run.out["storm"] = out
    print(
        f"[{plan.name}] storm: all {had:,} back in {back_s:.2f} s ({had / back_s:,.0f}/s overall);"
        f" per replica {rates}; survivors' CPU {storm_cpu:.2f} s ({out['survivors_cpu_us_per_reopen']} µs per reopen);"
        f" {out['transactions_per_reopen']} transactions per reopen; the survivors' context switches per reopen"
        f" {out['survivor_switches_per_reopen']}; gaps {counts['gaps']}, repeats"
        f" {counts['repeats']}, resyncs {counts['resyncs']}, failed {counts['failed_reopens']};"
        f" sockets whose last seq is not their track's: {behind}",
        flush=True,
    )
    print(
        f"[{plan.name}] storm: a survivor opens {out['survivor_opens_per_cpu_s']:,} sockets per second of its CPU;"
        f" meanwhile the clients took {out['clients_cpu_s']:.2f} s of CPU and the machine was"
        f" {out['machine_busy_cores']:.2f} of its {out['machine_cores']} cores busy",
        flush=True,
    )
    if upkeep:
        print(
            f"[{plan.name}] storm: of the survivors' CPU, {upkeep:.2f} s is what they spend without a storm (their"
            f" sockets, the same comments a second: measured before it); above that,"
            f" {out['survivors_cpu_us_per_reopen_above_steady']} µs per reopen, so"
            f" {out['survivor_opens_per_cpu_s_above_steady']:,} opens per second of a survivor's CPU",
            flush=True,
        )
    return got


def switches(pid: int) -> tuple[int, int]:
    """A process's context switches so far: (voluntary, involuntary)."""
    try:
        counts = psutil.Process(pid).num_ctx_switches()
    except psutil.Error:
        return (0, 0)
    return (counts.voluntary, counts.involuntary)


def busy(before: Any, after: Any) -> float:
    """Cores busy between two `psutil.cpu_times()` (all that is not idle or waiting on I/O)."""
    spent = {name: getattr(after, name) - getattr(before, name) for name in after._fields}
    total = sum(spent.values())
    idle = spent.get("idle", 0.0) + spent.get("iowait", 0.0)
    return (total - idle) / total * (psutil.cpu_count() or 1) if total else 0.0


def connections_allowed(server: Server) -> int | None:
    """The client connections the replica says at start that its file limit allows."""
    found = re.search(r"up to (\d+) client connections", server.log.read_text())
    return int(found.group(1)) if found else None


def scenario(plan: Plan, keep: Path, profile: bool) -> dict[str, Any]:
    n_tracks = plan.sockets // PER_TRACK
    with database(n_tracks, 200) as world:
        logdir = keep / plan.name
        logdir.mkdir(parents=True, exist_ok=True)
        servers: list[Server] = []
        try:
            for _ in range(plan.replicas + plan.spare):
                servers.append(start_tracktalk(world.url, logdir))
            run = Run(plan, world, servers, logdir)
            limit_lines = [
                line
                for line in servers[0].log.read_text().splitlines()
                if "file limit" in line or "connections" in line
            ]
            run.out["start_log"] = limit_lines[:3]
            swarms, written = measure(run, profile)
            survivors = plan.replicas + plan.spare - 1
            cap = connections_allowed(servers[0])
            if cap is not None and plan.sockets > survivors * cap:
                why = (
                    f"{plan.sockets:,} sockets do not fit on the {survivors} replicas left: each takes at most"
                    f" {cap:,} (its file limit); the storm needs {plan.sockets - survivors * cap:,} fewer"
                )
                print(f"[{plan.name}] storm skipped: {why}", flush=True)
                run.out["storm"] = {"skipped": why}
                time.sleep(2)
                got = swarms.stop()
            else:
                got = storm(run, swarms, profile)
            lat = latencies({"ids": got["ids"], "times": got["times"]}, written, world)
            run.out["latency"] = lat
            print(f"[{plan.name}] comment on a track of {PER_TRACK}: {lat}", flush=True)
            return run.out
        finally:
            stop_all(servers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="one,many")
    parser.add_argument("--sockets", type=int, help="override the plan's socket count (a quick try)")
    parser.add_argument("--idle", type=float, help="seconds idle (default 60)")
    parser.add_argument("--profile", action="store_true", help="py-spy a survivor during the storm")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    keep = RESULTS / f"scale-{stamp}"
    report: dict[str, Any] = {"machine": machine(), "load_at_start": load(), "scenarios": {}}
    for name in args.only.split(","):
        plan = PLANS[name]
        if args.sockets:
            plan.sockets = args.sockets
        if args.idle is not None:
            plan.idle_seconds = args.idle
        report["scenarios"][name] = scenario(plan, keep, args.profile)
    path = RESULTS / f"scale-{stamp}.json"
    path.write_text(json.dumps(report, indent=2, default=str))
    print(f"results: {path}", flush=True)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
