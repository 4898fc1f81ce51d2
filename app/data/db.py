"""The database: applying the SQL, checking its version, and the request pool."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeAlias

import psycopg
from psycopg import pq
from psycopg.abc import Buffer
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import tuple_row
from psycopg.types.datetime import TimestamptzBinaryLoader, TimestamptzLoader
from psycopg_pool import AsyncConnectionPool

from app.config import Settings

log = logging.getLogger(__name__)

Conn: TypeAlias = psycopg.AsyncConnection[Any]
"""A connection from the request pool (autocommit)."""

SQL_DIR = Path(__file__).resolve().parents[2] / "sql"
SQL_FILES = ("schema.sql", "triggers.sql")
"""What is: applied to every database, fresh or not, in this order."""
UPGRADE_DIR = SQL_DIR / "upgrade"
"""The steps from one version to the next: NNN_what.sql, NNN the version the step reaches."""

SCHEMA_VERSION = 12
"""The version that sql/triggers.sql stamps. The app serves it or a newer one, and refuses an
older one: replicas can be upgraded one at a time after the SQL where a version keeps what the
one before it uses (3 to 4, 6 to 7, 7 to 8, 8 to 9, 9 to 10 and 11 to 12 do; 2 to 3, 4 to 5, 5 to 6
and 10 to 11 do not, and need the old replicas stopped first: docs/dba.md)."""


def serves(found: int | None) -> bool:
    """Can this code serve a database whose schema is version `found`?"""
    return found is not None and found >= SCHEMA_VERSION


_VERSION_QUERY = """
    SELECT version FROM tracktalk.schema_version
    WHERE to_regclass('tracktalk.schema_version') IS NOT NULL
"""


class SchemaError(Exception):
    """The database's schema is missing or not the version this code needs."""


class MigrateError(Exception):
    """The migration was refused (a permission): the message says which role to run it as."""


_FIRST_MIGRATION_TRIES = 3
"""Runs of a migration that met another one making the schema at the same moment."""


def upgrade_steps(found: int | None) -> list[Path]:
    """The files of sql/upgrade/ that a database at version `found` takes, in order: those above
    it (none for a fresh database: schema.sql and triggers.sql make it whole)."""
    if found is None:
        return []
    steps = sorted((int(path.name[:3]), path) for path in UPGRADE_DIR.glob("[0-9][0-9][0-9]_*.sql"))
    return [path for version, path in steps if version > found]


def migrate(conninfo: str) -> int:
    """Bring the database to this version in one transaction; return the version.

    A database at version V first takes the steps of sql/upgrade/ above V, in order; then every
    database gets sql/schema.sql and sql/triggers.sql (which make what is missing and replace
    functions, views and triggers) and the stamp, last. One migration at a time: the lock on
    tracktalk.schema_version is taken before its version is read, a lock only the schema's owner
    can take. Two first migrations at once both try to make the schema; the later one fails on
    pg_namespace's unique index once the earlier commits, and runs again (as an upgrade of nothing).
    """
    for attempt in range(1, _FIRST_MIGRATION_TRIES + 1):
        try:
            version = _apply(conninfo)
        except psycopg.errors.UniqueViolation:
            if attempt == _FIRST_MIGRATION_TRIES:
                raise
            log.info("another migration made the schema at the same moment: running again")
        except psycopg.errors.InsufficientPrivilege as exc:
            raise MigrateError(_refused(conninfo, exc)) from None
        else:
            log.info("schema version %s applied", version)
            return version
    raise AssertionError("unreachable")


def _apply(conninfo: str) -> int:
    with psycopg.connect(conninfo, autocommit=False) as conn:
        conn.execute("SET LOCAL client_min_messages = warning")
        found = _lock_version(conn)
        for path in [*upgrade_steps(found), *(SQL_DIR / name for name in SQL_FILES)]:
            conn.execute(path.read_text(encoding="utf-8").encode())
        version = _read_version(conn)
    return version if version is not None else 0


def _lock_version(conn: psycopg.Connection[tuple[object, ...]]) -> int | None:
    """Lock tracktalk.schema_version for this transaction and read it; None when there is none
    (a fresh database: schema.sql makes it and takes the lock)."""
    row = conn.execute("SELECT to_regclass('tracktalk.schema_version') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return None
    conn.execute("LOCK TABLE tracktalk.schema_version IN EXCLUSIVE MODE")
    return _read_version(conn)


def _refused(conninfo: str, exc: psycopg.errors.InsufficientPrivilege) -> str:
    """One line for a DBA: the role refused, what PostgreSQL said, and whom to run it as."""
    reason = (exc.diag.message_primary or str(exc)).strip()
    role, database, owner = _who(conninfo)
    if owner and owner != role:
        what = f'run it as {owner}, the owner of the schema tracktalk (docs/dba.md, "Three roles")'
    else:
        what = (
            f"run it as a role that may: GRANT CREATE ON DATABASE {database} TO {role}; or, better, run "
            'sql/roles.sql as a superuser and migrate as tracktalk_owner (docs/dba.md, "Three roles")'
        )
    return f"migrate as role {role} was refused ({reason}): {what}"


def _who(conninfo: str) -> tuple[str, str, str | None]:
    """The role and database of `conninfo`, and the owner of the schema tracktalk (None: none yet,
    or it cannot be asked)."""
    try:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            row = conn.execute(
                "SELECT current_user, current_database(),"
                " (SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 'tracktalk')"
            ).fetchone()
    except psycopg.Error:
        row = None
    if row is None:
        params = conninfo_to_dict(conninfo)
        return str(params.get("user") or "?"), str(params.get("dbname") or "?"), None
    return str(row[0]), str(row[1]), None if row[2] is None else str(row[2])


def _read_version(conn: psycopg.Connection[tuple[object, ...]]) -> int | None:
    try:
        row = conn.execute("SELECT version FROM tracktalk.schema_version").fetchone()
    except psycopg.errors.UndefinedTable:
        return None
    return int(str(row[0])) if row else None


def check_schema(conninfo: str) -> None:
    """Raise SchemaError, saying to run `tracktalk migrate`, unless the schema is current."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        found = _read_version(conn)
    if not serves(found):
        state = "has no tracktalk schema" if found is None else f"has schema version {found}"
        raise SchemaError(
            f"the database {state}; this tracktalk needs version {SCHEMA_VERSION} or newer. "
            "Run `tracktalk migrate` (or apply the SQL with psql, as docs/dba.md says), "
            "then start again."
        )


async def check_role_settings(pool: AsyncConnectionPool) -> None:
    """Behind a pooler the statement timeout and the isolation level are the role's: warn when
    they are not what tracktalk needs."""
    async with pool.connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(
            "SELECT current_setting('statement_timeout'), current_setting('default_transaction_isolation'),"
            " current_user"
        )
        row = await cur.fetchone()
    if row is None:
        return
    timeout, isolation, role = row
    if timeout == "0":
        log.warning(
            "DATABASE_URL goes through a pooler (TRACKTALK_LISTEN_URL is set) and its role %s has no "
            "statement_timeout: a locked table would hold requests until the pool times out. "
            "Set one: ALTER ROLE %s SET statement_timeout = '5s'",
            role,
            role,
        )
    if isolation != "read committed":
        log.warning(
            "DATABASE_URL goes through a pooler and its role %s defaults to %s: concurrent writes to "
            "one track would fail with serialization errors. Set: ALTER ROLE %s SET "
            "default_transaction_isolation = 'read committed'",
            role,
            isolation,
            role,
        )


async def schema_version(pool: AsyncConnectionPool) -> int | None:
    """The schema version the database holds now (None when it has none)."""
    async with pool.connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(_VERSION_QUERY)
        row = await cur.fetchone()
    return int(row[0]) if row else None


class UtcTimestamptzLoader(TimestamptzLoader):
    """timestamptz as a datetime in UTC, whatever the session's TimeZone: the API writes times
    as `…Z` (msgspec's RFC 3339), like the messages the triggers build (tracktalk.json_time)."""

    def load(self, data: Buffer) -> datetime:
        return super().load(data).astimezone(UTC)


class UtcTimestamptzBinaryLoader(TimestamptzBinaryLoader):
    """The same, for results in binary format."""

    def load(self, data: Buffer) -> datetime:
        return super().load(data).astimezone(UTC)


async def _utc_times(conn: Conn) -> None:
    conn.adapters.register_loader("timestamptz", UtcTimestamptzLoader)
    conn.adapters.register_loader("timestamptz", UtcTimestamptzBinaryLoader)


def create_pool(settings: Settings) -> AsyncConnectionPool:
    """The request pool (not yet open: open it in the app's lifespan)."""
    kwargs: dict[str, Any] = {
        "autocommit": True,
        "application_name": "tracktalk",
        "connect_timeout": max(1, int(settings.pool_timeout)),
    }
    if settings.pooled:
        # A transaction-mode pooler hands each transaction whichever server session is free: a
        # statement prepared on one is missing on the next ("prepared statement … does not
        # exist"), and PgBouncer refuses the startup parameter `options`.
        kwargs["prepare_threshold"] = None
    else:
        # READ COMMITTED whatever the role's default: the triggers' counter rows and the comment
        # limit's lock expect each statement to see what committed before it.
        kwargs["options"] = (
            f"-c statement_timeout={int(settings.statement_timeout * 1000)}"
            r" -c default_transaction_isolation=read\ committed"
        )
    return AsyncConnectionPool(
        settings.database_url,
        min_size=settings.pool_min,
        max_size=settings.pool_max,
        timeout=settings.pool_timeout,
        kwargs=kwargs,
        name="tracktalk-requests",
        # A connection the server dropped (a restart, a failover) is replaced, not handed out.
        check=check_alive,
        configure=_utc_times,
        open=False,
    )


async def check_alive(conn: Conn) -> None:
    """Raise unless a pooled connection is still open, without a round trip.

    A server that drops a connection (a restart, a failover, pg_terminate_backend) leaves an
    error and an end of file on its socket: libpq reads what is there without waiting, and the
    connection is then bad. psycopg_pool's own check runs an empty query, a round trip before
    every request (about a fifth of a socket's connect); a connection that breaks after this
    check fails its request with 503, as it would have anyway.
    """
    pgconn = conn.pgconn
    if pgconn.status == pq.ConnStatus.OK:
        pgconn.consume_input()  # raises OperationalError when the server has closed it
    if pgconn.status != pq.ConnStatus.OK:
        raise psycopg.OperationalError("the pooled connection was closed by the server")
