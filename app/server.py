"""uvicorn, set up for tracktalk, and a shutdown that says goodbye to the sockets first."""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
from types import FrameType

import uvicorn

from app import close_codes
from app.logs import tame_uvicorn
from app.main import Tracktalk
from app.wire import MAX_FRAME
from app.wsprotocol import FrameProtocol

_DRAIN_GRACE = 0.5
"""Seconds the sockets get to receive their 1001 before uvicorn closes what is left."""
GC_THRESHOLDS = (50_000, 10, 10)
"""The cyclic garbage collector's thresholds for a server (Python's default: 700, 10, 10)."""
_M_MMAP_THRESHOLD = -3
"""glibc's mallopt() parameter number (malloc.h)."""
MMAP_THRESHOLD = 128 * 1024
"""Bytes from which glibc's malloc maps each block of its own, given back when freed: its
default, kept fixed (see tune_malloc)."""

log = logging.getLogger(__name__)


class Server(uvicorn.Server):
    """On SIGTERM or Ctrl-C: refuse new sockets, close open ones with 1001, then let uvicorn
    finish the requests in flight and stop (within its graceful timeout)."""

    def __init__(self, config: uvicorn.Config, app: Tracktalk) -> None:
        super().__init__(config)
        self._app = app
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False

    async def serve(self, sockets: list[object] | None = None) -> None:  # type: ignore[override]
        """Remember the loop, then serve as uvicorn does."""
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)  # type: ignore[arg-type]

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """First signal: drain the sockets, then exit; a second one exits at once."""
        if self._draining or self._loop is None:
            super().handle_exit(sig, frame)
            return
        self._draining = True
        self._loop.call_soon_threadsafe(self._drain, sig, frame)

    def _drain(self, sig: int, frame: FrameType | None) -> None:
        services = getattr(self._app.state, "services", None)
        if services is not None:
            services.hub.close_all(close_codes.GOING_AWAY, close_codes.SHUTTING_DOWN)
        assert self._loop is not None
        self._loop.call_later(_DRAIN_GRACE, super().handle_exit, sig, frame)


def config(app: Tracktalk, host: str, port: int) -> uvicorn.Config:
    """uvicorn's settings for tracktalk."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        # wsproto's connection, plus the fast path for prepared frames (app/wsprotocol.py).
        ws=FrameProtocol,
        ws_max_size=MAX_FRAME,
        # Off, and never negotiated (FrameProtocol.accept_with offers no extension): a track's
        # frames are the same prepared bytes for every socket; deflate would compress each one
        # again for each socket and multiply an idle socket's memory. See docs/performance.md.
        ws_per_message_deflate=False,
        lifespan="on",
        log_level="info",
        timeout_graceful_shutdown=8,
        proxy_headers=True,
    )


def tune_gc() -> None:
    """Collect garbage cycles less often, and never look at what startup made again.

    Measured when each socket still had a writer task and ASGI messages (a few short-lived
    objects per socket per event): with Python's default threshold of 700 they piled into the
    oldest generation, whose full collections scan every socket's objects (the bench's fan-out
    to 5,000 sockets: 17 full collections, 5.0 s of CPU in 25 s, up to 0.44 s each); with these
    thresholds, ~0.5 s of collections and none of the oldest. Frames are now written straight
    to the transports, which makes far fewer such objects; the thresholds stay for what is left
    (admissions, replays, requests), and the fan-out's profile shows no collection worth a line.
    """
    gc.collect()  # what startup left unreachable, before the rest is frozen for good
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def tune_malloc() -> None:
    """Give large blocks back to the system when they are freed (glibc only; elsewhere nothing).

    A socket's unsent bytes (up to TRACKTALK_SOCKET_BUFFER_KIB) and a catch-up's page are blocks
    of hundreds of KB. glibc maps such blocks on their own and unmaps them when freed, but each
    time it frees one it raises the size from which it does so, up to 32 MB; from then on they
    come from the heap, which keeps what is freed. Measured with 100 stalled sockets cut off
    three times over (tests/test_backpressure.py): the replica's memory ratcheted 70 -> 160 ->
    280 MiB with 13 MiB in use, 227 MiB of it freed but kept. Fixed at its default, the
    threshold no longer moves and what the stalled sockets took goes back once they are gone.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):
        return  # not glibc: its allocator is its own
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    if mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1:
        log.warning("malloc's mmap threshold not set: memory freed may stay with the process")


def serve(app: Tracktalk, host: str, port: int, *, json_logs: bool = False) -> None:
    """Serve until SIGTERM or Ctrl-C."""
    settings = config(app, host, port)  # configures uvicorn's loggers: tame them after
    tame_uvicorn(json=json_logs)
    tune_gc()
    tune_malloc()
    Server(settings, app).run()
