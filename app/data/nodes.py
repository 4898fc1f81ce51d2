"""Fan-out nodes, as a replica sees them: what the database its listener is on says it is, and
where the live path reads the event log.

A fan-out node is a PostgreSQL that subscribes (logical replication) to the primary's event log,
its numbering, the channel key, the heartbeat and who may see what, and sends the NOTIFYs from its
copies (docs/dba.md, "Fan-out nodes"). A replica whose listener is on a node reads the log there
too, through a small pool of its own (`Reads`): the node's copy is a consistent prefix of the
primary's history (it applies the primary's transactions whole, in commit order), so a page and
the latest seq read in one snapshot there agree, as they do on the primary. What a node may lack
is the newest part: a replica that moved from a faster node, or a client that comes from a replica
on one, is ahead of it. The log's reads then go to the primary (app/data/events.py), so that
nothing is taken for lost, nor sent twice, because a node is behind.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, NamedTuple

import psycopg
from psycopg import AsyncConnection
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import tuple_row
from psycopg_pool import AsyncConnectionPool

log = logging.getLogger(__name__)

_OPEN_TIMEOUT = 10.0
"""Seconds a node's read pool has to open its first connection."""


NOT_SENDING = (
    "its trigger on the event log is off, so it sends no event's NOTIFY (run `tracktalk fanout-node` "
    "for it again)"
)
"""What a replica says of a node whose copy is done but whose events_fan_out trigger is not on
(`tracktalk fanout-node` stopped before turning it on, or a DISABLE TRIGGER)."""


class NotServing(Exception):
    """A database the listener may not use: a fan-out node whose initial copy is not done, or one
    without tracktalk's schema."""


class NodeState(NamedTuple):
    """How a fan-out node stands (tracktalk.node_state())."""

    subscription: str
    enabled: bool
    """The subscription is enabled (ALTER SUBSCRIPTION … DISABLE, or an error with disable_on_error, turns it off)."""
    running: bool
    """Its apply worker runs (not: disabled, or failing and restarting, or the primary unreachable)."""
    copied: bool
    """Its initial copy is done, for every table."""
    sending: bool
    """Its trigger on the event log sends the NOTIFYs."""
    beat: datetime | None
    """The primary's heartbeat as the node last applied it."""
    received_at: datetime | None
    """When it last heard from the primary."""
    slot: str | None = None
    """Its subscription's slot on the primary (pg_subscription.subslotname): named as the
    subscription unless it was made or altered with another slot_name. None: not read."""

    @property
    def slot_name(self) -> str:
        """The name of its slot on the primary."""
        return self.slot or self.subscription


def describe(conninfo: str) -> str:
    """`host:port/dbname` of a conninfo, for logs and /readyz (never its password)."""
    try:
        params = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return "(a conninfo that does not parse)"
    host = str(params.get("host") or params.get("hostaddr") or "local")
    port = str(params.get("port") or "5432")
    return f"{host}:{port}/{params.get('dbname') or params.get('user') or ''}"


async def node_state(conn: AsyncConnection[Any]) -> NodeState | None:
    """The state of the fan-out node `conn` is on; None when its database is not a node (the
    primary). NotServing when it has no tracktalk schema of this version."""
    try:
        async with conn.cursor(row_factory=tuple_row) as cur:
            await cur.execute("SELECT * FROM tracktalk.node_state()")
            row = await cur.fetchone()
            if row is None:
                return None
            await cur.execute(SLOT_NAME)
            slot = await cur.fetchone()
    except (psycopg.errors.UndefinedFunction, psycopg.errors.InvalidSchemaName) as exc:
        raise NotServing(f"no tracktalk schema of this version there ({exc.diag.message_primary})") from None
    return NodeState(*row)._replace(slot=slot[0] if slot else None)


SLOT_NAME = (
    "SELECT s.subslotname::text FROM pg_catalog.pg_subscription s WHERE s.oid = tracktalk.node_subscription()"
)
"""On a node: its subscription's slot on the primary (readable by any role)."""


_SERVER = (
    "SELECT (SELECT system_identifier FROM pg_control_system())::text, pg_postmaster_start_time(),"
    " current_database()"
)
"""Which database of which server a connection is on (a clone of a server shares its system
identifier, not its start time)."""


async def check_primary(conn: AsyncConnection[Any], conninfo: str, primary: AsyncConnectionPool) -> None:
    """NotServing unless `conn`, on a database that is not a fan-out node, is on the primary's
    database (the request pool's): anywhere else nothing is ever sent, and a listener there would
    hear nothing while the replica said it was ready."""
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(_SERVER)
        here = await cur.fetchone()
    async with primary.connection(timeout=_OPEN_TIMEOUT) as pconn, pconn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(_SERVER)
        there = await cur.fetchone()
    if here != there:
        raise NotServing(
            f"{describe(conninfo)} is neither a fan-out node nor the primary (DATABASE_URL's database): "
            "nothing is sent there. List only fan-out nodes, and the primary, in TRACKTALK_LISTEN_URL"
        )


SLOTS = (
    "SELECT coalesce(jsonb_object_agg(slot_name, active), '{}') FROM pg_catalog.pg_replication_slots"
    " WHERE database = current_database() AND slot_type = 'logical'"
)
"""The logical slots of the primary's database (the request pool's), each with whether it is in use:
a fan-out node that follows it streams through the slot named as its subscription."""


def follows(slots: dict[str, bool], state: NodeState) -> bool:
    """Whether the node in `state` follows the primary whose database has `slots` (SLOTS): its
    subscription's slot (state.slot_name) is there, and in use while the node's apply worker runs. A node whose
    subscription points at another primary, or at another database of the primary's server, may
    run, send and stay fresh (its own primary beats too), but hears none of this primary's writes."""
    active = slots.get(state.slot_name)
    return active is not None and (bool(active) or not state.running)


def not_following(name: str, state: NodeState, primary: str) -> str:
    """Why the node `name` that does not follow `primary` (both describe()'s) is no use, and what
    to do."""
    return (
        f"fan-out node {name} follows another primary than {primary} (DATABASE_URL's "
        f"database): its subscription {state.subscription}"
        f"{'' if state.slot_name == state.subscription else f' (slot {state.slot_name})'} has no slot in use there, so none of that "
        "primary's writes reaches it. List only the nodes of DATABASE_URL's primary in "
        'TRACKTALK_LISTEN_URL, or rebuild this one (docs/dba.md, "Fan-out nodes")'
    )


async def check_follows(
    conninfo: str, state: NodeState, primary: AsyncConnectionPool, primary_url: str
) -> None:
    """NotServing when the primary's database (the request pool's, at `primary_url`) has no slot of the node's
    subscription: the node follows another primary (a slot there but idle is left to the readings,
    which see whether it stays so)."""
    async with primary.connection(timeout=_OPEN_TIMEOUT) as conn, conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(SLOTS)
        row = await cur.fetchone()
    slots: dict[str, bool] = row[0] if row else {}
    if state.slot_name not in slots:
        raise NotServing(not_following(describe(conninfo), state, describe(primary_url)))


class Reads:
    """Where the live path reads the event log: the request pool, or, while the listener is on a
    fan-out node, a small pool of the node's own (made when the listener gets there, closed when it
    leaves)."""

    def __init__(self, primary: AsyncConnectionPool, size: int = 4, statement_timeout: float = 5.0) -> None:
        self.primary = primary
        self._size = max(1, size)
        self._statement_timeout = statement_timeout
        self._node_pool: AsyncConnectionPool | None = None
        self.node: str | None = None
        """`host:port/dbname` of the node the listener is on; None: not on a node."""
        self.node_url: str | None = None

    @property
    def pool(self) -> AsyncConnectionPool:
        """The pool that reads the log the listener hears about."""
        return self._node_pool if self._node_pool is not None else self.primary

    @property
    def node_pool(self) -> AsyncConnectionPool | None:
        """The node's pool, while the listener is on one."""
        return self._node_pool

    async def use(self, conninfo: str, state: NodeState | None) -> None:
        """The listener is on `conninfo` now, a node in `state` (None: not a node): read the log
        there. NotServing for a node whose initial copy is not done, that receives nothing from
        the primary, or whose trigger does not send the events (the listener tries the next URL)."""
        if state is not None and not state.copied:
            raise NotServing(f"fan-out node {describe(conninfo)} is still making its initial copy")
        if state is not None and not state.running:
            raise NotServing(
                f"fan-out node {describe(conninfo)}: its subscription {state.subscription} receives nothing "
                "from the primary"
            )
        if state is not None and not state.sending:
            raise NotServing(f"fan-out node {describe(conninfo)}: {NOT_SENDING}")
        if state is None:
            await self.close()
            return
        if self._node_pool is not None and self.node_url == conninfo:
            return
        # Here, not at the top: app.config imports this module (through app.ops.readiness), and
        # app.data.db imports app.config.
        from app.data.db import check_alive

        pool = AsyncConnectionPool(
            conninfo,
            min_size=1,
            max_size=self._size,
            kwargs={
                "autocommit": True,
                "application_name": "tracktalk-node-reads",
                "options": f"-c statement_timeout={int(self._statement_timeout * 1000)}",
            },
            name="tracktalk-node-reads",
            check=check_alive,
            open=False,
        )
        try:
            await pool.open(wait=True, timeout=_OPEN_TIMEOUT)
        except BaseException:
            await pool.close()
            raise
        old, self._node_pool = self._node_pool, pool
        self.node, self.node_url = describe(conninfo), conninfo
        if old is not None:
            await old.close()
        log.info("reading the event log on fan-out node %s (subscription %s)", self.node, state.subscription)

    async def close(self) -> None:
        """Read the log through the request pool again (the node's pool closes)."""
        old, self._node_pool = self._node_pool, None
        self.node = self.node_url = None
        if old is not None:
            await old.close()
