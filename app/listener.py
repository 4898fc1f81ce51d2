"""The one LISTEN connection of this replica.

It is its own autocommit connection (not from the request pool; through PgBouncer it must be a
session-mode URL: TRACKTALK_LISTEN_URL). It LISTENs only on the channels the feed asks for (the
tracks and users with sockets here), under the names the channel key gives them (app/live/notices.py),
adding and dropping channels in batches: one round trip for however many sockets arrived
meanwhile. Nobody without the key can name these channels, so a flood of NOTIFYs on any name an
outsider can compute never reaches this process.

While idle it waits for the socket to be readable and takes every notification libpq has parsed
in one go (psycopg's `notifies()` generator costs ~80 µs a notification; this, a few), hands each
to the codec, then to the sink, synchronously: nothing on this path waits for anything. A payload
that does not verify costs one HMAC and is dropped. When the connection drops (network,
pg_terminate_backend, a server restart) it reconnects with backoff and jitter, reads the channel
key, LISTENs again and only then lets the sink catch up on what committed meanwhile (the feed does
it in the background; until it is done the replica is not ready).

A new channel key renames every channel. The listener hears of it on the `rekey` channel (told
under the old key by a trigger on tracktalk.channel_key; it also reads the key every minute, and
at each reconnect): it reads the new key, LISTENs under the new names and has the sink read from
the log what committed under them before that. A transaction that signed under the old key but
commits later sends on a name no longer listened on: the listener keeps a snapshot of the
transactions running when it read the new key, and has the sink read the log again each time some
of them end, until none is left. Nothing is lost, and the old key is trusted no longer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any, Protocol

import psycopg
from psycopg import pq, sql
from psycopg.conninfo import make_conninfo

from app.backoff import Backoff
from app.data.events import read_channel_key_and_snapshot, still_running
from app.live.notices import REKEY_NAME, Codec, Opened
from app.logs import one_line
from app.wire import Rekey

log = logging.getLogger(__name__)

_RECONNECT_FIRST = 0.1
"""Seconds before the first reconnect attempt, at most (then doubling; each wait drawn from its
second half, so that replicas cut off together do not all come back at once) ..."""
_RECONNECT_MOST = 5.0
"""... and the longest wait between two attempts."""
_KEEPALIVE = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3}
"""TCP keepalives, so that a peer that vanished without a word is noticed within ~25 s."""
_CONNECT_TIMEOUT = 5
_BATCH = 1000
"""LISTEN or UNLISTEN statements sent in one round trip."""
_KEY_CHECK_EVERY = 60.0
"""Seconds between two readings of the channel key, besides the `rekey` notices (a key changed
with the triggers off, by a restore or a replication apply, is followed within this)."""
_RETIRED_CHECK_EVERY = 0.5
"""Seconds between two looks at the transactions that may still send under a replaced key."""


class NoticeSink(Protocol):
    """Where the listener delivers (the feed)."""

    def on_listen(self) -> None:
        """Called after each successful (re)LISTEN: catch up on whatever was missed, in the
        background (the listener goes on reading at once)."""

    def on_notice(self, opened: Opened) -> None:
        """Called for each payload that verified, in commit order; must not wait for anything."""

    def catch_up(self) -> None:
        """Called when events may have gone by unheard while the connection stayed (the channels
        were renamed): read every watched track's log again, in the background."""


class Listener:
    """Holds the LISTEN connection and feeds checked payloads to a sink."""

    def __init__(self, conninfo: str, codec: Codec) -> None:
        self._conninfo = conninfo
        self._codec = codec
        self._sink: NoticeSink | None = None
        self._ready = False
        self._wanted: set[str] = set()
        """Names of the channels to listen on (app/live/notices.py's topic_name, user_name)."""
        self._listening: set[str] = set()
        """Channel names listened on."""
        self._unlistening: set[str] = set()
        """Channels an UNLISTEN in flight is dropping: not to be counted on."""
        self._waiters: list[tuple[frozenset[str], asyncio.Future[None]]] = []
        self._wake: asyncio.Future[None] | None = None
        self._rekey_due = False
        self._next_key_check = 0.0
        self._retired: tuple[str, int | None] | None = None
        """After a new key: a snapshot of the transactions then running (some may still send under
        the old one), and how many of them were running at the last look (None: not looked yet)."""
        self._next_retired_check = 0.0
        self.reconnects = 0
        """Times the connection was lost and made again."""
        self.rekeys = 0
        """Times a new channel key was taken."""
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

    async def listen(self, names: Iterable[str]) -> bool:
        """LISTEN on the channels of `names` (app/live/notices.py's topic_name, user_name) too; return once that is in place (callers bound the
        wait): True when some of them were not in place already (a notice sent on them before now
        was not heard here), False when all were."""
        wanted = frozenset(names)
        self._wanted |= wanted
        if self._ready and self._in_place(wanted):
            return False
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append((wanted, waiter))
        self._poke()
        await waiter
        return True

    def unlisten(self, names: Iterable[str]) -> None:
        """Stop listening on the channels of `names` (soon, in a batch)."""
        self._wanted.difference_update(names)
        self._poke()

    async def run(self) -> None:
        """Listen until cancelled, reconnecting whenever the connection is lost."""
        backoff = Backoff(_RECONNECT_FIRST, _RECONNECT_MOST, jitter=0.5)
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
                if self._ready:  # a session that got as far as ready starts the backoff afresh
                    backoff.reset()
                self._ready = False
                self._listening = set()
                self.backend_pid = None
            self.reconnects += 1
            await backoff.wait()

    def deliver(self, payload: bytes) -> None:
        """Check one payload and hand it over (what the connection does for each notification);
        nothing a payload holds may stop the listener."""
        try:
            opened = self._codec.open(payload)
            if opened is None:
                return
            if isinstance(opened.notice, Rekey):
                self._rekey_due = True
                self._poke()
            elif self._sink is not None:
                self._sink.on_notice(opened)
        except Exception:
            log.exception("a notification could not be delivered")

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
            conn.add_notify_handler(lambda n: self.deliver(n.payload.encode()))
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
                now = asyncio.get_running_loop().time()
                renamed = False
                if self._rekey_due or now >= self._next_key_check:
                    renamed = await self._read_key(conn)
                await self._sync_channels(conn)
                if renamed and self._sink is not None:
                    self._sink.catch_up()  # what committed under the new names before they were listened on
                if self._retired is not None and now >= self._next_retired_check:
                    await self._check_retired(conn)

    async def _idle(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Deliver notifications as they come until there is a command to run; raise when the
        connection is lost."""
        loop = asyncio.get_running_loop()
        pgconn = conn.pgconn
        wake = self._wake = loop.create_future()
        if self._wanted_channels() != self._listening or self._rekey_due:
            wake.set_result(None)
        deliver = self.deliver

        def readable() -> None:
            try:
                pgconn.consume_input()
            except psycopg.OperationalError as exc:
                if not wake.done():
                    wake.set_exception(exc)
                return
            while (notify := pgconn.notifies()) is not None:
                deliver(notify.extra)
            if pgconn.status != pq.ConnStatus.OK and not wake.done():
                wake.set_exception(psycopg.OperationalError("the LISTEN connection was closed"))

        due = self._next_key_check
        if self._retired is not None:
            due = min(due, self._next_retired_check)
        timer = loop.call_at(due, self._poke)
        fd = pgconn.socket
        loop.add_reader(fd, readable)
        try:
            readable()  # anything that came with the last command's answer
            await wake
        finally:
            loop.remove_reader(fd)
            timer.cancel()
            self._wake = None

    def _wanted_channels(self) -> set[str]:
        """The channels of the wanted names under the key in use, and its `rekey` channel."""
        channel = self._codec.channel
        return {channel(name) for name in self._wanted} | {channel(REKEY_NAME)}

    def _in_place(self, names: frozenset[str]) -> bool:
        for name in names:
            channel = self._codec.channel(name)
            if channel not in self._listening or channel in self._unlistening:
                return False
        return True

    async def _sync_channels(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """LISTEN and UNLISTEN until the connection listens on exactly the wanted channels."""
        while True:
            wanted = self._wanted_channels()
            add, drop = wanted - self._listening, self._listening - wanted
            if not add and not drop:
                return
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

    async def _read_key(self, conn: psycopg.AsyncConnection[Any]) -> bool:
        """Read the channel key; True when it changed (the channels are to be renamed)."""
        self._rekey_due = False
        self._next_key_check = asyncio.get_running_loop().time() + _KEY_CHECK_EVERY
        key, snapshot = await read_channel_key_and_snapshot(conn)
        if key == self._codec.key:
            return False
        self._codec.rekey(key)
        self.rekeys += 1
        self._retired = (snapshot, None)
        self._next_retired_check = asyncio.get_running_loop().time() + _RETIRED_CHECK_EVERY
        log.info("the channel key changed: listening under the new channel names")
        return True

    async def _check_retired(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Some transactions that were running when the key changed may have signed under the old
        key, and send on a channel no longer listened on as they commit: each time some of them
        have ended, the sink reads the log again; when none is left, the old key is done with."""
        assert self._retired is not None
        snapshot, before = self._retired
        running = await still_running(conn, snapshot)
        self._next_retired_check = asyncio.get_running_loop().time() + _RETIRED_CHECK_EVERY
        if running != before and self._sink is not None:
            self._sink.catch_up()
        self._retired = (snapshot, running) if running else None

    def _poke(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    def _resolve_waiters(self) -> None:
        if not self._ready:
            return
        pending = []
        for names, waiter in self._waiters:
            if waiter.done():
                continue
            if not names <= self._wanted or self._in_place(names):
                waiter.set_result(None)  # in place (or no longer wanted by anyone)
            else:
                pending.append((names, waiter))
        self._waiters = pending
