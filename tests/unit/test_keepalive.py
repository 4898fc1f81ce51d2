"""app/live/keepalive.py: one wheel pings every socket once an interval, and closes the silent."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from typing import cast

import pytest
import uvicorn
import uvloop
from uvicorn.server import ServerState

from app import server
from app.config import Settings
from app.live.keepalive import INTERVAL, PING, Keepalive
from app.live.wsprotocol import FrameProtocol
from app.main import Tracktalk
from tests.support.fakes import HANDSHAKE, FakeTransport
from tests.support.waiting import async_wait_until

PONG = bytes([0x8A, 0x80 | 2]) + b"\x00\x00\x00\x00" + b"tt"
"""A client's pong (masked, mask 0)."""


class Socket:
    def __init__(self, answers: bool = True) -> None:
        self.keepalive_slot = -1
        self.answers = answers
        self.pings = 0
        self.pending = False
        self.closed = False

    def keepalive_turn(self) -> bool:
        if self.pending:
            self.closed = True
            return False
        self.pings += 1
        self.pending = not self.answers
        return True


async def test_every_socket_is_pinged_once_an_interval_and_a_storm_is_spread_over_it() -> None:
    wheel = Keepalive(asyncio.get_running_loop(), 20, tick=1.0)
    storm = [Socket() for _ in range(2_000)]  # opened in the same moment
    for socket in storm:
        wheel.add(socket)
    pinged_per_turn = []
    for _ in range(20):
        before = sum(s.pings for s in storm)
        wheel._tick()
        pinged_per_turn.append(sum(s.pings for s in storm) - before)
    assert all(s.pings == 1 for s in storm)  # each once in the interval
    assert pinged_per_turn == [100] * 20  # not 2,000 in one turn
    wheel._tick()
    assert sum(s.pings for s in storm) == 2_100  # the next interval begins
    wheel.stop()


async def test_a_socket_that_does_not_answer_is_closed_at_its_next_turn_and_leaves() -> None:
    wheel = Keepalive(asyncio.get_running_loop(), 3, tick=1.0)
    silent, alive = Socket(answers=False), Socket()
    wheel.add(silent)
    wheel.add(alive)
    for _ in range(3):
        wheel._tick()
    assert silent.pings == 1 and not silent.closed
    for _ in range(3):
        wheel._tick()
    assert silent.closed and silent.keepalive_slot == -1 and len(wheel) == 1
    assert alive.pings == 2 and not alive.closed
    wheel.discard(alive)
    assert len(wheel) == 0
    wheel.stop()


async def test_a_real_socket_is_pinged_kept_while_it_answers_and_closed_with_1011_when_not() -> None:
    async def app(scope: object, receive: object, send: object) -> None:
        await asyncio.Event().wait()

    config = uvicorn.Config(app, ws=FrameProtocol, lifespan="off", log_level="warning", ws_ping_interval=1)
    config.load()
    protocol = FrameProtocol(config, ServerState(), {})
    transport = FakeTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    protocol.data_received(HANDSHAKE)
    await asyncio.sleep(0)
    assert protocol.accept_with(b"")
    start = len(transport.written)
    await async_wait_until(lambda: transport.written[start:] == PING, 5, "the first ping")
    protocol.data_received(PONG)
    await async_wait_until(lambda: transport.written[start:] == PING + PING, 5, "the next ping")
    # No pong this time: at its next turn the socket is closed as uvicorn closes it (1011).
    await async_wait_until(lambda: b"keepalive ping timeout" in transport.written, 5, "the close")
    assert transport.written[start + 2 * len(PING) : start + 2 * len(PING) + 4] == b"\x88\x18\x03\xf3"
    protocol.connection_lost(None)


async def test_two_servers_on_one_loop_ping_each_at_its_own_interval() -> None:
    """The wheel is the loop's and its interval's: a server made second on a loop (the tests run
    every server on one loop) keeps its own interval, not the first server's."""

    async def app(scope: object, receive: object, send: object) -> None:
        await asyncio.Event().wait()

    def accepted(interval: float) -> tuple[FrameProtocol, FakeTransport]:
        config = uvicorn.Config(
            app, ws=FrameProtocol, lifespan="off", log_level="warning", ws_ping_interval=interval
        )
        config.load()
        protocol = FrameProtocol(config, ServerState(), {})
        transport = FakeTransport()
        protocol.connection_made(transport)  # type: ignore[arg-type]
        protocol.data_received(HANDSHAKE)
        assert protocol.accept_with(b"")
        return protocol, transport

    slow, _ = accepted(600)  # first: its wheel turns once in ten minutes
    fast, transport = accepted(0.5)
    start = len(transport.written)
    await async_wait_until(lambda: transport.written[start:] == PING, 3, "the fast server's ping")
    fast.data_received(PONG)
    await async_wait_until(lambda: transport.written[start:] == PING + PING, 3, "its next ping")
    for protocol in (slow, fast):
        protocol.connection_lost(None)


class Broken(Socket):
    def keepalive_turn(self) -> bool:
        raise RuntimeError("a socket in a state nobody expected")


async def test_a_socket_whose_turn_fails_leaves_the_wheel_and_the_others_are_still_pinged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    wheel = Keepalive(asyncio.get_running_loop(), 0.02, tick=0.01)  # two slots
    broken, first, second = Broken(), Socket(), Socket()
    for socket in (broken, first, second):  # broken and second share a slot
        wheel.add(socket)
    assert broken.keepalive_slot == second.keepalive_slot
    await async_wait_until(lambda: first.pings >= 5 and second.pings >= 5, 3, "the others' pings")
    assert broken.keepalive_slot == -1 and len(wheel) == 2
    assert "keepalive" in caplog.text and "RuntimeError" in caplog.text
    wheel.stop()


class BusyLoop:
    """A clock whose callbacks each run `late` seconds after they are due, as on a loop kept busy
    (a storm, a big fan-out): only `time`, `call_at` and `call_later`, which the wheel uses."""

    def __init__(self, late: float) -> None:
        self.now = 0.0
        self.late = late
        self._due: list[tuple[float, int, asyncio.Handle]] = []
        self._made = 0

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], None]) -> asyncio.Handle:
        handle = asyncio.Handle(callback, (), asyncio.get_running_loop())
        self._made += 1
        heapq.heappush(self._due, (max(when, self.now) + self.late, self._made, handle))
        return handle

    def call_later(self, delay: float, callback: Callable[[], None]) -> asyncio.Handle:
        return self.call_at(self.now + delay, callback)

    def run_until(self, end: float) -> None:
        while self._due and self._due[0][0] <= end:
            when, _, handle = heapq.heappop(self._due)
            self.now = max(self.now, when)  # what fell due during a stall runs when it ends
            if not handle.cancelled():
                handle._run()


async def test_a_busy_loop_does_not_stretch_the_interval_between_two_pings() -> None:
    """Each turn of the wheel runs late on a busy loop; the turns are kept on their schedule, so a
    socket is still pinged once an interval (were each turn set from when the last one ran, 400
    turns' lateness would add up: a 20 s interval became 40 s or more, past a proxy's idle
    timeout of 60 s on a replica under load)."""
    loop = BusyLoop(late=0.04)
    wheel = Keepalive(loop, 1.0, tick=0.05)  # type: ignore[arg-type]
    pinged: list[float] = []

    class Timed(Socket):
        def keepalive_turn(self) -> bool:
            pinged.append(loop.now)
            return super().keepalive_turn()

    wheel.add(Timed())
    loop.run_until(10.0)
    gaps = [later - earlier for earlier, later in itertools.pairwise(pinged)]
    assert len(gaps) >= 8 and max(gaps) <= 1.0 + 0.05, gaps
    wheel.stop()


async def test_after_a_stall_of_the_loop_a_socket_still_has_most_of_an_interval_to_answer() -> None:
    """A wheel that catches up after a stall pings some sockets late; their next turn (which
    closes them if they have not answered) must not come right after: the catch-up is bounded."""
    loop = BusyLoop(late=0.0)
    wheel = Keepalive(loop, 1.0, tick=0.05)  # type: ignore[arg-type]
    turns: dict[int, list[float]] = {}

    class Timed(Socket):
        def keepalive_turn(self) -> bool:
            turns.setdefault(id(self), []).append(loop.now)
            return super().keepalive_turn()

    for _ in range(40):
        wheel.add(Timed())
    loop.run_until(2.0)
    loop.now += 3.0  # the loop stalls for three intervals
    loop.run_until(10.0)
    gaps = [later - earlier for times in turns.values() for earlier, later in itertools.pairwise(times)]
    assert len(gaps) >= 40 * 6 and min(gaps) >= 0.75 - 0.05 - 1e-9, min(gaps)
    wheel.stop()


def test_a_replica_runs_on_uvloop_and_pings_its_sockets_every_interval() -> None:
    """What the idle replica's figures were measured on (docs/performance.md): uvloop, and a ping
    every 25 s. Either could go unnoticed: every test passes on asyncio's loop, and none waits 25 s."""
    settings = Settings(database_url="postgresql://unused/unused", secret="x" * 32)
    app = cast("Tracktalk", object())  # uvicorn loads it only when it serves
    config = server.config(app, settings, "127.0.0.1", 8000, 100)
    assert config.ws_ping_interval == INTERVAL == 25.0
    factory = config.get_loop_factory()
    assert factory is not None
    loop = factory()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()
