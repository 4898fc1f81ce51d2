"""The database: applying the SQL, checking its version, and the request pool."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, TypeAlias

import psycopg
from psycopg import pq
from psycopg.rows import tuple_row
from psycopg_pool import AsyncConnectionPool

from app.config import Settings

log = logging.getLogger(__name__)

Conn: TypeAlias = psycopg.AsyncConnection[Any]
"""A connection from the request pool (autocommit)."""

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
SQL_FILES = ("schema.sql", "triggers.sql")

SCHEMA_VERSION = 5
"""The version that sql/triggers.sql stamps. The app serves it or a newer one, and refuses an
older one: replicas can be upgraded one at a time after the SQL where a version keeps what the
one before it uses (3 to 4 does; 2 to 3 and 4 to 5 do not, and need the old replicas stopped
first: docs/dba.md)."""


def serves(found: int | None) -> bool:
    """Can this code serve a database whose schema is version `found`?"""
    return found is not None and found >= SCHEMA_VERSION


_VERSION_QUERY = """
    SELECT version FROM tracktalk.schema_version
    WHERE to_regclass('tracktalk.schema_version') IS NOT NULL
"""


class SchemaError(Exception):
    """The database's schema is missing or not the version this code needs."""


def migrate(conninfo: str) -> int:
    """Apply sql/schema.sql then sql/triggers.sql in one transaction; return the version."""
    with psycopg.connect(conninfo, autocommit=False) as conn:
        # One migration at a time, even from several replicas starting together.
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('tracktalk.migrate'))")
        conn.execute("SET LOCAL client_min_messages = warning")
        for name in SQL_FILES:
            conn.execute((SQL_DIR / name).read_text(encoding="utf-8").encode())
        version = _read_version(conn)
    log.info("schema version %s applied", version)
    return version if version is not None else 0


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
            "Run `tracktalk migrate` (or apply sql/schema.sql and sql/triggers.sql with psql), "
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
