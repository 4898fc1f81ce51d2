"""tracktalk's benchmark: latency, fan-out, memory and write cost, side by side with the baselines.

    python -m bench.run [--quick] [--only SCENARIO,...] [--designs tracktalk,floor,redis,channels]

Starts PostgreSQL (the embedded one, under bench/results/pg, unless DATABASE_URL is set), makes a
fresh database, migrates and seeds it, then runs each scenario with real server processes and
picows client processes, and writes bench/results/bench-<time>.json and .png. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.lib.database import database
from bench.lib.processes import free_port, wait_port
from bench.lib.report import chart, figure, machine, ratios, table, targets
from bench.lib.scenarios import Env, load, write_cost
from bench.lib.settings import DESIGNS, FULL, QUICK, RESULTS, ROOT, SCENARIOS
from tests.support.children import popen


@contextlib.contextmanager
def redis_server(logdir: Path) -> Iterator[str]:
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError(
            "redis-server not found: apt-get install redis-server (or --designs without redis)"
        )
    port = free_port()
    proc = popen(  # it dies with this run, however it ends
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
                f"  {t['figure']:<45} {figure(t['measured']):>8} {t['unit']:<3} target {t['target']:g}  {verdict}"
            )
    print(f"\nwrote {out.relative_to(ROOT)}" + (f" and {png.relative_to(ROOT)}" if png.exists() else ""))


if __name__ == "__main__":
    main()
