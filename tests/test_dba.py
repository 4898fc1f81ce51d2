"""The database's side of issue 23, through real roles, real replicas and a real server.

A role that may only connect can hold up no write and no migration. docs/security.md ("The holes
of issue 23") lists the tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql as pgsql
from psycopg.conninfo import make_conninfo

from app.db import SCHEMA_VERSION, migrate
from app.embedded import EmbeddedPostgres
from tests.support import (
    ROOT,
    Replica,
    World,
    replicas,
)

pytestmark = pytest.mark.timeout(180)

ROLES_SQL = ROOT / "sql" / "roles.sql"
ROLES = ("tracktalk_app", "tracktalk_writer", "tracktalk_owner")


def as_role(url: str, role: str, **params: str) -> str:
    """`url` (a database of the server) as another role, with more connection parameters."""
    return make_conninfo(url, user=role, **params)


def run_sql_file(url: str, path: Path) -> None:
    """What `psql --single-transaction -f path` does."""
    with psycopg.connect(url) as conn:
        conn.execute(path.read_text().encode())


@contextlib.contextmanager
def stranger(db_url: str) -> Iterator[str]:
    """A role that may connect (through PUBLIC's CONNECT, where it is still granted) and has no
    other grant, as another application's role on a shared server: its URL."""
    name = f"stranger_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(pgsql.SQL("CREATE ROLE {} LOGIN").format(pgsql.Identifier(name)))
    try:
        yield as_role(db_url, name)
    finally:
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(pgsql.SQL("DROP ROLE {}").format(pgsql.Identifier(name)))


def one(url: str, query: str, params: Any = None) -> Any:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


async def readyz(replica: Replica) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.get(f"{replica.http}/readyz")


async def readyz_with(replica: Replica, status: int) -> httpx.Response | None:
    answer = await readyz(replica)
    return answer if answer.status_code == status else None


@pytest.fixture
def empty_database(pg: EmbeddedPostgres) -> Iterator[str]:
    """A database with nothing in it (not the suite's migrated template), its URL as the server's
    superuser; dropped at the end, with the roles of sql/roles.sql if it made them."""
    name = f"t_dba_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield pg.url_for(name)
    finally:
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            for role in ("other_service", *ROLES):
                with contextlib.suppress(psycopg.Error):
                    conn.execute(f"DROP ROLE IF EXISTS {role}")


def set_up_as_docs_say(admin: str) -> tuple[str, str]:
    """docs/dba.md's order: sql/roles.sql, the migration as the owner, sql/roles.sql again. The
    owner's and the app role's URLs."""
    owner, app = as_role(admin, "tracktalk_owner"), as_role(admin, "tracktalk_app")
    run_sql_file(admin, ROLES_SQL)
    assert migrate(owner) == SCHEMA_VERSION
    run_sql_file(admin, ROLES_SQL)
    return owner, app


# ---------------------------------------------------------------------------------------------
# 1. Locks that a stranger can hold
# ---------------------------------------------------------------------------------------------


async def test_a_role_with_connect_alone_holds_up_no_write_and_no_migration(
    db_url: str, world: World, log_dir: Path
) -> None:
    """It holds every advisory key tracktalk used (anyone can compute them, and read them in
    pg_locks) and tries the locks that replace them: writes answer at once, a migration runs."""
    alice = world.users["alice"]
    limits = {"TRACKTALK_COMMENTS_PER_MINUTE": "30", "TRACKTALK_WRITES_PER_MINUTE": "120"}
    with (
        replicas(db_url, log_dir, 1, **limits) as (replica,),
        stranger(db_url) as url,
        psycopg.connect(url, autocommit=True) as hostile,
    ):
        for kind in ("comment", "write"):
            hostile.execute(
                "SELECT pg_advisory_lock(hashtext(%s), hashint8(%s))",
                (f"tracktalk.wait_to_write {kind}", alice),
            )
        hostile.execute("SELECT pg_advisory_lock(hashtext('tracktalk.migrate'))")
        for statement in (
            "SELECT FROM tracktalk.write_turns FOR UPDATE",
            "LOCK TABLE tracktalk.write_turns IN ROW SHARE MODE",
            "LOCK TABLE tracktalk.schema_version IN ACCESS SHARE MODE",
            "LOCK TABLE comments IN ROW SHARE MODE",
            "SELECT tracktalk.wait_to_write(1, 'comment', 1, interval '1 hour')",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege), hostile.transaction():
                hostile.execute(statement)

        async with httpx.AsyncClient(base_url=replica.http, timeout=10) as client:
            began = time.monotonic()
            posts = await asyncio.gather(  # more than the pool holds, one author: taken in turn
                *(
                    client.post(
                        f"/api/tracks/{world.public}/comments",
                        json={"content": f"while a stranger holds the keys {n}", "timestamp": 1},
                        headers=world.auth("alice"),
                    )
                    for n in range(12)
                )
            )
            posted_in = time.monotonic() - began
            assert [p.status_code for p in posts] == [201] * 12, [
                p.text for p in posts if p.status_code != 201
            ]
            assert posted_in < 2.0, f"12 posts took {posted_in:.1f} s"
            began = time.monotonic()
            liked = await client.post(f"/api/tracks/{world.public}/like", headers=world.auth("alice"))
            listed = await client.get("/api/tracks")
            assert liked.status_code == 200 and listed.status_code == 200
            assert time.monotonic() - began < 2.0
        # The limit still counts them: the row locks take the writes in turn as the advisory lock did.
        assert one(db_url, "SELECT count(*) FROM tracktalk.recent_writes WHERE user_id = %s", (alice,)) == 13
        assert await asyncio.wait_for(asyncio.to_thread(migrate, db_url), 20) == SCHEMA_VERSION


def test_two_first_migrations_at_once_both_succeed(pg: EmbeddedPostgres) -> None:
    """The migration's lock is a table of its own, which the first migration makes: two at once
    on an empty database both end well (the later one runs again)."""
    names = [f"t_first_{uuid.uuid4().hex[:10]}" for _ in range(3)]
    with psycopg.connect(pg.url, autocommit=True) as conn:
        for name in names:
            conn.execute(f"CREATE DATABASE {name}")
    try:
        with ThreadPoolExecutor(2) as pool:
            for name in names:
                url = pg.url_for(name)
                assert list(pool.map(migrate, [url, url])) == [SCHEMA_VERSION, SCHEMA_VERSION]
    finally:
        with psycopg.connect(pg.url, autocommit=True) as conn:
            for name in names:
                conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
