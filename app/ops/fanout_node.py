"""`tracktalk fanout-node --primary URL --node URL`: prepares a fan-out node, and may run again.

A fan-out node is a PostgreSQL that subscribes, by PostgreSQL's own logical replication, to the
primary's event log and what the replicas' catch-up and admission read (PUBLISHED), and sends the
NOTIFYs from its copies (sql/triggers.sql, "Fan-out nodes"; docs/dba.md, "Fan-out nodes"). What
this does, each step only where it is missing, so that a second run changes nothing (and a run
after `tracktalk migrate` brings the node's schema along):

1. On the primary: checks (wal_level = logical, a free replication slot and WAL sender, the role's
   REPLICATION and SELECT rights, tracktalk's schema of this version), then the publications
   `tracktalk` (PUBLISHED) and `tracktalk_outbox` (tracktalk.outbox, inserts only).
2. On the node (a superuser on PostgreSQL 15; from 16 a member of pg_create_subscription):
   sql/roles.sql when the role may make roles, tracktalk's schema (as tracktalk_owner where it
   exists), then the subscription, which copies the published tables and follows the primary.
3. Waits for the initial copy, turns the node's triggers on (tracktalk.fan_out_triggers()), and
   checks that a heartbeat written on the primary reaches the node.

Every refusal says what to change. The node's database must be one of its own, empty of
tracktalk's rows (it takes the primary's): never the primary's, nor an application's.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import tuple_row

from app.data.db import SCHEMA_VERSION, SQL_DIR, MigrateError, migrate, serves
from app.data.nodes import describe

PUBLICATION = "tracktalk"
OUTBOX_PUBLICATION = "tracktalk_outbox"
PUBLISHED = (
    "tracktalk.events",
    "tracktalk.topic_state",
    "tracktalk.channel_key",
    "tracktalk.heartbeat",
    "public.users",
    "public.albums",
    "public.tracks",
)
"""What a node copies: the log and its numbering (catch-up, replays, `connected`), the channel key
(it signs the payloads), the heartbeat (its lag), and what tracktalk.may_see() reads for a track
(admission; a kind whose tables a node lacks is answered by the primary: app/data/events.py)."""
PUBLISHED_IF_THERE = ("public.forum_categories", "public.forum_threads")
"""Published too where the primary has them (the forum's kinds' may_see reads them)."""
OWNER = "tracktalk_owner"
SLOT_PREFIX = "tracktalk_"
"""How every fan-out node's subscription, and so its slot on the primary, is named: other logical
slots of the primary's database (another subscriber's, a CDC tool's) are not nodes."""
_WAIT_STEP = 0.25
_ROLES_SQL = SQL_DIR / "roles.sql"


FAILOVER_BY_HAND = (
    "node: subscription {subscription}'s slot is not a failover slot (it was made before both sides were "
    "PostgreSQL 17): a promoted standby of the primary would not have it. PostgreSQL sets that only on a "
    "disabled subscription, and the slot must be idle by then, so it is left to you (a moment in which "
    "this node receives nothing: its replicas' /readyz says so, and they move to the next URL if it lasts "
    "5 s). On the node: ALTER SUBSCRIPTION "
    "{subscription} DISABLE; then, once SELECT active FROM pg_replication_slots WHERE slot_name = "
    "'{subscription}' says false on the primary: ALTER SUBSCRIPTION {subscription} SET (failover = true); "
    'ALTER SUBSCRIPTION {subscription} ENABLE; (docs/dba.md, "Fan-out nodes")'
)
"""What a run says of an existing node whose slot could be a failover slot and is not. Never run
here: only PostgreSQL 15 is installed (the statements are PostgreSQL 17's, as documented)."""


class FanoutError(Exception):
    """A node cannot be prepared as asked: the message says what to change."""


def _one(conn: psycopg.Connection[Any], query: Any, params: Any = None) -> Any:
    with conn.cursor(row_factory=tuple_row) as cur:
        cur.execute(query, params)
        row = cur.fetchone()
    return None if row is None else row[0]


def _all(conn: psycopg.Connection[Any], query: Any, params: Any = None) -> list[tuple[Any, ...]]:
    with conn.cursor(row_factory=tuple_row) as cur:
        cur.execute(query, params)
        return cur.fetchall()


def subscription_name(node: str) -> str:
    """The subscription's name (and its slot's on the primary) for a node: `tracktalk_` and the
    node's host, port and database."""
    return (SLOT_PREFIX + re.sub(r"[^a-z0-9_]+", "_", describe(node).lower()).strip("_"))[:63]


def prepare(
    primary: str, node: str, name: str | None = None, wait: float = 600.0, say: Callable[[str], None] = print
) -> str:
    """Prepare `node` as a fan-out node of `primary` (each a URL; `primary` as the node reaches it:
    its subscription connects with it). Return the subscription's name. FanoutError when something
    must be changed first."""
    subscription = name or subscription_name(node)
    if not subscription.startswith(SLOT_PREFIX):
        raise FanoutError(
            f"--name {subscription!r}: start it with {SLOT_PREFIX} (that is how `tracktalk check` tells a "
            "fan-out node's slot on the primary from another's)"
        )
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", subscription):
        raise FanoutError(f"--name {subscription!r}: use lower-case letters, digits and _ (at most 63)")
    try:
        with psycopg.connect(primary, autocommit=True, connect_timeout=10) as p:
            published = _check_primary(p, subscription)
            with psycopg.connect(node, autocommit=True, connect_timeout=10) as n:
                _check_node(n, p, published)
    except psycopg.errors.InsufficientPrivilege as exc:
        raise FanoutError(
            f"{exc.diag.message_primary}: the --primary URL's role reads tracktalk's schema and tables "
            f"(the node copies them): give the URL of their owner ({OWNER}, with REPLICATION) or a superuser"
        ) from None
    except psycopg.OperationalError as exc:
        raise FanoutError(f"cannot connect: {' '.join(str(exc).split())}") from None
    _schema(node, say)
    with psycopg.connect(primary, autocommit=True) as p:
        _publish(p, published, say)
    with psycopg.connect(node, autocommit=True) as n:
        with psycopg.connect(primary, autocommit=True) as p:
            failover = (
                min(int(_one(p, "SHOW server_version_num")), int(_one(n, "SHOW server_version_num")))
                >= 170000
            )
        _subscribe(n, primary, subscription, published, say, failover)
        _wait_copied(n, subscription, wait, say)
        sending = _one(n, "SELECT tracktalk.fan_out_triggers()")
        if not sending:
            raise FanoutError("the node's copy of tracktalk.events is not complete: run this again")
        with psycopg.connect(primary, autocommit=True) as p:
            lag = _follows(p, n, wait)
    say(
        f"node {describe(node)}: subscription {subscription} follows the primary ({lag * 1000:.0f} ms behind)"
    )
    return subscription


# ---------------------------------------------------------------------------------------------
# The primary
# ---------------------------------------------------------------------------------------------


def _check_primary(p: psycopg.Connection[Any], subscription: str) -> list[str]:
    """Refuse what would stop the node from following; the tables to publish."""
    if _one(p, "SELECT pg_is_in_recovery()"):
        raise FanoutError("--primary leads to a standby (in recovery): give the primary's URL")
    role, may_stream = _all(
        p, "SELECT current_user, rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user"
    )[0]
    if not may_stream:
        raise FanoutError(
            f"role {role} may not stream changes from the primary: the node's subscription connects as the "
            f"--primary URL's role, which needs the REPLICATION attribute (ALTER ROLE {role} REPLICATION;) "
            "and SELECT on the published tables; or give the URL of a superuser"
        )
    version = _one(
        p,
        "SELECT version FROM tracktalk.schema_version WHERE to_regclass('tracktalk.schema_version') IS NOT NULL",
    )
    if not serves(version):
        raise FanoutError(
            f"the primary has {'no tracktalk schema' if version is None else f'schema version {version}'}; "
            f"this tracktalk needs {SCHEMA_VERSION}: run `tracktalk migrate` on it first"
        )
    level = _one(p, "SHOW wal_level")
    if level != "logical":
        raise FanoutError(
            f"the primary's wal_level is {level!r}: a fan-out node follows it by logical replication, which "
            "needs wal_level = logical. On the primary, as a superuser: ALTER SYSTEM SET wal_level = logical; "
            "then restart it (a reload is not enough)"
        )
    slots, most = _all(
        p,
        "SELECT (SELECT count(*) FROM pg_replication_slots WHERE slot_name <> %s),"
        " current_setting('max_replication_slots')::int",
        (subscription,),
    )[0]
    mine = _one(p, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", (subscription,))
    if not mine and slots >= most:
        raise FanoutError(
            f"the primary has max_replication_slots = {most}, and {slots} are taken: each fan-out node holds "
            f"one. ALTER SYSTEM SET max_replication_slots = {slots + 2}; then restart the primary"
        )
    senders, most_senders = _all(
        p, "SELECT (SELECT count(*) FROM pg_stat_replication), current_setting('max_wal_senders')::int"
    )[0]
    if not mine and senders >= most_senders:
        raise FanoutError(
            f"the primary has max_wal_senders = {most_senders}, and {senders} are in use: each fan-out node "
            f"streams through one. ALTER SYSTEM SET max_wal_senders = {senders + 2}; then restart the primary"
        )
    published = list(PUBLISHED) + [t for t in PUBLISHED_IF_THERE if _one(p, "SELECT to_regclass(%s)", (t,))]
    unreadable = [
        t
        for t in [*published, "tracktalk.outbox"]
        if not _one(p, "SELECT has_table_privilege(%s, 'SELECT')", (t,))
    ]
    if unreadable:
        raise FanoutError(
            f"role {role} may not read {', '.join(unreadable)} on the primary, which the node copies: grant "
            f"SELECT on them to {role}, or give the URL of the tables' owner or a superuser"
        )
    return published


def _publish(p: psycopg.Connection[Any], published: list[str], say: Callable[[str], None]) -> None:
    """The publications, made or brought to the tables listed. Another run at the same moment (two
    nodes prepared at once) may make one between the look and the CREATE: then look again. It can
    do so once for each of the two publications (it made the first while this run waited, then the
    second while this one looked), so this looks up to three times."""
    for attempt in range(3):
        try:
            _make_publications(p, published, say)
            return
        except (psycopg.errors.UniqueViolation, psycopg.errors.DuplicateObject):
            if attempt == 2:
                raise
            say("primary: another run made a publication meanwhile")


def _make_publications(p: psycopg.Connection[Any], published: list[str], say: Callable[[str], None]) -> None:
    tables = sql.SQL(", ").join(sql.SQL(t) for t in published)
    have = {
        f"{schema}.{table}"
        for schema, table in _all(
            p, "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s", (PUBLICATION,)
        )
    }
    try:
        if not _one(p, "SELECT count(*) FROM pg_publication WHERE pubname = %s", (PUBLICATION,)):
            p.execute(
                sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(sql.Identifier(PUBLICATION), tables)
            )
            say(f"primary: publication {PUBLICATION} made ({', '.join(published)})")
        elif have != set(published):
            p.execute(
                sql.SQL("ALTER PUBLICATION {} SET TABLE {}").format(sql.Identifier(PUBLICATION), tables)
            )
            say(f"primary: publication {PUBLICATION} now publishes {', '.join(published)}")
        if not _one(p, "SELECT count(*) FROM pg_publication WHERE pubname = %s", (OUTBOX_PUBLICATION,)):
            p.execute(
                sql.SQL("CREATE PUBLICATION {} FOR TABLE tracktalk.outbox WITH (publish = 'insert')").format(
                    sql.Identifier(OUTBOX_PUBLICATION)
                )
            )
            say(f"primary: publication {OUTBOX_PUBLICATION} made (tracktalk.outbox, inserts only)")
    except psycopg.errors.InsufficientPrivilege as exc:
        role = _one(p, "SELECT current_user")
        raise FanoutError(
            f"role {role} may not publish tracktalk's tables ({exc.diag.message_primary}): a publication is "
            f"made by the tables' owner ({OWNER}) or a superuser; give such a role's URL as --primary (with "
            f"REPLICATION: ALTER ROLE {OWNER} REPLICATION;)"
        ) from None


# ---------------------------------------------------------------------------------------------
# The node
# ---------------------------------------------------------------------------------------------


def _check_node(n: psycopg.Connection[Any], p: psycopg.Connection[Any], published: list[str]) -> None:
    """Refuse a node that is the primary or on its server, that holds rows of its own (before
    anything is changed there), that follows another primary, or whose role or settings cannot
    subscribe."""
    # A server: its system identifier (a clone's is its origin's) and when it started.
    here = "SELECT (SELECT system_identifier FROM pg_control_system()), pg_postmaster_start_time(), current_database()"
    (node_server, node_started, node_db), (primary_server, primary_started, primary_db) = (
        _all(n, here)[0],
        _all(p, here)[0],
    )
    if (node_server, node_started) == (primary_server, primary_started):
        if node_db == primary_db:
            raise FanoutError(
                "--node and --primary lead to the same database: a fan-out node is another server"
            )
        raise FanoutError(
            f"--node leads to a database of the primary's own server ({node_db}): a fan-out node is another "
            "PostgreSQL server (a subscription to its own server cannot make its slot, and waits for ever; "
            "its NOTIFYs would share the primary's queue and lock)"
        )
    if _one(n, "SELECT pg_is_in_recovery()"):
        raise FanoutError("--node leads to a standby (in recovery): a fan-out node is a primary of its own")
    version = int(_one(n, "SHOW server_version_num"))
    role, superuser = _all(n, "SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user")[0]
    may = superuser or (
        version >= 160000 and _one(n, "SELECT pg_has_role(current_user, 'pg_create_subscription', 'MEMBER')")
    )
    if not may:
        raise FanoutError(
            f"role {role} on the node may not make a subscription: on PostgreSQL {version // 10000} only a "
            "superuser may (from 16: GRANT pg_create_subscription TO "
            f"{role}; and CREATE on the database): give a superuser's URL as --node"
        )
    found = _subscriptions(n)
    if found and not _one(
        p,
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s AND database = current_database()",
        (found[0][0],),
    ):
        raise FanoutError(
            f"the node's subscription {found[0][0]} has no slot on this primary's database ({describe(p.info.dsn)}): "
            "the node follows another primary, or its slot was dropped or lost here, and a subscription "
            "cannot follow a primary that lacks its slot. Give the --primary it follows; or rebuild it "
            "(on the node: ALTER SUBSCRIPTION … DISABLE; ALTER SUBSCRIPTION … SET (slot_name = NONE); DROP "
            "SUBSCRIPTION …; then a fresh database and `tracktalk fanout-node` again: docs/dba.md, "
            '"Fan-out nodes")'
        )
    if not found:
        full = [
            t
            for t in published
            if t != "tracktalk.channel_key"
            and _one(n, "SELECT to_regclass(%s)", (t,))
            and _one(n, sql.SQL("SELECT EXISTS (SELECT FROM {})").format(sql.SQL(t)))
        ]
        if full:
            raise FanoutError(
                f"the node's database already holds rows in {', '.join(full)}: a fan-out node's database is "
                "one of its own that starts empty and takes the primary's (CREATE DATABASE on the node), never "
                "the primary's nor an application's"
            )
    for setting, need in (
        ("max_replication_slots", 1),
        ("max_logical_replication_workers", 1),
        ("max_worker_processes", 2),
    ):
        value = int(_one(n, sql.SQL("SHOW {}").format(sql.Identifier(setting))))
        if value < need:
            raise FanoutError(
                f"the node has {setting} = {value}: a subscription needs at least {need}. "
                f"ALTER SYSTEM SET {setting} = {need + 3}; then restart the node"
            )


def _schema(node: str, say: Callable[[str], None]) -> None:
    """tracktalk's roles and schema on the node, as on the primary (sql/roles.sql where the role
    may make roles; the schema as tracktalk_owner where that role exists)."""
    with psycopg.connect(node, autocommit=True) as n:
        may_make_roles = _one(
            n, "SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user"
        )
    if may_make_roles:
        _roles(node)
    with psycopg.connect(node, autocommit=True) as n:
        # As tracktalk_owner, unless the schema is there already and another role's.
        owner = _one(
            n,
            "SELECT to_regrole(%s) IS NOT NULL AND coalesce((SELECT pg_get_userbyid(nspowner) = %s"
            " FROM pg_namespace WHERE nspname = 'tracktalk'), true)",
            (OWNER, OWNER),
        )
    try:
        version = migrate(make_conninfo(node, options=f"-c role={OWNER}") if owner else node)
    except MigrateError as exc:
        raise FanoutError(f"the node's schema: {exc}") from None
    if may_make_roles:
        _roles(node)  # the grants on what the schema made
    say(f"node: schema version {version} applied{' as ' + OWNER if owner else ''}")


def _roles(node: str) -> None:
    with psycopg.connect(node, autocommit=False) as n:
        n.execute(Path(_ROLES_SQL).read_text(encoding="utf-8").encode())


def _subscribe(
    n: psycopg.Connection[Any],
    primary: str,
    subscription: str,
    published: list[str],
    say: Callable[[str], None],
    failover: bool = False,
) -> None:
    """The subscription, made (over an empty copy) or brought up to date; `failover`: its slot a
    failover slot (PostgreSQL 17 on both sides: a standby that syncs slots has it, and the node
    follows the promoted standby; docs/dba.md, "Fan-out nodes")."""
    found = _subscriptions(n)
    name = sql.Identifier(subscription)
    publications = [PUBLICATION, OUTBOX_PUBLICATION]
    if not found:
        # The node's own channel key (its sql/triggers.sql made one) makes way for the primary's;
        # its other copies are empty (checked before anything was changed).
        n.execute("DELETE FROM tracktalk.channel_key")
        try:
            n.execute(
                sql.SQL(
                    "CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {}, {} WITH (synchronous_commit = 'off'{})"
                ).format(
                    name,
                    sql.Literal(primary),
                    sql.Identifier(PUBLICATION),
                    sql.Identifier(OUTBOX_PUBLICATION),
                    sql.SQL(", failover = true") if failover else sql.SQL(""),
                )
            )
        except psycopg.errors.DuplicateObject as exc:
            raise FanoutError(
                f"{exc.diag.message_primary}: a node named {subscription} was made before and its slot is still on "
                f"the primary. If that node is gone, drop its slot on the primary (SELECT "
                f"pg_drop_replication_slot('{subscription}');), or give this node another --name"
            ) from None
        except psycopg.errors.ConnectionException as exc:
            raise FanoutError(
                f"the node could not reach the primary ({' '.join(str(exc).split())}): --primary must be the "
                "primary's address as the node sees it, with a role that may connect from there (pg_hba.conf)"
            ) from None
        except psycopg.OperationalError as exc:
            raise FanoutError(f"the node could not subscribe: {' '.join(str(exc).split())}") from None
        say(f"node: subscription {subscription} made: copying {', '.join(published)}")
        return
    have, enabled, conninfo, pubs = found[0]
    if have != subscription:
        raise FanoutError(
            f"the node already follows the primary as subscription {have}: run again with --name {have}"
        )
    if conninfo_to_dict(conninfo) != conninfo_to_dict(primary):
        n.execute(sql.SQL("ALTER SUBSCRIPTION {} CONNECTION {}").format(name, sql.Literal(primary)))
        say(f"node: subscription {subscription} now connects to {describe(primary)}")
    if sorted(pubs) != sorted(publications):
        n.execute(
            sql.SQL("ALTER SUBSCRIPTION {} SET PUBLICATION {}, {}").format(
                name, sql.Identifier(PUBLICATION), sql.Identifier(OUTBOX_PUBLICATION)
            )
        )
    else:
        n.execute(sql.SQL("ALTER SUBSCRIPTION {} REFRESH PUBLICATION").format(name))
    if not enabled:
        n.execute(sql.SQL("ALTER SUBSCRIPTION {} ENABLE").format(name))
        say(f"node: subscription {subscription} enabled again")
    say(f"node: subscription {subscription} was there")
    if failover and not _one(
        n, "SELECT subfailover FROM pg_subscription WHERE subname = %s", (subscription,)
    ):
        say(FAILOVER_BY_HAND.format(subscription=subscription))


def _subscriptions(n: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    """The node database's subscriptions to tracktalk's publication: (name, enabled, conninfo,
    publications)."""
    return _all(
        n,
        "SELECT subname, subenabled, subconninfo, subpublications FROM pg_subscription"
        " WHERE subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
        " AND %s = ANY (subpublications)",
        (PUBLICATION,),
    )


def _wait_copied(
    n: psycopg.Connection[Any], subscription: str, wait: float, say: Callable[[str], None]
) -> None:
    """Until every table's initial copy is done (pg_subscription_rel)."""
    deadline = time.monotonic() + wait
    told = 0.0
    while True:
        states = dict(
            _all(
                n,
                "SELECT r.srrelid::regclass::text, r.srsubstate FROM pg_subscription_rel r"
                " JOIN pg_subscription s ON s.oid = r.srsubid WHERE s.subname = %s",
                (subscription,),
            )
        )
        waiting = sorted(t for t, state in states.items() if state != "r")
        if states and not waiting:
            return
        if time.monotonic() > deadline:
            raise FanoutError(
                f"the node's initial copy is not done after {wait:.0f} s (still: {', '.join(waiting) or 'starting'}): "
                "see the node's server log; run this again to go on waiting"
            )
        if time.monotonic() - told > 5:
            say(f"node: copying ({len(states) - len(waiting)} of {len(states)} tables done)")
            told = time.monotonic()
        time.sleep(_WAIT_STEP)


def _follows(p: psycopg.Connection[Any], n: psycopg.Connection[Any], wait: float) -> float:
    """Write a heartbeat on the primary and wait until the node has it; seconds it took."""
    start = time.monotonic()
    beat = _one(p, "SELECT tracktalk.beat()")
    deadline = start + min(wait, 60.0)
    while True:
        there = _one(n, "SELECT at FROM tracktalk.heartbeat")
        if there is not None and beat is not None and there >= beat:
            return time.monotonic() - start
        if time.monotonic() > deadline:
            raise FanoutError(
                "the node's copy is done, but a heartbeat written on the primary did not reach it within "
                f"{deadline - start:.0f} s: see pg_stat_subscription and the node's server log"
            )
        time.sleep(0.05)
