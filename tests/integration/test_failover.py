"""A failover that loses commits, with a real streaming standby (issue 23, item 11).

A primary (wal_level=replica) and a standby made with `pg_basebackup -R`, both Debian's (or the
machine's) PostgreSQL binaries run as the `postgres` user, two replicas on the primary. The standby
is caught up, then stopped; the primary takes commits the standby never gets (its sockets receive
them), then stops hard; the standby is promoted on the primary's port and numbers new events with
the lost seqs. One replica's listener is back at once, the other's only once the new primary has
passed the old last seq (its pool reads the new primary all along). Every socket must end with the
new primary's history, or with a `resync` after the last event it had of the lost one; a client
that resumes from a lost event with its tag gets `resync`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from websockets.asyncio.client import connect

from app.data.db import migrate
from app.dev.embedded import find_bindir
from tests.support.processes import free_port, replicas
from tests.support.proxies import TcpProxy
from tests.support.seed import World, seed
from tests.support.sockets import RECV_TIMEOUT, Socket, StampedConnection, open_socket
from tests.support.waiting import async_wait_until
from tests.support.writes import insert_comment, sql

pytestmark = pytest.mark.timeout(300)

ROLE = "tracktalk"
DATABASE = "failover"


class Cluster:
    """A PostgreSQL data folder and its server, run with pg_ctl as the `postgres` user when root."""

    def __init__(self, bindir: Path, data: Path, port: int) -> None:
        self.bindir = bindir
        self.data = data
        self.port = port
        self.log = data.parent / f"{data.name}.log"

    def url(self, dbname: str = DATABASE) -> str:
        return f"postgresql://{ROLE}@127.0.0.1:{self.port}/{dbname}"

    def run(self, *args: str) -> None:
        as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        done = subprocess.run(
            [*as_postgres, *args],
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}{done.stderr}\n{self.tail()}"

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def initdb(self) -> Cluster:
        self.run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", ROLE, "-A", "trust", "--no-sync")
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write("wal_level = replica\nmax_wal_senders = 5\nfsync = off\nhot_standby = on\n")
        return self

    def start(self) -> Cluster:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.data.parent}"
        )
        self.run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-o",
            options,
            "-w",
            "start",
        )
        return self

    def stop(self, mode: str = "fast") -> None:
        if (self.data / "postmaster.pid").exists():
            self.run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def standby(self, data: Path, port: int) -> Cluster:
        """A streaming standby of this server (pg_basebackup -R), started."""
        self.run(
            str(self.bindir / "pg_basebackup"),
            *("-h", "127.0.0.1", "-p", str(self.port), "-U", ROLE, "-D", str(data), "-R", "-X", "stream"),
            "--checkpoint=fast",
        )
        return Cluster(self.bindir, data, port).start()

    def promote_alone(self, port: int) -> None:
        """Start this stopped standby on `port`, with nothing to stream from, and promote it."""
        with (self.data / "postgresql.auto.conf").open("a") as conf:
            conf.write("primary_conninfo = ''\n")
        self.port = port
        self.start()
        self.run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-w", "promote")


@pytest.fixture
def servers() -> Iterator[tuple[Cluster, Path]]:
    bindir = find_bindir()
    assert bindir is not None and (bindir / "pg_basebackup").exists(), (
        "no PostgreSQL binaries with pg_basebackup"
    )
    root = Path(tempfile.mkdtemp(prefix="tracktalk-failover-"))
    root.chmod(0o755)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    try:
        primary = Cluster(bindir, root / "primary", free_port()).initdb().start()
        with psycopg.connect(primary.url("postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {DATABASE}")
        migrate(primary.url())
        yield primary, root
    finally:
        for data in sorted(root.glob("*/postmaster.pid")):
            with contextlib.suppress(AssertionError):
                Cluster(bindir, data.parent, 0).stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


@contextlib.asynccontextmanager
async def resume(base: str, track: str, token: str, since: int, tag: str | None) -> AsyncIterator[Socket]:
    """A socket that resumes with since= and tag= (the event's tag the client kept)."""
    url = f"{base}/api/ws/track/{track}?token={token}&since={since}" + (f"&tag={tag}" if tag else "")
    async with connect(
        url, open_timeout=RECV_TIMEOUT, close_timeout=2, create_connection=StampedConnection
    ) as conn:
        assert isinstance(conn, StampedConnection)
        yield Socket(conn)


Event = tuple[str | None, str]
"""An event as the test compares it: its tag, and the text of its comment (each text is written
once: a lost comment and the new primary's comment with the same id and seq differ in it)."""


async def read_until(sock: Socket, last: tuple[str, int, Event], timeout: float = 30) -> None:
    """Read the socket until what it was told last is `last`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while history(sock.received)[-1:] != [last]:
        await sock.recv(max(0.01, deadline - asyncio.get_running_loop().time()))


def history(messages: list[dict[str, Any]]) -> list[tuple[str, int, Event]]:
    """What a socket was told, in order: ("event", seq, event) and ("resync", seq, (tag, ""))."""
    told: list[tuple[str, int, Event]] = []
    for m in messages:
        if m["type"] == "resync":
            told.append(("resync", m["seq"], (m.get("tag"), "")))
        elif m["type"] == "new_comment":
            told.append(("event", m["seq"], (m.get("tag"), m["comment"]["content"])))
    return told


def ends_with_the_new_history(
    told: list[tuple[str, int, Event]], start: int, log: dict[int, Event], latest: int
) -> None:
    """After the last `resync` (or from `start`, without one), the socket has exactly the log's
    events up to the latest: every event it had of another history came before that resync."""
    resyncs = [i for i, (kind, _, _) in enumerate(told) if kind == "resync"]
    tail = told[resyncs[-1] + 1 :] if resyncs else told
    after = told[resyncs[-1]][1] if resyncs else start
    expected = [(seq, log[seq]) for seq in range(after + 1, latest + 1)]
    assert [(seq, event) for _, seq, event in tail] == expected, (
        f"after {'the last resync' if resyncs else 'connected'} at {after}: {tail[:3]}...; the log has {expected[:3]}..."
    )
    if resyncs:
        assert told[resyncs[-1]][2][0] == log[after][0], "the resync's tag is not the log's"


async def write(url: str, track: str, user: int, count: int, label: str) -> None:
    for i in range(count):
        await insert_comment(url, track, user, f"{label} {i}")


async def log_of(url: str, track: str) -> tuple[dict[int, Event], int]:
    rows = await sql(
        url,
        "SELECT seq, tag, message -> 'comment' ->> 'content' FROM tracktalk.events WHERE topic = 'track:' || %s",
        (track,),
    )
    latest = await sql(
        url,
        "SELECT coalesce((SELECT last_seq FROM tracktalk.topic_state WHERE topic = 'track:' || %s), 0)",
        (track,),
    )
    return {int(seq): (tag, str(content)) for seq, tag, content in rows}, int(latest[0][0])


async def test_after_a_failover_that_lost_commits_every_socket_has_the_new_history_or_resync(
    servers: tuple[Cluster, Path], log_dir: Path
) -> None:
    primary, root = servers
    url = primary.url()
    world: World = seed(url)
    track, writer = world.public, world.users["dave"]
    standby = primary.standby(root / "standby", free_port())
    proxy = TcpProxy(primary.port).start()  # replica B's LISTEN connection goes through it
    through_proxy = make_conninfo(url, port=proxy.port)
    try:
        with (
            replicas(url, log_dir, 1) as (a,),
            replicas(url, log_dir, 1, TRACKTALK_LISTEN_URL=through_proxy) as (b,),
        ):
            async with contextlib.AsyncExitStack() as stack:
                socks: list[tuple[Socket, int]] = []
                for replica, who in ((a, "alice"), (a, "bob"), (b, "carol"), (b, "tina")):
                    sock = await stack.enter_async_context(open_socket(replica.ws, track, world.tokens[who]))
                    socks.append((sock, (await sock.expect("connected"))["seq"]))
                await write(url, track, writer, 20, "kept")  # the standby gets them
                await _caught_up(primary, standby)
                standby.stop()
                await write(url, track, writer, 30, "lost")  # only the primary, and the sockets, get them
                lost_log, lost_latest = await log_of(url, track)
                for sock, _ in socks:
                    await read_until(sock, ("event", lost_latest, lost_log[lost_latest]))
                proxy.cut()  # B's listener is away until the new primary is past the old last seq
                primary.stop("immediate")
                standby.promote_alone(primary.port)
                await write(url, track, writer, 5, "new")  # numbered with seqs that were lost
                await asyncio.to_thread(a.wait_ready, 30)  # A's listener is back (B's pool too)
                await write(url, track, writer, 40, "newer")  # past the old last seq
                new_log, new_latest = await log_of(url, track)
                assert new_latest > lost_latest
                assert all(new_log[seq] != lost_log[seq] for seq in range(lost_latest - 29, lost_latest + 1))
                proxy.start()
                await asyncio.to_thread(b.wait_ready, 30)
                await write(url, track, writer, 3, "last")
                new_log, new_latest = await log_of(url, track)
                for sock, start in socks:
                    await read_until(sock, ("event", new_latest, new_log[new_latest]))
                    told = history(sock.received)
                    ends_with_the_new_history(told, start, new_log, new_latest)
                    assert any(kind == "resync" for kind, _, _ in told)  # it had lost events
                # Clients that come back with a since= in the lost range (with its tag), and one
                # that has the new primary's event at that seq.
                seq = lost_latest - 10
                for replica in (a, b):
                    async with resume(
                        replica.ws, track, world.tokens["alice"], seq, lost_log[seq][0]
                    ) as back:
                        hello = await back.expect("connected")
                        assert (hello["seq"], hello.get("tag")) == (new_latest, new_log[new_latest][0])
                        told_back = await back.expect("resync")
                        assert (told_back["seq"], told_back.get("tag")) == (
                            new_latest,
                            new_log[new_latest][0],
                        )
                    async with resume(replica.ws, track, world.tokens["alice"], seq, new_log[seq][0]) as same:
                        await same.expect("connected")
                        got = await same.events(new_latest - seq)  # the new history replays
                        assert history(got) == [
                            ("event", s, new_log[s]) for s in range(seq + 1, new_latest + 1)
                        ]
    finally:
        proxy.cut()
        standby.stop("immediate")


async def _caught_up(primary: Cluster, standby: Cluster) -> None:
    """Wait until the standby has replayed everything the primary wrote."""

    async def there() -> bool:
        at = await sql(primary.url(), "SELECT pg_current_wal_lsn()::text")
        done = await sql(standby.url(), "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (at[0][0],))
        return bool(done[0][0])

    await async_wait_until(there, 30, "the standby to replay the primary's WAL", interval=0.05)
