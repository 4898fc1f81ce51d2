"""One hot track at 10,000 listeners (issue 22, part 3): tracktalk against the floor at the highest
comment rate the floor sustains.

    python -m bench.hot10k [--only search,pairs,workers,profile] [--sockets 10000] [--clients 3]
                           [--search floor|tracktalk] [--rates 2,3,4,5,6,7,8] [--rate R]
                           [--workers-rate R] [--pairs 3] [--seconds 12]

- search: the floor (`websockets.broadcast`, no database; `--search tracktalk`: tracktalk) with the
  sockets open once, comments at each rate of --rates in turn (--seconds each), until one is not
  sustained (SUSTAINED); a rate that fails is tried once more before the search stops. The floor's
  highest sustained rate is the run's rate, unless --rate gives one.
- pairs: tracktalk (one `tracktalk serve`, the track socket route) and the floor, alternating, each
  with fresh sockets, at that rate: p50/p99/max, frames delivered/offered, server CPU per frame,
  and the verdict (tracktalk's p99 <= 1.2 x the floor's, medians over the pairs).
- workers: tracktalk as one process, then as two `tracktalk serve --reuse-port` processes on one
  port (SO_REUSEPORT: each its own LISTEN connection and its own sockets), alternating, --pairs
  times each, at --workers-rate (default: 2 x the run's rate, past what one process sustains).
- profile: one more tracktalk run at --workers-rate with `py-spy record` on the replica (not in
  any figure; bench/results/profile-hot10k.txt).

Comments go by SQL (tracktalk: single-row INSERTs into `comments`; the floor: its writer sends the
same frame over its publish socket). Latency: arrival at the client - the row's commit timestamp;
the floor's - the writer's send time (as bench/lib does). Every locked run should be short: the
lock is shared with the other benchmarks (`flock /tmp/tracktalk-bench.lock ...`); run the parts
one at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bench.lib.database import World, database
from bench.lib.processes import (
    Clients,
    Server,
    connections_on,
    cpu_seconds,
    start_tracktalk_workers,
    stop_all,
)
from bench.lib.report import machine
from bench.lib.scenarios import Env, arrivals, finish_profile, pct, socket_urls, start_design, start_profile
from bench.lib.settings import FULL, RESULTS, ROOT
from bench.lib.writers import Writer

SUSTAINED = (
    "sustained = every frame offered (comments x sockets) delivered, and the backlog not growing: "
    "the median time a comment takes to reach its last socket, over the last third of the comments, "
    "within 1.5 x + 5 ms of the same over the first third"
)
_GROWTH_FACTOR = 1.5
_GROWTH_SLACK = 0.005
"""Seconds: a comment's fan-out time may grow this much (and by _GROWTH_FACTOR) over the run."""
_DRAIN_QUIET = 1.0
"""Seconds without a new frame after the last comment that end a window ..."""
_DRAIN_MOST = 15.0
"""... or this many, whichever comes first (a backlog that does not drain in time is counted as lost)."""
_VERDICT = 1.2
"""tracktalk's p99 may be at most this times the floor's (issue 22, part 3)."""


def load_average() -> str:
    """`uptime`'s line, as printed at the start of every run."""
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def runqueue_wait(pids: list[int]) -> float:
    """Seconds the threads of `pids` have spent runnable but waiting for a CPU (/proc/PID/task/*/schedstat)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{pid}/task").iterdir():
                with contextlib.suppress(OSError, ValueError, IndexError):
                    total += int((task / "schedstat").read_text().split()[1])
    return total / 1e9


def window(
    design: str, servers: list[Server], clients: Clients, world: World, rate: float, seconds: float
) -> dict[str, Any]:
    """Comments at `rate` for `seconds` to the sockets of `clients`, then until the frames stop:
    latency, delivered/offered, the servers' CPU, and whether the rate was sustained."""
    clients.command("mark")
    cpu0 = sum(cpu_seconds(s.pid) for s in servers)
    ccpu0 = clients.cpu()
    client_pids = [p.pid for p in clients.procs]
    wait0 = runqueue_wait([s.pid for s in servers]), runqueue_wait(client_pids)
    writer = Writer(
        "floor" if design == "floor" else "tracktalk",
        world,
        world.tracks[:1],
        [],
        {"floor_port": servers[0].port},
        connections=2,
    )
    t0 = time.monotonic()
    written = asyncio.run(writer.run(rate, seconds))
    sent_s = time.monotonic() - t0
    last, quiet_since, deadline = -1, time.monotonic(), time.monotonic() + _DRAIN_MOST
    while time.monotonic() < deadline:
        frames = sum(clients.frames)
        if frames != last:
            last, quiet_since = frames, time.monotonic()
        elif time.monotonic() - quiet_since >= _DRAIN_QUIET:
            break
        time.sleep(0.1)
    drained_s = time.monotonic() - t0
    server_cpu = sum(cpu_seconds(s.pid) for s in servers) - cpu0
    client_cpu = clients.cpu() - ccpu0
    server_wait = runqueue_wait([s.pid for s in servers]) - wait0[0]
    client_wait = runqueue_wait(client_pids) - wait0[1]
    got = clients.collect()
    source, ids, lat = arrivals(got, written, world)
    offered = written.sent * clients.opened
    delivered = int(lat.size)
    first, last_third = fanout_times(ids, lat)
    grows = (
        last_third > _GROWTH_FACTOR * first + _GROWTH_SLACK
        if first is not None and last_third is not None
        else True
    )
    return {
        "design": design,
        "rate": rate,
        "seconds": seconds,
        "sockets": clients.opened,
        "comments": written.sent,
        "write_errors": written.errors,
        "offered": offered,
        "delivered": delivered,
        "frames": got["frames"],
        "latency_from": source,
        "p50_ms": pct(lat, 50),
        "p90_ms": pct(lat, 90),
        "p99_ms": pct(lat, 99),
        "max_ms": round(float(lat.max()) * 1000, 1) if lat.size else None,
        "fanout_first_third_ms": None if first is None else round(first * 1000, 1),
        "fanout_last_third_ms": None if last_third is None else round(last_third * 1000, 1),
        "sustained": delivered == offered and offered > 0 and not grows,
        "window_s": round(drained_s, 2),
        "writing_s": round(sent_s, 2),
        "server_cpu_s": round(server_cpu, 2),
        "server_cpu_pct": round(100 * server_cpu / drained_s, 1),
        "cpu_us_per_frame": round(1e6 * server_cpu / delivered, 2) if delivered else None,
        "client_cpu_pct": round(100 * client_cpu / drained_s, 1),
        # Runnable but not running (every process's threads, summed): the share of the cores others took.
        "server_runqueue_pct": round(100 * server_wait / drained_s, 1),
        "client_runqueue_pct": round(100 * client_wait / drained_s, 1),
    }


def fanout_times(ids: np.ndarray, lat: np.ndarray) -> tuple[float | None, float | None]:
    """The median over the first and over the last third of the comments (in the order they were
    written) of the time each took to reach its last socket, in seconds."""
    if ids.size == 0:
        return None, None
    order = np.argsort(ids, kind="stable")
    ids, lat = ids[order], lat[order]
    unique, starts = np.unique(ids, return_index=True)
    slowest = np.maximum.reduceat(lat, starts)
    third = len(unique) // 3
    if third == 0:
        return None, None
    return float(np.median(slowest[:third])), float(np.median(slowest[-third:]))


@contextlib.contextmanager
def sockets_on(
    design: str, env: Env, count: int, clients: int, workers: int = 1
) -> Iterator[tuple[list[Server], Clients, float]]:
    """The design's server(s) and `count` sockets on the one track from `clients` processes; the
    seconds the sockets took to open."""
    if design == "tracktalk" and workers > 1:
        servers = start_tracktalk_workers(env.world.url, env.logdir, workers)
    else:
        servers = start_design(design, env, 1)
    opened: Clients | None = None
    try:
        time.sleep(0.3)
        t0 = time.monotonic()
        opened = Clients(
            socket_urls(design, servers, env.world.tracks[:1], env.world, count), clients, env.logdir
        )
        open_s = time.monotonic() - t0
        if opened.failed:
            print(f"  {opened.failed} of {count} sockets failed to open")
        time.sleep(FULL.settle)
        yield servers, opened, open_s
    finally:
        if opened is not None:
            opened.stop()
        stop_all(servers)


def line(name: str, r: dict[str, Any]) -> str:
    return (
        f"  {name:<14} {r['rate']:>5g}/s  delivered {r['delivered']:>9,}/{r['offered']:<9,}  "
        f"p50 {r['p50_ms']} p99 {r['p99_ms']} max {r['max_ms']} ms  "
        f"fan-out {r['fanout_first_third_ms']} -> {r['fanout_last_third_ms']} ms  "
        f"cpu {r['server_cpu_pct']} % ({r['cpu_us_per_frame']} us/frame, waiting for a core {r['server_runqueue_pct']} %)  "
        f"clients {r['client_cpu_pct']} % (waiting {r['client_runqueue_pct']} %)  "
        f"{'sustained' if r['sustained'] else 'NOT sustained'}"
    )


def search(env: Env, args: argparse.Namespace) -> tuple[float | None, list[dict[str, Any]]]:
    """The highest rate of args.rates the design args.search sustains (the floor by default) with
    args.sockets sockets open once."""
    design = args.search
    print(f"search: {design}, {args.sockets} sockets on one track, {args.seconds:g} s a rate; {SUSTAINED}")
    tried: list[dict[str, Any]] = []
    best = None
    with sockets_on(design, env, args.sockets, args.clients) as (servers, clients, open_s):
        print(f"  {clients.opened} sockets open in {open_s:.1f} s")
        for rate in args.rates:
            for attempt in (1, 2):
                r = window(design, servers, clients, env.world, rate, args.seconds)
                r["attempt"] = attempt
                tried.append(r)
                print(line(f"{design} try {attempt}", r), flush=True)
                if r["sustained"]:
                    break
            if not r["sustained"]:
                break
            best = rate
    print(f"  highest rate {design} sustains: {best} comments/s ({best and best * args.sockets:,} frames/s)")
    return best, tried


def alternate(
    env: Env, args: argparse.Namespace, rate: float, sides: list[tuple[str, str, int]], rounds: int
) -> list[dict[str, Any]]:
    """`rounds` rounds of one run per side (label, design, processes), each with fresh sockets."""
    runs = []
    for round_ in range(1, rounds + 1):
        for label, design, workers in sides:
            with sockets_on(design, env, args.sockets, args.clients, workers) as (servers, clients, open_s):
                r = window(design, servers, clients, env.world, rate, args.seconds)
                spread = [connections_on(s.pid, s.port) for s in servers]
                r.update(
                    label=label, round=round_, processes=len(servers), open_s=round(open_s, 1), spread=spread
                )
                runs.append(r)
                print(
                    line(f"{label} {round_}", r)
                    + f"  (opened in {open_s:.1f} s{f'; sockets per process {spread}' if len(spread) > 1 else ''})",
                    flush=True,
                )
    return runs


def summary(runs: list[dict[str, Any]], label: str) -> dict[str, Any]:
    mine = [r for r in runs if r["label"] == label]

    def med(key: str) -> float | None:
        values = [r[key] for r in mine if r[key] is not None]
        return round(statistics.median(values), 2) if values else None

    return {
        "label": label,
        "runs": len(mine),
        "p50_ms": med("p50_ms"),
        "p99_ms": med("p99_ms"),
        "max_ms": med("max_ms"),
        "p99s_ms": [r["p99_ms"] for r in mine],
        "delivered": sum(r["delivered"] for r in mine),
        "offered": sum(r["offered"] for r in mine),
        "cpu_us_per_frame": med("cpu_us_per_frame"),
        "server_cpu_pct": med("server_cpu_pct"),
        "sustained": all(r["sustained"] for r in mine),
    }


def show(rows: list[dict[str, Any]]) -> None:
    print(
        f"  {'':<14} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7}  {'delivered/offered':>23}  {'us/frame':>8} {'cpu %':>6}  p99 of each run"
    )
    for s in rows:
        print(
            f"  {s['label']:<14} {s['p50_ms']:>7} {s['p99_ms']:>7} {s['max_ms']:>7}  "
            f"{s['delivered']:>11,}/{s['offered']:<11,}  {s['cpu_us_per_frame']:>8} {s['server_cpu_pct']:>6}  {s['p99s_ms']}"
        )


def pairs(env: Env, args: argparse.Namespace, rate: float) -> dict[str, Any]:
    print(
        f"pairs: tracktalk (1 replica, track socket route) and the floor, alternating, {args.pairs} each at {rate:g} comments/s"
    )
    runs = alternate(env, args, rate, [("tracktalk", "tracktalk", 1), ("floor", "floor", 1)], args.pairs)
    ours, floor = summary(runs, "tracktalk"), summary(runs, "floor")
    show([ours, floor])
    ratio = round(ours["p99_ms"] / floor["p99_ms"], 2) if ours["p99_ms"] and floor["p99_ms"] else None
    per_pair = [
        round(a["p99_ms"] / b["p99_ms"], 2)
        for a, b in zip(
            [r for r in runs if r["label"] == "tracktalk"],
            [r for r in runs if r["label"] == "floor"],
            strict=True,
        )
        if a["p99_ms"] and b["p99_ms"]
    ]
    met = ratio is not None and ratio <= _VERDICT
    print(
        f"  verdict: tracktalk's p99 {ours['p99_ms']} ms = {ratio} x the floor's {floor['p99_ms']} ms "
        f"(medians; each pair {per_pair}): target <= {_VERDICT} x, {'met' if met else 'MISSED'}"
    )
    return {
        "rate": rate,
        "runs": runs,
        "tracktalk": ours,
        "floor": floor,
        "p99_ratio": ratio,
        "p99_ratio_pairs": per_pair,
        "met": met,
    }


def workers(env: Env, args: argparse.Namespace, rate: float) -> dict[str, Any]:
    print(
        f"workers: tracktalk as 1 process and as 2 `serve --reuse-port` processes on one port, alternating, "
        f"{args.pairs} each at {rate:g} comments/s ({rate * args.sockets:,.0f} frames/s offered)"
    )
    runs = alternate(
        env, args, rate, [("1 process", "tracktalk", 1), ("2 processes", "tracktalk", 2)], args.pairs
    )
    rows = [summary(runs, "1 process"), summary(runs, "2 processes")]
    show(rows)
    return {"rate": rate, "runs": runs, "summary": rows}


def profile(env: Env, args: argparse.Namespace, rate: float) -> dict[str, Any]:
    print(f"profile: tracktalk at {rate:g} comments/s, py-spy record of the replica (not in any figure)")
    with sockets_on("tracktalk", env, args.sockets, args.clients) as (servers, clients, _):
        spy = start_profile(servers[0].pid, env.logdir, "hot10k", args.seconds)
        r = window("tracktalk", servers, clients, env.world, rate, args.seconds)
        print(line("profiled", r))
        r["profile"] = finish_profile(spy) if spy else {"error": "py-spy not found"}
    for name, samples in r["profile"].get("top_own", [])[:8]:
        print(f"    {100 * samples / r['profile']['samples']:5.1f} %  {name}")
    return r


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default="search,pairs", help="search,pairs,workers,profile")
    parser.add_argument("--sockets", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=3, help="picows client processes")
    parser.add_argument("--rates", default="2,3,4,5,6,7,8", help="the search's rates, comments/s, ascending")
    parser.add_argument(
        "--search", default="floor", choices=["floor", "tracktalk"], help="the design searched"
    )
    parser.add_argument("--rate", type=float, default=0, help="the rate of the pairs (default: the search's)")
    parser.add_argument(
        "--workers-rate", type=float, default=0, help="the rate of workers and profile (default 2 x --rate)"
    )
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=12)
    args = parser.parse_args()
    args.rates = [float(r) for r in args.rates.split(",") if r]
    only = set(args.only.split(","))
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    info: dict[str, Any] = {
        "machine": machine(),
        "started": stamp,
        "uptime": load_average(),
        "args": vars(args),
    }
    print(f"hot10k: {info['uptime']}")
    print(f"  {info['machine']['cpu']}, {info['machine']['cores']} cores; {SUSTAINED}")
    logdir = RESULTS / f"hot10k-{stamp}"
    logdir.mkdir()
    with database(1, FULL.users) as world:
        env = Env(world, logdir, FULL)
        rate = args.rate or None
        if "search" in only:
            best, info["search"] = search(env, args)
            rate = rate or (best if args.search == "floor" else None)
        heavy = args.workers_rate or (2 * rate if rate else 0)
        if ("pairs" in only and not rate) or (only & {"workers", "profile"} and not heavy):
            raise SystemExit(
                "no rate: give --rate (and --workers-rate), or run the floor's search (--only search,...)"
            )
        if "pairs" in only and rate:
            info["pairs"] = pairs(env, args, rate)
        if "workers" in only:
            info["workers"] = workers(env, args, heavy)
        if "profile" in only:
            info["profile"] = profile(env, args, heavy)
    info["uptime_at_end"] = load_average()
    print(f"hot10k done: {info['uptime_at_end']}")
    out = RESULTS / f"hot10k-{stamp}.json"
    out.write_text(json.dumps(info, indent=2, default=str))
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
