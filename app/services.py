"""The parts of a running replica, made and torn down in one place (the app's lifespan)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from psycopg_pool import AsyncConnectionPool

from app.auth.verifier import TokenVerifier
from app.background import background
from app.config import Settings
from app.data.batch import Batched
from app.data.db import (
    SCHEMA_VERSION,
    Conn,
    SchemaError,
    check_role_settings,
    create_pool,
    schema_version,
    serves,
)
from app.data.events import Access, EventLog, access_where_listening
from app.data.nodes import Reads, check_follows, check_primary, node_state
from app.handlers.write_limits import Refusals
from app.listener import Listener
from app.live import close_codes
from app.live.feed import Feed
from app.live.hub import Hub
from app.live.notices import Codec
from app.live.polling import NodeWatch, Polling
from app.live.throttle import RateLimiter
from app.ops.prometheus import Metrics
from app.ops.readiness import Readiness, Reading
from app.presence.table import PresenceTable
from app.presence.tracker import Presence

log = logging.getLogger(__name__)

_PRUNE_EVERY = 300.0
"""Seconds between two prunings of the event log and the notifications by this replica."""
_PRUNE_AGAIN_FROM = 1_000
"""A pruning call that deleted this many rows or more may have left some behind (each deletes at
most a batch of 10,000 notifications, tracktalk.prune_notifications): call again at once."""
_PRUNE_CALLS = 100
"""Most calls in one pruning (each its own short transaction)."""
_EXPIRY_SWEEP = 1.0
"""Seconds between two looks for sockets whose token expired (they close within that much)."""
_POOL_OPEN_TIMEOUT = 30.0


@dataclass(frozen=True)
class Services:
    """What handlers reach for: settings, the pool, the hub and its feed, the listener, the tokens."""

    settings: Settings
    pool: AsyncConnectionPool
    events: EventLog
    codec: Codec
    """Signs, checks and seals what travels on the NOTIFY channels."""
    hub: Hub
    feed: Feed
    listener: Listener
    typing: RateLimiter
    refused: Refusals
    """Users told to wait by a write limit, by (kind, user id): until when (app/handlers/write_limits.py)."""
    metrics: Metrics
    tokens: TokenVerifier
    """Checks access tokens (tracktalk's own, and the identity provider's)."""
    access: Batched[tuple[str | None, int | None], Access]
    """Who subscribes to a topic (topic None: only who), and whether they may: one query for the
    subscribes of every socket that arrive together."""
    presence: Presence
    """Who is here: listeners per topic across replicas, and the `presence` frames."""
    readiness: Readiness
    """The database's last answer for /readyz (schema version, NOTIFY queue, the fan-out node),
    read every second."""
    reads: Reads
    """Where the live path reads the log: the request pool, or the fan-out node the listener is on."""


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Services]:
    """Open the pool, check the schema, start the listener, the pruner and presence; undo it all on
    exit."""
    pool = create_pool(settings)
    await pool.open(wait=True, timeout=_POOL_OPEN_TIMEOUT)
    try:
        found = await schema_version(pool)
        if not serves(found):
            raise SchemaError(
                f"the database has schema version {found}, this tracktalk needs {SCHEMA_VERSION} or newer: "
                "run `tracktalk migrate`"
            )
        if settings.pooled:
            log.info("DATABASE_URL is taken to be a transaction-mode pooler: no prepared statements")
            await check_role_settings(pool)
        reads = Reads(pool, settings.pool_max, settings.statement_timeout)
        events = EventLog(pool, reads)
        codec = Codec(await events.channel_key())
        hub = Hub(settings.sockets_per_user)
        metrics = Metrics(hub)

        async def on_connect(conninfo: str, conn: Conn) -> None:
            state = await node_state(conn)
            if state is None:
                await check_primary(conn, conninfo, pool)
            elif state.copied and state.running:  # else reads.use() refuses it, saying why
                await check_follows(conninfo, state, pool, settings.database_url)
            await reads.use(conninfo, state)

        listener = Listener(settings.listen_urls, codec, on_connect)
        presence = Presence(hub, PresenceTable(pool), settings.replica_id)
        feed = Feed(hub, events, listener, on_lag=metrics.lag.observe, presence=presence)
        listener.attach(feed)
        metrics.watch(listener, codec)
        tokens = TokenVerifier.from_settings(settings, pool)
        metrics.count_presence(presence)
        polling = Polling(feed.catch_up, feed.access.recheck_all)
        node_watch = NodeWatch(listener.leave, settings.node_lag_limit)

        def on_reading(reading: Reading) -> None:
            on_primary = listener.where is not None and reading.node is None
            polling.observe(on_primary, reading.notify_mode, reading.snapshot)
            node = reading.node
            if node is None or node.state is None:
                node_watch.observe(None, None, unheard=on_primary and reading.notify_mode == "fanout")
            else:
                node_watch.observe(
                    node.state.running,
                    node.lag,
                    sending=node.state.sending,
                    follows=node.follows,
                    enabled=node.state.enabled,
                )

        readiness = Readiness(
            pool,
            settings.notify_queue_limit,
            on_usage=metrics.read_queue_usage,
            reads=reads,
            node_lag_limit=settings.node_lag_limit,
            on_reading=on_reading,
        )
        await readiness.check()
        services = Services(
            settings,
            pool,
            events,
            codec,
            hub,
            feed,
            listener,
            typing=RateLimiter(1, seconds=1.0),
            refused=Refusals(),
            metrics=metrics,
            tokens=tokens,
            access=Batched(lambda wanted: access_where_listening(reads, wanted)),
            presence=presence,
            readiness=readiness,
            reads=reads,
        )
        async with (
            tokens,
            background(listener.run()),
            background(feed.deliver_user_messages()),
            background(feed.enforce_access()),
            background(_prune_forever(events)),
            background(_expire_forever(hub)),
            background(readiness.run()),
            presence.running(),
        ):
            yield services
            hub.close_all(close_codes.GOING_AWAY, close_codes.SHUTTING_DOWN)
            await feed.stop()
    finally:
        await reads.close()
        await pool.close()


async def _expire_forever(hub: Hub) -> None:
    while True:
        await asyncio.sleep(_EXPIRY_SWEEP)
        hub.close_expired(time.time())


async def _prune_forever(events: EventLog) -> None:
    while True:
        await asyncio.sleep(_PRUNE_EVERY)
        try:
            gone = await prune(events)
        except Exception as exc:
            log.warning("pruning the event log failed: %s", type(exc).__name__)
        else:
            if gone:
                log.info("pruned %d events and notifications past their retention", gone)


async def prune(events: EventLog) -> int:
    """Delete what is past its retention (tracktalk.prune_events), call after call while they
    find much; return how many rows went."""
    gone = 0
    for _ in range(_PRUNE_CALLS):
        deleted = await events.prune()
        gone += deleted
        if deleted < _PRUNE_AGAIN_FROM:
            break
    return gone
