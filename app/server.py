"""uvicorn, set up for tracktalk: the replica's edge (a deadline on each request and a cap on
connections, app/edge/httpprotocol.py; the file limit raised and the cap fitted to it; the proxies
whose X-Forwarded-For is believed), and a shutdown that says goodbye to the sockets first."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import resource
import socket
from types import FrameType

import uvicorn

from app import garbage
from app.bounds import MAX_FRAME
from app.config import Settings
from app.edge.httpprotocol import HEALTH_ROOM, EdgeProtocol
from app.env import ConfigError
from app.live import close_codes, keepalive
from app.live.wsprotocol import FrameProtocol
from app.logs import tame_uvicorn
from app.main import Tracktalk

log = logging.getLogger(__name__)

_OTHER_FILES = 100
"""File descriptors kept for what is not a client connection, besides the request pool: the
listening socket, the LISTEN connection, the event loop's own, logs, the page's files, the
identity provider's JWKS fetch."""
_AS_MANY_FILES = 1 << 20
"""The file limit taken for "unlimited" (which a soft limit cannot be set to)."""
_DRAIN_GRACE = 0.5
"""Seconds the sockets get to receive their 1001 before uvicorn closes what is left."""
_M_MMAP_THRESHOLD = -3
"""glibc's mallopt() parameter number (malloc.h)."""
MMAP_THRESHOLD = 128 * 1024
"""Bytes from which glibc's malloc maps each block of its own, given back when freed: its
default, kept fixed (see tune_malloc)."""


class Server(uvicorn.Server):
    """On SIGTERM or Ctrl-C: refuse new sockets, close open ones with 1001, then let uvicorn
    finish the requests in flight and stop (within its graceful timeout). Each tick of its main
    loop (0.1 s), the garbage collector is kept off the sockets opened since the last
    (app/garbage.py)."""

    def __init__(self, config: uvicorn.Config, app: Tracktalk) -> None:
        super().__init__(config)
        self._app = app
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False
        self._freezer: garbage.Freezer | None = None
        self._freezer_failed = False

    async def on_tick(self, counter: int) -> bool:
        """uvicorn's tick, after the freezer's; a freezer that fails is logged, and the collector
        gets back all it froze (an exception here would end uvicorn's main loop, and the server
        with it, ungracefully)."""
        services = getattr(self._app.state, "services", None)
        if services is not None and self._loop is not None and not self._freezer_failed:
            now = self._loop.time()
            try:
                if self._freezer is None:
                    hub = services.hub
                    self._freezer = garbage.running = garbage.Freezer(
                        lambda: hub.opened, lambda: hub.closed, now
                    )
                self._freezer.tick(now)
            except Exception:
                log.exception("the garbage collector's freezer failed: all it froze is let back, and no more")
                self._freezer_failed = True
                gc.unfreeze()  # else what it froze, and what of it became garbage, stays for good
        return await super().on_tick(counter)

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


def raise_file_limit() -> int:
    """Raise this process's soft limit on open files (RLIMIT_NOFILE) to its hard limit, each
    client connection being one; the limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    infinite = resource.RLIM_INFINITY
    target = _AS_MANY_FILES if hard == infinite else hard
    if soft != infinite and soft < target:
        with contextlib.suppress(ValueError, OSError):  # a kernel that caps lower keeps the soft one
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return _AS_MANY_FILES if soft == infinite else int(soft)


def max_connections(settings: Settings, files: int) -> int:
    """The client connections a replica holds: TRACKTALK_MAX_CONNECTIONS, or as many as `files`
    (the file limit) leaves room for once the pool, the other files and the connections read past
    the cap (to answer /healthz) have theirs; ConfigError when that is not enough."""
    room = files - _OTHER_FILES - settings.pool_max - HEALTH_ROOM
    if room < 1:
        raise ConfigError(
            f"the file limit (ulimit -n) is {files}: too low for a replica; raise it to "
            f"{_OTHER_FILES + settings.pool_max + HEALTH_ROOM + 1000} or more"
        )
    if settings.max_connections > room:
        raise ConfigError(
            f"TRACKTALK_MAX_CONNECTIONS={settings.max_connections} is more than the file limit (ulimit -n "
            f"{files}) leaves room for ({room}): lower it, or raise the limit"
        )
    return settings.max_connections or room


def config(app: Tracktalk, settings: Settings, host: str, port: int, connections: int) -> uvicorn.Config:
    """uvicorn's settings for tracktalk: at most `connections` client connections."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        # h11 with a deadline on each request and the cap on connections (app/edge/httpprotocol.py).
        http=EdgeProtocol.limited(connections),
        # uvloop where it is installed (every platform but Windows: pyproject.toml), else asyncio's.
        loop="auto",
        # wsproto's connection, plus the fast path for prepared frames (app/live/wsprotocol.py).
        ws=FrameProtocol,
        ws_max_size=MAX_FRAME,
        ws_ping_interval=keepalive.INTERVAL,
        # Off, and never negotiated (FrameProtocol.accept_with offers no extension): a track's
        # frames are the same prepared bytes for every socket; deflate would compress each one
        # again for each socket and multiply an idle socket's memory. See docs/performance.md.
        ws_per_message_deflate=False,
        lifespan="on",
        log_level="info",
        timeout_graceful_shutdown=8,
        # The client address (X-Forwarded-For's right-most untrusted one) for every route and
        # socket, from the one setting (the sockets' limit per address uses it too).
        proxy_headers=True,
        forwarded_allow_ips=list(settings.trusted_proxies),
    )


def tune_malloc() -> None:
    """Give large blocks back to the system when they are freed (glibc only; elsewhere nothing).

    A socket's unsent bytes (up to TRACKTALK_SOCKET_BUFFER_KIB) and a catch-up's page are blocks
    of hundreds of KB. glibc maps such blocks on their own and unmaps them when freed, but each
    time it frees one it raises the size from which it does so, up to 32 MB; from then on they
    come from the heap, which keeps what is freed. Measured with 100 stalled sockets cut off
    three times over (tests/integration/test_backpressure.py): the replica's memory ratcheted 70 -> 160 ->
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


def shared_port(host: str, port: int) -> socket.socket:
    """A socket bound to `host`:`port` with SO_REUSEPORT, for several replicas on one port.

    Every process that binds the port so (same user) gets its own accept queue once it listens,
    and the kernel spreads new connections over the queues by a hash of their addresses: each
    process is a whole replica (its LISTEN connection, its pool, its sockets) on one core, as if on
    a port of its own. Bound, not listening: uvicorn listens after the app has started, so no
    connection waits in the queue of a process that is not ready.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot bind {host}:{port} with SO_REUSEPORT ({exc}): a process holds that port without "
            "--reuse-port, or as another user; stop it or choose another --port"
        ) from None
    return sock


def serve(app: Tracktalk, settings: Settings, host: str, port: int, reuse_port: bool = False) -> None:
    """Serve until SIGTERM or Ctrl-C; ConfigError when the file limit is too low. With
    `reuse_port`, on a port other processes may share (shared_port)."""
    sockets = [shared_port(host, port)] if reuse_port else None
    files = raise_file_limit()
    connections = max_connections(settings, files)
    uvicorn_config = config(app, settings, host, port, connections)  # sets uvicorn's loggers up
    tame_uvicorn(json=settings.log_json)
    log.info(
        "file limit %d: up to %d client connections (requests and sockets)%s",
        files,
        connections,
        " (TRACKTALK_MAX_CONNECTIONS)" if settings.max_connections else "",
    )
    garbage.tune()
    tune_malloc()
    Server(uvicorn_config, app).run(sockets=sockets)
