"""Who is here, across real replicas: `presence` frames and `listening` in the metrics.

Two replicas over one database (anonymous sockets allowed), a third one started, killed or
restarted where a test needs it. Each test makes its own track, so that counts start at zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from app.presence.tracker import Timing
from tests.support.children import popen
from tests.support.metrics import metric
from tests.support.processes import Replica, free_port, replicas
from tests.support.seed import World, new_track
from tests.support.sockets import Socket, open_socket
from tests.support.waiting import async_wait_until
from tests.support.writes import insert_comment

pytestmark = pytest.mark.timeout(180)

AGREE = 2.0
"""Seconds within which the replicas agree after a change (issue 16)."""
DEAD = 15.0
"""Seconds within which a killed replica's listeners stop counting (issue 16)."""
LATE = 2.5
"""Seconds a killed replica may drop out past the moment its heartbeat is dead_after old: a
read's quiet tick (1 s), the frame's trip, and a loaded machine's lag."""
ONCE_A_SECOND = 0.9
"""Least gap between two `presence` frames of a track as a client sees them arrive (sent 1 s
apart by the server's clock; stamped as they come off the socket, not as the test reads them:
the trip from the server adds a little jitter)."""


@pytest.fixture(scope="module")
def two(db_url: str, world: World, log_dir: Path) -> Iterator[list[Replica]]:
    """Two replicas that let sockets without a token in, and many sockets per user and per address
    (every anonymous socket here comes from 127.0.0.1)."""
    with replicas(
        db_url,
        log_dir,
        2,
        TRACKTALK_ANONYMOUS_SOCKETS="1",
        TRACKTALK_SOCKETS_PER_USER="1000",
        TRACKTALK_ANONYMOUS_SOCKETS_PER_ADDRESS="0",
    ) as started:
        yield started


async def until_listening(sock: Socket, count: int, timeout: float = 5.0) -> float:
    """Read until the socket's latest `presence` says `count`; the seconds that took."""
    start = time.monotonic()
    deadline = start + timeout
    while not (sock.presence and sock.presence[-1]["listening"] == count):
        left = deadline - time.monotonic()
        assert left > 0, f"no presence of {count} within {timeout} s: {sock.presence[-5:]}"
        with contextlib.suppress(TimeoutError):
            await sock.recv(min(left, 0.5))
    return time.monotonic() - start


async def listening(base: str, track: str, headers: dict[str, str] | None = None) -> int:
    """`listening` of GET /api/tracks/{track}/metrics on the replica at `base`."""
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        answer = await client.get(f"/api/tracks/{track}/metrics", headers=headers)
    assert answer.status_code == 200, answer.text
    return int(answer.json()["listening"])


async def all_say(replicas_: list[Replica], track: str, count: int, timeout: float) -> None:
    """Wait until GET metrics of every replica says `count`."""

    async def agreed() -> bool:
        return all([await listening(r.http, track) == count for r in replicas_])

    await async_wait_until(agreed, timeout, f"every replica to count {count} on {track}")


def heartbeat_age(db_url: str, replica: Replica) -> float:
    """Seconds since the replica's last heartbeat, by the database's clock (its id ends in its port)."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT extract(epoch FROM now() - seen_at)::float8 FROM tracktalk.replicas WHERE id LIKE %s",
            (f"%:{replica.port}",),
        ).fetchone()
    assert row is not None, f"no heartbeat row of the replica on port {replica.port}"
    return float(row[0])


def gaps(sock: Socket) -> list[float]:
    """Seconds between the socket's `presence` frames."""
    return [b - a for a, b in itertools.pairwise(sock.presence_at)]


async def presence_writes(replica: Replica) -> float:
    """tracktalk_presence_writes_total of the replica's /metrics."""
    return await metric(replica, "tracktalk_presence_writes_total")


async def test_two_users_on_two_replicas_count_two_on_both_and_one_within_2_s_of_leaving(
    two: list[Replica], world: World, db_url: str
) -> None:
    a, b = two
    track = new_track(db_url)
    async with open_socket(a.ws, track, world.tokens["alice"], presence=True) as alice:
        await alice.expect("connected")
        assert await alice.expect("presence") == {"type": "presence", "track_id": track, "listening": 1}
        async with open_socket(b.ws, track, world.tokens["bob"], presence=True) as bob:
            await bob.expect("connected")
            assert (await bob.expect("presence"))["track_id"] == track  # greeted at once
            joined = time.monotonic()
            await until_listening(bob, 2, AGREE)
            await until_listening(alice, 2, AGREE - (time.monotonic() - joined))
            await all_say(two, track, 2, AGREE)
        left = time.monotonic()
        took = await until_listening(alice, 1, AGREE)
        await all_say(two, track, 1, AGREE - (time.monotonic() - left))
        agreed = time.monotonic() - left
    print(f"\nbob left: alice told in {took:.2f} s, both replicas' metrics agreed in {agreed:.2f} s")
    assert [m["listening"] for m in alice.presence] == [1, 2, 1]


async def test_a_user_with_several_sockets_counts_once(two: list[Replica], world: World, db_url: str) -> None:
    a, b = two
    track = new_track(db_url)
    async with contextlib.AsyncExitStack() as stack:
        watcher = await stack.enter_async_context(
            open_socket(b.ws, track, world.tokens["dave"], presence=True)
        )
        await watcher.expect("connected")
        tabs = [
            await stack.enter_async_context(open_socket(replica.ws, track, world.tokens["alice"]))
            for replica in (a, a, b)
        ]
        for tab in tabs:
            await tab.expect("connected")
        await until_listening(watcher, 2)
        await all_say(two, track, 2, AGREE)
        # Two of alice's three tabs close (one on each replica): she is still here.
        for tab in (tabs[1], tabs[2]):
            await tab.close()
        async with open_socket(a.ws, track, world.tokens["bob"]) as bob:
            await bob.expect("connected")
            await until_listening(watcher, 3)  # dave, alice (one tab left), bob
            await all_say(two, track, 3, AGREE)
        await tabs[0].close()
        await until_listening(watcher, 1)
    assert max(m["listening"] for m in watcher.presence) == 3


async def test_anonymous_sockets_count_one_each(two: list[Replica], world: World, db_url: str) -> None:
    a, b = two
    track = new_track(db_url)
    async with (
        open_socket(a.ws, track, None) as first,
        open_socket(a.ws, track, None) as second,
        open_socket(b.ws, track, None, presence=True) as third,
        open_socket(b.ws, track, world.tokens["alice"]) as alice,
    ):
        for sock in (first, second, third, alice):
            await sock.expect("connected", ignore=("presence",))
        await until_listening(third, 4)
        await all_say(two, track, 4, AGREE)
        await first.close()
        await until_listening(third, 3)
    private = new_track(db_url, private=True)
    async with open_socket(a.ws, private, None) as refused:
        assert await refused.closed() == (1008, "track not found")
    assert refused.presence == []


async def test_a_private_track_counts_and_tells_only_those_who_may_see_it(
    two: list[Replica], world: World, db_url: str
) -> None:
    a, b = two
    track = new_track(db_url, private=True)
    async with (
        open_socket(a.ws, track, world.tokens["carol"], presence=True) as carol,
        open_socket(b.ws, track, world.tokens["tina"], presence=True) as tina,
    ):
        await carol.expect("connected")
        await tina.expect("connected")
        await until_listening(carol, 2)
        await until_listening(tina, 2)
        for replica, who in [(a, "alice"), (b, "alice"), (b, None)]:
            token = world.tokens[who] if who else None
            async with open_socket(replica.ws, track, token) as outsider:
                assert await outsider.closed() == (1008, "track not found")
            assert outsider.received == [] and outsider.presence == []
        async with httpx.AsyncClient(timeout=10) as client:
            for replica in two:
                url = f"{replica.http}/api/tracks/{track}/metrics"
                assert (await client.get(url, headers=world.auth("alice"))).status_code == 404
                assert (await client.get(url)).status_code == 404
                seen = await client.get(url, headers=world.auth("carol"))
                assert seen.status_code == 200 and seen.json()["listening"] == 2
        # The outsiders were never counted: the last word each socket had is still 2.
        assert carol.presence[-1]["listening"] == tina.presence[-1]["listening"] == 2


async def test_presence_follows_connected_and_the_replay_then_comes_at_most_once_a_second(
    two: list[Replica], world: World, db_url: str
) -> None:
    a, b = two
    track = new_track(db_url)
    for n in range(2):
        await insert_comment(db_url, track, world.users["carol"], f"before {n}")
    async with open_socket(a.ws, track, world.tokens["alice"], since=0, presence=True) as alice:
        kinds = [(await alice.recv())["type"] for _ in range(4)]
        assert kinds == ["connected", "new_comment", "new_comment", "presence"]
        assert alice.presence[-1]["listening"] == 1
        for _ in range(2):  # others come and go on both replicas, as fast as alice hears of it
            async with (
                open_socket(b.ws, track, world.tokens["bob"]) as bob,
                open_socket(a.ws, track, world.tokens["dave"]) as dave,
            ):
                await bob.expect("connected")
                await dave.expect("connected")
                await until_listening(alice, 3)
            await until_listening(alice, 1)
        async with open_socket(b.ws, track, world.tokens["bob"]) as blip:  # gone within the second
            await blip.expect("connected")
        async with open_socket(a.ws, track, world.tokens["tina"]) as tina:
            await tina.expect("connected")
            await until_listening(alice, 2)
        changed = [m["listening"] for m in alice.presence]
    assert changed[:5] == [1, 3, 1, 3, 1], changed  # on change ...
    assert min(gaps(alice)) >= ONCE_A_SECOND, gaps(alice)  # ... at most once a second ...
    assert all(x != y for x, y in itertools.pairwise(changed)), changed  # ... and only changes


async def test_listening_is_in_the_metrics_and_the_like_and_share_answers(
    two: list[Replica], world: World, db_url: str
) -> None:
    a, b = two
    track = new_track(db_url)
    async with (
        open_socket(a.ws, track, world.tokens["alice"]) as alice,
        open_socket(a.ws, track, None) as anonymous,
    ):
        await alice.expect("connected")
        await anonymous.expect("connected")
        await all_say(two, track, 2, AGREE)  # b has no socket on the track: it counts from the table
        async with httpx.AsyncClient(timeout=10) as client:
            for method, url in [
                ("POST", f"{b.http}/api/tracks/{track}/like"),
                ("POST", f"{a.http}/api/tracks/{track}/share"),
                ("DELETE", f"{b.http}/api/tracks/{track}/like"),
            ]:
                answer = await client.request(method, url, headers=world.auth("bob"))
                assert answer.status_code == 200 and answer.json()["listening"] == 2, answer.text
    await all_say(two, track, 0, AGREE)


COME_AND_GO = """
import asyncio, json, sys
from websockets.asyncio.client import connect

async def come_and_go(url):
    async with connect(url, open_timeout=30) as sock:
        while json.loads(await sock.recv())["type"] != "connected":
            pass

async def main(urls):
    await asyncio.gather(*(come_and_go(url) for url in urls))

asyncio.run(main(sys.argv[1:]))
"""
"""Open a socket at each URL at once, wait for its `connected`, close it."""


async def come_and_go(replica: Replica, track: str, tokens: list[str | None]) -> None:
    """A socket for each token (None: anonymous) opens on the track, is `connected` and closes, all
    at once, from a process of their own: in the test's loop their handshakes held up the arrival
    stamps of the watcher's frames by up to 0.15 s (a frame stamped late, the next on time: a gap
    under the second that the server kept)."""
    urls = [f"{replica.ws}/api/ws/track/{track}" + (f"?token={t}" if t else "") for t in tokens]
    with popen([sys.executable, "-c", COME_AND_GO, *urls], stderr=subprocess.PIPE, text=True) as child:
        try:
            _, errors = await asyncio.to_thread(child.communicate, timeout=60)
        except subprocess.TimeoutExpired:
            child.kill()
            raise
    assert child.returncode == 0, errors


async def test_a_burst_of_connects_and_closes_ends_at_the_right_number_without_a_write_each(
    two: list[Replica], world: World, db_url: str
) -> None:
    a, b = two
    track = new_track(db_url)
    names = ["alice", "bob", "dave", "tina", None]
    async with open_socket(b.ws, track, world.tokens["carol"], presence=True) as watcher:
        await watcher.expect("connected")
        await until_listening(watcher, 1)
        writes = await presence_writes(a)
        started = time.monotonic()

        tokens = [
            world.tokens[name] if name else None for name in itertools.islice(itertools.cycle(names), 200)
        ]
        await come_and_go(a, track, tokens)
        async with (
            open_socket(a.ws, track, world.tokens["alice"]) as alice,
            open_socket(a.ws, track, world.tokens["bob"]) as bob,
            open_socket(a.ws, track, None) as anonymous,
        ):
            for sock in (alice, bob, anonymous):
                await sock.expect("connected")
            await until_listening(watcher, 4)  # carol, alice, bob and one anonymous
            await all_say(two, track, 4, AGREE)
            took = time.monotonic() - started
            written = await presence_writes(a) - writes
        assert min(gaps(watcher)) >= ONCE_A_SECOND, gaps(watcher)
    # 203 sockets came and went on one replica: a handful of statements, not one per socket
    # (at most one write of rows a tick, a heartbeat every 5 s).
    assert written <= took / 0.25 + took / 5 + 2, (written, took)
    assert written < 40, written


async def test_a_replica_killed_under_its_sockets_drops_out_within_15_s(
    two: list[Replica], world: World, db_url: str, log_dir: Path
) -> None:
    a, b = two
    track = new_track(db_url)
    with replicas(db_url, log_dir, 1, TRACKTALK_ANONYMOUS_SOCKETS="1") as (doomed,):
        async with (
            open_socket(a.ws, track, world.tokens["alice"], presence=True) as alice,
            open_socket(doomed.ws, track, world.tokens["bob"]) as bob,
            open_socket(doomed.ws, track, None) as anonymous,
        ):
            for sock in (alice, bob, anonymous):
                await sock.expect("connected")
            await until_listening(alice, 3)
            await all_say([a, b, doomed], track, 3, AGREE)
            doomed.stop(signal.SIGKILL)
            killed = time.monotonic()
            beat_age = heartbeat_age(db_url, doomed)
            await until_listening(alice, 1, DEAD + 5)
            took = alice.presence_at[-1] - killed  # when the frame arrived, not when it was read
            await all_say(two, track, 1, max(0.1, killed + DEAD - time.monotonic()))
    # By design the others stop counting it once its last heartbeat is dead_after old: 7 to 12 s
    # after a kill, depending on where in its 5 s between beats the kill fell. (A run that took
    # 13.4 s was a kill just after a beat, read late by the test, on a loaded machine.)
    due = Timing().dead_after - beat_age
    print(
        f"\nSIGKILL {beat_age:.1f} s after its last heartbeat: the replica's 2 listeners no longer"
        f" counted {took:.1f} s after (due by design at {due:.1f} s)"
    )
    assert took <= min(DEAD, due + LATE), (took, due)


async def test_a_restarted_replica_does_not_count_its_old_sockets_twice(
    two: list[Replica], world: World, db_url: str, log_dir: Path
) -> None:
    a, b = two
    track = new_track(db_url)
    port = free_port()
    env = {"TRACKTALK_ANONYMOUS_SOCKETS": "1", "TRACKTALK_REPLICA_ID": f"restarting:{port}"}
    phoenix = Replica(db_url, env=env, port=port).start(log_dir)
    try:
        async with open_socket(a.ws, track, world.tokens["alice"], presence=True) as alice:
            await alice.expect("connected")
            async with (
                open_socket(phoenix.ws, track, None) as one,
                open_socket(phoenix.ws, track, None) as two_,
            ):
                await one.expect("connected")
                await two_.expect("connected")
                await until_listening(alice, 3)
                await all_say([a, b, phoenix], track, 3, AGREE)  # b, without sockets on it: from the rows
                phoenix.stop(signal.SIGKILL)
            killed = time.monotonic()
            await asyncio.to_thread(phoenix.start, log_dir)  # the same id and port, no socket on the track
            restarted = time.monotonic()
            # Its claim deleted the old rows, and its heartbeat is fresh: only that deletion stops
            # them counting, within a read of the restart, not 12 s after the kill.
            await until_listening(alice, 1, AGREE)
            await all_say([a, b, phoenix], track, 1, max(0.1, restarted + AGREE - time.monotonic()))
            took = time.monotonic() - killed
            print(f"\nrestart: its old sockets no longer counted {took:.1f} s after the kill")
            assert took < 12, took  # sooner than a dead replica's rows stop counting
            # ... and its new sockets count once, not beside the old ones.
            async with open_socket(phoenix.ws, track, None) as again:
                await again.expect("connected")
                await until_listening(alice, 2, AGREE)
                await all_say([a, b, phoenix], track, 2, AGREE)
    finally:
        phoenix.stop()
    assert max(m["listening"] for m in alice.presence) == 3, alice.presence


async def test_rows_lost_with_the_unlogged_tables_are_written_again(
    two: list[Replica], world: World, db_url: str
) -> None:
    """A crash of PostgreSQL empties unlogged tables: each replica writes its rows again when its
    heartbeat finds its own row gone (here a DBA empties them, as the crash would)."""
    a, b = two
    track = new_track(db_url)
    async with (
        open_socket(a.ws, track, world.tokens["alice"]) as alice,
        open_socket(b.ws, track, world.tokens["bob"], presence=True) as bob,
    ):
        await alice.expect("connected")
        await bob.expect("connected")
        await until_listening(bob, 2)
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute("DELETE FROM tracktalk.presence")
            conn.execute("DELETE FROM tracktalk.replicas")
        async with open_socket(b.ws, track, world.tokens["dave"]) as dave:  # a change after it
            await dave.expect("connected")
            await until_listening(bob, 3, 5 + 2 * AGREE)  # within a heartbeat
            await all_say(two, track, 3, AGREE)
