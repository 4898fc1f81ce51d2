"""`tracktalk check`: the database's exposure, as a DBA should review it.

PostgreSQL lets any role that may connect LISTEN on any channel and, by sitting idle in a
transaction, pin the server's one NOTIFY queue until every write fails; tracktalk cannot prevent
it, so this command says what is open. Each look prints one line: `ok`, `note` (to review, not
wrong in itself) or `FIX` (a finding: what is wrong, and what to run). The command exits 1 when
there is a finding, 0 otherwise. docs/dba.md explains each.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import psycopg
from psycopg.rows import tuple_row

from app.data.nodes import SLOT_NAME, SLOTS, NodeState, describe, follows, not_following
from app.ops.fanout_node import SLOT_PREFIX
from app.ops.readiness import HOLDER_QUERY, describe_holder, holder_from_row

QUEUE_ALERT = 0.05
"""Fraction of the NOTIFY queue in use from which `check` reports it (docs/dba.md: alert above
0.05, page above 0.5): in normal operation it stays near 0."""

STALE_REPLICA = 60.0
"""Seconds without a heartbeat (every 5 s) after which a row of tracktalk.replicas is reported."""

APP_ROLE = "tracktalk_app"
"""The role whose settings are looked at, when it exists (else the connecting role's)."""

_TRACKTALKS = ("tracktalk_owner", "tracktalk_app")
"""Roles of sql/roles.sql that connect; members of tracktalk_writer are tracktalk's writers."""

_SESSION_SOURCES = {"database", "user", "database user", "client", "session"}
"""pg_settings sources that say the connecting session's value is not the server's."""

_ZERO = re.compile(r"^\s*0+(\.0+)?\s*[a-z]*\s*$")
"""A setting of 0 in any unit (`0`, `0ms`, `0s`): off."""


@dataclass(frozen=True)
class Line:
    """One line of the report."""

    level: Literal["ok", "note", "FIX"]
    text: str


_NODE_WAIT = 3.0
"""Seconds a heartbeat written on the primary is given to reach a fan-out node."""


def check(conninfo: str, queue_alert: float = QUEUE_ALERT, nodes: Sequence[str] = ()) -> list[Line]:
    """Look at the database of `conninfo` (the primary), and at the fan-out nodes of `nodes`
    (TRACKTALK_LISTEN_URL's URLs); the report, one line per look."""
    with psycopg.connect(conninfo, autocommit=True, connect_timeout=10) as conn:
        db = str(_one(conn, "SELECT current_database()"))
        return [
            *_who_may_connect(conn, db),
            *_queue(conn, queue_alert),
            *_replicas(conn),
            *_settings(conn, db),
            *_owners(conn),
            *_slots(conn),
            *(line for node in nodes for line in _node(conn, node, queue_alert)),
        ]


def _one(conn: psycopg.Connection[Any], query: str, params: Any = None) -> Any:
    with conn.cursor(row_factory=tuple_row) as cur:
        cur.execute(query, params)
        row = cur.fetchone()
    return None if row is None else row[0]


def _all(conn: psycopg.Connection[Any], query: str, params: Any = None) -> list[tuple[Any, ...]]:
    with conn.cursor(row_factory=tuple_row) as cur:
        cur.execute(query, params)
        return cur.fetchall()


def _names(names: list[str], most: int = 10) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def _who_may_connect(conn: psycopg.Connection[Any], db: str) -> list[Line]:
    """PUBLIC's CONNECT (and TEMPORARY), and the login roles besides tracktalk's that may connect."""
    public_connect, public_temp = _all(
        conn,
        "SELECT has_database_privilege('public', %(db)s, 'CONNECT'),"
        " has_database_privilege('public', %(db)s, 'TEMPORARY')",
        {"db": db},
    )[0]
    others = [
        str(name)
        for (name,) in _all(
            conn,
            """
            SELECT r.rolname FROM pg_roles r
             WHERE r.rolcanlogin AND NOT r.rolsuper
               AND has_database_privilege(r.oid, %(db)s, 'CONNECT')
               AND r.rolname <> ALL (%(ours)s)
               AND NOT EXISTS (SELECT FROM pg_roles w
                                WHERE w.rolname = 'tracktalk_writer' AND pg_has_role(r.oid, w.oid, 'MEMBER'))
             ORDER BY r.rolname
            """,
            {"db": db, "ours": list(_TRACKTALKS)},
        )
    ]
    lines = []
    if public_connect:
        who = f" (login roles besides tracktalk's: {_names(others)})" if others else ""
        lines.append(
            Line(
                "FIX",
                f"PUBLIC may connect to database {db}, so every role of the server may{who}: each can LISTEN "
                "on tracktalk's channels and pin the NOTIFY queue. Grant CONNECT to the roles that need it, "
                f"then REVOKE CONNECT, TEMPORARY ON DATABASE {db} FROM PUBLIC; (sql/roles.sql does it)",
            )
        )
    elif others:
        lines.append(
            Line(
                "note",
                f"besides tracktalk's roles these may connect to {db} (granted), and so LISTEN: "
                f"{_names(others)}: each should have a reason to",
            )
        )
    else:
        lines.append(Line("ok", f"only tracktalk's roles and superusers may connect to {db}"))
    if public_temp and not public_connect:
        lines.append(
            Line(
                "FIX",
                f"PUBLIC may create temporary tables in {db}: REVOKE TEMPORARY ON DATABASE {db} FROM PUBLIC;",
            )
        )
    return lines


def _queue(conn: psycopg.Connection[Any], alert: float, node: str | None = None) -> list[Line]:
    """pg_notification_queue_usage(), and who holds the queue back when it is not near 0; `node`:
    the fan-out node `conn` is on."""
    usage = float(_one(conn, "SELECT pg_notification_queue_usage()"))
    queue = "the NOTIFY queue" if node is None else f"fan-out node {node}'s NOTIFY queue"
    if usage < alert:
        return [Line("ok", f"{queue} is {usage:.2%} full")]
    with conn.cursor(row_factory=tuple_row) as cur:
        cur.execute(HOLDER_QUERY)
        holder = holder_from_row(cur.fetchone())
    return [
        Line(
            "FIX",
            f"{queue} is {usage:.2%} full (reported from {alert:.2%}; at 100 % every write "
            f'fails): {describe_holder(holder)} (docs/dba.md, "Watching the NOTIFY queue")',
        )
    ]


def _replicas(conn: psycopg.Connection[Any]) -> list[Line]:
    """Rows of tracktalk.replicas whose heartbeat stopped."""
    try:
        rows = _all(
            conn,
            """
            SELECT id, extract(epoch FROM now() - seen_at), seen_at
              FROM tracktalk.replicas
             WHERE seen_at < now() - make_interval(secs => %s)
             ORDER BY seen_at
            """,
            (STALE_REPLICA,),
        )
        count = int(_one(conn, "SELECT count(*) FROM tracktalk.replicas"))
    except (psycopg.errors.UndefinedTable, psycopg.errors.InsufficientPrivilege) as exc:
        return [Line("note", f"tracktalk.replicas cannot be read ({exc.diag.message_primary})")]
    if not rows:
        return [Line("ok", f"{count} replicas, each heard from within {STALE_REPLICA:.0f} s")]
    return [
        Line(
            "FIX",
            f"replica {replica} has not been heard from for {silent:.0f} s (last at {seen:%Y-%m-%d %H:%M:%S%z}): "
            "stopped without a clean shutdown (the other replicas delete its row after 10 minutes), or "
            "frozen, and then its LISTEN session (application_name 'tracktalk-listener') may be pinning "
            "the NOTIFY queue: look at it, and end it with pg_terminate_backend",
        )
        for replica, silent, seen in rows
    ]


def _setting(conn: psycopg.Connection[Any], name: str, db: str, role: str | None) -> tuple[str, str]:
    """The value of `name` that a new session of `role` (None: of a role with no settings of its
    own) gets in `db`, and where it comes from."""
    row = _all(
        conn,
        """
        SELECT value, CASE WHEN s.setdatabase <> 0 AND s.setrole <> 0 THEN 'the role in this database'
                           WHEN s.setrole <> 0 THEN 'the role' ELSE 'the database' END
          FROM pg_db_role_setting s
         CROSS JOIN LATERAL unnest(s.setconfig) AS c (item)
         CROSS JOIN LATERAL (SELECT split_part(c.item, '=', 1) AS key,
                                    substr(c.item, strpos(c.item, '=') + 1) AS value) AS kv
         WHERE kv.key = %(name)s
           AND s.setdatabase IN (0, (SELECT oid FROM pg_database WHERE datname = %(db)s))
           AND s.setrole IN (0, coalesce((SELECT oid FROM pg_roles WHERE rolname = %(role)s), 0))
           AND NOT (s.setdatabase = 0 AND s.setrole = 0)
         ORDER BY (s.setrole <> 0) DESC, (s.setdatabase <> 0) DESC
         LIMIT 1
        """,
        {"name": name, "db": db, "role": role},
    )
    if row:
        return str(row[0][0]), str(row[0][1])
    return _server_setting(conn, name), "the server"


def _server_setting(conn: psycopg.Connection[Any], name: str) -> str:
    """The server's value of `name` (postgresql.conf, ALTER SYSTEM): the connecting session's,
    unless that one comes from its role, its database or its client (then the built-in default)."""
    setting, source, boot = _all(
        conn, "SELECT setting, source, boot_val FROM pg_settings WHERE name = %s", (name,)
    )[0]
    return str(boot if source in _SESSION_SOURCES else setting)


def _settings(conn: psycopg.Connection[Any], db: str) -> list[Line]:
    """What docs/dba.md assumes: READ COMMITTED and a statement timeout for the app role, and a
    bound on how long any session may sit idle in a transaction."""
    role = (
        APP_ROLE
        if _one(conn, "SELECT to_regrole(%s)", (APP_ROLE,))
        else str(_one(conn, "SELECT current_user"))
    )
    lines = []
    isolation, where = _setting(conn, "default_transaction_isolation", db, role)
    if isolation.strip("'\" ").lower() != "read committed":
        lines.append(
            Line(
                "FIX",
                f"role {role} defaults to {isolation} in {db} (set by {where}): tracktalk expects READ "
                "COMMITTED, and behind PgBouncer it cannot set it itself: ALTER ROLE "
                f"{role} IN DATABASE {db} SET default_transaction_isolation = 'read committed';",
            )
        )
    else:
        lines.append(Line("ok", f"role {role} reads committed in {db}"))
    timeout, where = _setting(conn, "statement_timeout", db, role)
    if _ZERO.match(timeout):
        lines.append(
            Line(
                "FIX",
                f"role {role} has no statement_timeout in {db}: behind PgBouncer its requests have no "
                "bound but the pool's, and a locked table holds them all: ALTER ROLE "
                f"{role} SET statement_timeout = '5s';",
            )
        )
    else:
        lines.append(Line("ok", f"role {role} has statement_timeout {timeout} (set by {where})"))
    idle, where = _setting(conn, "idle_in_transaction_session_timeout", db, None)
    if _ZERO.match(idle):
        lines.append(
            Line(
                "FIX",
                f"idle_in_transaction_session_timeout is off for sessions in {db}: one that LISTENs and "
                "then sits idle in a transaction keeps the NOTIFY queue from emptying until it is full "
                "and every write fails. Set it for the server (ALTER SYSTEM SET "
                "idle_in_transaction_session_timeout = '5min'; SELECT pg_reload_conf();), or at least "
                f"for this database (ALTER DATABASE {db} SET idle_in_transaction_session_timeout = '5min';)",
            )
        )
    else:
        lines.append(Line("ok", f"idle_in_transaction_session_timeout is {idle} in {db} (set by {where})"))
    if _ZERO.match(_server_setting(conn, "idle_in_transaction_session_timeout")):
        open_elsewhere = [
            str(name)
            for (name,) in _all(
                conn,
                "SELECT datname FROM pg_database WHERE datallowconn AND datname <> %s"
                " AND has_database_privilege('public', oid, 'CONNECT') ORDER BY datname",
                (db,),
            )
        ]
        if open_elsewhere:
            lines.append(
                Line(
                    "note",
                    f"PUBLIC may connect to other databases of this server ({_names(open_elsewhere)}) and "
                    "the server sets no idle_in_transaction_session_timeout: the NOTIFY queue is the "
                    "server's, so a session there can pin it too",
                )
            )
    return lines


def _owners(conn: psycopg.Connection[Any]) -> list[Line]:
    """tracktalk's SECURITY DEFINER functions must not run as a superuser."""
    if _one(conn, "SELECT to_regnamespace('tracktalk')") is None:
        return [Line("note", "there is no schema tracktalk here: run `tracktalk migrate`")]
    rows = _all(
        conn,
        """
        SELECT p.proname, r.rolname FROM pg_proc p JOIN pg_roles r ON r.oid = p.proowner
         WHERE p.pronamespace = 'tracktalk'::regnamespace AND p.prosecdef AND r.rolsuper
         ORDER BY p.proname
        """,
    )
    if not rows:
        return [Line("ok", "tracktalk's SECURITY DEFINER functions are not a superuser's")]
    owners = sorted({str(owner) for _, owner in rows})
    return [
        Line(
            "FIX",
            f"{len(rows)} SECURITY DEFINER functions of the schema tracktalk ({_names([str(n) for n, _ in rows], 3)}) "
            f"belong to the superuser {', '.join(owners)}, so they run as one: give the schema's objects to "
            'tracktalk_owner (docs/dba.md, "Backup and restore": a restore with --no-owner and no --role '
            "does this)",
        )
    ]


def _slots(conn: psycopg.Connection[Any]) -> list[Line]:
    """Who sends the NOTIFYs, and the fan-out nodes' slots on this primary (named tracktalk_…; other
    logical slots are not nodes): each keeps the WAL its node has not confirmed, so a node that is
    gone keeps it without end (docs/dba.md, "Fan-out nodes")."""
    try:
        mode = _one(conn, "SELECT notify_mode FROM tracktalk.settings")
    except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn):
        return []
    rows = _all(
        conn,
        """
        SELECT s.slot_name, s.active, s.wal_status,
               pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn), s.safe_wal_size
          FROM pg_replication_slots s
         WHERE s.database = current_database() AND s.plugin = 'pgoutput'
           AND starts_with(s.slot_name::text, %s)
           AND EXISTS (SELECT FROM pg_publication WHERE pubname = 'tracktalk')
         ORDER BY s.slot_name
        """,
        (SLOT_PREFIX,),
    )
    lines = []
    if mode == "fanout" and not rows:
        lines.append(
            Line(
                "FIX",
                "notify_mode is 'fanout' but no fan-out node follows this database: nothing sends the NOTIFYs "
                "(the replicas read the log every second). Prepare nodes with `tracktalk fanout-node`, or "
                "UPDATE tracktalk.settings SET notify_mode = 'direct'",
            )
        )
    elif mode == "fanout":
        lines.append(
            Line(
                "ok",
                f"notify_mode is 'fanout': {len(rows)} fan-out node{'s' if len(rows) != 1 else ''} send the NOTIFYs",
            )
        )
    elif rows:
        lines.append(
            Line(
                "note",
                f"notify_mode is 'direct' with {len(rows)} fan-out node{'s' if len(rows) != 1 else ''}: the writers still send every NOTIFY "
                "(and take NOTIFY's lock at commit); once every replica listens on a node, UPDATE "
                "tracktalk.settings SET notify_mode = 'fanout'",
            )
        )
    keep = str(_one(conn, "SHOW max_slot_wal_keep_size"))
    if rows and keep.strip() == "-1":
        lines.append(
            Line(
                "note",
                "max_slot_wal_keep_size is -1: a fan-out node that is down keeps the primary's WAL for good, "
                "until its disk is full. Bound it (ALTER SYSTEM SET max_slot_wal_keep_size = '50GB'; SELECT "
                "pg_reload_conf();): a node past it loses its slot and is rebuilt",
            )
        )
    for slot, active, status, behind, safe in rows:
        held = f"{(behind or 0) / 1048576:.1f} MiB of WAL held for it"
        if status == "lost":
            lines.append(
                Line(
                    "FIX",
                    f"fan-out node slot {slot} lost WAL it needed (past max_slot_wal_keep_size): that node can no "
                    f"longer follow. Rebuild it: DROP SUBSCRIPTION {slot}; on the node, a fresh database, and "
                    "`tracktalk fanout-node` again",
                )
            )
        elif not active:
            lines.append(
                Line(
                    "FIX",
                    f"fan-out node slot {slot} is not in use ({held}): its node is down or gone. If it is gone "
                    f"for good: SELECT pg_drop_replication_slot('{slot}'); on the primary",
                )
            )
        else:
            margin = "" if safe is None else f", {safe / 1048576:.0f} MiB before max_slot_wal_keep_size"
            lines.append(Line("ok", f"fan-out node slot {slot} is streaming ({held}{margin})"))
    return lines


def _node(primary: psycopg.Connection[Any], conninfo: str, queue_alert: float = QUEUE_ALERT) -> list[Line]:
    """A URL of TRACKTALK_LISTEN_URL: is it a fan-out node that follows this primary, and how far
    behind? And its server's NOTIFY queue."""
    name = describe(conninfo)
    try:
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=5) as conn:
            beat = _one(primary, "SELECT tracktalk.beat()")
            found = _all(conn, "SELECT * FROM tracktalk.node_state()")
            if not found:
                return [Line("note", f"{name} is not a fan-out node (it has no subscription to a primary)")]
            queue = _queue(conn, queue_alert, name)
            subscription, enabled, running, copied, sending, node_beat, received = found[0]
            state = NodeState(*found[0])._replace(slot=_one(conn, SLOT_NAME))
            if not follows(_one(primary, SLOTS), state):
                return [Line("FIX", not_following(name, state, describe(primary.info.dsn))), *queue]
            deadline = time.monotonic() + _NODE_WAIT
            while running and beat is not None and (node_beat is None or node_beat < beat):
                if time.monotonic() > deadline:
                    break
                time.sleep(0.05)
                node_beat = _one(conn, "SELECT at FROM tracktalk.heartbeat")
    except psycopg.Error as exc:
        return [Line("FIX", f"fan-out node {name} cannot be read: {' '.join(str(exc).split())}")]
    if not enabled or not running:
        return [
            Line(
                "FIX",
                f"fan-out node {name}: subscription {subscription} is {'disabled' if not enabled else 'not running'}"
                f" (last heard from the primary {received or 'never'}): its replicas get nothing new. "
                f"See its server log; ALTER SUBSCRIPTION {subscription} ENABLE; once the cause is gone",
            ),
            *queue,
        ]
    if not copied or not sending:
        return [
            Line(
                "FIX",
                f"fan-out node {name}: {'its initial copy is not done' if not copied else 'its triggers are off'}: "
                "run `tracktalk fanout-node` for it again",
            ),
            *queue,
        ]
    lag = None if beat is None or node_beat is None else max(0.0, (beat - node_beat).total_seconds())
    if lag is None or lag > 0:
        behind = "has not received the primary's heartbeat" if lag is None else f"is {lag:.1f} s behind"
        return [
            Line(
                "FIX",
                f"fan-out node {name} {behind} (after {_NODE_WAIT:.0f} s): see pg_stat_subscription there",
            ),
            *queue,
        ]
    return [Line("ok", f"fan-out node {name} follows the primary (subscription {subscription})"), *queue]


def report(lines: list[Line]) -> tuple[str, int]:
    """The text to print and the exit code: 1 when there is a finding."""
    findings = sum(line.level == "FIX" for line in lines)
    text = "\n".join(f"{line.level:<4}  {line.text}" for line in lines)
    summary = f"{findings} finding{'s' if findings != 1 else ''}" if findings else "no findings"
    return f'{text}\ntracktalk check: {summary} (docs/dba.md, "tracktalk check")', 1 if findings else 0
