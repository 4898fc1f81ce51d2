"""The production topology without containers, and the database roles of docs/dba.md.

What this module proves, and what it does not:

- It never builds the image nor runs docker-compose.yml: the suite runs where no container
  engine is set up and no image registry can be reached. It reads the Dockerfile and the compose
  file for what must hold between them and the code (the files the image gets, the user it runs
  as, the placeholders nginx fills), and runs, with processes, what the image would hold: the
  service from a folder that has only the files the image gets (.dockerignore), so that a file
  the image leaves out cannot be needed.
- It runs the topology of docker-compose.yml with the same pieces as processes: deploy/nginx.conf,
  filled the way the nginx image fills it, in Debian's nginx in front of two real `tracktalk
  serve` processes; Debian's PgBouncer, in transaction mode, in front of two replicas' request
  pools as docs/dba.md describes; the two roles of sql/roles.sql, the owner migrating and a
  replica serving as the app role.
- Not proven here: that `python:3.11-slim`, `postgres:16` and `nginx:1.27` behave as the
  processes that stand for them (the PostgreSQL the suite starts, Debian's nginx 1.22), nor the
  compose file's healthchecks and start order. The image itself was built and run by hand once
  with podman (README, "Production": a stand-in base image, since none could be pulled).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from psycopg import errors
from psycopg.conninfo import conninfo_to_dict

from app.data.db import migrate
from app.dev.embedded import EmbeddedPostgres
from tests.support.processes import ROOT, Replica, debian_binary, free_port, launch, port_open, replicas
from tests.support.proxies import Nginx
from tests.support.reaper import release
from tests.support.seed import World, seed
from tests.support.sockets import open_socket
from tests.support.waiting import wait_until
from tests.support.writes import insert_comment, post_comment

# test_nginx_stops_cleanly stops the module's nginx: the tests through it run first, in file order.
pytestmark = pytest.mark.timeout(180)


ROLES_SQL = ROOT / "sql" / "roles.sql"


def test_the_service_runs_from_only_the_files_the_image_gets(
    tmp_path: Path, db_url: str, world: World, log_dir: Path
) -> None:
    """The image copies pyproject.toml, README.md, app/ and sql/ (.dockerignore lets nothing else
    in): migrate and serve from a folder with just those, and use what reads files at run time
    (the SQL, the page, the client, the docs page's assets)."""
    allowed = [line[1:] for line in (ROOT / ".dockerignore").read_text().splitlines() if line.startswith("!")]
    image = tmp_path / "srv"
    image.mkdir()
    for name in allowed:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, image / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, image / name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKTALK_")}
    env.update(PYTHONPATH=str(image), DATABASE_URL=db_url, TRACKTALK_SECRET="s" * 32, PYTHONSAFEPATH="1")
    where = subprocess.run(
        [sys.executable, "-c", "import app; print(app.__file__)"],
        cwd=image,
        check=False,
        env=env,
        capture_output=True,
        text=True,
    )
    assert where.stdout.startswith(str(image)), where  # not the checkout's app/
    migrated = subprocess.run(
        [sys.executable, "-m", "app", "migrate"],
        cwd=image,
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert migrated.returncode == 0, migrated.stderr
    port = free_port()
    log = (log_dir / f"image-files-{port}.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "app", "serve", "--port", str(port)],
        cwd=image,
        env=env,
        stdout=log,
        stderr=log,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: port_open(port), 30, "the server from the image's files")
        with httpx.Client(base_url=base, timeout=10) as client:
            for path in (
                "/readyz",
                "/",
                "/client/v1/tracktalk.js",
                "/schema/assets/swagger-ui.css",
                "/schema",
            ):
                answer = client.get(path)
                assert answer.status_code == 200, (path, answer.status_code)
    finally:
        server.terminate()
        server.wait(15)
        log.close()


async def test_http_through_nginx_reaches_both_replicas(nginx: Nginx, world: World) -> None:
    async with httpx.AsyncClient(base_url=nginx.http, timeout=10) as client:
        for _ in range(4):
            answer = await client.get(f"/api/tracks/{world.public}/comments")
            assert answer.status_code == 200, answer.text
            assert isinstance(answer.json(), list)
        assert (await client.get("/readyz")).status_code == 200
        # Metrics are per replica, scraped directly: not offered to the world.
        assert (await client.get("/metrics")).status_code == 404
        # Bodies over the API's limit reach the API, which answers with its JSON error.
        big = await client.post(
            f"/api/tracks/{world.public}/comments",
            content=b"x" * (70 * 1024),
            headers={**world.auth("alice"), "content-type": "application/json"},
        )
        assert big.status_code == 413 and big.json()["status_code"] == 413
    # No sticky sessions: round robin over both.
    wait_until(lambda: len(nginx.upstreams()) >= 6, 5, "nginx's access log")
    assert len(set(nginx.upstreams()[:4])) == 2, nginx.upstreams()


async def test_a_socket_through_nginx_gets_comments_posted_anywhere(
    nginx: Nginx, pair: list[Replica], world: World
) -> None:
    before = len(nginx.upstreams())
    async with open_socket(nginx.ws, world.public, world.tokens["bob"]) as sock:
        await sock.expect("connected")
        posted = [
            await post_comment(pair[0].http, world, "alice", world.public, "posted to replica 1"),
            await post_comment(pair[1].http, world, "alice", world.public, "posted to replica 2"),
            await post_comment(nginx.http, world, "alice", world.public, "posted through nginx"),
        ]
        events = await sock.events(3)  # each comment: one new_comment
        got = [e["comment"]["id"] for e in events if e["type"] == "new_comment"]
        assert got == [comment["id"] for comment in posted]
        seqs = [e["seq"] for e in events]
        assert seqs == list(range(seqs[0], seqs[0] + 3))
    # The socket's request is logged when it ends: which replica held it? The comment posted
    # directly to the other one came all the same (through that one's LISTEN connection).
    wait_until(lambda: len(nginx.upstreams()) > before, 5, "the socket's access log line")
    socket_line = next(
        line for line in nginx.access_log.read_text().splitlines()[before:] if "/api/ws/track/" in line
    )
    assert " 101 " in socket_line, socket_line
    assert "token" not in nginx.access_log.read_text(), "a socket's token reached nginx's access log"
    held_by = int(socket_line.split(" ", 1)[0].rsplit(":", 1)[1])
    assert held_by in {replica.port for replica in pair}


async def test_a_refused_socket_through_nginx_still_says_why(nginx: Nginx, world: World) -> None:
    async with open_socket(nginx.ws, world.public, "not-a-token") as sock:
        code, reason = await sock.closed()
    assert code == 1008 and reason == "invalid token"


def test_nginx_stops_cleanly(pair: list[Replica]) -> None:
    # An nginx of its own: the module's serves the other tests, in whatever order they run.
    proxy = Nginx([replica.port for replica in pair])
    try:
        proxy.start()
        assert proxy.stop() == 0, proxy.log()
        assert not port_open(proxy.port)
        assert "[emerg]" not in proxy.log() and "[alert]" not in proxy.log(), proxy.log()
    finally:
        proxy.cleanup()


class PgBouncer:
    """Debian's PgBouncer in the foreground: transaction pooling, two server sessions per
    database handed out in turn (so that a client's next transaction often gets the other one),
    its stock settings otherwise (in particular no `ignore_startup_parameters`)."""

    def __init__(self, server_url: str) -> None:
        target = conninfo_to_dict(server_url)
        self.server_port = str(target["port"])
        self.port = free_port()
        self.prefix = Path(tempfile.mkdtemp(prefix="tracktalk-pgbouncer-"))
        self.prefix.chmod(0o777)  # it runs as nobody when we are root, and logs here
        (self.prefix / "users.txt").write_text(f'"{target["user"]}" ""\n')
        (self.prefix / "pgbouncer.ini").write_text(
            f"""
            [databases]
            * = host={target["host"]} port={self.server_port}
            [pgbouncer]
            listen_addr = 127.0.0.1
            listen_port = {self.port}
            unix_socket_dir =
            auth_type = trust
            auth_file = {self.prefix}/users.txt
            pool_mode = transaction
            default_pool_size = 2
            server_round_robin = 1
            logfile = {self.prefix}/pgbouncer.log
            """.replace("\n            ", "\n")
        )
        self.process: subprocess.Popen[bytes] | None = None

    def url_for(self, direct_url: str) -> str:
        """`direct_url` (a database on the server), through PgBouncer."""
        return direct_url.replace(f":{self.server_port}/", f":{self.port}/", 1)

    def log(self) -> str:
        path = self.prefix / "pgbouncer.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def start(self) -> PgBouncer:
        user = ["-u", "nobody"] if os.geteuid() == 0 else []  # it refuses to run as root
        self.process = launch(
            [debian_binary("pgbouncer"), *user, str(self.prefix / "pgbouncer.ini")],
            self.port,
            self.log,
            self.prefix,
        )
        return self

    def cleanup(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(15)
        shutil.rmtree(self.prefix, ignore_errors=True)
        release(self.process)


@pytest.fixture
def pgbouncer(pg: EmbeddedPostgres) -> Iterator[PgBouncer]:
    bouncer = PgBouncer(pg.url)
    try:
        yield bouncer.start()
    finally:
        bouncer.cleanup()


async def test_replicas_whose_requests_go_through_pgbouncer_in_transaction_mode(
    pgbouncer: PgBouncer, new_database: Callable[[], str], log_dir: Path
) -> None:
    direct = new_database()
    world = seed(direct)
    pooled = pgbouncer.url_for(direct)
    # As docs/dba.md says: DATABASE_URL through PgBouncer, the LISTEN connection direct. One
    # connection in each replica's pool, so that its statements pass psycopg's prepare threshold.
    with replicas(pooled, log_dir, 2, TRACKTALK_LISTEN_URL=direct, TRACKTALK_POOL_MAX="1") as (a, b):
        async with (
            open_socket(b.ws, world.public, world.tokens["bob"]) as watcher,
            httpx.AsyncClient(timeout=10) as client,
        ):
            await watcher.expect("connected")
            # More of each statement than psycopg's prepare threshold (5) on one client
            # connection, over two server sessions shared by both replicas.
            written = []
            for n in range(8):
                comment = await post_comment(a.http, world, "alice", world.public, f"through pgbouncer {n}")
                written.append(comment["id"])
                for replica in (a, b):
                    answer = await client.get(f"{replica.http}/api/tracks/{world.public}/comments")
                    assert answer.status_code == 200, answer.text
            # Another service's write through PgBouncer goes live all the same.
            written.append(await insert_comment(pooled, world.public, world.users["carol"], "by SQL, pooled"))
            arrived = [(await watcher.expect("new_comment"))["comment"]["id"] for _ in written]
            assert arrived == written
        for replica in (a, b):
            assert replica.log_path is not None
            log = replica.log_path.read_text()
            assert " 500 " not in log and "does not exist" not in log, log
            # The statement timeout is left to the role then: the replica says it has none.
            assert "ALTER ROLE tracktalk SET statement_timeout" in log, log


def as_role(url: str, role: str) -> str:
    prefix = "postgresql://tracktalk@"
    assert url.startswith(prefix), url
    return url.replace(prefix, f"postgresql://{role}@", 1)


def run_sql_file(url: str, path: Path) -> None:
    """What `psql --single-transaction -f path` does."""
    with psycopg.connect(url) as conn:
        conn.execute(path.read_text().encode())


@pytest.fixture
def fresh_database(pg: EmbeddedPostgres) -> Iterator[str]:
    """A database with nothing in it (not the suite's migrated template); dropped at the end."""
    name = f"t_roles_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield pg.url_for(name)
    finally:
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            for role in ("other_service", "tracktalk_app", "tracktalk_writer", "tracktalk_owner"):
                with contextlib.suppress(psycopg.Error):
                    conn.execute(f"DROP ROLE IF EXISTS {role}")


async def test_the_service_runs_as_the_app_role_which_cannot_change_the_schema(
    fresh_database: str, log_dir: Path
) -> None:
    admin = fresh_database
    owner, app = as_role(admin, "tracktalk_owner"), as_role(admin, "tracktalk_app")
    run_sql_file(admin, ROLES_SQL)  # the roles, before there is anything to grant on
    assert migrate(owner) >= 1
    run_sql_file(admin, ROLES_SQL)  # the grants on what the owner made
    run_sql_file(admin, ROLES_SQL)  # and again: idempotent
    world = seed(owner)

    with psycopg.connect(admin, autocommit=True) as conn:
        owners = conn.execute(
            """SELECT DISTINCT pg_get_userbyid(c.relowner) FROM pg_class c
               WHERE c.relnamespace IN ('public'::regnamespace, 'tracktalk'::regnamespace)"""
        ).fetchall()
        assert owners == [("tracktalk_owner",)]
        # Every table and view (including any added to schema.sql later) is in sql/roles.sql.
        forgotten = conn.execute(
            """SELECT c.oid::regclass::text FROM pg_class c
               WHERE c.relnamespace IN ('public'::regnamespace, 'tracktalk'::regnamespace)
                 AND c.relkind IN ('r', 'p', 'v')
                 AND NOT has_table_privilege('tracktalk_app', c.oid, 'SELECT')"""
        ).fetchall()
        assert forgotten == [], f"add these to sql/roles.sql: {forgotten}"

    with replicas(app, log_dir, 2) as (a, b):
        async with (
            open_socket(b.ws, world.public, world.tokens["bob"]) as watcher,
            httpx.AsyncClient(timeout=10) as client,
        ):
            await watcher.expect("connected")
            comment = await post_comment(a.http, world, "alice", world.public, "hello @bob, as the app role")
            message = await watcher.expect("new_comment", ignore=("mention", "notification"))
            assert message["comment"]["id"] == comment["id"]
            cid, bob, alice = comment["id"], world.auth("bob"), world.auth("alice")
            for method, url, headers, status in [
                ("POST", f"{a.http}/api/comments/{cid}/like", bob, 200),
                ("DELETE", f"{b.http}/api/comments/{cid}/like", bob, 200),
                ("PUT", f"{a.http}/api/comments/{cid}", alice, 200),
                ("POST", f"{b.http}/api/tracks/{world.public}/like", bob, 200),
                ("POST", f"{a.http}/api/tracks/{world.public}/share", bob, 200),
                ("GET", f"{b.http}/api/notifications", bob, 200),
                ("POST", f"{a.http}/api/notifications/read", bob, 200),
                ("GET", f"{a.http}/api/tracks/{world.public}/metrics", bob, 200),
                ("DELETE", f"{b.http}/api/comments/{cid}", alice, 204),
            ]:
                body = {"content": "edited @bob"} if method == "PUT" else None
                answer = await client.request(method, url, headers=headers, json=body)
                assert answer.status_code == status, (method, url, answer.text)
            assert (await client.get(f"{a.http}/readyz")).status_code == 200
        for replica in (a, b):
            assert "permission denied" not in replica.log(), replica.log()

    with psycopg.connect(app, autocommit=True) as conn:
        # What the replicas do on a schedule, and a DBA's recount, work as the app role ...
        conn.execute("SELECT tracktalk.prune_events()")
        conn.execute("SELECT tracktalk.recount(%s)", (world.public,))
        # ... and nothing that changes the schema does.
        for statement in [
            "CREATE TABLE mine (id int)",
            "CREATE TABLE tracktalk.mine (id int)",
            "DROP TABLE comments",
            "ALTER TABLE comments DISABLE TRIGGER USER",
            "TRUNCATE tracktalk.events",
            "CREATE OR REPLACE FUNCTION tracktalk.max_payload() RETURNS integer LANGUAGE sql AS 'SELECT 1'",
            "UPDATE tracktalk.settings SET notify_team = false",
            "INSERT INTO tracktalk.events (topic, seq, message, size) VALUES ('x', 1, '{}', 2)",
            # publish() runs with its caller's rights: the app role cannot number or log an event
            "SELECT tracktalk.publish('track:t-public', ARRAY['{}'::jsonb], true)",
            "SELECT tracktalk.topic_kind('mine')",
        ]:
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute(statement)

    # Another service that writes with SQL, granted tracktalk_writer: its comment goes live, and
    # it can reach nothing of tracktalk's (the key that signs payloads, the log, the functions).
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("CREATE ROLE other_service LOGIN IN ROLE tracktalk_writer")
    other = as_role(admin, "other_service")
    with replicas(app, log_dir, 1) as (replica,):
        async with open_socket(replica.ws, world.public, world.tokens["bob"]) as watcher:
            await watcher.expect("connected")
            with psycopg.connect(other, autocommit=True) as conn:
                cid = conn.execute(
                    "INSERT INTO comments (track_id, user_id, content) VALUES (%s, %s, 'from another service')"
                    " RETURNING id",
                    (world.public, world.users["dave"]),
                ).fetchone()
            message = await watcher.expect("new_comment", ignore=("mention", "notification"))
            assert cid is not None and message["comment"]["id"] == cid[0]
    with psycopg.connect(other, autocommit=True) as conn:
        for statement in [
            "SELECT key FROM tracktalk.channel_key",
            "SELECT * FROM tracktalk.events",
            "INSERT INTO tracktalk.events (topic, seq, message, size) VALUES ('x', 1, '{}', 2)",
            "SELECT tracktalk.sign('forged')",
            "SELECT tracktalk.publish('t-public', ARRAY['{}'::jsonb])",
            "UPDATE notifications SET read_at = now()",
        ]:
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute(statement)
