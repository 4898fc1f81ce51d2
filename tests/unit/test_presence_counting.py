"""app/presence/tracker.py and app/presence/roster.py in one process: the counting, the expiry of replicas, the
writes coalesced, the frames throttled. The tables are in memory (their semantics: rows by
(replica, topic), a transaction id per write, a read that returns what changed since a horizon),
so that a replica's death, a restart, a lost heartbeat row or a failing database happen on demand.
"""

from __future__ import annotations

import itertools
import random
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from app.live.connection import ANONYMOUS, Connection
from app.live.hub import Hub
from app.presence.table import Beat, Peer, Row, Snapshot
from app.presence.tracker import Presence, Timing
from tests.support.fakes import FakeSocket
from tests.support.waiting import async_wait_until

T = "track:t1"
ALICE, BOB, DAVE, TINA = 1, 2, 3, 4
EVERY_ROUND = Timing(tick=0.0, heartbeat=0.0, send_every=0.0)
"""Each tick() beats, writes and reads; every change is sent at once."""


@dataclass
class Table:
    """tracktalk.replicas and tracktalk.presence in memory."""

    xid: int = 1
    replicas: dict[str, list[Any]] = field(default_factory=dict)
    """id -> [instance, age in seconds]"""
    rows: dict[tuple[str, str], tuple[list[int], int, int]] = field(default_factory=dict)
    """(replica, track) -> (users, anonymous, changed)"""
    statements: list[str] = field(default_factory=list)
    at: list[float] = field(default_factory=list)
    """When each statement ran (time.monotonic())."""
    fail: bool = False

    async def claim(self, replica: str, instance: str) -> None:
        self._run("claim")
        for key in [key for key in self.rows if key[0] == replica]:
            del self.rows[key]
        self.replicas[replica] = [instance, 0.0]

    async def beat(self, replica: str, instance: str, forget: float) -> Beat:
        self._run("beat")
        for gone in [r for r, (_, age) in self.replicas.items() if age > forget and r != replica]:
            self.leave(gone)
        if replica not in self.replicas:
            self.replicas[replica] = [instance, 0.0]
            return Beat.LOST
        if self.replicas[replica][0] != instance:
            return Beat.TAKEN
        self.replicas[replica][1] = 0.0
        return Beat.KEPT

    async def write(self, replica: str, instance: str, rows: list[Row], drop: list[str]) -> bool:
        self._run("write")
        if self.replicas.get(replica, [None])[0] != instance:
            return False
        self.xid += 1
        for row in rows:
            self.rows[(replica, row.topic)] = (list(row.users), row.anonymous, self.xid)
        for track in drop:
            if self.rows.get((replica, track), ([1], 0, 0))[:2] == ([], 0):
                del self.rows[(replica, track)]
        return True

    async def read(self, since: int, fresh: list[str], exclude: str) -> Snapshot:
        self._run("read")
        rows = [
            Row(replica, track, users, anonymous)
            for (replica, track), (users, anonymous, changed) in self.rows.items()
            if replica in self.replicas and replica != exclude and (changed >= since or track in fresh)
        ]
        peers = {replica: Peer(instance, age) for replica, (instance, age) in self.replicas.items()}
        return Snapshot(peers, rows, self.xid + 1)

    async def release(self, replica: str, instance: str) -> None:
        self._run("release")
        if self.replicas.get(replica, [None])[0] == instance:
            self.leave(replica)

    async def count(self, conn: Any, track_id: str, exclude: str, alive: float) -> int:
        live = [
            (users, anonymous)
            for (replica, track), (users, anonymous, _) in self.rows.items()
            if track == track_id and replica != exclude and self.replicas.get(replica, [0, 1e9])[1] <= alive
        ]
        return len({u for users, _ in live for u in users}) + sum(a for _, a in live)

    # What other replicas do, as the tests tell them to:

    def other(self, replica: str, track: str, users: list[int], anonymous: int = 0) -> None:
        """Another replica writes its row of a track."""
        self.replicas.setdefault(replica, [f"{replica}-1", 0.0])
        self.xid += 1
        self.rows[(replica, track)] = (users, anonymous, self.xid)

    def leave(self, replica: str) -> None:
        """A replica's heartbeat and rows are deleted."""
        self.replicas.pop(replica, None)
        for key in [key for key in self.rows if key[0] == replica]:
            del self.rows[key]

    def writes(self) -> int:
        return self.statements.count("write")

    def _run(self, statement: str) -> None:
        if self.fail:
            raise OSError("the database is down")
        self.statements.append(statement)
        self.at.append(time.monotonic())

    def times(self, statement: str) -> list[float]:
        """When each `statement` ran."""
        return [at for name, at in zip(self.statements, self.at, strict=True) if name == statement]


class Replica:
    """A Presence with its hub, and subscriptions joined the way app/live/feed.py joins them."""

    def __init__(self, table: Table, name: str = "me", timing: Timing = EVERY_ROUND) -> None:
        self.hub = Hub()
        self.presence = Presence(self.hub, table, name, timing)
        self._topics: dict[Connection, str] = {}

    def join(self, user: int, track: str = T) -> Connection:
        conn = Connection(FakeSocket(), user, 1 << 20)
        self.hub.add(conn)
        self.hub.subscribe(conn, track)
        conn.hold(track)
        self.presence.join(conn, track)
        self._topics[conn] = track
        conn.go_live(track)
        return conn

    def leave(self, conn: Connection) -> None:
        track = self._topics.pop(conn)
        self.hub.unsubscribe(conn, track)
        self.presence.leave(conn, track)
        self.hub.remove(conn)

    def count(self, track: str = T) -> int | None:
        return self.presence.listening(track)


def heard(conn: Connection) -> list[int]:
    """The counts a socket was sent."""
    socket = conn._socket
    assert isinstance(socket, FakeSocket)
    return [m["listening"] for m in socket.messages if m["type"] == "presence"]


# ---------------------------------------------------------------------------------------------
# Counting
# ---------------------------------------------------------------------------------------------


async def test_distinct_users_across_replicas_plus_each_anonymous_socket() -> None:
    table = Table()
    me = Replica(table)
    for user in (ALICE, ALICE, BOB, ANONYMOUS):
        me.join(user)
    table.other("r2", T, [ALICE, DAVE], anonymous=2)
    table.other("r3", T, [DAVE])
    await me.presence.tick()
    # alice, bob, dave (alice and dave are on two replicas each: once), 1 + 2 anonymous
    assert me.count() == 6
    assert me.presence.live_replicas == 3


async def test_a_track_counts_only_once_its_rows_are_read_and_then_tells_every_socket() -> None:
    table = Table()
    table.other("r2", T, [BOB])
    me = Replica(table)
    first, second = me.join(ALICE), me.join(DAVE)
    assert me.count() is None and heard(first) == []  # not known yet: nothing said
    await me.presence.tick()
    assert me.count() == 3
    assert heard(first) == heard(second) == [3]


async def test_a_second_tab_writes_nothing_and_a_burst_between_ticks_is_one_write() -> None:
    table = Table()
    me = Replica(table)
    me.join(ALICE)
    await me.presence.tick()
    writes = table.writes()
    tab = me.join(ALICE)
    me.leave(tab)
    await me.presence.tick()
    assert table.writes() == writes  # alice was here all along: the row did not change
    burst = [me.join(1000 + n % 50) for n in range(200)] + [me.join(ANONYMOUS) for _ in range(20)]
    for sub in burst[:-5]:  # every socket of the 50 users, and 15 of the 20 anonymous ones
        me.leave(sub)
    await me.presence.tick()
    assert table.writes() == writes + 1
    assert table.rows[("me", T)][:2] == ([ALICE], 5)


async def test_counts_agree_on_every_replica_whatever_happens_in_between() -> None:
    """Three replicas over one table; sockets come and go at random between their ticks; once
    each has ticked twice, all agree with the truth."""
    rng = random.Random(16)
    table = Table()
    replicas = [Replica(table, name) for name in ("a", "b", "c")]
    tracks = ["x", "y"]
    open_: list[tuple[Replica, Connection, str]] = []
    for _ in range(40):
        for _ in range(rng.randint(0, 12)):
            if open_ and rng.random() < 0.45:
                replica, sub, _ = open_.pop(rng.randrange(len(open_)))
                replica.leave(sub)
            else:
                replica, track = rng.choice(replicas), rng.choice(tracks)
                open_.append((replica, replica.join(rng.choice([ANONYMOUS, 1, 2, 3, 4, 5]), track), track))
        await rng.choice(replicas).presence.tick()
    for _ in range(2):
        for replica in replicas:
            await replica.presence.tick()
    for track in tracks:
        here = [sub for _, sub, on in open_ if on == track]
        truth = len({s.user_id for s in here if s.user_id != ANONYMOUS}) + sum(
            s.user_id == ANONYMOUS for s in here
        )
        for replica in replicas:
            if any(r is replica and on == track for r, _, on in open_):
                assert replica.count(track) == truth
            for sub in replica.hub.topic_sockets(track):
                assert heard(sub)[-1] == truth


async def test_a_replica_not_seen_for_12_s_stops_counting_and_counts_again_if_it_comes_back() -> None:
    table = Table()
    me = Replica(table)
    me.join(ALICE)
    table.other("r2", T, [BOB], anonymous=1)
    await me.presence.tick()
    assert me.count() == 3
    table.replicas["r2"][1] = 12.5  # its heartbeat is old: killed, or cut off
    await me.presence.tick()
    assert (me.count(), me.presence.live_replicas) == (1, 1)
    table.replicas["r2"][1] = 0.0  # the network is back: its rows count again, unwritten
    await me.presence.tick()
    assert me.count() == 3


async def test_a_replica_that_left_or_restarted_is_forgotten_with_its_old_rows() -> None:
    table = Table()
    me = Replica(table)
    me.join(ALICE)
    table.other("r2", T, [BOB], anonymous=3)
    await me.presence.tick()
    assert me.count() == 5
    # r2 restarts under the same id: its old rows go with its claim, it has a new instance ...
    table.leave("r2")
    table.replicas["r2"] = ["r2-2", 0.0]
    await me.presence.tick()
    assert me.count() == 1
    # ... and its new sockets count once, not beside the old ones.
    table.other("r2", T, [BOB], anonymous=3)
    await me.presence.tick()
    assert me.count() == 5
    table.leave("r2")  # it shuts down: its heartbeat row goes
    await me.presence.tick()
    assert (me.count(), me.presence.live_replicas) == (1, 1)


async def test_a_user_on_a_dead_replica_still_counts_where_else_they_are() -> None:
    table = Table()
    me = Replica(table)
    me.join(ALICE)
    table.other("r2", T, [ALICE, BOB])
    await me.presence.tick()
    assert me.count() == 2
    table.replicas["r2"][1] = 60.0
    await me.presence.tick()
    assert me.count() == 1  # alice is still here; bob was only there


async def test_a_silent_replica_is_deleted_with_its_rows_after_10_minutes() -> None:
    table = Table()
    me = Replica(table)
    table.other("r2", T, [BOB])
    table.replicas["r2"][1] = 601.0
    await me.presence.tick()
    assert "r2" not in table.replicas and ("r2", T) not in table.rows


# ---------------------------------------------------------------------------------------------
# This replica's rows
# ---------------------------------------------------------------------------------------------


async def test_a_left_track_keeps_an_empty_row_for_the_readers_then_the_row_goes() -> None:
    table = Table()
    me = Replica(table, timing=Timing(tick=0.0, heartbeat=0.0, keep_empty_row=0.05, keep_topic=0.01))
    sub = me.join(ALICE)
    await me.presence.tick()
    me.leave(sub)
    await me.presence.tick()
    assert table.rows[("me", T)][:2] == ([], 0)  # others read that alice left
    await async_wait_until(lambda: me.count() is None, 2, "the track to be let go")

    async def row_gone() -> bool:
        await me.presence.tick()
        return ("me", T) not in table.rows

    await async_wait_until(row_gone, 2, "the empty row to be deleted")


async def test_a_lost_heartbeat_row_makes_the_replica_write_all_its_rows_again() -> None:
    table = Table()
    me = Replica(table)
    me.join(ALICE)
    me.join(BOB, "other")
    await me.presence.tick()
    table.replicas.clear()  # what a crash does to unlogged tables
    table.rows.clear()
    await me.presence.tick()
    assert table.rows[("me", T)][:2] == ([ALICE], 0)
    assert table.rows[("me", "other")][:2] == ([BOB], 0)


async def test_a_replica_id_taken_by_another_live_process_is_left_for_a_unique_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    table = Table()
    me = Replica(table)
    me.join(ALICE)
    await me.presence.tick()
    table.replicas["me"][0] = "someone-else"
    await me.presence.tick()
    assert me.presence.replica.startswith("me/")
    assert table.rows[(me.presence.replica, T)][:2] == ([ALICE], 0)
    assert "TRACKTALK_REPLICA_ID" in caplog.text


async def test_a_write_that_finds_the_id_claimed_by_another_process_moves_to_its_own_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    table = Table()
    me = Replica(table, timing=Timing(tick=0.0, heartbeat=3600.0, send_every=0.0))
    me.join(ALICE)
    await me.presence.tick()
    assert table.rows[("me", T)][:2] == ([ALICE], 0)
    await table.claim("me", "someone-else")  # another process starts with the same id
    me.join(BOB)
    await me.presence.tick()  # no heartbeat due: the write finds it out
    assert ("me", T) not in table.rows  # nothing of this process's under the id it lost ...
    assert me.presence.replica.startswith("me/")  # ... and it counts under its own at once
    assert "TRACKTALK_REPLICA_ID" in caplog.text
    await me.presence.tick()
    assert table.rows[(me.presence.replica, T)][:2] == ([ALICE, BOB], 0)
    assert table.replicas["me"][0] == "someone-else"


async def test_shutdown_deletes_this_replicas_rows() -> None:
    table = Table()
    me = Replica(table, timing=Timing(tick=0.01, heartbeat=0.01))
    async with me.presence.running():
        me.join(ALICE)
        await async_wait_until(lambda: ("me", T) in table.rows, 2, "the row to be written")
    assert "me" not in table.replicas and ("me", T) not in table.rows


# ---------------------------------------------------------------------------------------------
# Pace
# ---------------------------------------------------------------------------------------------

QUIET = Timing(tick=0.01, quiet_tick=0.5, quiet_after=0.1, heartbeat=3600.0)
"""A round every 10 ms while things change; every 0.5 s once nothing has for 0.1 s."""


async def test_a_replica_where_nothing_changes_reads_at_the_quiet_pace() -> None:
    """An idle replica's reads were a sixth of its idle CPU at four a second: once nothing has
    changed for `quiet_after`, a round comes every `quiet_tick`."""
    table = Table()
    me = Replica(table, timing=QUIET)
    async with me.presence.running():
        me.join(ALICE)
        await async_wait_until(lambda: ("me", T) in table.rows, 2, "the row written")
        await async_wait_until(lambda: me.presence._quiet, 5, "the quiet pace")
        quiet = len(table.times("read"))
        await async_wait_until(lambda: len(table.times("read")) >= quiet + 3, 5, "quiet reads")
    reads = table.times("read")
    gaps = [b - a for a, b in itertools.pairwise(reads)]
    assert min(gaps[:3]) < 0.1  # changing: the tick's pace
    assert all(gap >= 0.45 for gap in gaps[-3:]), gaps[-3:]  # then quiet


async def test_a_socket_here_ends_a_quiet_wait_and_a_change_read_keeps_the_pace_up() -> None:
    """A socket coming or going here is written at once, not a quiet tick later; a row another
    replica changed is read within a quiet tick, and the rounds go at the tick's pace again."""
    table = Table()
    me = Replica(table, timing=QUIET)
    async with me.presence.running():
        me.join(ALICE)
        await async_wait_until(lambda: me.presence._quiet, 5, "the quiet pace")
        joined = time.monotonic()
        bob = me.join(BOB)
        await async_wait_until(lambda: table.rows[("me", T)][0] == [ALICE, BOB], 2, "bob's row")
        assert table.times("write")[-1] - joined < 0.25  # not a quiet tick (0.5 s) later
        await async_wait_until(lambda: me.presence._quiet, 5, "quiet again")
        left = time.monotonic()
        me.leave(bob)
        await async_wait_until(lambda: table.rows[("me", T)][0] == [ALICE], 2, "bob gone from the row")
        assert table.times("write")[-1] - left < 0.25  # a socket going: likewise
        await async_wait_until(lambda: me.presence._quiet, 5, "quiet again")
        written = time.monotonic()
        table.other("r2", T, [DAVE])
        await async_wait_until(lambda: me.count() == 2, 2, "dave, from the other replica")
        seen = len(table.times("read"))
        assert table.times("read")[-1] - written < 0.6  # within a quiet tick
        await async_wait_until(lambda: len(table.times("read")) >= seen + 3, 2, "more reads")
    reads = table.times("read")[seen - 1 : seen + 2]
    assert all(b - a < 0.1 for a, b in itertools.pairwise(reads)), reads  # the tick's pace


# ---------------------------------------------------------------------------------------------
# A database that fails or goes back in time
# ---------------------------------------------------------------------------------------------


async def test_after_a_failure_the_next_read_is_whole_and_misses_no_deletion() -> None:
    table = Table()
    me = Replica(table)
    me.join(ALICE)
    table.other("r2", T, [BOB])
    await me.presence.tick()
    assert me.count() == 2
    table.fail = True
    me.join(DAVE)
    await me.presence.tick()  # logged, not raised
    table.fail = False
    del table.rows[("r2", T)]  # deleted meanwhile: a read of changes alone would not see it
    await me.presence.tick()
    assert me.count() == 2  # alice and dave
    assert table.rows[("me", T)][0] == [ALICE, DAVE]  # the write failed, and was done again


async def test_transaction_ids_going_back_make_a_whole_read() -> None:
    table = Table()
    me = Replica(table)
    me.join(ALICE)
    table.other("r2", T, [BOB])
    await me.presence.tick()
    table.xid = 0  # a database restored from a backup
    table.rows[("r2", T)] = ([BOB, DAVE], 0, 0)
    await me.presence.tick()
    await me.presence.tick()
    assert me.count() == 3


# ---------------------------------------------------------------------------------------------
# Frames
# ---------------------------------------------------------------------------------------------


async def test_a_new_socket_is_greeted_and_the_others_hear_of_it_at_most_once_a_second() -> None:
    table = Table()
    me = Replica(table, timing=Timing(tick=0.0, heartbeat=0.0, send_every=0.2))
    alice = me.join(ALICE)
    await me.presence.tick()
    assert heard(alice) == [1]
    bob = me.join(BOB)  # within the track's second: bob is greeted, alice waits
    dave = me.join(DAVE)
    assert heard(bob) == [2] and heard(dave) == [3] and heard(alice) == [1]
    await async_wait_until(lambda: heard(alice) == [1, 3], 2, "the coalesced count")
    assert heard(bob) == [2, 3] and heard(dave) == [3]  # never the number it was last told
    # A socket that comes and goes within the second changes nothing anyone was told.
    me.leave(me.join(TINA))
    me.leave(dave)
    await async_wait_until(lambda: heard(alice) == [1, 3, 2], 2, "the next count")
    assert heard(bob) == [2, 3, 2]


async def test_what_comes_and_goes_within_the_second_is_never_sent() -> None:
    table = Table()
    me = Replica(table, timing=Timing(tick=0.0, heartbeat=0.0, send_every=0.2))
    alice = me.join(ALICE)
    await me.presence.tick()
    for user in (BOB, DAVE):  # 2, 1, 2, 1 within the second
        me.leave(me.join(user))
    me.join(TINA)  # and then 2 to stay
    await async_wait_until(lambda: heard(alice) == [1, 2], 2, "tina's arrival")
    assert len(heard(alice)) == 2


async def test_a_leaving_socket_is_not_told() -> None:
    table = Table()
    me = Replica(table)
    alice, bob = me.join(ALICE), me.join(BOB)
    await me.presence.tick()
    me.leave(bob)
    assert heard(alice) == [2, 1] and heard(bob) == [2]


async def test_metrics_count_a_track_without_sockets_here_from_the_others_rows() -> None:
    table = Table()
    me = Replica(table)
    table.other("r2", "elsewhere", [BOB, DAVE], anonymous=1)
    table.other("dead", "elsewhere", [TINA])
    table.replicas["dead"][1] = 20.0
    await me.presence.tick()
    assert me.presence.listening("elsewhere") is None
    assert await me.presence.count(None, "elsewhere") == 3  # type: ignore[arg-type]
