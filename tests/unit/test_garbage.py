"""app/garbage.py's Freezer: a burst of new sockets is frozen out of the garbage collector, and
what was frozen is collected once every COLLECT_EVERY seconds when sockets opened or closed since.

The gc module's functions are stand-ins here, recording their calls: freezing this test process
would keep its garbage for good. tests/integration/test_operations.py sees a replica do it."""

from __future__ import annotations

import asyncio
import gc
import logging
from types import SimpleNamespace

import pytest
import uvicorn

from app.garbage import BURST, COLLECT_EVERY, Freezer
from app.server import Server


class _Sockets:
    def __init__(self) -> None:
        self.opened = 0
        self.closed = 0
        self.calls: list[str] = []

    def freezer(self, now: float = 0.0) -> Freezer:
        return Freezer(
            lambda: self.opened,
            lambda: self.closed,
            now,
            freeze=lambda: self.calls.append("freeze"),
            unfreeze=lambda: self.calls.append("unfreeze"),
            collect=lambda: self.calls.append("collect"),
        )


def test_a_burst_of_sockets_is_frozen_at_the_next_tick_and_fewer_are_not() -> None:
    sockets = _Sockets()
    sockets.opened = 5_000  # opened before: not a burst
    freezer = sockets.freezer()
    freezer.tick(0.1)
    assert sockets.calls == []
    sockets.opened += BURST - 1
    freezer.tick(0.2)
    assert sockets.calls == []
    sockets.opened += 1
    freezer.tick(0.3)
    assert sockets.calls == ["freeze"] and freezer.freezes == 1
    freezer.tick(0.4)  # nothing new since
    assert sockets.calls == ["freeze"]


def test_what_bursts_froze_is_collected_once_every_period_and_only_then() -> None:
    sockets = _Sockets()
    freezer = sockets.freezer(now=0.0)
    freezer.tick(COLLECT_EVERY + 1)  # no burst yet: nothing owed
    assert sockets.calls == []
    sockets.opened += BURST
    freezer.tick(COLLECT_EVERY + 2)
    # the burst is frozen, then everything let back, collected once, and frozen again
    assert sockets.calls == ["freeze", "unfreeze", "collect", "freeze"] and freezer.collections == 1
    sockets.opened += BURST
    freezer.tick(COLLECT_EVERY + 3)
    assert sockets.calls[4:] == ["freeze"]  # owed again, but not before the period
    freezer.tick(2 * COLLECT_EVERY + 2)
    assert sockets.calls[5:] == ["unfreeze", "collect", "freeze"] and freezer.collections == 2


def test_what_closed_sockets_leave_is_collected_though_no_burst_came_since() -> None:
    """A burst frozen, then collected (and what was left, the live sockets, frozen again): when
    those sockets close, what they leave in reference cycles is frozen garbage that only the
    next collection frees, with or without a new burst; with nothing opened or closed, none."""
    sockets = _Sockets()
    freezer = sockets.freezer(now=0.0)
    sockets.closed += 3  # before any burst: the collector's own generations hold them
    sockets.opened += BURST
    freezer.tick(1.0)
    freezer.tick(COLLECT_EVERY + 1)
    assert sockets.calls == ["freeze", "unfreeze", "collect", "freeze"]
    freezer.tick(3 * COLLECT_EVERY)  # nothing opened or closed since
    assert freezer.collections == 1
    sockets.closed += 1  # a socket frozen at the last collection goes
    freezer.tick(3 * COLLECT_EVERY + 1)
    assert sockets.calls[4:] == ["unfreeze", "collect", "freeze"] and freezer.collections == 2
    sockets.closed += 1
    freezer.tick(3 * COLLECT_EVERY + 2)  # not before the period
    assert freezer.collections == 2
    freezer.tick(4 * COLLECT_EVERY + 1)
    assert freezer.collections == 3


def test_no_collection_on_a_replica_that_never_froze_a_burst() -> None:
    sockets = _Sockets()
    freezer = sockets.freezer(now=0.0)
    sockets.opened += BURST - 1
    sockets.closed += BURST - 1
    freezer.tick(COLLECT_EVERY + 1)
    assert sockets.calls == [] and freezer.collections == 0


class _FailingHub:
    @property
    def opened(self) -> int:
        raise RuntimeError("a freezer that fails")

    closed = 0


class _App:
    def __init__(self) -> None:
        self.state = SimpleNamespace(services=SimpleNamespace(hub=_FailingHub()))

    async def __call__(self, scope: object, receive: object, send: object) -> None: ...


async def test_a_freezer_that_fails_is_logged_and_uvicorns_main_loop_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """uvicorn's main loop ends, and the server with it without its graceful shutdown, at the
    first exception of a tick: the freezer's is logged once, the collector gets back what was
    frozen, and the tick goes on without the freezer."""
    app = _App()
    config = uvicorn.Config(app, lifespan="off", log_level="warning")
    config.load()
    server = Server(config, app)  # type: ignore[arg-type]
    server._loop = asyncio.get_running_loop()
    gc.freeze()  # as a replica's startup does: what the failing freezer leaves is let back
    try:
        with caplog.at_level(logging.ERROR, logger="app.server"):
            assert await server.on_tick(0) is False
            assert await server.on_tick(1) is False
        assert gc.get_freeze_count() == 0
    finally:
        gc.unfreeze()
    failures = [r for r in caplog.records if "freezer failed" in r.getMessage()]
    assert len(failures) == 1 and failures[0].exc_info is not None
    server.should_exit = True
    assert await server.on_tick(2) is True
