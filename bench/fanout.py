"""Fan-out nodes (issue 22), measured with real PostgreSQL servers on this machine: a primary
(wal_level = logical, durable commits) and two nodes prepared by `tracktalk fanout-node`.

    .venv/bin/python -m bench.fanout                       # all three, ~3 minutes
    .venv/bin/python -m bench.fanout --only commits --seconds 20

- commits: the writers' commits per second (pgbench, one comment INSERT per transaction through
  tracktalk's triggers, over --tracks tracks) at --clients writers, notify_mode 'direct' (the
  triggers call pg_notify, and take NOTIFY's commit lock) against 'fanout' (they only write the
  log; the two nodes send). The nodes are subscribed in both modes, so the primary's WAL senders
  decode the same WAL in both: only the NOTIFYs differ.
- cpu: the primary's CPU (every process of its server: backends, WAL senders, background
  workers) per comment written at --rate comments/s, with --listeners LISTEN sessions (each on
  every written track's channel, as a replica with sockets there) on the primary in 'direct'
  mode, against the same number spread over the two nodes in 'fanout' mode.
- latency: what a node adds to a NOTIFY's delivery: in 'direct' mode the primary and a node both
  send each statement's payload; one session LISTENs on each, and each payload's arrival on the
  node is compared with the same payload's on the primary (same clock, stamped on arrival).

- kill: a node killed under load, in 'fanout' mode: --replicas replicas listen on node a (then b,
  then the primary: TRACKTALK_LISTEN_URL), --sockets track sockets on them (bench/swarm.py, each
  checking every seq it gets), a writer at --rate comments/s; node a is stopped with
  `pg_ctl -m immediate` mid-run. Every socket must end with every event of its track exactly once:
  no gap, no repeat, no resync, and its last seq the primary's.

tests/integration/test_fanout.py tests the same moves with one socket each (a node restarted under
a writer; a replica whose node dies moving to the next one, behind, without loss).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg

from app.data.db import migrate
from app.dev.embedded import find_bindir
from bench.notify_lock import COMMENT, RANDOM, pgbench
from tests.support.clusters import BENCH_PREFIX, cluster_root

ROLE = "tracktalk"
PRIMARY_CONF = (
    "wal_level = logical\nmax_wal_senders = 10\nmax_replication_slots = 10\nmax_connections = 200\n"
)
NODE_CONF = "fsync = off\nmax_connections = 200\n"


TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def process_cpu(pid: int) -> tuple[int, float]:
    """(parent pid, CPU seconds) of a process, from /proc (0.0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0, 0.0
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK


class Server:
    """A PostgreSQL data folder of Debian's binaries, run as `postgres` when root."""

    def __init__(self, bindir: Path, data: Path) -> None:
        self.bindir, self.data, self.port = bindir, data, free_port()

    def url(self, dbname: str = "tracktalk") -> str:
        return f"postgresql://{ROLE}@127.0.0.1:{self.port}/{dbname}"

    def run(self, *args: str) -> None:
        as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        done = subprocess.run([*as_postgres, *args], capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(args)} failed:\n{done.stdout}{done.stderr}")

    def start(self, conf: str) -> Server:
        self.run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", ROLE, "-A", "trust", "--no-sync")
        with (self.data / "postgresql.conf").open("a") as f:
            f.write(conf)
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.data.parent}"
        )
        log = str(self.data.parent / f"{self.data.name}.log")
        self.run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", log, "-o", options, "-w", "start")
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute("CREATE DATABASE tracktalk")
        return self

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def cpu(self) -> float:
        """CPU seconds of the server's processes so far (the postmaster and its children)."""
        return sum(self.cpu_by_kind().values())

    def cpu_by_kind(self) -> dict[str, float]:
        """The same, by kind of process: sessions (the writers' and the listeners'), WAL senders
        (logical decoding for the nodes), the rest (background workers, the postmaster)."""
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        kinds = {"sessions": 0.0, "WAL senders": 0.0, "the rest": process_cpu(postmaster)[1]}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                parent, seconds = process_cpu(int(entry.name))
                if parent != postmaster:
                    continue
                try:
                    title = (entry / "cmdline").read_bytes().decode(errors="replace")
                except OSError:
                    continue
                kind = (
                    "WAL senders"
                    if "walsender" in title
                    else "sessions"
                    if "127.0.0.1(" in title or "[local]" in title
                    else "the rest"
                )
                kinds[kind] += seconds
        return kinds


@contextlib.contextmanager
def topology(tracks: int) -> Iterator[tuple[Server, list[Server]]]:
    """A seeded primary and two nodes following it, in a folder of the tests' cluster_root(): its
    servers are stopped and it is removed when this process ends, however it ends (killed with
    SIGKILL too: its watchdog does it), and one left behind anyway is cleared by the next test
    session's sweep."""
    found = find_bindir()
    if found is None or not (found / "pg_basebackup").exists():
        raise SystemExit("no PostgreSQL binaries (Debian's postgresql-15)")
    with cluster_root(BENCH_PREFIX) as (bindir, root):
        servers: list[Server] = []
        try:
            primary = Server(bindir, root / "primary").start(PRIMARY_CONF)
            servers.append(primary)
            migrate(primary.url())
            seed(primary.url(), tracks)
            nodes = [Server(bindir, root / name).start(NODE_CONF) for name in ("a", "b")]
            servers += nodes
            for node in nodes:
                done = subprocess.run(
                    [".venv/bin/tracktalk", "fanout-node", "--primary", primary.url(), "--node", node.url()],
                    capture_output=True,
                    text=True,
                    check=False,
                    env={k: v for k, v in os.environ.items() if k != "DATABASE_URL"},
                )
                if done.returncode != 0:
                    raise SystemExit(f"tracktalk fanout-node failed:\n{done.stdout}{done.stderr}")
            yield primary, nodes
        finally:
            for server in servers:
                with contextlib.suppress(SystemExit):
                    server.stop()


def seed(url: str, tracks: int) -> None:
    """As bench/notify_lock.py: 5 users, one album, `tracks` tracks b-1 … b-N."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO users (username, is_creator, is_team) VALUES"
            " ('carol', true, false), ('tina', false, true), ('alice', false, false),"
            " ('bob', false, false), ('dave', false, false)"
        )
        conn.execute("INSERT INTO albums (title, created_by_id) VALUES ('Bench', 1)")
        conn.execute(
            "INSERT INTO tracks (id, album_id, title) SELECT 'b-' || i, 1, 'Track ' || i"
            " FROM generate_series(1, %s) AS i",
            (tracks,),
        )


def set_mode(url: str, mode: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE tracktalk.settings SET notify_mode = %s", (mode,))


def caught_up(primary: Server, nodes: list[Server], timeout: float = 120) -> None:
    """Every node has every event of the primary (its topic_state as the primary's)."""
    query = "SELECT coalesce(sum(last_seq), 0) FROM tracktalk.topic_state"
    with psycopg.connect(primary.url(), autocommit=True) as conn:
        row = conn.execute(query).fetchone()
    want = row[0] if row else 0
    deadline = time.monotonic() + timeout
    for node in nodes:
        with psycopg.connect(node.url(), autocommit=True) as conn:
            while (r := conn.execute(query).fetchone()) is None or r[0] < want:
                if time.monotonic() > deadline:
                    raise SystemExit(f"node on port {node.port} did not catch up within {timeout:g} s")
                time.sleep(0.1)


class Listener:
    """A LISTEN session on the channels of `topics`; each payload's (first seq, topic) stamped on arrival."""

    def __init__(self, url: str, topics: list[str]) -> None:
        self.url, self.topics = url, topics
        self.arrivals: dict[tuple[str, int], float] = {}
        self.count = 0
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            for topic in self.topics:
                row = conn.execute("SELECT tracktalk.topic_channel(%s)", (topic,)).fetchone()
                assert row is not None
                conn.execute(f'LISTEN "{row[0]}"')
            self._ready.set()
            while not self._stop.is_set():
                for note in conn.notifies(timeout=0.2):
                    now = time.monotonic()
                    self.count += 1
                    body = json.loads(note.payload.split(" ", 1)[1])
                    self.arrivals.setdefault((body["topic"], int(body["first"])), now)

    def __enter__(self) -> Listener:
        self._thread.start()
        self._ready.wait(30)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def write_at(conn: psycopg.Connection[tuple[object, ...]], rate: float, seconds: float, tracks: int) -> int:
    """Comments by one session at `rate` a second, over the tracks in turn; how many."""
    written = 0
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        conn.execute(
            "INSERT INTO comments (track_id, user_id, content, \"timestamp\") VALUES (%s, 3, 'bench', 1.5)",
            (f"b-{written % tracks + 1}",),
        )
        written += 1
        ahead = written / rate - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(ahead)
    return written


def commits(primary: Server, nodes: list[Server], clients: list[int], seconds: int, tracks: int) -> None:
    print("\n## commits/s, one comment per transaction (pgbench), the nodes subscribed in both modes\n")
    print("| notify_mode | " + " | ".join(f"{c} writers" for c in clients) + " |")
    print("|---|" + "---|" * len(clients))
    results: dict[str, list[float]] = {}
    for mode in ("direct", "fanout"):
        set_mode(primary.url(), mode)
        cells = []
        results[mode] = []
        for count in clients:
            caught_up(primary, nodes)
            tps, latency = pgbench(
                primary.url(), (RANDOM + COMMENT).format(tracks=tracks), count, seconds, True
            )
            results[mode].append(tps)
            cells.append(f"{tps:,.0f}/s ({latency:.1f} ms)")
        print(f"| {mode} | " + " | ".join(cells) + " |", flush=True)
    ratios = [f / d for d, f in zip(results["direct"], results["fanout"], strict=True)]
    print("| fanout / direct | " + " | ".join(f"{r:.2f}x" for r in ratios) + " |")
    set_mode(primary.url(), "direct")


def cpu(
    primary: Server, nodes: list[Server], listeners: int, rate: float, seconds: float, tracks: int
) -> None:
    topics = [f"track:b-{i + 1}" for i in range(tracks)]
    print(
        f"\n## the primary's CPU per comment, {listeners} listeners, {rate:g} comments/s for {seconds:g} s\n"
    )
    idle = primary.cpu()
    time.sleep(seconds)  # what the primary spends with nothing written, over the same time
    idle = primary.cpu() - idle
    print(f"the primary idle for {seconds:g} s: {idle:.2f} s of CPU (taken out of 'per comment')\n")
    print("| notify_mode | where the listeners are | comments | primary CPU | per comment | nodes' CPU |")
    print("|---|---|---|---|---|---|")
    for mode, where in (("direct", [primary]), ("fanout", nodes)):
        set_mode(primary.url(), mode)
        caught_up(primary, nodes)
        with contextlib.ExitStack() as stack:
            sessions = [
                stack.enter_context(Listener(where[i % len(where)].url(), topics)) for i in range(listeners)
            ]
            # The writer's session stays open until its CPU is counted (a backend's ends with it).
            writer = stack.enter_context(psycopg.connect(primary.url(), autocommit=True))
            before, nodes_before = primary.cpu_by_kind(), sum(n.cpu() for n in nodes)
            written = write_at(writer, rate, seconds, tracks)
            caught_up(primary, nodes)
            after = primary.cpu_by_kind()
            by_kind = {kind: after[kind] - before.get(kind, 0.0) for kind in after}
            spent, nodes_spent = sum(by_kind.values()), sum(n.cpu() for n in nodes) - nodes_before
            heard = min(s.count for s in sessions)
        place = "primary" if mode == "direct" else f"{len(nodes)} nodes"
        print(
            f"| {mode} | {place} | {written:,} | {spent:.2f} s | {(spent - idle) / written * 1e6:,.0f} µs | {nodes_spent:.2f} s |",
            flush=True,
        )
        print(
            "  per comment: "
            + ", ".join(f"{kind} {cpu / written * 1e6:,.0f} µs" for kind, cpu in by_kind.items())
        )
        if heard < written:
            print(f"  (a listener heard {heard:,} of {written:,} payloads)")
    set_mode(primary.url(), "direct")


def latency(primary: Server, nodes: list[Server], rate: float, seconds: float, tracks: int) -> None:
    topics = [f"track:b-{i + 1}" for i in range(tracks)]
    set_mode(primary.url(), "direct")
    caught_up(primary, nodes)
    with (
        Listener(primary.url(), topics) as on_primary,
        Listener(nodes[0].url(), topics) as on_node,
        psycopg.connect(primary.url(), autocommit=True) as writer,
    ):
        written = write_at(writer, rate, seconds, tracks)
        caught_up(primary, nodes)
        deadline = time.monotonic() + 10
        while len(on_node.arrivals) < len(on_primary.arrivals) and time.monotonic() < deadline:
            time.sleep(0.05)
    added = sorted(
        (on_node.arrivals[k] - t) * 1000 for k, t in on_primary.arrivals.items() if k in on_node.arrivals
    )
    print(
        f"\n## a node's added delivery latency, {rate:g} comments/s for {seconds:g} s ({written:,} written)\n"
    )
    print("| payloads compared | p50 | p90 | p99 | max |")
    print("|---|---|---|---|---|")
    cuts = statistics.quantiles(added, n=100, method="inclusive")
    p50, p90, p99 = cuts[49], cuts[89], cuts[98]
    print(f"| {len(added):,} | {p50:.1f} ms | {p90:.1f} ms | {p99:.1f} ms | {added[-1]:.1f} ms |")


def kill(
    primary: Server,
    nodes: list[Server],
    replicas: int,
    sockets: int,
    rate: float,
    seconds: float,
    tracks: int,
) -> None:
    import httpx

    from app.auth.hs256 import issue_token
    from bench.lib.processes import LoadProcesses, start_server, stop_all, wait_ready
    from bench.lib.settings import PY, RESULTS, SECRET

    set_mode(primary.url(), "fanout")
    caught_up(primary, nodes)
    logdir = RESULTS / f"fanout-kill-{time.strftime('%Y%m%d-%H%M%S')}"
    logdir.mkdir(parents=True, exist_ok=True)
    env = {
        "DATABASE_URL": primary.url(),
        "TRACKTALK_LISTEN_URL": ",".join([nodes[0].url(), nodes[1].url(), primary.url()]),
        "TRACKTALK_SECRET": SECRET,
        "TRACKTALK_SOCKETS_PER_USER": "1000000",
    }
    servers = []
    try:
        for _ in range(replicas):
            servers.append(
                wait_ready(
                    start_server([PY, "-m", "app", "serve", "--port", "{port}"], env, logdir, "replica")
                )
            )
        per_track = max(1, sockets // tracks)
        config = {
            "servers": [f"ws://127.0.0.1:{server.port}" for server in servers],
            "tokens": [issue_token(SECRET, user, 3600) for user in (3, 4, 5)],
            "sockets": [[f"b-{i // per_track + 1}", i % replicas] for i in range(per_track * tracks)],
            "concurrency": 100,
        }
        swarm = LoadProcesses("bench.swarm", [config], logdir)
        opened, failed = swarm.ready[0][:2]
        print(
            f"\n## a node killed under load: {replicas} replicas on node a, {opened} sockets"
            f" ({failed} failed), {rate:g} comments/s for {seconds:g} s over {tracks} tracks\n",
            flush=True,
        )
        written: list[int] = []
        with psycopg.connect(primary.url(), autocommit=True) as writer:
            thread = threading.Thread(target=lambda: written.append(write_at(writer, rate, seconds, tracks)))
            thread.start()
            time.sleep(seconds / 3)
            killed = time.monotonic()
            nodes[0].stop()
            print(f"node a stopped (pg_ctl -m immediate) {seconds / 3:.0f} s into the writes", flush=True)
            thread.join()
        caught_up(primary, nodes[1:])
        # Every replica ready again, on node b: then every event has reached the sockets.
        deadline = time.monotonic() + 60
        while not all(
            httpx.get(f"http://127.0.0.1:{s.port}/readyz", timeout=2).status_code == 200 for s in servers
        ):
            if time.monotonic() > deadline:
                raise SystemExit("the replicas were not ready again within 60 s of the writes' end")
            time.sleep(0.2)
        ready_after = time.monotonic() - killed
        # The sockets opened before the writes, per_track on each track, and the writer goes round
        # the tracks: each comment is owed once to each of its track's sockets. The last frames
        # may be on their way: wait until they came, or 10 s more.
        owed = written[0] * per_track
        deadline = time.monotonic() + 10
        while (swarm.stats[0][:1] or [0])[0] < owed and time.monotonic() < deadline:
            time.sleep(0.1)
        swarm.end(60)
        got = json.loads(Path(swarm.outs[0]).read_text())
        with psycopg.connect(primary.url(), autocommit=True) as conn:
            latest = dict(
                conn.execute(
                    "SELECT substr(topic, 7), last_seq FROM tracktalk.topic_state WHERE topic LIKE 'track:%'"
                ).fetchall()
            )
        behind = sum(1 for track, last in got["last"] if last != latest.get(track, 0))
        frames = got["frames"]
        print(
            "| comments | sockets | frames owed | frames received | gaps | repeats | resyncs"
            " | sockets not at their track's last seq | reopened |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        print(
            f"| {written[0]:,} | {len(got['last']):,} | {owed:,} | {frames:,} | {got['gaps']} |"
            f" {got['repeats']} | {got['resyncs']} | {behind} | {got['reopened']} |"
        )
        clean = frames == owed and not (got["gaps"] or got["repeats"] or got["resyncs"] or behind)
        print(f"every event exactly once on every socket: {'met' if clean else 'MISSED'}")
        print(
            f"every replica ready (on node b) {ready_after:.1f} s after the kill, checked once the writes ended",
            flush=True,
        )
    finally:
        stop_all(servers)
        set_mode(primary.url(), "direct")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="commits,cpu,latency,kill")
    parser.add_argument("--replicas", type=int, default=4, help="for kill")
    parser.add_argument("--sockets", type=int, default=2000, help="for kill")
    parser.add_argument("--seconds", type=int, default=10, help="per pgbench run")
    parser.add_argument("--clients", default="4,16,32")
    parser.add_argument("--tracks", type=int, default=100)
    parser.add_argument("--listeners", type=int, default=40)
    parser.add_argument("--rate", type=float, default=200, help="comments/s for cpu and latency")
    parser.add_argument("--duration", type=float, default=15, help="seconds of writing for cpu and latency")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    only = set(args.only.split(","))
    print(f"{os.cpu_count()} CPUs; load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with topology(args.tracks) as (primary, nodes):
        with psycopg.connect(primary.url()) as conn:
            row = conn.execute(
                "SELECT current_setting('server_version'), current_setting('fsync')"
            ).fetchone()
        print(
            f"primary: PostgreSQL {row[0] if row else '?'}, fsync={row[1] if row else '?'}; two nodes (fsync off)"
        )
        if "commits" in only:
            commits(primary, nodes, [int(c) for c in args.clients.split(",")], args.seconds, args.tracks)
        if "cpu" in only:
            cpu(primary, nodes, args.listeners, args.rate, args.duration, 10)
        if "latency" in only:
            latency(primary, nodes, args.rate, args.duration, 10)
        if "kill" in only:  # last: node a stays down
            kill(primary, nodes, args.replicas, args.sockets, 50, args.duration, 20)
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
