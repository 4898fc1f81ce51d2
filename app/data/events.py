"""The event log (tracktalk.events) and the other reads of the live path.

EventLog never uses the LISTEN connection (it only listens; it reads the channel key, and watches
a change of it, with the functions at the end of this module). Every query here is one short
statement: a page of events and the topic's latest event come from one snapshot.

The log, and who may see a topic, are read where the listener is (app/data/nodes.py's Reads): the
request pool, or the fan-out node's own pool. A node may be behind the primary; where that shows
(the node's latest seq below what is asked for, an answer other than a plain yes to a subscribe)
the primary is asked instead. The notifications' messages are always read on the primary (a node
holds no notifications).
"""

from __future__ import annotations

import asyncio
from typing import Any, NamedTuple

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import tuple_row
from psycopg_pool import AsyncConnectionPool

from app.bounds import EVENT_PAGE, EVENT_PAGE_BYTES, MAX_BIGINT
from app.data.batch import Shared
from app.data.nodes import Reads

_VISIBLE_WAIT = 2.0
"""Seconds the user lane's read waits for the primary's transactions that a fan-out node announced
to be visible on the primary (a moment, normally; bounded so that the lane never stalls)."""
_VISIBLE_STEP = 0.002
"""Seconds between two looks."""


class Cursor(NamedTuple):
    """A point in a topic's history: an event's seq and its tag (None: no event yet, or one made
    before events had tags). Two histories that share a seq differ in its tag."""

    seq: int
    tag: str | None = None


class Row(NamedTuple):
    """An event of the log."""

    seq: int
    message: bytes
    """As every socket of the topic gets it (UTF-8 JSON), or, with `restricted`, every socket
    outside its audience."""
    tag: str | None
    prev: str | None
    """The tag of the event before it."""
    restricted: bytes | None = None
    """The variant for the topic's moderators and `author`."""
    author: int | None = None


class Page(NamedTuple):
    """Events of a topic read in one snapshot, with the topic's latest event in that snapshot."""

    rows: list[Row]
    """In seq order."""
    latest: Cursor
    more: bool = False
    """The page was cut (by its count or its bytes): the log may hold more after it."""


class Access(NamedTuple):
    """Who subscribes to a topic, and what they may do there, as the database says (one query
    for the subscribes that arrive together: app/data/batch.py)."""

    username: str | None
    """None when there is no such user (or no user: an anonymous socket)."""
    may_see: bool | None
    """tracktalk.may_see: True, False (forbidden) or None (no such topic)."""
    moderator: bool = False
    """tracktalk.moderates: the user gets the restricted variant of its events."""
    presence: bool = False
    """The topic's kind has typing and presence."""


class EventLog:
    """Reads of the durable events, the notifications' messages and who may see what."""

    def __init__(self, pool: AsyncConnectionPool, reads: Reads | None = None) -> None:
        self._pool = pool
        self._reads = reads if reads is not None else Reads(pool)
        self._pages: Shared[tuple[str, int, int, int | None, int], Page] = Shared()
        """Equal page reads in flight share one query (a reconnect storm's catch-ups)."""

    async def latest(self, topics: list[str]) -> dict[str, Cursor]:
        """The latest event of each topic (seq 0 for a topic with no events), where the listener
        is (a node's copy, while it is on one: the events it has heard of, or will)."""
        async with self._reads.pool.connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
            await cur.execute(
                "SELECT topic, last_seq, last_tag FROM tracktalk.topic_state WHERE topic = ANY (%s)",
                (topics,),
            )
            found = {str(topic): Cursor(int(seq), tag) for topic, seq, tag in await cur.fetchall()}
        return {topic: found.get(topic, Cursor(0)) for topic in topics}

    async def page(
        self,
        topic: str,
        after: int,
        limit: int = EVENT_PAGE,
        through: int | None = None,
        max_bytes: int = EVENT_PAGE_BYTES,
    ) -> Page:
        """Up to `limit` events of a topic after `after` (and up to `through`), the page cut where
        its messages pass `max_bytes` (at least one event), with the topic's latest event: one
        statement, so one snapshot (the log and the latest seq agree: an event the log lacks is
        not kept, not on its way). A message past the cut is not read (`size` says where to cut).
        What is kept may have holes (pruning): the caller checks every seq.

        Read where the listener is; on a fan-out node whose latest seq is below `after` (or below
        `through`), which is behind what the caller has or needs, on the primary instead: its
        answer is the same history, further on (a node is never taken to have lost what it has
        not received yet).

        Reads that end at a given `through` (a replay: every event up to it is committed before
        anyone asks) share one query while equal ones are in flight: a reconnect storm's sockets
        of one track ask the same page. A read to the end of the log (`through` None) is never
        shared: it must see what was committed before it was asked."""
        if through is None:
            return await self._page_where(topic, after, limit, through, max_bytes)
        return await self._pages(
            (topic, after, limit, through, max_bytes),
            lambda: self._page_where(topic, after, limit, through, max_bytes),
        )

    async def _page_where(
        self, topic: str, after: int, limit: int, through: int | None, max_bytes: int
    ) -> Page:
        node = self._reads.node_pool
        if node is not None:
            found = await self._page(node, topic, after, limit, through, max_bytes)
            if found.latest.seq >= max(after, through or 0):
                return found
            # The node is behind: the primary has it (or the history went back in time there too).
        return await self._page(self._reads.primary, topic, after, limit, through, max_bytes)

    async def _page(
        self,
        pool: AsyncConnectionPool,
        topic: str,
        after: int,
        limit: int,
        through: int | None,
        max_bytes: int,
    ) -> Page:
        async with pool.connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
            await cur.execute(
                """
                SELECT s.last_seq, s.last_tag, e.seq, e.message::text, e.tag, e.prev_tag,
                       e.restricted::text, e.author, e.read
                  FROM (VALUES (%(topic)s::text)) AS w (topic)
                  LEFT JOIN tracktalk.topic_state s ON s.topic = w.topic
                  LEFT JOIN LATERAL (
                        SELECT c.*
                          FROM (SELECT x.*, sum(x.size) OVER (ORDER BY x.seq) - x.size AS before,
                                       count(*) OVER () AS read
                                  FROM (SELECT seq, message, tag, prev_tag, restricted, author, size
                                          FROM tracktalk.events
                                         WHERE topic = w.topic AND seq > %(after)s AND seq <= %(through)s
                                         ORDER BY seq LIMIT %(limit)s) AS x
                               ) AS c
                         WHERE c.before < %(bytes)s
                       ) AS e ON true
                 ORDER BY e.seq
                """,
                {
                    "topic": topic,
                    "after": after,
                    "through": through if through is not None else MAX_BIGINT,
                    "limit": limit,
                    "bytes": max_bytes,
                },
            )
            found = await cur.fetchall()
        last_seq, last_tag = found[0][0], found[0][1]
        rows = [
            Row(
                int(seq),
                str(text).encode(),
                tag,
                prev,
                None if restricted is None else str(restricted).encode(),
                None if author is None else int(author),
            )
            for _, _, seq, text, tag, prev, restricted, author, _ in found
            if seq is not None
        ]
        read = int(found[0][8] or 0)
        return Page(rows, Cursor(int(last_seq or 0), last_tag), more=read >= limit or len(rows) < read)

    async def user_messages(
        self, notification_ids: list[int], written_by: list[int] | None = None
    ) -> list[tuple[int, bytes, bool]]:
        """The (user id, message, about a track) that announce notifications `notification_ids`;
        read once the primary's transactions `written_by` (from a fan-out node's notices) are
        visible here: a node applies a transaction once its commit is flushed on the primary,
        which can be a moment before the primary's own sessions see it (at most _VISIBLE_WAIT)."""
        async with self._pool.connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
            await wait_visible(conn, written_by)
            await cur.execute(
                "SELECT user_id, message::text, about_track FROM tracktalk.user_messages(%s::bigint[])",
                (notification_ids,),
            )
            return [
                (int(user), str(text).encode(), bool(track)) for user, text, track in await cur.fetchall()
            ]

    async def visible(
        self, pairs: list[tuple[int, str]], written_by: list[int] | None = None
    ) -> dict[tuple[int, str], Access]:
        """Whether each (user id, topic) pair may still subscribe (tracktalk.may_see; the user, 0:
        anonymous, must still exist: `username` None when it does not) and whether the user
        moderates the topic; what the primary is asked, asked once its transactions `written_by`
        (the revocations' that a fan-out node sent) are visible there."""
        if not pairs:
            return {}
        found = await access_where_listening(
            self._reads, [(topic, user or None) for user, topic in pairs], written_by
        )
        return dict(zip(pairs, found, strict=True))

    async def channel_key(self) -> bytes:
        """The key that signs and seals what travels on tracktalk's channels."""
        async with self._pool.connection() as conn:
            return await read_channel_key(conn)

    async def notify(self, channel: str, payload: str) -> None:
        """Send a sealed payload on a channel, to every replica that listens on it, wherever it
        listens (tracktalk.relay: on the primary's channels in 'direct' mode, through the outbox
        to the fan-out nodes where there are any)."""
        async with self._pool.connection() as conn:
            await conn.execute("SELECT tracktalk.relay(%s, %s)", (channel, payload))

    async def prune(self) -> int:
        """Delete events older than the retention; return how many went."""
        async with self._pool.connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
            await cur.execute("SELECT tracktalk.prune_events()")
            row = await cur.fetchone()
        return int(row[0]) if row else 0


async def read_channel_key(conn: AsyncConnection[Any]) -> bytes:
    """The key that signs and seals what travels on tracktalk's channels, read on `conn`."""
    key, _ = await read_channel_key_and_snapshot(conn)
    return key


async def read_channel_key_and_snapshot(conn: AsyncConnection[Any]) -> tuple[bytes, str]:
    """The channel key, and a snapshot of the transactions running as it was read (the ones
    that may still send under the key it replaced: see `still_running`)."""
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute("SELECT key, pg_current_snapshot()::text FROM tracktalk.channel_key")
        row = await cur.fetchone()
    if row is None:
        raise RuntimeError("tracktalk.channel_key is empty: run `tracktalk migrate`")
    return bytes(row[0]), str(row[1])


async def still_running(conn: AsyncConnection[Any], snapshot: str) -> int:
    """How many of the transactions that were running at `snapshot` are running still."""
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(
            "SELECT count(*) FROM pg_snapshot_xip(%s::pg_snapshot) AS x"
            " WHERE NOT pg_visible_in_snapshot(x, pg_current_snapshot())",
            (snapshot,),
        )
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def wait_visible(conn: AsyncConnection[Any], written_by: list[int] | None) -> None:
    """Wait, at most _VISIBLE_WAIT, until the primary's transactions `written_by` are visible to
    `conn` (the primary's). A fan-out node applies a transaction as soon as its commit is flushed on
    the primary, which can be a moment before the primary's own sessions see it: what a node's
    notice makes a replica read on the primary could otherwise be read from before it."""
    deadline = asyncio.get_running_loop().time() + _VISIBLE_WAIT
    while written_by:
        async with conn.cursor(row_factory=tuple_row) as cur:
            await cur.execute(
                "SELECT bool_and(pg_visible_in_snapshot(x::text::xid8, pg_current_snapshot()))"
                " FROM unnest(%s::bigint[]) AS x",
                (written_by,),
            )
            row = await cur.fetchone()
        if (row is not None and row[0]) or asyncio.get_running_loop().time() > deadline:
            return
        await asyncio.sleep(_VISIBLE_STEP)


async def access_where_listening(
    reads: Reads, wanted: list[tuple[str | None, int | None]], written_by: list[int] | None = None
) -> list[Access]:
    """access() asked where the listener is: on its fan-out node, then, for every pair the node
    does not answer with a plain yes (the user may see the topic, and exists), on the primary.

    A node may not have a user, a track or a grant made a moment ago on the primary, and may not
    hold the tables a live table's kind asks (tracktalk.may_see answers NULL or false there): the
    primary decides those. A yes the node gives for what the primary has just revoked lasts until
    the revocation reaches the node, which then has the change (one transaction): the recheck that
    the revocation makes ends it. `written_by`: the revocations' transactions on the primary, to
    wait for there (wait_visible)."""
    node = reads.node_pool
    if node is None:
        async with reads.primary.connection() as conn:
            return await access(conn, wanted)
    try:
        async with node.connection() as conn:
            found = await access(conn, wanted)
    except psycopg.Error:
        found = [Access(None, None)] * len(wanted)
    doubtful = [
        i
        for i, ((topic, user), answer) in enumerate(zip(wanted, found, strict=True))
        if (user is not None and answer.username is None)
        or (topic is not None and answer.may_see is not True)
    ]
    if doubtful:
        async with reads.primary.connection() as conn:
            # The node may have a revocation's change before the primary's sessions see it.
            await wait_visible(conn, written_by)
            again = await access(conn, [wanted[i] for i in doubtful])
        for i, answer in zip(doubtful, again, strict=True):
            found[i] = answer
    return found


async def access(conn: AsyncConnection[Any], wanted: list[tuple[str | None, int | None]]) -> list[Access]:
    """For each (topic, user id or None for anonymous): the user's name, whether they may see the
    topic (tracktalk.may_see) and moderate it, and whether its kind has presence; in the order
    asked. A topic None asks only for the user."""
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(
            """
            SELECT u.username,
                   CASE WHEN w.topic IS NOT NULL AND (w.user_id IS NULL OR u.id IS NOT NULL)
                        THEN tracktalk.may_see(w.user_id, w.topic) END,
                   w.topic IS NOT NULL AND u.id IS NOT NULL AND tracktalk.moderates(w.user_id, w.topic),
                   coalesce(k.presence, false)
              FROM unnest(%s::text[], %s::bigint[]) WITH ORDINALITY AS w (topic, user_id, i)
              LEFT JOIN users u ON u.id = w.user_id
              LEFT JOIN tracktalk.topic_kinds k ON k.kind = split_part(w.topic, ':', 1)
             ORDER BY w.i
            """,
            ([topic for topic, _ in wanted], [user for _, user in wanted]),
        )
        return [
            Access(username, may_see, bool(moderator), bool(presence))
            for username, may_see, moderator, presence in await cur.fetchall()
        ]
