"""Is the database there for this replica? Asked in the background once a second, so that /readyz
answers at once, down or not, from the last answer.

Each reading is one statement on the request pool: the schema version,
pg_notification_queue_usage(), who sends the NOTIFYs (tracktalk.settings.notify_mode) and a
snapshot of the running transactions; past the queue's limit, also the session most likely holding
the queue back (pg_stat_activity). While the listener is on a fan-out node, also the node's state
(tracktalk.node_state(), on the node) and the primary's heartbeat (tracktalk.beat(), which this
replica keeps going): how far the node is behind, in the primary's own time; whether the node
follows this primary at all (its subscription's slot in the primary's database); and the node's
own NOTIFY queue, the one the replica's events go through there.

PostgreSQL keeps one NOTIFY queue for the whole server, and a session that LISTENs (any role that
may connect, to any database) and then sits idle in a transaction keeps every notification after
that moment in it: at 100 % every transaction that notifies fails at commit, so every write of
tracktalk does (on a fan-out node: its apply worker's, which then stops applying anything). PostgreSQL
cannot stop that; a replica can see it coming and say who (docs/dba.md, "Watching the NOTIFY
queue"). /readyz watches the queue of the server the listener is on, and the primary's while its
writers send NOTIFYs (notify_mode 'direct'): watched_queues(); /metrics reports the fullest of them
(tracktalk_notify_queue_usage; tracktalk_notify_queue_server_info names the server).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import tuple_row
from psycopg_pool import AsyncConnectionPool

from app.data.nodes import SLOTS, NodeState, Reads, follows, node_state
from app.wire import NotifyQueue, QueueHolder

log = logging.getLogger(__name__)

NOTIFY_QUEUE_LIMIT = 0.5
"""Fraction of PostgreSQL's NOTIFY queue in use past which /readyz fails, naming the session that
holds it back (TRACKTALK_NOTIFY_QUEUE_LIMIT). Every replica sees the same queue: past it they all
report not ready, which is the point: someone must end that session before writes fail."""

NODE_LAG_LIMIT = 10.0
"""Seconds the fan-out node the listener is on may be behind the primary before /readyz fails
(TRACKTALK_NODE_LAG_LIMIT)."""

_CHECK_EVERY = 1.0
"""Seconds between two readings."""
_CHECK_TIMEOUT = 2.0
"""Seconds a reading may take (a pool connection, then the statement) before it counts as failed."""
_STALE_AFTER = 3.0
"""A reading older than this says nothing: the database is taken to be away (a reading that hangs
stops being believed this long after the last one came)."""

_READING = """
    SELECT (SELECT version FROM tracktalk.schema_version), pg_notification_queue_usage(),
           (SELECT notify_mode FROM tracktalk.settings), pg_current_snapshot()::text
"""
_BEAT = f"SELECT tracktalk.beat(), ({SLOTS})"
"""The primary's heartbeat, kept going by the replicas on fan-out nodes (one write a second at most,
whatever their number), and its database's logical slots (is the node's subscription one of them?)."""

HOLDER_QUERY = """
    SELECT pid, application_name, usename, datname, state,
           CASE WHEN xact_start IS NULL THEN state_change ELSE xact_start END AS since
      FROM pg_stat_activity
     WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
       AND (xact_start IS NOT NULL OR wait_event = 'ClientWrite')
     ORDER BY CASE WHEN state LIKE 'idle in transaction%' THEN 0
                   WHEN wait_event = 'ClientWrite' THEN 1
                   ELSE 2 END,
              since
     LIMIT 1
"""
"""The session most likely holding the NOTIFY queue back. Which sessions LISTEN cannot be seen
from another session (pg_listening_channels() is the caller's own), but one that listens reads
its notifications whenever it is outside a transaction and its client reads: so the holder is one
that has been inside a transaction since before the oldest notification still queued (the oldest
idle in a transaction first, then the oldest running one) or one stuck writing to a client that no
longer reads (wait_event ClientWrite: a frozen process whose connection is still up). Every
database of the server is looked at. Another role's sessions show only with pg_read_all_stats
(or as a superuser): without it, none is named."""


def holder_from_row(row: tuple[Any, ...] | None) -> QueueHolder | None:
    """A row of HOLDER_QUERY as a QueueHolder."""
    if row is None:
        return None
    pid, application, role, database, state, since = row
    return QueueHolder(
        pid=int(pid),
        application_name=str(application or ""),
        role=role,
        database=database,
        state=state,
        since=since,
    )


def describe_holder(holder: QueueHolder | None) -> str:
    """Who holds the queue back, and how to end it, for a person."""
    if holder is None:
        return (
            "the session holding it back is not visible to this role (grant it pg_read_all_stats, or "
            "look as a superuser: the oldest transaction in pg_stat_activity)"
        )
    since = f" since {holder.since:%Y-%m-%d %H:%M:%S%z}" if holder.since is not None else ""
    return (
        f"most likely held back by pid {holder.pid} (application {holder.application_name!r}, role "
        f"{holder.role}, database {holder.database}, {holder.state or 'state unknown'}{since}): end it "
        f"with SELECT pg_terminate_backend({holder.pid})"
    )


@dataclass(frozen=True)
class NodeReading:
    """The fan-out node the listener is on, at one moment."""

    name: str
    """host:port/dbname."""
    state: NodeState | None
    """None: the node did not answer (`error` says why)."""
    lag: float | None = None
    """Seconds the node is behind the primary (their heartbeats compared); None: not known yet."""
    error: str | None = None
    follows: bool = True
    """Its subscription's slot is in the primary's database (DATABASE_URL's), in use while it runs
    (app/data/nodes.py's follows()); False: it follows another primary and hears none of the writes."""
    queue_usage: float | None = None
    """pg_notification_queue_usage() on the node: the queue its replicas' NOTIFYs go through (None:
    the node did not answer)."""
    holder: QueueHolder | None = None
    """Read on the node only when its queue is past the limit."""


@dataclass(frozen=True)
class Reading:
    """The database's answer at one moment."""

    at: float
    """time.monotonic() when it came."""
    version: int | None
    """The schema version (None: there is no tracktalk schema)."""
    queue_usage: float
    """pg_notification_queue_usage() on the primary (a fan-out node's is in `node`)."""
    holder: QueueHolder | None
    """Read only when the queue is past the limit."""
    notify_mode: str | None = None
    """tracktalk.settings.notify_mode: 'direct' (the writers' triggers send the NOTIFYs) or 'fanout'
    (the fan-out nodes do)."""
    snapshot: str | None = None
    """pg_current_snapshot() on the primary (app/live/polling.py follows the transactions running
    across a switch of notify_mode)."""
    node: NodeReading | None = None
    """While the listener is on a fan-out node."""


def watched_queues(reading: Reading, limit: float) -> list[NotifyQueue]:
    """The NOTIFY queues this replica depends on, the listener's first: on a fan-out node, the
    node's server's (none while the node does not answer), and the primary's while its writers
    send NOTIFYs too ('direct'; a full queue there fails their commits); else the primary's."""
    primary = NotifyQueue(reading.queue_usage, limit, reading.holder)
    node = reading.node
    if node is None:
        return [primary]
    found = [] if node.queue_usage is None else [NotifyQueue(node.queue_usage, limit, node.holder, node.name)]
    return found + ([primary] if reading.notify_mode != "fanout" else [])


class Readiness:
    """The last reading of the database, kept fresh by `run()`."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        queue_limit: float,
        on_usage: Callable[[NotifyQueue], None],
        reads: Reads | None = None,
        node_lag_limit: float = NODE_LAG_LIMIT,
        on_reading: Callable[[Reading], None] | None = None,
    ) -> None:
        self._pool = pool
        self.queue_limit = queue_limit
        self.node_lag_limit = node_lag_limit
        self._on_usage = on_usage
        self._reads = reads
        self._on_reading = on_reading
        self._last: Reading | None = None
        self._failed_at: float | None = None

    def reading(self) -> Reading | None:
        """The last reading, or None when the database did not answer the last time it was
        asked, or has not answered for _STALE_AFTER seconds."""
        last = self._last
        if last is None or self._failed_at is not None:
            return None
        if time.monotonic() - last.at > _STALE_AFTER:
            return None
        return last

    async def run(self) -> None:
        """Read the database every _CHECK_EVERY seconds, for ever."""
        while True:
            await asyncio.sleep(_CHECK_EVERY)
            await self.check()

    async def check(self) -> None:
        """Take one reading (a failure is kept as such: the database is away)."""
        try:
            reading = await asyncio.wait_for(self._read(), _CHECK_TIMEOUT)
        except Exception as exc:
            if self._failed_at is None:
                log.warning("the database does not answer (%s): not ready", type(exc).__name__)
            self._failed_at = time.monotonic()
            return
        if self._failed_at is not None:
            log.info("the database answers again")
        self._last, self._failed_at = reading, None
        queues = watched_queues(reading, self.queue_limit)
        if queues:  # none: the node the listener is on did not answer, in 'fanout' mode
            self._on_usage(max(queues, key=lambda queue: queue.usage))
        if self._on_reading is not None:
            self._on_reading(reading)

    async def _read(self) -> Reading:
        on_node = self._reads.node_pool if self._reads is not None else None
        beat = None
        slots: dict[str, bool] | None = None
        async with self._pool.connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
            try:
                await cur.execute(_READING)
                row = await cur.fetchone()
                version, usage, mode, snapshot = row if row else (None, 0.0, None, None)
            except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn):
                # No schema tracktalk, or an older one than this code's.
                await cur.execute("SELECT pg_notification_queue_usage()")
                row = await cur.fetchone()
                version, usage, mode, snapshot = None, row[0] if row else 0.0, None, None
            holder = None
            if float(usage) >= self.queue_limit:
                await cur.execute(HOLDER_QUERY)
                holder = holder_from_row(await cur.fetchone())
            if on_node is not None and version is not None:
                await cur.execute(_BEAT)
                row = await cur.fetchone()
                beat, slots = row if row else (None, None)
        node = None
        if on_node is not None and self._reads is not None:
            node = await self._read_node(on_node, self._reads.node or "", beat, slots)
        return Reading(
            at=time.monotonic(),
            version=None if version is None else int(version),
            queue_usage=float(usage),
            holder=holder,
            notify_mode=None if mode is None else str(mode),
            snapshot=None if snapshot is None else str(snapshot),
            node=node,
        )

    async def _read_node(
        self,
        pool: AsyncConnectionPool,
        name: str,
        primary_beat: datetime | None,
        slots: dict[str, bool] | None,
    ) -> NodeReading:
        """The node's state, whether it follows the primary (`slots`: the primary database's; None:
        not read), its NOTIFY queue (the one its replicas depend on) and its lag: the primary's
        heartbeat (read just before) less the node's copy of it, both the primary's clock."""
        holder = None
        try:
            async with pool.connection(timeout=_CHECK_TIMEOUT) as conn:
                state = await node_state(conn)
                async with conn.cursor(row_factory=tuple_row) as cur:
                    await cur.execute("SELECT pg_notification_queue_usage()")
                    row = await cur.fetchone()
                    usage = float(row[0]) if row else 0.0
                    if usage >= self.queue_limit:
                        await cur.execute(HOLDER_QUERY)
                        holder = holder_from_row(await cur.fetchone())
        except Exception as exc:
            return NodeReading(name, None, error=f"the node does not answer ({type(exc).__name__})")
        if state is None:
            return NodeReading(name, None, error="the database is no longer a fan-out node")
        lag = None
        if primary_beat is not None and state.beat is not None:
            lag = max(0.0, (primary_beat - state.beat).total_seconds())
        return NodeReading(
            name, state, lag, follows=slots is None or follows(slots, state), queue_usage=usage, holder=holder
        )
