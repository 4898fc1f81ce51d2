"""The one LISTEN connection of this replica.

It is its own autocommit connection (not from the request pool; through PgBouncer it must be a
session-mode URL: TRACKTALK_LISTEN_URL). While iterating `notifies()` nothing else runs on it
(psycopg #340). When the connection drops (network, pg_terminate_backend, a server restart)
it reconnects with backoff and jitter, LISTENs again and only then lets the sink catch up on
what committed meanwhile; until the catch-up is done the replica is not ready.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Protocol

import msgspec
import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from app.events import CHANNEL
from app.wire import Notice, notice_decoder

log = logging.getLogger(__name__)

_BACKOFF_FIRST = 0.05
"""Seconds before the first reconnect attempt (then doubling, with jitter)."""
_BACKOFF_MAX = 5.0
"""Longest wait between reconnect attempts."""
_KEEPALIVE = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3}
"""TCP keepalives, so that a peer that vanished without a word is noticed within ~25 s."""
_CONNECT_TIMEOUT = 5


class NoticeSink(Protocol):
    """Where the listener delivers (the feed)."""

    async def on_listen(self) -> None:
        """Called after each successful LISTEN: catch up on whatever was missed."""

    async def on_notice(self, notice: Notice) -> None:
        """Called for each payload, in commit order."""


class Listener:
    """Holds the LISTEN connection and feeds decoded payloads to a sink."""

    def __init__(self, conninfo: str, sink: NoticeSink) -> None:
        self._conninfo = conninfo
        self._sink = sink
        self._ready = False
        self.reconnects = 0
        """Times the connection was lost and made again."""
        self.backend_pid: int | None = None

    @property
    def ready(self) -> bool:
        """Connected, listening and caught up."""
        return self._ready

    async def run(self) -> None:
        """Listen until cancelled, reconnecting whenever the connection is lost."""
        failures = 0
        while True:
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except (psycopg.Error, OSError) as exc:
                log.warning("listener connection lost: %s", _one_line(exc))
            except Exception:
                log.exception("listener failed; reconnecting to catch up")
            finally:
                # A session that got as far as ready starts the backoff afresh.
                failures = 0 if self._ready else failures
                self._ready = False
                self.backend_pid = None
            failures += 1
            self.reconnects += 1
            delay = min(_BACKOFF_MAX, _BACKOFF_FIRST * 2 ** min(failures, 10))
            await asyncio.sleep(random.uniform(delay / 2, delay))

    async def _session(self) -> None:
        conninfo = make_conninfo(
            self._conninfo,
            application_name="tracktalk-listener",
            connect_timeout=_CONNECT_TIMEOUT,
            **_KEEPALIVE,
        )
        conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
        async with conn:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
            self.backend_pid = conn.info.backend_pid
            await self._sink.on_listen()
            self._ready = True
            log.info("listening on channel %r (backend pid %s)", CHANNEL, self.backend_pid)
            async for notify in conn.notifies():
                try:
                    notice = notice_decoder.decode(notify.payload)
                except msgspec.DecodeError as exc:
                    log.warning("ignored a NOTIFY on %r that is not tracktalk's: %s", CHANNEL, exc)
                    continue
                await self._sink.on_notice(notice)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
