"""The one LISTEN connection of this replica.

It is its own autocommit connection (not from the request pool; through PgBouncer it must be a
session-mode URL: TRACKTALK_LISTEN_URL). It LISTENs only on the channels the feed asks for (the
tracks and users with sockets here, see app/channels.py), adding and dropping channels in
batches: one round trip for however many sockets arrived meanwhile.

While idle it waits for the socket to be readable and takes every notification libpq has parsed
in one go (psycopg's `notifies()` generator costs ~80 µs a notification; this, a few), hands each
to the codec, then to the sink, synchronously: nothing on this path waits for anything. When the
connection drops (network, pg_terminate_backend, a server restart) it reconnects with backoff and
jitter, reads the channel key, LISTENs again and only then lets the sink catch up on what
committed meanwhile (the feed does it in the background; until it is done the replica is not
ready).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Iterable
from typing import Any, Protocol

import psycopg
from psycopg import pq, sql
from psycopg.conninfo import make_conninfo

from app.channels import HINT, TRACK_PREFIX, Codec, Opened
from app.events import read_channel_key
from app.logs import one_line

log = logging.getLogger(__name__)

_BACKOFF_FIRST = 0.05
"""Seconds before the first reconnect attempt (then doubling, with jitter)."""
_BACKOFF_MAX = 5.0
"""Longest wait between reconnect attempts."""
_KEEPALIVE = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3}
"""TCP keepalives, so that a peer that vanished without a word is noticed within ~25 s."""
_CONNECT_TIMEOUT = 5
_BATCH = 1000
"""LISTEN or UNLISTEN statements sent in one round trip."""
_REKEY_EVERY = 10.0
"""Seconds between two readings of the channel key prompted by payloads that fail to verify."""


class NoticeSink(Protocol):
    """Where the listener delivers (the feed)."""

    def on_listen(self) -> None:
        """Called after each successful (re)LISTEN: catch up on whatever was missed, in the
        background (the listener goes on reading at once)."""

    def on_notice(self, opened: Opened) -> None:
        """Called for each payload that verified, in commit order; must not wait for anything."""

    def on_hint(self, channel: str) -> None:
        """Called for a payload on a track's channel that did not verify: the track may have news."""


class Listener:
    """Holds the LISTEN connection and feeds checked payloads to a sink."""

    def __init__(self, conninfo: str, codec: Codec) -> None:
        self._conninfo = conninfo
        self._codec = codec
        self._sink: NoticeSink | None = None
        self._ready = False
        self._wanted: set[str] = set()
        self._listening: set[str] = set()
        self._unlistening: set[str] = set()
        """Channels an UNLISTEN in flight is dropping: not to be counted on."""
        self._waiters: list[tuple[frozenset[str], asyncio.Future[None]]] = []
        self._wake: asyncio.Future[None] | None = None
        self._rekey_due = False
        self._last_rekey = 0.0
        self.reconnects = 0
        """Times the connection was lost and made again."""
        self.backend_pid: int | None = None

    def attach(self, sink: NoticeSink) -> None:
        """Deliver to `sink` (the feed, made after the listener)."""
        self._sink = sink

    @property
    def ready(self) -> bool:
        """Connected, listening and caught up."""
        return self._ready

    @property
    def channels(self) -> int:
        """How many channels are listened on now."""
        return len(self._listening)

    async def listen(self, channels: Iterable[str]) -> bool:
        """LISTEN on `channels` too; return once that is in place (callers bound the wait): True
        when some of them were not in place already (a notice sent on them before now was not
        heard here), False when all were."""
        wanted = frozenset(channels)
        self._wanted |= wanted
        if self._ready and wanted <= self._listening and not wanted & self._unlistening:
            return False
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append((wanted, waiter))
        self._poke()
        await waiter
        return True

    def unlisten(self, channels: Iterable[str]) -> None:
        """Stop listening on `channels` (soon, in a batch)."""
        self._wanted.difference_update(channels)
        self._poke()

    async def run(self) -> None:
        """Listen until cancelled, reconnecting whenever the connection is lost."""
        failures = 0
        while True:
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except (psycopg.Error, OSError) as exc:
                log.warning("listener connection lost: %s", one_line(exc))
            except Exception:
                log.exception("listener failed; reconnecting to catch up")
            finally:
                # A session that got as far as ready starts the backoff afresh.
                failures = 0 if self._ready else failures
                self._ready = False
                self._listening = set()
                self.backend_pid = None
            failures += 1
            self.reconnects += 1
            delay = min(_BACKOFF_MAX, _BACKOFF_FIRST * 2 ** min(failures, 10))
            await asyncio.sleep(random.uniform(delay / 2, delay))

    async def _session(self) -> None:
        conninfo = make_conninfo(
            self._conninfo,
            application_name="tracktalk-listener",
            # The triggers sign the payload's UTF-8 bytes: have them come as UTF-8, whatever the
            # database's encoding.
            client_encoding="UTF8",
            connect_timeout=_CONNECT_TIMEOUT,
            **_KEEPALIVE,
        )
        conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
        async with conn:
            # Notifications that arrive while a command runs on this connection come this way.
            conn.add_notify_handler(lambda n: self._deliver(n.channel, n.payload.encode()))
            await self._read_key(conn)
            await self._sync_channels(conn)
            self.backend_pid = conn.info.backend_pid
            if self._sink is not None:
                self._sink.on_listen()
            self._ready = True
            self._resolve_waiters()
            log.info("listening on %d channels (backend pid %s)", len(self._listening), self.backend_pid)
            while True:
                await self._idle(conn)
                if self._rekey_due:
                    await self._read_key(conn)
                await self._sync_channels(conn)

    async def _idle(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Deliver notifications as they come until there is a command to run; raise when the
        connection is lost."""
        loop = asyncio.get_running_loop()
        pgconn = conn.pgconn
        wake = self._wake = loop.create_future()
        if self._wanted != self._listening or self._rekey_due:
            wake.set_result(None)

        def readable() -> None:
            try:
                pgconn.consume_input()
            except psycopg.OperationalError as exc:
                if not wake.done():
                    wake.set_exception(exc)
                return
            while (notify := pgconn.notifies()) is not None:
                self._deliver(notify.relname.decode(), notify.extra)
            if pgconn.status != pq.ConnStatus.OK and not wake.done():
                wake.set_exception(psycopg.OperationalError("the LISTEN connection was closed"))

        fd = pgconn.socket
        loop.add_reader(fd, readable)
        try:
            readable()  # anything that came with the last command's answer
            await wake
        finally:
            loop.remove_reader(fd)
            self._wake = None

    async def _sync_channels(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """LISTEN and UNLISTEN until the connection listens on exactly the wanted channels."""
        while (add := self._wanted - self._listening) | (drop := self._listening - self._wanted):
            adding, dropping = sorted(add)[:_BATCH], sorted(drop)[:_BATCH]
            statements = [sql.SQL("LISTEN {}").format(sql.Identifier(c)) for c in adding]
            statements += [sql.SQL("UNLISTEN {}").format(sql.Identifier(c)) for c in dropping]
            self._unlistening = set(dropping)
            try:
                await conn.execute(sql.SQL("; ").join(statements))
            finally:
                self._unlistening = set()
            self._listening = (self._listening | set(adding)) - set(dropping)
            self._resolve_waiters()

    async def _read_key(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._rekey_due = False
        self._last_rekey = asyncio.get_running_loop().time()
        self._codec.rekey(await read_channel_key(conn))

    def _deliver(self, channel: str, payload: bytes) -> None:
        """Check one payload and hand it over; nothing a payload holds may stop the listener."""
        try:
            unverified = self._codec.unverified
            opened = self._codec.open(payload)
            if self._codec.unverified != unverified:
                self._maybe_rekey()
            if self._sink is None:
                return
            if isinstance(opened, Opened):
                self._sink.on_notice(opened)
            elif opened is HINT and channel.startswith(TRACK_PREFIX):
                self._sink.on_hint(channel)
        except Exception:
            log.exception("a notification on %r could not be delivered", channel[:80])

    def _maybe_rekey(self) -> None:
        """Payloads that fail to verify may mean the key was changed: read it again, at most
        once every _REKEY_EVERY seconds (a forger cannot make us read it more often)."""
        if asyncio.get_running_loop().time() - self._last_rekey >= _REKEY_EVERY:
            self._rekey_due = True
            self._poke()

    def _poke(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    def _resolve_waiters(self) -> None:
        if not self._ready:
            return
        pending = []
        for channels, waiter in self._waiters:
            if waiter.done():
                continue
            if channels <= self._listening or not channels <= self._wanted:
                waiter.set_result(None)  # in place (or no longer wanted by anyone)
            else:
                pending.append((channels, waiter))
        self._waiters = pending
