"""Running a replica: schema checks, migrations, metrics, logs, stopping and failing over."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import os
import signal
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from app.auth.hs256 import issue_token
from app.config import Settings
from app.data.db import SCHEMA_VERSION, create_pool, migrate
from app.dev.embedded import EmbeddedPostgres
from app.garbage import BURST
from tests.support.metrics import metrics
from tests.support.processes import SECRET, Replica, replicas, tracktalk
from tests.support.seed import World, new_track, seed
from tests.support.sockets import open_socket
from tests.support.waiting import async_wait_until, wait_until
from tests.support.writes import insert_comment, sql


async def get(url: str, **kw: object) -> httpx.Response:
    async with httpx.AsyncClient(timeout=5) as client:
        return await client.get(url, **kw)  # type: ignore[arg-type]


@pytest.fixture
def empty_db_url(pg: EmbeddedPostgres) -> str:
    """A database with no tracktalk schema at all."""
    name = f"empty_{os.getpid()}_{time.monotonic_ns()}"
    with psycopg.connect(pg.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return pg.url_for(name)


def test_serve_refuses_a_database_without_the_schema_and_migrate_fixes_it(
    empty_db_url: str, log_dir: Path
) -> None:
    refused = tracktalk("serve", "--port", "1", database_url=empty_db_url)
    assert refused.returncode == 2
    assert "run `tracktalk migrate`" in refused.stderr.lower()
    for _ in range(2):  # safe to run again and again
        migrated = tracktalk("migrate", database_url=empty_db_url)
        assert migrated.returncode == 0, migrated.stderr
        assert f"schema version {SCHEMA_VERSION} applied" in migrated.stdout
    with psycopg.connect(empty_db_url) as conn:  # as the role "tracktalk", like the schema
        places = conn.execute(
            "SELECT DISTINCT table_schema FROM information_schema.tables"
            " WHERE table_name IN ('users', 'albums', 'tracks', 'comments', 'comment_likes',"
            " 'track_likes', 'track_shares', 'notifications')"
        ).fetchall()
    assert places == [("public",)], "the contract's tables must be in the schema public"
    with replicas(empty_db_url, log_dir, 1) as (replica,):
        assert httpx.get(f"{replica.http}/readyz", timeout=5).json()["checks"]["schema"] is True


def test_serve_refuses_an_older_schema(empty_db_url: str) -> None:
    assert tracktalk("migrate", database_url=empty_db_url).returncode == 0
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        conn.execute("UPDATE tracktalk.schema_version SET version = 0")
    refused = tracktalk("serve", "--port", "1", database_url=empty_db_url)
    assert refused.returncode == 2
    assert "schema version 0" in refused.stderr and "tracktalk migrate" in refused.stderr


def test_serve_accepts_a_newer_schema(new_database: Callable[[], str], log_dir: Path) -> None:
    # A rolling upgrade: the SQL of the next version is applied while replicas of this one run.
    url = new_database()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE tracktalk.schema_version SET version = version + 1")
    with replicas(url, log_dir, 1) as (replica,):
        ready = httpx.get(f"{replica.http}/readyz", timeout=5)
    assert ready.status_code == 200 and ready.json()["checks"]["schema"] is True


async def test_the_request_pool_reads_committed_whatever_the_database_default(
    new_database: Callable[[], str],
) -> None:
    # A statement must see what committed before it (the track counter rows, the comment limit's
    # lock); under REPEATABLE READ two writers to one track would fail with serialization errors.
    url = new_database()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            f"ALTER DATABASE {conn.info.dbname} SET default_transaction_isolation = 'repeatable read'"
        )
    pool = create_pool(Settings(database_url=url, secret="s" * 32))
    await pool.open(wait=True, timeout=10)
    try:
        async with pool.connection() as conn:
            cur = await conn.execute("SHOW transaction_isolation")
            assert await cur.fetchone() == ("read committed",)
    finally:
        await pool.close()


def test_token_prints_a_token_the_api_accepts(replica: Replica, world: World) -> None:
    made = tracktalk("token", str(world.users["bob"]), "--ttl", "60", database_url="postgresql://unused")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    answer = httpx.post(
        f"{replica.http}/api/tracks/{world.public}/comments",
        json={"content": "with a CLI token", "timestamp": 1},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert answer.status_code == 201 and answer.json()["username"] == "bob"


async def test_metrics_count_sockets_deliveries_and_lag(replica: Replica, world: World, db_url: str) -> None:
    track = new_track(db_url)  # nobody else's frames
    before = await metrics(replica)
    async with open_socket(replica.ws, track, world.tokens["alice"], presence=True) as sock:
        await sock.expect("connected")
        await sock.expect("presence")  # the socket's own frame, counted as it is handed over
        opened = await metrics(replica)
        await insert_comment(db_url, track, world.users["bob"], "counted")
        await sock.events(1)
        values = await metrics(replica)

    def grew(name: str, since: dict[str, float] = opened) -> float:
        return values[name] - since[name]

    assert grew("tracktalk_open_sockets", before) == 1
    assert grew("tracktalk_sockets_opened_total", before) == 1
    assert opened["tracktalk_events_delivered_total"] - before["tracktalk_events_delivered_total"] == 1
    assert grew("tracktalk_events_delivered_total") == 1
    assert grew("tracktalk_delivery_lag_seconds_count") == 1
    assert values["tracktalk_listener_ready"] == 1
    assert 0 <= values["tracktalk_notify_queue_usage"] < 1
    assert (
        "tracktalk_sockets_dropped_slow_total" in values and "tracktalk_listener_reconnects_total" in values
    )
    assert values["process_resident_memory_bytes"] > 0
    assert 'python_gc_collections_total{generation="2"}' in values


async def test_metrics_answer_a_content_type_that_prometheus_parses(replica: Replica) -> None:
    """It was `text/plain; version=1.0.0; charset=utf-8; charset=utf-8` (Litestar adds the charset to
    the one prometheus_client names): Go's mime.ParseMediaType refuses a parameter named twice, and
    Prometheus 3 then fails the scrape."""
    answer = await get(f"{replica.http}/metrics")
    assert answer.status_code == 200
    media_type, *parameters = (part.strip() for part in answer.headers["content-type"].split(";"))
    names = [parameter.split("=", 1)[0].lower() for parameter in parameters]
    assert media_type == "text/plain"
    assert sorted(names) == ["charset", "version"], answer.headers["content-type"]
    assert "charset=utf-8" in parameters


async def test_a_burst_of_sockets_is_frozen_out_of_the_garbage_collector_and_still_served(
    replica: Replica, world: World, db_url: str
) -> None:
    """More than BURST sockets at once: within ticks of the replica's main loop the objects they
    hold are frozen (the garbage collector no longer scans them), and they work as before."""
    track = new_track(db_url)
    with psycopg.connect(db_url, autocommit=True) as conn:  # 10 sockets each: under the per-user limit
        listeners = [
            issue_token(SECRET, row[0], 600)
            for row in conn.execute(
                "INSERT INTO users (username) SELECT 'burst-' || gen_random_uuid() FROM generate_series(1, %s) RETURNING id",
                (BURST // 10 + 2,),
            )
        ]
    before = await metrics(replica)
    async with contextlib.AsyncExitStack() as stack:
        socks = await asyncio.gather(
            *(
                stack.enter_async_context(open_socket(replica.ws, track, token))
                for token in listeners
                for _ in range(10)
            )
        )
        for sock in socks:
            await sock.expect("connected")
        opened = await metrics(replica)
        assert opened["tracktalk_sockets_opened_total"] - before["tracktalk_sockets_opened_total"] == len(
            socks
        )

        async def frozen() -> bool:
            return (await metrics(replica))["tracktalk_gc_freezes_total"] > before[
                "tracktalk_gc_freezes_total"
            ]

        await async_wait_until(frozen, 5, "the burst's objects frozen")
        await insert_comment(db_url, track, world.users["bob"], "after the freeze")
        for sock in socks:
            assert (await sock.expect("new_comment"))["comment"]["content"] == "after the freeze"


async def test_an_unforeseen_failure_answers_json_and_is_logged_with_its_traceback(
    new_database: Callable[[], str], log_dir: Path
) -> None:
    url = new_database()
    world = seed(url)
    with replicas(url, log_dir, 1) as (replica,):
        with psycopg.connect(url, autocommit=True) as conn:  # a DBA's slip
            conn.execute("ALTER TABLE notifications RENAME TO notifications_old")
        async with httpx.AsyncClient(timeout=10) as client:
            failed = await client.post(f"{replica.http}/api/notifications/read", headers=world.auth("bob"))
            assert failed.status_code == 500
            assert failed.json() == {
                "status_code": 500,
                "detail": "the server failed on this request (it is logged); try again shortly",
            }
            wait_until(lambda: "UndefinedTable" in replica.log(), 5, "the traceback in the replica's log")
            assert "POST /api/notifications/read failed" in replica.log()
            # Nobody else is harmed.
            assert (await client.get(f"{replica.http}/api/tracks/{world.public}/comments")).status_code == 200


async def test_a_socket_whose_writer_fails_is_closed_with_1011_and_the_failure_logged(
    new_database: Callable[[], str], log_dir: Path
) -> None:
    url = new_database()
    world = seed(url)
    await insert_comment(url, world.public, world.users["bob"], "to replay")
    with replicas(url, log_dir, 1) as (replica,):
        with psycopg.connect(url, autocommit=True) as conn:  # a DBA's slip: replays now fail
            conn.execute("ALTER TABLE tracktalk.events RENAME TO events_old")
        async with open_socket(replica.ws, world.public, world.tokens["alice"], since=0) as sock:
            await sock.expect("connected")
            code, reason = await sock.closed()
        assert code == 1011 and reason == "server error (logged): reconnect with since=<last seq>"
        wait_until(lambda: "UndefinedTable" in replica.log(), 5, "the writer's traceback in the log")


async def test_no_token_appears_in_the_logs(replica: Replica, world: World) -> None:
    async with open_socket(replica.ws, world.public, world.tokens["dave"], since=0) as sock:
        await sock.expect("connected")
    await get(f"{replica.http}/api/notifications", headers=world.auth("dave"))
    # a token put in a request's URL (as a socket's is): its access line is there, redacted
    await get(f"{replica.http}/api/notifications?token={world.tokens['dave']}")
    assert replica.log_path is not None
    log = replica.log_path.read_text()
    assert "/api/notifications?token=***" in log
    for token in world.tokens.values():
        assert token not in log and token.split(".")[2] not in log


def test_prune_events_drops_only_what_is_past_the_retention(world: World, db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO comments (track_id, user_id, content) VALUES (%s, %s, 'old'), (%s, %s, 'new')",
            (world.timed, world.users["bob"], world.timed, world.users["bob"]),
        )
        kept_before = conn.execute("SELECT count(*) FROM tracktalk.events").fetchone()
        conn.execute(
            "UPDATE tracktalk.events SET created_at = now() - interval '25 hours' WHERE topic = 'track:' || %s AND seq = 1",
            (world.timed,),
        )
        gone = conn.execute("SELECT tracktalk.prune_events()").fetchone()
        kept_after = conn.execute("SELECT count(*) FROM tracktalk.events").fetchone()
    assert gone == (1,)
    assert kept_before is not None and kept_after == (kept_before[0] - 1,)


def test_pruning_keeps_a_contiguous_tail_of_each_track(new_database: Callable[[], str]) -> None:
    """A transaction that began before another but numbered its event after it holds the higher
    seq with the older created_at (its transaction's start): pruning by time alone deletes that
    seq and keeps the one before it, a hole that replays would step over."""
    url = new_database()
    world = seed(url)

    def last_event(conn: psycopg.Connection[Any], track: str) -> tuple[int, datetime]:
        row = conn.execute(
            "SELECT seq, created_at FROM tracktalk.events WHERE topic = 'track:' || %s ORDER BY seq DESC LIMIT 1",
            (track,),
        ).fetchone()
        assert row is not None
        return int(row[0]), row[1]

    insert = "INSERT INTO comments (track_id, user_id, content) VALUES (%s, %s, %s)"
    bob = world.users["bob"]
    with psycopg.connect(url, autocommit=True) as conn, psycopg.connect(url) as late:
        for track in (world.public, world.timed):  # world.timed: only old events
            conn.execute(insert, (track, bob, "old"))
        row = late.execute("SELECT now()").fetchone()  # its transaction (and created_at) starts here
        assert row is not None
        began: datetime = row[0]
        conn.execute(insert, (world.public, bob, "began later, committed first"))
        first, first_at = last_event(conn, world.public)
        late.execute(insert, (world.public, bob, "began first, committed later"))
        late.commit()
        second, second_at = last_event(conn, world.public)
        conn.execute(insert, (world.public, bob, "new"))
        conn.execute(insert, (world.other, bob, "new"))  # world.other: only new events
        assert (second, second_at) == (first + 1, began) and second_at < first_at, "no interleaving"

        # The retention's edge falls between the two transactions' starts.
        edge = began + (first_at - began) / 2
        with conn.transaction():
            conn.execute("UPDATE tracktalk.settings SET event_retention = now() - %s", (edge,))
            conn.execute("SELECT tracktalk.prune_events()")
        kept = {
            track: [
                int(seq)
                for (seq,) in conn.execute(
                    "SELECT seq FROM tracktalk.events WHERE topic = 'track:' || %s ORDER BY seq", (track,)
                ).fetchall()
            ]
            for track in (world.public, world.timed, world.other)
        }
        latest = dict(conn.execute("SELECT substr(topic, 7), last_seq FROM tracktalk.topic_state").fetchall())
    for track, seqs in kept.items():
        # What is kept is a contiguous tail of each track: from some seq through its last one.
        assert seqs == list(range(latest[track] - len(seqs) + 1, latest[track] + 1)), (track, seqs)
    assert kept[world.public] == [second + 1]  # the hole's both sides went, the newest stayed
    assert kept[world.timed] == []
    assert kept[world.other] == [latest[world.other]]


async def test_sigterm_closes_sockets_with_1001_and_exits_within_10_s(
    db_url: str, world: World, log_dir: Path
) -> None:
    with replicas(db_url, log_dir, 1) as (stopping,):
        async with open_socket(stopping.ws, world.public, world.tokens["alice"]) as sock:
            await sock.expect("connected")
            assert stopping.process is not None
            began = time.monotonic()
            stopping.process.send_signal(signal.SIGTERM)
            code, reason = await sock.closed()
        assert code == 1001 and reason and "since=" in reason
        stopping.process.wait(10)
        assert time.monotonic() - began < 10


async def test_a_killed_replicas_clients_resume_on_the_other_and_miss_nothing(
    db_url: str, world: World, log_dir: Path
) -> None:
    with replicas(db_url, log_dir, 2) as (doomed, survivor):
        async with open_socket(doomed.ws, world.public, world.tokens["alice"]) as sock:
            await sock.expect("connected")
            await insert_comment(db_url, world.public, world.users["bob"], "before")
            last_seen = (await sock.events(1))[-1]["seq"]
            assert doomed.process is not None
            doomed.process.kill()
            doomed.process.wait(10)
            await sock.closed()
        missed = [
            await insert_comment(db_url, world.public, world.users["bob"], f"while away {i}")
            for i in range(2)
        ]
        async with open_socket(survivor.ws, world.public, world.tokens["alice"], since=last_seen) as back:
            await back.expect("connected")
            got = await back.events(2)
    assert [e["seq"] for e in got] == list(range(last_seen + 1, last_seen + 3))
    assert [e["comment"]["id"] for e in got if e["type"] == "new_comment"] == missed


async def test_the_database_restarting_is_survived_without_loss(
    new_database: Callable[[], str], pg: EmbeddedPostgres, log_dir: Path
) -> None:
    """PostgreSQL restarts under running replicas: they recover by themselves and lose nothing."""
    from tests.support.seed import seed

    url = new_database()
    world = seed(url)
    with replicas(url, log_dir, 2) as (a, b):
        async with (
            open_socket(a.ws, world.public, world.tokens["alice"]) as on_a,
            open_socket(b.ws, world.public, world.tokens["bob"]) as on_b,
        ):
            start = (await on_a.expect("connected"))["seq"]
            await on_b.expect("connected")
            before = await insert_comment(url, world.public, world.users["dave"], "before the restart")
            await on_a.events(1)
            pg.restart()
            after = await insert_comment(url, world.public, world.users["dave"], "after the restart")
            for replica in (a, b):
                replica.wait_ready(30)
            got_b = await on_b.events(2, timeout=30)
            got_a = await on_a.events(1, timeout=30)
    assert [e["seq"] for e in got_b] == list(range(start + 1, start + 3))
    assert [e["comment"]["id"] for e in got_b if e["type"] == "new_comment"] == [before, after]
    assert got_a[0]["comment"]["id"] == after
    await sql(url, "SELECT 1")


async def test_a_stalled_listener_does_not_wedge_the_writers(
    db_url: str, world: World, log_dir: Path
) -> None:
    """A replica frozen with SIGSTOP reads no notifications: writers go on regardless, and the
    replica delivers everything in order when it wakes."""
    with replicas(db_url, log_dir, 1) as (frozen,):
        async with open_socket(frozen.ws, world.other, world.tokens["bob"]) as sock:
            start = (await sock.expect("connected"))["seq"]
            assert frozen.process is not None
            frozen.process.send_signal(signal.SIGSTOP)
            try:
                began = time.monotonic()
                for i in range(300):
                    await insert_comment(
                        db_url, world.other, world.users["dave"], f"while frozen {i} " + "x" * 3000
                    )
                took = time.monotonic() - began
            finally:
                frozen.process.send_signal(signal.SIGCONT)
            got = await sock.events(300, timeout=60)
    assert took < 30, f"300 commits took {took:.1f} s with a stalled listener"
    assert [e["seq"] for e in got] == list(range(start + 1, start + 301))


async def test_sigterm_finishes_the_requests_in_flight(db_url: str, world: World, log_dir: Path) -> None:
    with replicas(db_url, log_dir, 1) as (stopping,):
        assert stopping.process is not None
        async with (
            await psycopg.AsyncConnection.connect(db_url) as locker,
            httpx.AsyncClient(base_url=stopping.http, timeout=30) as client,
        ):
            await locker.execute("LOCK TABLE comments IN ACCESS EXCLUSIVE MODE")
            in_flight = asyncio.create_task(
                client.post(
                    f"/api/tracks/{world.public}/comments",
                    json={"content": "caught in the shutdown", "timestamp": 1},
                    headers=world.auth("alice"),
                )
            )
            await async_wait_until(lambda: _waiting_on_lock(db_url), 10, "the request to wait on the lock")
            stopping.process.send_signal(signal.SIGTERM)
            await async_wait_until(
                lambda: "Shutting down" in stopping.log(), 10, "uvicorn to start shutting down"
            )
            await locker.rollback()  # the request may go on now, while the server stops
            answer = await in_flight
        assert answer.status_code == 201, answer.text
        assert stopping.process.wait(10) is not None


async def _waiting_on_lock(db_url: str) -> bool:
    rows = await sql(
        db_url,
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'tracktalk' AND wait_event_type = 'Lock'",
    )
    return bool(rows[0][0])


def test_writes_on_a_long_lived_connection_survive_a_column_added_then_dropped(
    world: World, db_url: str
) -> None:
    """A DBA's migration adds a column to comments and drops it again while a pooled connection
    writes: the triggers' plans cached in between must not break that connection's next writes."""
    alice, bob = world.users["alice"], world.users["bob"]
    with (
        psycopg.connect(db_url, autocommit=True) as writer,
        psycopg.connect(db_url, autocommit=True) as dba,
    ):

        def write(tag: str) -> None:
            row = writer.execute(
                "INSERT INTO comments (track_id, user_id, content, timestamp)"
                " VALUES ('t-public', %s, %s, 1) RETURNING id",
                (alice, f"{tag} @bob"),
            ).fetchone()
            assert row is not None
            writer.execute("UPDATE comments SET content = content || ' edited @dave' WHERE id = %s", row)
            writer.execute("INSERT INTO comment_likes (comment_id, user_id) VALUES (%s, %s)", (row[0], bob))

        dba.execute("ALTER TABLE comments ADD COLUMN scratch integer")
        write("while the column exists")  # the writer's first trigger run: its plans see the column
        dba.execute("ALTER TABLE comments DROP COLUMN scratch")
        write("after it is gone")
        notified = writer.execute(
            "SELECT u.username, n.kind FROM comments c JOIN notifications n ON n.comment_id = c.id"
            " JOIN users u ON u.id = n.user_id WHERE c.content LIKE 'after it is gone%' ORDER BY 1, 2"
        ).fetchall()
    # The creator and the team, both mentions (the second added by the edit), the like.
    assert notified == [
        ("alice", "comment_like"),
        ("bob", "mention"),
        ("carol", "comment"),
        ("dave", "mention"),
        ("tina", "comment"),
    ]


def test_the_sql_applied_again_changes_nothing_a_replica_relies_on(new_database: Callable[[], str]) -> None:
    """DBAs apply sql/ on every upgrade, and may apply it twice: nothing made is lost or renumbered."""
    url = new_database()
    world = seed(url)
    state = (
        "SELECT (SELECT json_agg(s ORDER BY track_id) FROM tracktalk.track_state s),"
        " (SELECT json_agg(s ORDER BY topic) FROM tracktalk.topic_state s),"
        " (SELECT json_agg(json_build_array(topic, seq, message::text) ORDER BY topic, seq)"
        "    FROM tracktalk.events),"
        " (SELECT key FROM tracktalk.channel_key),"
        " (SELECT count(*) FROM notifications)"
    )
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO comments (track_id, user_id, content, timestamp) VALUES (%s, %s, 'kept', 1)",
            (world.public, world.users["alice"]),
        )
        conn.execute(
            "INSERT INTO track_likes (track_id, user_id) VALUES (%s, %s)", (world.public, world.users["bob"])
        )
        before = conn.execute(state).fetchone()
    assert migrate(url) == SCHEMA_VERSION
    assert migrate(url) == SCHEMA_VERSION
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute(state).fetchone() == before
        conn.execute(
            "INSERT INTO comments (track_id, user_id, content, timestamp) VALUES (%s, %s, 'after', 2)",
            (world.public, world.users["alice"]),
        )
        seqs = conn.execute(
            "SELECT array_agg(seq ORDER BY seq) FROM tracktalk.events WHERE topic = 'track:' || %s",
            (world.public,),
        ).fetchone()
    assert seqs is not None and seqs[0] == list(range(1, len(seqs[0]) + 1))  # numbering went on


def test_a_replica_whose_port_was_taken_meanwhile_starts_on_another(
    db_url: str, world: World, log_dir: Path
) -> None:
    """free_port() only finds a port free: another process may listen on it before the replica
    binds it. The helper must not take that process's answers for the replica's (here another
    server answers /readyz with 200 on it), and must start the replica on a port of its own."""
    impostor = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _AlwaysReady)
    threading.Thread(target=impostor.serve_forever, daemon=True).start()
    taken = impostor.server_address[1]
    try:
        replica = Replica(db_url, port=taken).start(log_dir)
        try:
            assert replica.port != taken
            assert httpx.get(f"{replica.http}/readyz", timeout=5).json()["status"] == "ok"
        finally:
            replica.stop()
    finally:
        impostor.shutdown()
        impostor.server_close()


class _AlwaysReady(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass
