"""Fan-out nodes (issue 22, item 1) with real PostgreSQL servers: a primary (wal_level = logical)
and two nodes, each prepared by `tracktalk fanout-node` as a DBA runs it, and replicas that listen
on the nodes (TRACKTALK_LISTEN_URL, a list) while they write to the primary (DATABASE_URL).

What the node's path must deliver as the primary's did: a psql INSERT on the primary reaches a
socket on a replica of a node (with the primary sending no NOTIFY at all in 'fanout' mode), and so
do a private track's events (read from the node's copy of the log), a notification, typing
between replicas on different nodes, and a revocation. And without loss: a node restarted under a
writer, a node killed while the next one is behind (the replica moves on, never goes back in time
nor resyncs), a switch of notify_mode there and back with replicas on a node and on the primary.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from app.background import background
from app.ops import fanout_node
from tests.support.clusters import Cluster, cluster_root
from tests.support.metrics import parse_metrics
from tests.support.processes import Replica, free_port, replicas, tracktalk
from tests.support.seed import World, new_track, seed
from tests.support.sockets import Socket, TopicSocket, open_socket, open_topics
from tests.support.waiting import async_wait_until
from tests.support.writes import insert_comment, sql

pytestmark = pytest.mark.timeout(300)

HERE_SUBSCRIBED = "SELECT count(*) FROM pg_subscription WHERE subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
"""Subscriptions of the connection's database (pg_subscription is the server's)."""
PRIMARY_SETTINGS = "wal_level = logical\nmax_wal_senders = 10\nmax_replication_slots = 10\n"


@dataclass
class Topology:
    """A primary, two fan-out nodes of it, and the seed world on the primary."""

    primary: Cluster
    a: Cluster
    b: Cluster
    world: World
    root: Path
    bindir: Path

    @property
    def url(self) -> str:
        return self.primary.url()

    def node(self, *nodes: Cluster) -> str:
        """TRACKTALK_LISTEN_URL for these nodes, in this order."""
        return ",".join(node.url() for node in nodes)


@pytest.fixture(scope="module")
def topology() -> Iterator[Topology]:
    with cluster_root("tracktalk-fanout-") as (bindir, root):
        primary = Cluster(bindir, root / "primary", free_port()).initdb(PRIMARY_SETTINGS).start()
        nodes = [Cluster(bindir, root / name, free_port()).initdb().start() for name in ("a", "b")]
        for server in (primary, *nodes):
            with psycopg.connect(server.url("postgres"), autocommit=True) as conn:
                conn.execute("CREATE DATABASE tracktalk")
        done = tracktalk("migrate", database_url=primary.url())
        assert done.returncode == 0, done.stderr
        world = seed(primary.url())
        for node in nodes:
            done = tracktalk("fanout-node", "--primary", primary.url(), "--node", node.url(), database_url="")
            assert done.returncode == 0, done.stdout + done.stderr
            assert "follows the primary" in done.stdout, done.stdout
        yield Topology(primary, nodes[0], nodes[1], world, root, bindir)


@pytest.fixture
async def direct(topology: Topology) -> AsyncIterator[None]:
    """notify_mode 'direct' for the test, and again after it."""
    await set_mode(topology.url, "direct")
    yield
    await set_mode(topology.url, "direct")


async def set_mode(url: str, mode: str) -> None:
    await sql(url, "UPDATE tracktalk.settings SET notify_mode = %s", (mode,))


def psql(topology: Topology, statement: str) -> str:
    """A statement run by Debian's psql on the primary, as a DBA would."""
    done = subprocess.run(
        [
            str(topology.bindir / "psql"),
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-At",
            "-d",
            topology.url,
            "-c",
            statement,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


async def latest(url: str, topic: str) -> int:
    rows = await sql(
        url, "SELECT coalesce(max(last_seq), 0) FROM tracktalk.topic_state WHERE topic = %s", (topic,)
    )
    return int(rows[0][0])


class Writer:
    """Comments by SQL on the primary, one after another, until stopped: the ids it wrote."""

    def __init__(self, url: str, track: str, user: int) -> None:
        self.url, self.track, self.user = url, track, user
        self.ids: list[int] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
            while not self._stop.is_set():
                cur = await conn.execute(
                    "INSERT INTO comments (track_id, user_id, content) VALUES (%s, %s, %s) RETURNING id",
                    (self.track, self.user, f"w{len(self.ids)}"),
                )
                row = await cur.fetchone()
                assert row is not None
                self.ids.append(int(row[0]))
                await asyncio.sleep(0.02)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Writer]:
        self._task = asyncio.create_task(self._run())
        try:
            yield self
        finally:
            self._stop.set()
            await self._task

    async def wrote(self, count: int) -> None:
        """Wait until `count` more comments have committed."""
        goal = len(self.ids) + count
        await async_wait_until(
            lambda: len(self.ids) >= goal or (self._task and self._task.done()), 30, "writes"
        )
        assert self._task is not None and not self._task.done(), self._task.exception()


async def every_event_once(sock: Socket, start: int, last: int, ids: list[int] | None = None) -> None:
    """The socket gets events start+1..last, each once, in order, and no resync."""
    got = await sock.events(last - start, timeout=60)
    assert [m["seq"] for m in got] == list(range(start + 1, last + 1))
    if ids is not None:
        assert [m["comment"]["id"] for m in got] == ids


async def until(sock: Socket, last: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    """What the socket gets up to the message that `last` holds for (each checked on arrival)."""
    got: list[dict[str, Any]] = []
    while not got or not last(got[-1]):
        got.append(await sock.recv())
    return got


def ready(replica: Replica) -> dict[str, object]:
    answer: dict[str, object] = httpx.get(f"{replica.http}/readyz", timeout=5).json()
    return answer


# ---------------------------------------------------------------------------------------------
# The node's path
# ---------------------------------------------------------------------------------------------


async def test_a_psql_insert_on_the_primary_reaches_a_socket_on_a_replica_of_a_node(
    topology: Topology, direct: None, log_dir: Path
) -> None:
    world, url = topology.world, topology.url
    track, private = new_track(url), new_track(url, private=True)
    await set_mode(url, "fanout")
    with (
        replicas(url, log_dir, 1, TRACKTALK_LISTEN_URL=topology.node(topology.a, topology.b)) as (on_a,),
        replicas(url, log_dir, 1, TRACKTALK_LISTEN_URL=topology.node(topology.b, topology.a)) as (on_b,),
    ):
        assert ready(on_a)["node"]["name"].endswith(f":{topology.a.port}/tracktalk")  # type: ignore[index]
        assert ready(on_b)["node"]["name"].endswith(f":{topology.b.port}/tracktalk")  # type: ignore[index]
        async with (
            open_socket(on_a.ws, track, world.tokens["alice"]) as alice,
            open_socket(on_b.ws, track, world.tokens["bob"]) as bob,
            open_socket(on_a.ws, private, world.tokens["carol"]) as carol,
            await psycopg.AsyncConnection.connect(url, autocommit=True) as on_primary,
        ):
            for sock in (alice, bob, carol):
                await sock.expect("connected")
            # Nothing is sent on the primary in 'fanout' mode: a session that LISTENs there hears nothing.
            channel = (await sql(url, "SELECT tracktalk.track_channel(%s)", (track,)))[0][0]
            await on_primary.execute(f'LISTEN "{channel}"')

            psql(
                topology,
                f"INSERT INTO comments (track_id, user_id, content) VALUES ('{track}', {world.users['dave']}, 'by psql')",
            )
            for sock in (alice, bob):
                (event,) = await sock.events(1)
                assert (event["type"], event["seq"], event["comment"]["content"]) == (
                    "new_comment",
                    1,
                    "by psql",
                )

            # A private track's event travels without content: the replica reads it from its node's
            # log. carol made the album: her socket gets the notification of it too (in either order:
            # one comes from the node's log, the other is read from the primary).
            comment = await insert_comment(url, private, world.users["tina"], "for the team")
            got = await until(
                carol, lambda m: m["type"] == "notification" and m["notification"]["comment_id"] == comment
            )
            (secret,) = [m for m in got if m["type"] == "new_comment"]
            assert (secret["seq"], secret["comment"]["content"]) == (1, "for the team")

            # Typing from a replica on node B reaches a socket on a replica of node A (through the
            # primary's outbox).
            await bob.send({"type": "typing", "is_typing": True})
            typing = await alice.expect("user_typing")
            assert (typing["username"], typing["is_typing"]) == ("bob", True)

            heard = [n async for n in on_primary.notifies(timeout=0.5)]
            assert heard == [], heard

            # A revocation (the track made private) closes the sockets of those who may no longer see it.
            await sql(url, "UPDATE tracks SET is_private = true WHERE id = %s", (track,))
            assert (await alice.closed())[0] == 1008
            assert (await bob.closed())[0] == 1008


async def test_a_node_restarted_under_a_writer_resumes_without_loss(
    topology: Topology, direct: None, log_dir: Path
) -> None:
    world, url = topology.world, topology.url
    track = new_track(url)
    await set_mode(url, "fanout")
    with replicas(url, log_dir, 1, TRACKTALK_LISTEN_URL=topology.node(topology.b)) as (replica,):
        async with open_socket(replica.ws, track, world.tokens["alice"]) as sock:
            start = (await sock.expect("connected"))["seq"]
            writer = Writer(url, track, world.users["dave"])
            async with writer.running():
                await writer.wrote(20)
                topology.b.stop("fast")
                await writer.wrote(20)  # the node is down: the primary goes on
                topology.b.start()
                await writer.wrote(20)
            last = await latest(url, f"track:{track}")
            await every_event_once(sock, start, last, writer.ids)
            await asyncio.to_thread(replica.wait_ready, 30)


async def test_a_replica_whose_node_dies_moves_to_the_next_one_which_is_behind_without_loss(
    topology: Topology, direct: None, log_dir: Path
) -> None:
    """Node B is held back (its apply worker waits on a lock) while node A delivers; then A is held
    too, the primary takes 5 more comments, and A dies. The replica moves to B, which is behind
    what its sockets have: it neither resyncs nor goes back, and reads the 5 that follow from the
    primary (B has none of them yet). Once B catches up, its notices of what was sent are dropped."""
    world, url = topology.world, topology.url
    track = new_track(url)
    topic = f"track:{track}"
    await set_mode(url, "fanout")
    try:
        with replicas(
            url,
            log_dir,
            1,
            TRACKTALK_LISTEN_URL=topology.node(topology.a, topology.b),
            TRACKTALK_NODE_LAG_LIMIT="60",
        ) as (replica,):
            async with (
                open_socket(replica.ws, track, world.tokens["alice"]) as sock,
                await psycopg.AsyncConnection.connect(topology.b.url(), autocommit=True) as hold_b,
            ):
                assert (await sock.expect("connected"))["seq"] == 0
                # Reads of B's log go on; its apply worker waits at the first event.
                await hold_b.execute("BEGIN")
                await hold_b.execute("LOCK TABLE tracktalk.events IN SHARE MODE")
                ids = [await insert_comment(url, track, world.users["dave"], f"c{i}") for i in range(20)]
                got = await sock.events(20)  # through node A
                hold_a = await psycopg.AsyncConnection.connect(topology.a.url())
                await hold_a.execute("LOCK TABLE tracktalk.events IN SHARE MODE")  # A delivers no more
                ids += [await insert_comment(url, track, world.users["dave"], f"d{i}") for i in range(5)]
                topology.a.stop("immediate")
                with contextlib.suppress(psycopg.OperationalError):
                    await hold_a.close()
                await async_wait_until(lambda: on_node(replica, topology.b), 30, "the move to node B")
                got += await sock.events(5)
                assert await latest(topology.b.url(), topic) == 0  # they came from the primary's log
                assert [m["seq"] for m in got] == list(range(1, 26))
                assert [m["comment"]["id"] for m in got] == ids
                await hold_b.execute(
                    "ROLLBACK"
                )  # B catches up, and tells again what was sent: dropped by seq
                await async_wait_until(lambda: same_latest(topology.b.url(), url, topic), 30, "B to catch up")
                await insert_comment(url, track, world.users["dave"], "after")
                (after,) = await sock.events(1)
                assert after["seq"] == 26
                assert [m["type"] for m in sock.received].count("new_comment") == 26
                assert [m for m in sock.received if m["type"] == "resync"] == []
    finally:
        topology.a.start()


def on_node(replica: Replica, node: Cluster) -> bool:
    """The replica's listener is on `node`, and it is ready."""
    answer = ready(replica)
    where = answer.get("node")
    return (
        answer["status"] == "ok"
        and isinstance(where, dict)
        and str(where["name"]).endswith(f":{node.port}/tracktalk")
    )


async def same_latest(node: str, primary: str, topic: str) -> bool:
    return await latest(node, topic) == await latest(primary, topic)


async def test_switching_notify_mode_there_and_back_under_a_writer_loses_and_repeats_nothing(
    topology: Topology, direct: None, log_dir: Path
) -> None:
    """A replica on a node and one on the primary, a writer throughout: 'direct', then 'fanout'
    (the primary sends no NOTIFY: the replica on it reads the log every second and says it is not
    ready), then 'direct' again. Every socket gets every event once, in order."""
    world, url = topology.world, topology.url
    track = new_track(url)
    with (
        replicas(url, log_dir, 1, TRACKTALK_LISTEN_URL=topology.node(topology.a)) as (on_node,),
        replicas(url, log_dir, 1) as (on_primary,),
    ):
        async with (
            open_socket(on_node.ws, track, world.tokens["alice"]) as first,
            open_socket(on_primary.ws, track, world.tokens["bob"]) as second,
        ):
            start = [(await sock.expect("connected"))["seq"] for sock in (first, second)]
            got: list[list[dict[str, Any]]] = [[], []]
            writer = Writer(url, track, world.users["dave"])
            async with writer.running():
                await writer.wrote(15)
                await set_mode(url, "fanout")
                await writer.wrote(15)
                # Both sockets get what is written in 'fanout' mode while it lasts: the one on the
                # primary's replica by its reading of the log.
                now = await latest(url, f"track:{track}")
                for i, sock in enumerate((first, second)):
                    got[i] += await sock.events(now - start[i] - len(got[i]))
                await async_wait_until(
                    lambda: ready(on_primary)["status"] == "unavailable", 10, "the primary's replica unready"
                )
                answer = ready(on_primary)
                assert answer["checks"]["notifies"] is False, answer  # type: ignore[index]
                assert "notify_mode is 'fanout'" in str(answer["detail"])
                assert ready(on_node)["status"] == "ok"
                await writer.wrote(15)
                await set_mode(url, "direct")
                await writer.wrote(15)
                await async_wait_until(
                    lambda: ready(on_primary)["status"] == "ok", 10, "the primary's replica ready"
                )
            last = await latest(url, f"track:{track}")
            for i, sock in enumerate((first, second)):
                got[i] += await sock.events(last - start[i] - len(got[i]), timeout=30)
                assert [m["seq"] for m in got[i]] == list(range(start[i] + 1, last + 1))
                assert [m["comment"]["id"] for m in got[i]] == writer.ids


async def test_a_writer_that_read_fanout_and_commits_after_the_switch_back_is_not_missed(
    topology: Topology, direct: None, log_dir: Path
) -> None:
    """A transaction numbers a comment in 'fanout' mode (no NOTIFY), the mode goes back to 'direct',
    the replica on the primary sees it, and only then the transaction commits: unheard, and nothing
    else is written on the track. The replica goes on reading the log until the transactions that
    ran across the switch have ended, so the socket gets it."""
    world, url = topology.world, topology.url
    track = new_track(url)
    with replicas(url, log_dir, 1) as (on_primary,):  # started in 'direct' mode: it is ready then
        async with (
            open_socket(on_primary.ws, track, world.tokens["alice"]) as sock,
            await psycopg.AsyncConnection.connect(url) as late,
        ):
            start = (await sock.expect("connected"))["seq"]
            await set_mode(url, "fanout")
            await async_wait_until(
                lambda: ready(on_primary)["status"] == "unavailable", 10, "the switch to 'fanout' seen"
            )
            await late.execute(
                "INSERT INTO comments (track_id, user_id, content) VALUES (%s, %s, 'late')",
                (track, world.users["dave"]),
            )
            await set_mode(url, "direct")
            await async_wait_until(lambda: ready(on_primary)["status"] == "ok", 10, "the switch back seen")
            await asyncio.sleep(1.5)  # the replica's readings go on meanwhile (this is what is tested)
            await late.commit()
            (event,) = await sock.events(1, timeout=5)
            assert (event["seq"], event["comment"]["content"]) == (start + 1, "late")


async def test_readyz_and_check_say_when_a_node_falls_behind_or_its_subscription_is_down(
    topology: Topology, direct: None, log_dir: Path
) -> None:
    url, a = topology.url, topology.a
    subscription = (await sql(a.url(), "SELECT subscription FROM tracktalk.node_state()"))[0][0]
    listen = topology.node(a, topology.b)
    with replicas(url, log_dir, 1, TRACKTALK_LISTEN_URL=topology.node(a), TRACKTALK_NODE_LAG_LIMIT="2") as (
        replica,
    ):
        healthy = ready(replica)
        assert healthy["status"] == "ok" and healthy["checks"]["node"] is True, healthy  # type: ignore[index]
        done = tracktalk("check", database_url=url, TRACKTALK_LISTEN_URL=listen)
        assert f"ok    fan-out node slot {subscription} is streaming" in done.stdout, done.stdout
        assert f"ok    fan-out node 127.0.0.1:{a.port}/tracktalk follows the primary" in done.stdout, (
            done.stdout
        )

        # Behind: its apply worker waits on a lock (it runs, and receives): the lag grows past 2 s.
        async with await psycopg.AsyncConnection.connect(a.url()) as hold:
            await hold.execute("LOCK TABLE tracktalk.heartbeat IN SHARE MODE")
            await async_wait_until(lambda: ready(replica)["status"] == "unavailable", 15, "not ready")
            behind = ready(replica)
            assert behind["checks"]["node"] is False and behind["node"]["running"] is True, behind  # type: ignore[index]
            assert behind["node"]["lag_seconds"] > 2, behind  # type: ignore[index]
            assert "s behind the primary (limit 2 s)" in str(behind["detail"])
            done = tracktalk("check", database_url=url, TRACKTALK_LISTEN_URL=listen)
            assert f"FIX   fan-out node 127.0.0.1:{a.port}/tracktalk is " in done.stdout, done.stdout
            assert done.returncode == 1
        await async_wait_until(lambda: ready(replica)["status"] == "ok", 15, "ready again")

        # Down: its subscription disabled.
        await sql(a.url(), f"ALTER SUBSCRIPTION {subscription} DISABLE")
        try:
            await async_wait_until(lambda: ready(replica)["status"] == "unavailable", 15, "not ready")
            down = ready(replica)
            assert down["node"]["running"] is False, down  # type: ignore[index]
            assert f"its subscription {subscription} receives nothing from the primary" in str(down["detail"])
            done = tracktalk("check", database_url=url, TRACKTALK_LISTEN_URL=listen)
            assert f"subscription {subscription} is disabled" in done.stdout, done.stdout
            await async_wait_until(lambda: slot_inactive(url, subscription), 15, "the slot idle")
            done = tracktalk("check", database_url=url, TRACKTALK_LISTEN_URL=listen)
            assert f"FIX   fan-out node slot {subscription} is not in use" in done.stdout, done.stdout
        finally:
            await sql(a.url(), f"ALTER SUBSCRIPTION {subscription} ENABLE")
        await async_wait_until(lambda: ready(replica)["status"] == "ok", 30, "ready again")


async def slot_inactive(url: str, slot: str) -> bool:
    rows = await sql(url, "SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,))
    return rows == [(False,)]


def test_fanout_node_runs_again_harmlessly(topology: Topology) -> None:
    done = tracktalk("fanout-node", "--primary", topology.url, "--node", topology.a.url(), database_url="")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "was there" in done.stdout and "made" not in done.stdout, done.stdout
    with psycopg.connect(topology.url) as conn:
        assert conn.execute("SELECT count(*) FROM pg_publication").fetchone() == (2,)
        assert conn.execute("SELECT count(*) FROM pg_replication_slots").fetchone() == (2,)
    with psycopg.connect(topology.a.url()) as conn:
        assert conn.execute("SELECT count(*), bool_and(sending) FROM tracktalk.node_state()").fetchone() == (
            1,
            True,
        )


async def test_check_counts_only_the_nodes_slots_and_never_says_to_drop_anothers(
    topology: Topology, direct: None
) -> None:
    """Another logical slot on the primary's database (a CDC tool's, say) is not a fan-out node:
    `tracktalk check` neither counts it among the nodes that send the NOTIFYs nor, while it is
    idle, tells the DBA to drop it as a node gone for good."""
    url = topology.url
    await sql(url, "SELECT pg_create_logical_replication_slot('cdc_tool', 'pgoutput')")
    try:
        await set_mode(url, "fanout")
        done = tracktalk("check", database_url=url)
        assert "notify_mode is 'fanout': 2 fan-out nodes send the NOTIFYs" in done.stdout, done.stdout
        assert "cdc_tool" not in done.stdout, done.stdout
        refused = tracktalk(
            "fanout-node", "--primary", url, "--node", topology.a.url(), "--name", "cdc_tool", database_url=""
        )
        assert refused.returncode == 1 and "--name 'cdc_tool': start it with tracktalk_" in refused.stderr
    finally:
        await sql(url, "SELECT pg_drop_replication_slot('cdc_tool')")


async def test_two_fanout_node_runs_at_once_both_prepare_their_node(topology: Topology) -> None:
    """docker-compose.yml prepares its two nodes at the same time, against a primary without
    publications yet: both runs find none, and both make it. Held at the moment that shows it
    (the first run's CREATE PUBLICATION waits on a table lock, the second's on the first's
    publication), then let go: both end well, the second taking the publication the first made."""
    primary = Cluster(topology.bindir, topology.root / "twice", free_port()).initdb(PRIMARY_SETTINGS).start()
    nodes = []
    try:
        with psycopg.connect(primary.url("postgres"), autocommit=True) as conn:
            conn.execute("CREATE DATABASE tracktalk")
        assert tracktalk("migrate", database_url=primary.url()).returncode == 0
        for server in (topology.a, topology.b):
            name = f"twice_{uuid.uuid4().hex[:8]}"
            with psycopg.connect(server.url("postgres"), autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE {name}")
            nodes.append(server.url(name))
        async with await psycopg.AsyncConnection.connect(primary.url()) as hold:
            await hold.execute("LOCK TABLE public.users IN EXCLUSIVE MODE")
            runs = [
                asyncio.create_task(
                    asyncio.to_thread(
                        tracktalk, "fanout-node", "--primary", primary.url(), "--node", node, database_url=""
                    )
                )
                for node in nodes
            ]

            async def both_wait() -> bool:
                rows = await sql(
                    primary.url(),
                    "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'CREATE PUBLICATION%%'"
                    " AND wait_event_type = 'Lock'",
                )
                return bool(rows[0][0] == 2)

            await async_wait_until(both_wait, 60, "both runs to wait at CREATE PUBLICATION")
            await hold.rollback()
            done = await asyncio.gather(*runs)
        for run in done:
            assert run.returncode == 0, run.stdout + run.stderr
            assert "follows the primary" in run.stdout, run.stdout
    finally:
        for node in nodes:
            with psycopg.connect(node, autocommit=True) as conn:
                for (name,) in conn.execute(
                    "SELECT subname FROM pg_subscription WHERE subdbid ="
                    " (SELECT oid FROM pg_database WHERE datname = current_database())"
                ).fetchall():
                    conn.execute(f"DROP SUBSCRIPTION {name}")
        primary.stop("immediate")


def test_fanout_node_refuses_what_would_not_work_and_says_what_to_change(topology: Topology) -> None:
    def refused(primary: str, node: str) -> str:
        done = tracktalk("fanout-node", "--primary", primary, "--node", node, database_url="")
        assert done.returncode == 1, done.stdout + done.stderr
        return done.stderr

    def fresh(name: str) -> str:
        with psycopg.connect(topology.b.url("postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return topology.b.url(name)

    node = fresh("fresh")
    with psycopg.connect(topology.url, autocommit=True) as conn:
        conn.execute("CREATE ROLE plain LOGIN")
    assert "role plain may not stream changes from the primary" in refused(
        topology.primary.url(user="plain"), node
    )
    assert "ALTER ROLE plain REPLICATION" in refused(topology.primary.url(user="plain"), node)
    assert "--node and --primary lead to the same database" in refused(topology.url, topology.url)
    # Another database of the primary's own server: a subscription to its own server would hang.
    with psycopg.connect(topology.primary.url("postgres"), autocommit=True) as conn:
        conn.execute("CREATE DATABASE samehere")
    error = refused(topology.url, topology.primary.url("samehere"))
    assert "--node leads to a database of the primary's own server" in error, error
    with psycopg.connect(topology.primary.url("samehere")) as conn:
        assert conn.execute("SELECT to_regnamespace('tracktalk')").fetchone() == (None,)  # nothing made there
    with psycopg.connect(topology.b.url("postgres"), autocommit=True) as conn:
        conn.execute("CREATE ROLE nodeuser LOGIN")
        conn.execute("GRANT CONNECT ON DATABASE fresh TO nodeuser")
    error = refused(topology.url, topology.b.url("fresh", user="nodeuser"))
    assert "role nodeuser on the node may not make a subscription" in error and "superuser" in error, error
    # An application's database (or any with rows in what a node copies) is never overwritten.
    taken = fresh("taken")
    assert tracktalk("migrate", database_url=taken).returncode == 0
    with psycopg.connect(taken, autocommit=True) as conn:
        conn.execute("INSERT INTO users (username) VALUES ('someone')")
    assert "already holds rows in public.users" in refused(topology.url, taken)
    with psycopg.connect(taken) as conn:
        assert conn.execute(HERE_SUBSCRIBED).fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM users").fetchone() == (1,)

    # A primary without wal_level = logical, then one without a free replication slot.
    other = Cluster(topology.bindir, topology.root / "other", free_port()).initdb().start()
    try:
        with psycopg.connect(other.url("postgres"), autocommit=True) as conn:
            conn.execute("CREATE DATABASE tracktalk")
        assert tracktalk("migrate", database_url=other.url()).returncode == 0
        error = refused(other.url(), node)
        assert (
            "the primary's wal_level is 'replica'" in error
            and "ALTER SYSTEM SET wal_level = logical" in error
        )
        other.stop()
        other.configure("wal_level = logical\nmax_replication_slots = 1").start()
        with psycopg.connect(other.url(), autocommit=True) as conn:
            conn.execute("SELECT pg_create_logical_replication_slot('someone_elses', 'pgoutput')")
        error = refused(other.url(), node)
        assert "max_replication_slots = 1, and 1 are taken" in error, error
        # Node A follows the topology's primary: pointed at this other one, which has no slot of
        # its subscription, it is refused, and keeps following its own.
        with psycopg.connect(other.url(), autocommit=True) as conn:
            conn.execute("SELECT pg_drop_replication_slot('someone_elses')")
        (before,) = _subscription_conninfo(topology.a.url())
        error = refused(other.url(), topology.a.url())
        assert "has no slot on this primary" in error and "rebuild it" in error, error
        assert _subscription_conninfo(topology.a.url()) == (before,)
        with psycopg.connect(other.url()) as conn:
            assert conn.execute("SELECT count(*) FROM pg_publication").fetchone() == (0,)
    finally:
        other.stop("immediate")
    with psycopg.connect(node) as conn:
        assert conn.execute(HERE_SUBSCRIBED).fetchone() == (0,)


def _subscription_conninfo(node: str) -> tuple[str, ...]:
    with psycopg.connect(node) as conn:
        return tuple(row[0] for row in conn.execute("SELECT subconninfo FROM pg_subscription"))


async def test_a_replica_leaves_a_node_whose_subscription_receives_nothing_for_the_next(
    topology: Topology, direct: None, log_dir: Path
) -> None:
    """Node A's subscription is disabled (as after a failover of the primary on PostgreSQL 15, when
    its slot is gone): a replica listening on A, B moves to B within seconds and its socket misses
    nothing; A is refused while it stays so."""
    world, url, a = topology.world, topology.url, topology.a
    track = new_track(url)
    await set_mode(url, "fanout")
    subscription = (await sql(a.url(), "SELECT subscription FROM tracktalk.node_state()"))[0][0]
    try:
        with replicas(url, log_dir, 1, TRACKTALK_LISTEN_URL=topology.node(a, topology.b)) as (replica,):
            assert on_node(replica, a)
            async with open_socket(replica.ws, track, world.tokens["alice"]) as sock:
                start = (await sock.expect("connected"))["seq"]
                await insert_comment(url, track, world.users["dave"], "before")
                await sql(a.url(), f"ALTER SUBSCRIPTION {subscription} DISABLE")
                for i in range(5):
                    await insert_comment(url, track, world.users["dave"], f"meanwhile {i}")
                await async_wait_until(lambda: on_node(replica, topology.b), 30, "the move to node B")
                await insert_comment(url, track, world.users["dave"], "after")
                await every_event_once(sock, start, await latest(url, f"track:{track}"))
                assert replica.logged("leaving 127.0.0.1:") and replica.logged(
                    "receives nothing from the primary"
                )
    finally:
        await sql(a.url(), f"ALTER SUBSCRIPTION {subscription} ENABLE")


async def test_a_node_whose_triggers_do_not_send_is_left_and_refused_for_the_next(
    topology: Topology, direct: None, log_dir: Path
) -> None:
    """Node A receives the primary's changes but its trigger on the log is off (`tracktalk
    fanout-node` stopped between the copy and turning the triggers on, or a DBA's DISABLE
    TRIGGER): it sends no event's NOTIFY. A replica on it says so in /readyz and moves to B within
    seconds, its socket missing nothing; a replica started meanwhile does not take A."""
    world, url, a = topology.world, topology.url, topology.a
    track = new_track(url)
    await set_mode(url, "fanout")
    try:
        with replicas(url, log_dir, 1, TRACKTALK_LISTEN_URL=topology.node(a, topology.b)) as (replica,):
            assert on_node(replica, a)
            async with open_socket(replica.ws, track, world.tokens["alice"]) as sock:
                start = (await sock.expect("connected"))["seq"]
                await sql(a.url(), "ALTER TABLE tracktalk.events DISABLE TRIGGER events_fan_out")
                await async_wait_until(
                    lambda: "its trigger on the event log is off" in str(ready(replica)["detail"]),
                    10,
                    "/readyz to say so",
                )
                for i in range(3):
                    await insert_comment(url, track, world.users["dave"], f"meanwhile {i}")
                await async_wait_until(lambda: on_node(replica, topology.b), 30, "the move to node B")
                await insert_comment(url, track, world.users["dave"], "after")
                await every_event_once(sock, start, await latest(url, f"track:{track}"))
            with replicas(url, log_dir, 1, TRACKTALK_LISTEN_URL=topology.node(a, topology.b)) as (late,):
                assert on_node(late, topology.b)
    finally:
        await sql(a.url(), "SELECT tracktalk.fan_out_triggers()")


async def test_a_listen_url_that_is_neither_a_node_nor_the_primary_is_refused_for_the_next(
    topology: Topology, direct: None, log_dir: Path
) -> None:
    """TRACKTALK_LISTEN_URL lists first a database that has tracktalk's schema but is not the
    primary and follows nothing (a typo; a node whose subscription was dropped to rebuild it):
    nothing is ever sent there. In 'direct' mode the replica took it for the primary and said it
    was ready; it is refused now, and the next URL, node A, is used."""
    world, url, a = topology.world, topology.url, topology.a
    stray = f"stray_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(topology.b.url("postgres"), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {stray}")
    assert tracktalk("migrate", database_url=topology.b.url(stray)).returncode == 0
    track = new_track(url)
    with replicas(url, log_dir, 1, TRACKTALK_LISTEN_URL=f"{topology.b.url(stray)},{a.url()}") as (replica,):
        assert on_node(replica, a), ready(replica)
        assert replica.logged("is neither a fan-out node nor the primary"), replica.log()
        async with open_socket(replica.ws, track, world.tokens["alice"]) as sock:
            start = (await sock.expect("connected"))["seq"]
            await insert_comment(url, track, world.users["dave"], "heard")
            await every_event_once(sock, start, start + 1)


async def test_a_new_channel_key_reaches_the_replicas_through_the_nodes(
    topology: Topology, direct: None, log_dir: Path
) -> None:
    """rotate_channel_key() on the primary in 'fanout' mode: each node says so on the old key's
    `rekey` channel when its copy of the key changes; its replicas listen under the new names and
    lose nothing."""
    world, url = topology.world, topology.url
    track = new_track(url)
    await set_mode(url, "fanout")
    with replicas(url, log_dir, 1, TRACKTALK_LISTEN_URL=topology.node(topology.b)) as (replica,):
        async with open_socket(replica.ws, track, world.tokens["alice"]) as sock:
            start = (await sock.expect("connected"))["seq"]
            await insert_comment(url, track, world.users["dave"], "old key")
            await sock.events(1)
            await sql(url, "SELECT tracktalk.rotate_channel_key()")
            await async_wait_until(lambda: replica.logged("the channel key changed"), 10, "the rekey")
            for i in range(3):
                await insert_comment(url, track, world.users["dave"], f"new key {i}")
            (last,) = await sql(
                url, "SELECT last_seq FROM tracktalk.topic_state WHERE topic = %s", (f"track:{track}",)
            )
            got = await sock.events(3, timeout=5)  # live, not within the minute of the key's reading
            assert [m["seq"] for m in got] == list(range(start + 2, last[0] + 1))


async def test_a_forum_post_and_a_live_tables_row_inserted_on_the_primary_reach_api_ws_through_a_node(
    topology: Topology, direct: None, log_dir: Path
) -> None:
    """The forum's and make_live's events go through the same publish() and log as a track's: in
    'fanout' mode a psql INSERT into forum_posts (a public category's thread, and a team-only one,
    whose post travels without content and is read from the node's log) and into a table made live
    reach /api/ws sockets on a node's replica, with no NOTIFY on the primary."""
    world, url = topology.world, topology.url
    slug, secret = f"c-{uuid.uuid4().hex[:10]}", f"c-{uuid.uuid4().hex[:10]}"
    await sql(
        url,
        "INSERT INTO forum_categories (slug, title, is_private) VALUES (%s, 'Open', false), (%s, 'Team', true)",
        (slug, secret),
    )
    thread, hidden = [
        (
            await sql(
                url,
                "INSERT INTO forum_threads (category_id, user_id, title)"
                " SELECT id, %s, 'by psql' FROM forum_categories WHERE slug = %s RETURNING id",
                (world.users["tina"], s),
            )
        )[0][0]
        for s in (slug, secret)
    ]
    table = f"req_{uuid.uuid4().hex[:10]}"
    await sql(
        url, f"CREATE TABLE public.{table} (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, title text)"
    )
    await sql(url, "SELECT tracktalk.make_live(%s, topic => %s)", (f"public.{table}", table))
    await set_mode(url, "fanout")

    async def copied() -> bool:
        rows = await sql(
            topology.a.url(), "SELECT count(*) FROM forum_threads WHERE id IN (%s, %s)", (thread, hidden)
        )
        return bool(rows[0][0] == 2)

    await async_wait_until(copied, 30, "node A to have the threads")
    with replicas(url, log_dir, 1, TRACKTALK_LISTEN_URL=topology.node(topology.a)) as (replica,):
        assert on_node(replica, topology.a)
        async with (
            open_topics(replica.ws, world.tokens["alice"]) as alice,
            open_topics(replica.ws, world.tokens["tina"]) as tina,
            await psycopg.AsyncConnection.connect(url, autocommit=True) as on_primary,
        ):
            start = {}
            for sock, topics in ((alice, [f"thread:{thread}", table]), (tina, [f"thread:{hidden}"])):
                for topic in topics:
                    start[topic] = (await sock.subscribe(topic))["seq"]
            for topic in (f"thread:{thread}", f"thread:{hidden}"):
                channel = (await sql(url, "SELECT tracktalk.topic_channel(%s)", (topic,)))[0][0]
                await on_primary.execute(f'LISTEN "{channel}"')

            for tid, content in ((thread, "in the open"), (hidden, "for the team")):
                psql(
                    topology,
                    f"INSERT INTO forum_posts (thread_id, user_id, content) VALUES ({tid}, {world.users['tina']}, '{content}')",
                )
            psql(topology, f"INSERT INTO {table} (title) VALUES ('live')")

            for sock, topic, check in (
                (alice, f"thread:{thread}", lambda m: m["post"]["content"] == "in the open"),
                (tina, f"thread:{hidden}", lambda m: m["post"]["content"] == "for the team"),
                (alice, table, lambda m: m["row"]["title"] == "live"),
            ):
                await sock.until(lambda s=sock, t=topic: fresh(s, t, start[t]) != [], f"the event of {topic}")
                (event,) = fresh(sock, topic, start[topic])
                assert event["seq"] == start[topic] + 1 and check(event), event
            assert [m["type"] for m in fresh(alice, f"thread:{thread}", start[f"thread:{thread}"])] == [
                "new_post"
            ]
            heard = [n async for n in on_primary.notifies(timeout=0.5)]
            assert heard == [], heard


def fresh(sock: TopicSocket, topic: str, start: int) -> list[dict[str, Any]]:
    """The topic's durable events past `start` that the socket got."""
    return [
        m
        for m in sock.by_topic[topic]
        if "seq" in m and m["type"] not in ("subscribed", "resync") and m["seq"] > start
    ]


async def test_a_replica_fallen_back_to_the_primary_returns_to_its_node_when_it_is_back(
    topology: Topology, direct: None, log_dir: Path
) -> None:
    """TRACKTALK_LISTEN_URL lists node A, then the primary. A stops: the replica falls back to the
    primary, which sends nothing in 'fanout' mode (the replica reads the log and says it is not
    ready); A comes back: within a few readings the replica is on A again, and its socket has had
    every event once throughout."""
    world, url, a = topology.world, topology.url, topology.a
    track = new_track(url)
    await set_mode(url, "fanout")
    try:
        with replicas(url, log_dir, 1, TRACKTALK_LISTEN_URL=f"{a.url()},{url}") as (replica,):
            assert on_node(replica, a)
            async with open_socket(replica.ws, track, world.tokens["alice"]) as sock:
                start = (await sock.expect("connected"))["seq"]
                writer = Writer(url, track, world.users["dave"])
                async with writer.running():
                    await writer.wrote(10)
                    a.stop("fast")
                    await async_wait_until(
                        lambda: ready(replica)["checks"]["notifies"] is False,  # type: ignore[index]
                        30,
                        "the fall back to the primary",
                    )
                    await writer.wrote(10)
                    a.start()
                    await async_wait_until(lambda: on_node(replica, a), 40, "the return to node A")
                    await writer.wrote(10)
                await every_event_once(sock, start, await latest(url, f"track:{track}"), writer.ids)
                assert replica.logged("trying the nodes again"), replica.log()
    finally:
        if not (a.data / "postmaster.pid").exists():
            a.start()


async def test_a_live_table_undone_ends_its_subscriptions_on_a_nodes_replica(
    topology: Topology, direct: None, log_dir: Path
) -> None:
    """make_live(…, enabled => false) says so on the 'rekey' channel (tracktalk.revoke_kind): in
    'fanout' mode the primary sends nothing, and the nodes must say it, through the outbox, for a
    subscription on a node's replica to end (here to a topic that never had an event)."""
    world, url = topology.world, topology.url
    table = f"req_{uuid.uuid4().hex[:10]}"
    await sql(
        url,
        f"CREATE TABLE public.{table} (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, album_id bigint)",
    )
    await sql(url, "SELECT tracktalk.make_live(%s, topic_column => 'album_id')", (f"public.{table}",))
    await set_mode(url, "fanout")
    with replicas(url, log_dir, 1, TRACKTALK_LISTEN_URL=topology.node(topology.b)) as (replica,):
        assert on_node(replica, topology.b)
        async with open_topics(replica.ws, world.tokens["alice"]) as sock:
            await sock.subscribe(f"{table}:5")
            await sql(url, "SELECT tracktalk.make_live(%s, enabled => false)", (f"public.{table}",))
            await sock.until(lambda: bool(sock.answers(f"{table}:5", "unsubscribed")), "the end", timeout=5)
            assert sock.answers(f"{table}:5", "unsubscribed")[0]["reason"] == "not found"


async def test_a_comment_hidden_by_psql_reaches_each_audience_in_its_form_through_a_node(
    topology: Topology, direct: None, log_dir: Path
) -> None:
    """Moderation's per-audience events travel the node's path as the primary's: in 'fanout' mode a
    comment hidden by psql on the primary reaches the track's moderators (carol, its album's
    creator; tina, the team) and its author (alice) as `comment_moderated`, and everyone else (bob)
    as `comment_hidden`, with the same seq, on a replica that listens on a node."""
    world, url = topology.world, topology.url
    track = new_track(url)
    comment = await insert_comment(url, track, world.users["alice"], "a hot take")
    await set_mode(url, "fanout")
    with replicas(url, log_dir, 1, TRACKTALK_LISTEN_URL=topology.node(topology.a)) as (replica,):
        assert on_node(replica, topology.a)
        async with contextlib.AsyncExitStack() as stack:
            socks = {}
            for name in ("carol", "tina", "alice", "bob"):
                socks[name] = await stack.enter_async_context(
                    open_socket(replica.ws, track, world.tokens[name])
                )
                await socks[name].expect("connected")
            psql(
                topology,
                f"UPDATE comments SET hidden_at = now(), hidden_by = {world.users['carol']} WHERE id = {comment}",
            )
            got = {name: (await sock.events(1, timeout=30))[0] for name, sock in socks.items()}
    assert {name: (e["type"], e["seq"]) for name, e in got.items()} == {
        "carol": ("comment_moderated", 2),
        "tina": ("comment_moderated", 2),
        "alice": ("comment_moderated", 2),
        "bob": ("comment_hidden", 2),
    }
    assert got["alice"]["comment"]["hidden"] is True and "comment" not in got["bob"]


@contextlib.contextmanager
def another_node(topology: Topology, primary: str) -> Iterator[str]:
    """A fan-out node of `primary` in a fresh database of node B's server, prepared by `tracktalk
    fanout-node`; its subscription (and so its slot on `primary`) dropped afterwards."""
    name = f"other_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(topology.b.url("postgres"), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    node = topology.b.url(name)
    try:
        done = tracktalk("fanout-node", "--primary", primary, "--node", node, database_url="")
        assert done.returncode == 0, done.stdout + done.stderr
        yield node
    finally:
        with psycopg.connect(node, autocommit=True) as conn:
            for (subscription,) in conn.execute(
                "SELECT subname FROM pg_subscription WHERE subdbid ="
                " (SELECT oid FROM pg_database WHERE datname = current_database())"
            ).fetchall():
                conn.execute(f"DROP SUBSCRIPTION {subscription}")


async def test_outbox_rows_copied_by_a_nodes_initial_sync_are_not_kept_there(topology: Topology) -> None:
    """The primary keeps its outbox's rows for 5 minutes; a node prepared meanwhile copies them
    with the table, before its trigger on the outbox is on, so they were kept there for good (its
    outbox is never pruned: no replica prunes a node). They are dropped when the node's triggers
    are turned on; what comes after is sent and not kept, as before."""
    url = topology.url
    await sql(url, "SELECT tracktalk.relay('somewhere', 'e:before the node')")
    assert (await sql(url, "SELECT count(*) FROM tracktalk.outbox"))[0][0] >= 1
    with another_node(topology, url) as node:
        assert await sql(node, "SELECT count(*) FROM tracktalk.outbox") == [(0,)]
        async with await psycopg.AsyncConnection.connect(node, autocommit=True) as listening:
            await listening.execute("LISTEN somewhere")
            await sql(url, "SELECT tracktalk.relay('somewhere', 'e:after')")
            got = [n.payload async for n in listening.notifies(timeout=10, stop_after=1)]
            assert got == ["e:after"]
        assert await sql(node, "SELECT count(*) FROM tracktalk.outbox") == [(0,)]


async def keep_beating(url: str) -> None:
    """Keep the heartbeat of the primary at `url` fresh, as its own replicas on its nodes keep it
    (run with app.background.background)."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        while True:
            await conn.execute("SELECT tracktalk.beat()")
            await asyncio.sleep(0.2)


async def test_a_node_that_follows_another_live_primary_is_not_taken_for_this_ones(
    topology: Topology, direct: None, log_dir: Path
) -> None:
    """A node that follows another primary, which is live (its heartbeat fresh): it runs, sends and
    is not behind, and a replica listening on it looked healthy while every write of its own
    primary went by unheard. The primary's database has no slot of the node's subscription: the
    replica does not take the node (it takes the next URL), nor does `tracktalk fanout-node` with
    another database of the node's primary's server as --primary. With an idle slot of that name there
    (left from before the node was rebuilt elsewhere), it takes it but /readyz says which, by name,
    and so does `tracktalk check`."""
    url = topology.url
    other = (
        Cluster(topology.bindir, topology.root / "elsewhere", free_port()).initdb(PRIMARY_SETTINGS).start()
    )
    try:
        with psycopg.connect(other.url("postgres"), autocommit=True) as conn:
            conn.execute("CREATE DATABASE tracktalk")
        assert tracktalk("migrate", database_url=other.url()).returncode == 0
        async with background(keep_beating(other.url())):
            with another_node(topology, other.url()) as node:
                subscription = (await sql(node, "SELECT subscription FROM tracktalk.node_state()"))[0][0]
                name = f"127.0.0.1:{topology.b.port}/{node.rsplit('/', 1)[1]}"
                # `tracktalk fanout-node` with another database of the server it follows as --primary:
                # refused (the slot is in the other database), and the node left as it was.
                with psycopg.connect(other.url("postgres"), autocommit=True) as conn:
                    conn.execute("CREATE DATABASE second")
                assert tracktalk("migrate", database_url=other.url("second")).returncode == 0
                here = HERE_SUBSCRIBED.replace("count(*)", "subconninfo")
                before = await sql(node, here)
                done = tracktalk(
                    "fanout-node", "--primary", other.url("second"), "--node", node, database_url=""
                )
                assert done.returncode == 1 and "has no slot on this primary's database" in done.stderr, (
                    done.stdout + done.stderr
                )
                assert await sql(node, here) == before
                with replicas(url, log_dir, 1, TRACKTALK_LISTEN_URL=f"{node},{topology.a.url()}") as (
                    replica,
                ):
                    assert on_node(replica, topology.a), ready(replica)
                    assert replica.logged(f"fan-out node {name} follows another primary"), replica.log()

                await sql(url, "SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (subscription,))
                try:
                    with replicas(url, log_dir, 1, ready=False, TRACKTALK_LISTEN_URL=node) as (replica,):
                        await async_wait_until(
                            lambda: ready(replica).get("node") is not None, 15, "a reading of the node"
                        )
                        answer = ready(replica)
                        assert answer["status"] == "unavailable", answer
                        assert answer["node"]["follows"] is False, answer  # type: ignore[index]
                        assert answer["node"]["running"] and answer["node"]["sending"], answer  # type: ignore[index]
                        assert f"fan-out node {name} follows another primary" in str(answer["detail"]), answer
                        assert f"its subscription {subscription} has no slot in use there" in str(
                            answer["detail"]
                        )
                    done = tracktalk("check", database_url=url, TRACKTALK_LISTEN_URL=node)
                    assert f"FIX   fan-out node {name} follows another primary" in done.stdout, done.stdout
                finally:
                    await sql(url, "SELECT pg_drop_replication_slot(%s)", (subscription,))
    finally:
        other.stop("immediate")


@contextlib.contextmanager
def pinned_queue(url: str) -> Iterator[int]:
    """The NOTIFY queue of `url`'s server pinned by a session that LISTENs and then sits idle in a
    transaction, and 300 notifications of 7.9 kB in it (about 0.03 % of the queue); the pinning
    session's pid. Let go at the end."""
    pinner = psycopg.connect(url, application_name="pinner")
    try:
        pinner.execute("LISTEN anything")
        pinner.commit()
        pinner.execute("SELECT 1")  # and now idle in a transaction
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SELECT pg_notify('filler', i || repeat('x', 7900)) FROM generate_series(1, 300) i")
            usage = conn.execute("SELECT pg_notification_queue_usage()").fetchone()
        assert usage is not None and usage[0] > 0.0001, usage
        yield pinner.info.backend_pid
    finally:
        pinner.close()


def readyz_body(replica: Replica, status: int) -> dict[str, Any] | None:
    answer = httpx.get(f"{replica.http}/readyz", timeout=5)
    return answer.json() if answer.status_code == status else None  # type: ignore[no-any-return]


async def test_readyz_watches_the_notify_queue_of_the_node_the_replica_listens_on(
    topology: Topology, direct: None, log_dir: Path
) -> None:
    """A replica on node A: its events go through the NOTIFY queue of A's server, which a session
    there pins (the limit lowered to 0.01 % for the test, as in test_dba.py). /readyz fails naming
    that session and the node, and `tracktalk check` says the same; it looked at the primary's
    queue only, and said ok. The primary's queue still counts while its writers notify ('direct'),
    and not in 'fanout' mode, where nothing of tracktalk notifies there."""
    url, a = topology.url, topology.a
    name, limit = f"127.0.0.1:{a.port}/tracktalk", "0.0001"
    await set_mode(url, "fanout")
    with replicas(url, log_dir, 1, TRACKTALK_LISTEN_URL=a.url(), TRACKTALK_NOTIFY_QUEUE_LIMIT=limit) as (
        replica,
    ):
        healthy = ready(replica)
        assert healthy["status"] == "ok" and healthy["notify_queue"]["server"] == name, healthy  # type: ignore[index]
        with pinned_queue(a.url()) as pid:
            body = await async_wait_until(lambda: readyz_body(replica, 503), 10, "/readyz to fail")
            assert body["checks"]["notify_queue"] is False and body["checks"]["node"] is True, body
            queue = body["notify_queue"]
            assert queue["server"] == name and queue["held_by"]["pid"] == pid, body
            assert queue["held_by"]["application_name"] == "pinner", body
            assert f"NOTIFY queue (fan-out node {name}'s server)" in body["detail"], body
            assert f"SELECT pg_terminate_backend({pid})" in body["detail"], body
            done = tracktalk("check", "--queue-alert", limit, database_url=url, TRACKTALK_LISTEN_URL=a.url())
            line = next(
                line for line in done.stdout.splitlines() if f"fan-out node {name}'s NOTIFY queue" in line
            )
            assert line.startswith("FIX") and f"pid {pid} (application 'pinner'" in line, done.stdout
        await async_wait_until(lambda: readyz_body(replica, 200), 10, "/readyz to pass again")

        await set_mode(url, "direct")
        with pinned_queue(url) as pid:
            body = await async_wait_until(lambda: readyz_body(replica, 503), 10, "/readyz to fail")
            assert "server" not in body["notify_queue"] and body["notify_queue"]["held_by"]["pid"] == pid, (
                body
            )
            assert "NOTIFY queue (the primary's server)" in body["detail"], body
            await set_mode(url, "fanout")
            await async_wait_until(lambda: readyz_body(replica, 200), 10, "the primary's queue not to count")


QUEUE_HELP = (
    "# HELP tracktalk_notify_queue_usage pg_notification_queue_usage(): the fraction of PostgreSQL's "
    "NOTIFY queue in use."
)
"""The metric's help, as it was before fan-out nodes, whichever server's queue it reports: a
Prometheus client keeps one help per metric, and some (client_golang's Gatherers, the Pushgateway)
refuse a family whose help differs between scrapes or replicas."""


def queue_metric(replica: Replica) -> tuple[float, str]:
    """tracktalk_notify_queue_usage on the replica's /metrics now: its value and whose server
    (tracktalk_notify_queue_server_info's label); its help checked to be QUEUE_HELP."""
    text = httpx.get(f"{replica.http}/metrics", timeout=5).text
    help_line = next(
        line for line in text.splitlines() if line.startswith("# HELP tracktalk_notify_queue_usage ")
    )
    assert help_line == QUEUE_HELP, help_line
    values = parse_metrics(text)
    servers = [
        name.split('server="', 1)[1].rstrip('"}')
        for name, value in values.items()
        if name.startswith("tracktalk_notify_queue_server_info{") and value == 1
    ]
    assert len(servers) == 1, servers
    return values["tracktalk_notify_queue_usage"], servers[0]


async def queue_metric_until(
    replica: Replica, ok: Callable[[float, str], bool], what: str
) -> tuple[float, str]:
    """queue_metric() once `ok(value, server)` (within 10 s: readings come every second)."""

    def found() -> tuple[float, str] | None:
        value, server = queue_metric(replica)
        return (value, server) if ok(value, server) else None

    answer: tuple[float, str] = await async_wait_until(found, 10, what)
    return answer


async def test_metrics_report_the_notify_queue_of_the_node_the_replica_listens_on(
    topology: Topology, direct: None, log_dir: Path
) -> None:
    """tracktalk_notify_queue_usage is the fullest of the queues /readyz watches, and
    tracktalk_notify_queue_server_info says whose server (its help stays the same): node A's for a
    replica on A (it reported the primary's, near 0, while A's queue was pinned); the primary's
    while its writers notify ('direct') and its queue is the fuller; A's again in 'fanout' mode,
    the primary's queue still pinned."""
    url, a = topology.url, topology.a
    on_a, on_primary = f"127.0.0.1:{a.port}/tracktalk", "primary"
    usage = "SELECT pg_notification_queue_usage()"
    await set_mode(url, "fanout")
    with replicas(url, log_dir, 1, TRACKTALK_LISTEN_URL=a.url()) as (replica,):
        with pinned_queue(a.url()):
            pinned = float((await sql(a.url(), usage))[0][0])
            assert float((await sql(url, usage))[0][0]) < pinned
            value, server = await queue_metric_until(
                replica, lambda value, _: value >= pinned, "A's pinned queue on /metrics"
            )
            assert server == on_a, (value, server)
        await queue_metric_until(replica, lambda value, _: value < pinned, "A's queue let go on /metrics")

        await set_mode(url, "direct")
        with pinned_queue(url):
            pinned = float((await sql(url, usage))[0][0])
            assert float((await sql(a.url(), usage))[0][0]) < pinned
            await queue_metric_until(
                replica,
                lambda value, server: value >= pinned and server == on_primary,
                "the primary's pinned queue on /metrics, named so",
            )
            await set_mode(url, "fanout")
            await queue_metric_until(
                replica,
                lambda value, server: value < pinned and server == on_a,
                "A's queue on /metrics again, the primary's not counted in 'fanout' mode",
            )


async def test_a_primary_restart_does_not_send_the_replicas_away_from_a_good_node(
    topology: Topology, direct: None, log_dir: Path
) -> None:
    """The primary restarts: each node's apply worker loses its stream, waits (the node's
    wal_retrieve_retry_interval, 5 s by default) and streams again from the same slot. The nodes
    are good all along (nothing is lost, nothing to rebuild): a replica stays on its node (it
    left it, and refused the next node too, after 5 readings of a worker between two attempts),
    and its socket misses nothing."""
    world, url, a = topology.world, topology.url, topology.a
    track = new_track(url)
    await set_mode(url, "fanout")
    subscription = (await sql(a.url(), "SELECT subscription FROM tracktalk.node_state()"))[0][0]
    with replicas(url, log_dir, 1, TRACKTALK_LISTEN_URL=topology.node(a, topology.b)) as (replica,):
        assert on_node(replica, a)
        async with open_socket(replica.ws, track, world.tokens["alice"]) as sock:
            start = (await sock.expect("connected"))["seq"]
            topology.primary.stop("fast")
            topology.primary.start()

            async def streaming() -> bool:
                """Node A's apply worker streams from its slot on the primary again."""
                slot = await sql(
                    url, "SELECT active FROM pg_replication_slots WHERE slot_name = %s", (subscription,)
                )
                running = await sql(a.url(), "SELECT running FROM tracktalk.node_state()")
                return bool(slot and slot[0][0] and running[0][0])

            await async_wait_until(streaming, 60, "node A to stream from the restarted primary")
            # Two readings of the replica's since (each writes the primary's heartbeat): the watch
            # has seen the node good again, and left it by then if it was going to.
            for _ in range(2):
                beat = await sql(url, "SELECT at FROM tracktalk.heartbeat")

                async def beaten(before: list[tuple[Any, ...]] = beat) -> bool:
                    return await sql(url, "SELECT at FROM tracktalk.heartbeat") != before

                await async_wait_until(beaten, 30, "a reading of the replica's")
            assert not replica.logged("leaving 127.0.0.1:"), replica.log()
            assert on_node(replica, a), ready(replica)
            await insert_comment(url, track, world.users["dave"], "after")
            await every_event_once(sock, start, await latest(url, f"track:{track}"))


async def test_a_node_whose_subscription_has_a_slot_of_another_name_is_taken(
    topology: Topology, direct: None, log_dir: Path
) -> None:
    """A subscription made or altered WITH (slot_name = …) by hand streams through a slot not named
    as it: the replica looked for the subscription's name among the primary's slots, refused the
    node at connect (no such slot) and would have left it (an idle one). It looks for the
    subscription's slot (pg_subscription.subslotname): the node is taken, ready, and delivers."""
    world, url, b = topology.world, topology.url, topology.b
    track = new_track(url)
    await set_mode(url, "fanout")
    subscription = (await sql(b.url(), "SELECT subscription FROM tracktalk.node_state()"))[0][0]
    renamed = "by_hand_slot"

    async def slot_active(name: str, active: bool) -> bool:
        rows = await sql(url, "SELECT active FROM pg_replication_slots WHERE slot_name = %s", (name,))
        return bool(rows) and rows[0][0] is active

    async def move_slot(old: str, new: str) -> None:
        """Node B's subscription streams through a copy of its slot named `new`; `old` dropped."""
        await sql(b.url(), f"ALTER SUBSCRIPTION {subscription} DISABLE")
        await async_wait_until(lambda: slot_active(old, False), 30, "the slot to be let go")
        await sql(url, "SELECT pg_copy_logical_replication_slot(%s, %s)", (old, new))
        await sql(url, "SELECT pg_drop_replication_slot(%s)", (old,))
        await sql(b.url(), f"ALTER SUBSCRIPTION {subscription} SET (slot_name = '{new}')")
        await sql(b.url(), f"ALTER SUBSCRIPTION {subscription} ENABLE")
        await async_wait_until(lambda: slot_active(new, True), 30, "the slot in use")

    await move_slot(subscription, renamed)
    try:
        with replicas(url, log_dir, 1, TRACKTALK_LISTEN_URL=topology.node(b, topology.a)) as (replica,):
            assert on_node(replica, b), (ready(replica), replica.log())
            async with open_socket(replica.ws, track, world.tokens["alice"]) as sock:
                start = (await sock.expect("connected"))["seq"]
                await insert_comment(url, track, world.users["dave"], "through B")
                await every_event_once(sock, start, await latest(url, f"track:{track}"))
            # Readings on B since (each writes the primary's heartbeat): it stays.
            for _ in range(6):
                beat = await sql(url, "SELECT at FROM tracktalk.heartbeat")

                async def beaten(before: list[tuple[Any, ...]] = beat) -> bool:
                    return await sql(url, "SELECT at FROM tracktalk.heartbeat") != before

                await async_wait_until(beaten, 30, "a reading of the replica's")
            assert on_node(replica, b) and not replica.logged("leaving 127.0.0.1:"), replica.log()
        done = tracktalk("check", database_url=url, TRACKTALK_LISTEN_URL=b.url())
        assert f"follows the primary (subscription {subscription})" in done.stdout, done.stdout
    finally:
        await move_slot(renamed, subscription)


def test_a_run_that_another_beats_to_each_publication_in_turn_still_prepares(
    new_database: Callable[[], str],
) -> None:
    """The race of the test above at its worst, on demand: another run makes each publication
    just before this run's CREATE (the first while this run waited, the second while it looked
    again). This run takes the ones made and ends well. The other run is played by a second
    connection that a real run cannot be made to time so."""
    url = new_database()
    assert tracktalk("migrate", database_url=url).returncode == 0
    said: list[str] = []
    with psycopg.connect(url, autocommit=True) as mine, psycopg.connect(url, autocommit=True) as other:

        class Beaten:
            """This run's connection, whose every CREATE PUBLICATION the other run makes first."""

            def execute(self, query: Any, params: Any = None) -> Any:
                text = query.as_string(mine) if hasattr(query, "as_string") else str(query)
                if text.startswith("CREATE PUBLICATION"):
                    other.execute(text)
                return mine.execute(query, params)

            def cursor(self, *args: Any, **kwargs: Any) -> Any:
                return mine.cursor(*args, **kwargs)

        published = list(fanout_node.PUBLISHED)
        fanout_node._publish(Beaten(), published, said.append)  # type: ignore[arg-type]
        names = {row[0] for row in mine.execute("SELECT pubname FROM pg_publication").fetchall()}
        assert names == {fanout_node.PUBLICATION, fanout_node.OUTBOX_PUBLICATION}, names
        assert said.count("primary: another run made a publication meanwhile") == 2, said
        for name in names:
            mine.execute(f"DROP PUBLICATION {name}")
