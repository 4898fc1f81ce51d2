"""How many comments a second one PostgreSQL commits through tracktalk's triggers, and what
NOTIFY's commit-time lock costs. The figures in docs/dba.md and docs/scaling.md come from it.

    .venv/bin/python -m bench.notify_lock                      # an embedded, durable server
    .venv/bin/python -m bench.notify_lock --server-url postgresql://postgres@db-host/postgres

For each script it makes a fresh scratch database (`tracktalk_bench`, dropped at the end; with
--server-url the role must be allowed to CREATE DATABASE), applies the SQL, seeds 5 users and
--tracks tracks, keeps two LISTEN connections draining (as two replicas would), and runs pgbench
for --seconds at each --clients count, one INSERT per transaction:

  plain          INSERT into a copy of `comments` (same columns and indexes), no trigger
  plain+notify   the same INSERT and one pg_notify() in the same transaction: NOTIFY's cost alone
  tracktalk      INSERT into `comments` with the triggers, over --tracks tracks (numbering,
                 event log, counters, notifications for the creator and the team, two NOTIFYs)
  tracktalk-no-notify  the same with sql/triggers.sql's two pg_notify() calls taken out: the
                 triggers' work without NOTIFY and its lock
  tracktalk-hot  the same as tracktalk, every insert on one track (its track_state row
                 serialises them)

While pgbench runs, pg_stat_activity is sampled every 10 ms to show what the writers wait on
(`Lock:object` is NOTIFY's commit lock). With --no-sync also with synchronous_commit=off, where commits do not wait for the WAL flush.
pgbench comes from the embedded server's binaries or PATH.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from app.data.db import SQL_DIR, migrate
from app.dev.embedded import EmbeddedPostgres, find_bindir

DATABASE = "tracktalk_bench"
VALUES = "('b-' || :t, :u, 'a benchmark comment, about this length', 1.5)"
PLAIN = 'INSERT INTO bench_plain (track_id, user_id, content, "timestamp") VALUES ' + VALUES + ";"
COMMENT = 'INSERT INTO comments (track_id, user_id, content, "timestamp") VALUES ' + VALUES + ";"
RANDOM = "\\set t random(1, {tracks})\n\\set u random(2, 5)\n"
HOT = "\\set t 1\n\\set u random(2, 5)\n"
SCRIPTS = {
    # name: (pgbench script, whether the triggers send their NOTIFYs)
    "plain": (RANDOM + PLAIN, True),
    "plain+notify": (
        RANDOM + "BEGIN;\n" + PLAIN + "\nSELECT pg_notify('tracktalk_bench', 'b-' || :t);\nCOMMIT;",
        True,
    ),
    "tracktalk": (RANDOM + COMMENT, True),
    "tracktalk-no-notify": (RANDOM + COMMENT, False),
    "tracktalk-hot": (HOT + COMMENT, True),
}
NOTIFY_CALL = "PERFORM pg_notify('tracktalk', payload);"


@contextlib.contextmanager
def server(url: str | None) -> Iterator[str]:
    """An admin URL: the given one, or an embedded server with durable commits (fsync on)."""
    if url:
        yield url
        return
    root = Path(tempfile.mkdtemp(prefix="tracktalk-bench-"))
    root.chmod(0o755)
    try:
        with EmbeddedPostgres(root) as pg:
            yield pg.url
    finally:
        shutil.rmtree(root, ignore_errors=True)


def database_url(admin: str) -> str:
    return make_conninfo(admin, dbname=DATABASE)


def prepare(admin: str, tracks: int, notify: bool) -> None:
    """A fresh scratch database: the SQL applied (without its NOTIFYs if not `notify`), seeded."""
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DATABASE}")
    url = database_url(admin)
    migrate(url)
    with psycopg.connect(url, autocommit=True) as conn:
        if not notify:
            # The triggers' whole work, payload included, minus the pg_notify calls (and the lock).
            text = (SQL_DIR / "triggers.sql").read_text()
            if text.count(NOTIFY_CALL) != 2:
                raise SystemExit(f"sql/triggers.sql changed: expected 2 of {NOTIFY_CALL!r}")
            conn.execute(text.replace(NOTIFY_CALL, "PERFORM octet_length(payload);").encode())
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
        conn.execute("CREATE TABLE bench_plain (LIKE comments INCLUDING ALL)")


class Listeners:
    """Two LISTEN connections that read every notification, as two replicas do."""

    def __init__(self, url: str, count: int = 2) -> None:
        self.url = url
        self.count = count
        self.received = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def _run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("LISTEN tracktalk")
            conn.execute("LISTEN tracktalk_bench")
            while not self._stop.is_set():
                got = sum(1 for _ in conn.notifies(timeout=0.2))
                with self._lock:
                    self.received += got

    def __enter__(self) -> Listeners:
        for _ in range(self.count):
            thread = threading.Thread(target=self._run, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)


class Waits:
    """Samples what the benchmark's sessions wait on, every 10 ms, while a run lasts."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.samples: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self._stop.wait(0.01):
                for kind, event in conn.execute(
                    "SELECT wait_event_type, wait_event FROM pg_stat_activity"
                    " WHERE application_name = 'pgbench' AND state = 'active'"
                ):
                    self.samples["cpu" if kind is None else f"{kind}:{event}"] += 1

    def __enter__(self) -> Waits:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def top(self, n: int = 3) -> str:
        total = sum(self.samples.values()) or 1
        return ", ".join(f"{name} {count / total:.0%}" for name, count in self.samples.most_common(n))


def pgbench_binary() -> str:
    bindir = find_bindir()
    if bindir is not None and (bindir / "pgbench").exists():
        return str(bindir / "pgbench")
    found = shutil.which("pgbench")
    if found is None:
        raise SystemExit("pgbench not found: install postgresql-client (Debian) or the server's binaries")
    return found


def pgbench(url: str, script: str, clients: int, seconds: int, sync: bool) -> tuple[float, float]:
    """(transactions per second, average latency in ms)."""
    params = conninfo_to_dict(url)
    with tempfile.NamedTemporaryFile("w", suffix=".sql") as file:
        file.write("\n".join(line.strip() for line in script.splitlines()))
        file.flush()
        env = {**os.environ, "PGOPTIONS": "" if sync else "-c synchronous_commit=off"}
        for key, var in (
            ("host", "PGHOST"),
            ("port", "PGPORT"),
            ("user", "PGUSER"),
            ("password", "PGPASSWORD"),
        ):
            if params.get(key):
                env[var] = str(params[key])
        result = subprocess.run(
            [
                pgbench_binary(),
                *("-n", "-c", str(clients), "-j", str(min(clients, 4)), "-T", str(seconds)),
                *("-f", file.name, str(params.get("dbname", DATABASE))),
            ],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
    if result.returncode != 0:
        raise SystemExit(f"pgbench failed:\n{result.stderr}")
    tps = re.search(r"^tps = ([\d.]+)", result.stdout, re.M)
    latency = re.search(r"^latency average = ([\d.]+) ms", result.stdout, re.M)
    assert tps and latency, result.stdout
    return float(tps.group(1)), float(latency.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server-url", help="an admin URL of a scratch server (default: embedded)")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--clients", default="1,4,16,32")
    parser.add_argument("--tracks", type=int, default=100)
    parser.add_argument("--scripts", default=",".join(SCRIPTS))
    parser.add_argument("--no-sync", action="store_true", help="also run with synchronous_commit=off")
    args = parser.parse_args()
    # SIGTERM ends it like Ctrl-C: the scratch database and the embedded server are cleaned up.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    clients = [int(c) for c in args.clients.split(",")]
    with server(args.server_url) as admin:
        with psycopg.connect(admin) as conn:
            row = conn.execute(
                "SELECT current_setting('server_version'), current_setting('fsync')"
            ).fetchone()
        print(f"PostgreSQL {row[0] if row else '?'}, fsync={row[1] if row else '?'}, {os.cpu_count()} CPUs,")
        print(f"{args.seconds} s per run, {args.tracks} tracks, two listeners draining,")
        print("a fresh database for each row")
        # Anything else running on the machine skews the figures: say how busy it was.
        print(f"load average before: {os.getloadavg()[0]:.2f}\n")
        print("| script | synchronous_commit | " + " | ".join(f"{c} clients" for c in clients) + " |")
        print("|---|---|" + "---|" * len(clients))
        waited: list[str] = []
        received = 0
        sizes: list[str] = []
        try:
            for sync in [True, False] if args.no_sync else [True]:
                for name in args.scripts.split(","):
                    text, notify = SCRIPTS[name]
                    prepare(admin, args.tracks, notify)
                    url = database_url(admin)
                    cells = []
                    with Listeners(url) as listeners:
                        for count in clients:
                            with Waits(url) as waits:
                                tps, latency = pgbench(
                                    url, text.format(tracks=args.tracks), count, args.seconds, sync
                                )
                            cells.append(f"{tps:,.0f}/s ({latency:.1f} ms)")
                            waited.append(f"{name}, sync {'on' if sync else 'off'}, {count}: {waits.top()}")
                    received += listeners.received
                    setting = "on" if sync else "off"
                    print(f"| {name} | {setting} | " + " | ".join(cells) + " |", flush=True)
                    if name == "tracktalk":
                        sizes.append(events_size(url))
            print(f"\nnotifications read by the listeners: {received:,}")
            print(f"load average after (1 min): {os.getloadavg()[0]:.2f}")
            for line in sizes:
                print(line)
            print("\nwhat the writers were doing (samples of pg_stat_activity; cpu = not waiting):")
            for line in waited:
                print(f"  {line}")
        finally:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")


def events_size(url: str) -> str:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE tracktalk.events")
        row = conn.execute(
            "SELECT count(*), pg_total_relation_size('tracktalk.events') FROM tracktalk.events"
        ).fetchone()
    assert row is not None
    return f"tracktalk.events: {row[0]:,} events, {row[1] / max(row[0], 1):.0f} bytes each with its indexes"


if __name__ == "__main__":
    main()
