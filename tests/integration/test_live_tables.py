"""Tables made live by their DBA (tracktalk.make_live), through real replicas and PostgreSQL: a
psql write reaches /api/ws on both replicas with the same seqs; updates, deletes and rows that
move between the topics of a topic_column; can_see refusing, raising, and asked again; undoing it
with enabled => false; TRUNCATE; rows past NOTIFY's 8,000 bytes; and the SQL errors of make_live,
each with its SQLSTATE, message and hint."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql as pgsql

from app.dev.embedded import EmbeddedPostgres
from tests.support.processes import Replica, replicas
from tests.support.seed import World
from tests.support.sockets import TopicSocket, open_topics
from tests.support.waiting import async_wait_until
from tests.support.writes import sql

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def pair(db_url: str, world: World, log_dir: Path) -> Iterator[list[Replica]]:
    """Two replicas over the module's database, anonymous sockets allowed (read-only)."""
    with replicas(db_url, log_dir, 2, TRACKTALK_ANONYMOUS_SOCKETS="1") as started:
        yield started


def durable(sock: TopicSocket, topic: str) -> list[dict[str, Any]]:
    """The topic's durable events, as they came."""
    return [m for m in sock.by_topic[topic] if "seq" in m and m["type"] not in ("subscribed", "resync")]


def shape(events: list[dict[str, Any]]) -> list[tuple[int, str, Any]]:
    """seq, type and the row's id (or title) of each event."""
    return [(e["seq"], e["type"], e["row"].get("title", e["row"].get("id"))) for e in events]


def new_table(db_url: str) -> str:
    """A fresh table of requests (id, album_id, title, made_at); its name, which is a valid topic."""
    name = f"req_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            f"CREATE TABLE public.{name} (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, album_id bigint,"
            " title text, made_at timestamptz NOT NULL DEFAULT now())"
        )
    return name


async def make_live(db_url: str, table: str, **arguments: Any) -> str | None:
    named = "".join(f", {key} => %({key})s" for key in arguments)
    rows = await sql(
        db_url, f"SELECT tracktalk.make_live(%(table)s{named})", {"table": f"public.{table}", **arguments}
    )
    result: str | None = rows[0][0]
    return result


async def subscribe_refused(sock: TopicSocket, topic: str) -> dict[str, Any]:
    """Subscribe, expecting a refusal; the `subscribe_error`."""
    before, ok = len(sock.answers(topic, "subscribe_error")), len(sock.answers(topic, "subscribed"))
    await sock.send({"type": "subscribe", "topic": topic})
    await sock.until(lambda: len(sock.answers(topic, "subscribe_error")) > before, f"the refusal of {topic}")
    assert len(sock.answers(topic, "subscribed")) == ok, sock.answers(topic, "subscribed")
    return sock.answers(topic, "subscribe_error")[-1]


async def test_a_psql_insert_into_a_live_table_reaches_sockets_on_both_replicas_with_the_same_seqs(
    pair: list[Replica], world: World, db_url: str
) -> None:
    a, b = pair
    table = new_table(db_url)
    assert await make_live(db_url, table, topic=table) == table
    async with (
        open_topics(a.ws, world.tokens["alice"]) as on_a,
        open_topics(b.ws, world.tokens["bob"]) as on_b,
        open_topics(b.ws, None) as anonymous,  # no can_see: anonymous sockets too, where allowed
    ):
        assert (await on_a.subscribe(table))["seq"] == (await on_b.subscribe(table))["seq"] == 0
        assert (await anonymous.subscribe(table))["seq"] == 0
        await sql(db_url, f"INSERT INTO {table} (album_id, title) VALUES (7, 'one'), (8, 'two')")
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as writer:
            await writer.execute("SET TimeZone = 'Asia/Tokyo'")  # a writer's zone changes nothing
            await writer.execute(f"INSERT INTO {table} (album_id, title) VALUES (NULL, 'three')")
        for sock in (on_a, on_b, anonymous):
            await sock.until(lambda s=sock: len(durable(s, table)) >= 3, "three events")  # type: ignore[misc]
        events = durable(on_a, table)
        assert (
            events == durable(on_b, table) == durable(anonymous, table)
        )  # the same frames, on both replicas
        assert shape(events) == [
            (1, "row_inserted", "one"),
            (2, "row_inserted", "two"),
            (3, "row_inserted", "three"),
        ]
        assert events[0]["tag"] == events[1]["tag"] != events[2]["tag"]  # one tag per statement
        rows = await sql(db_url, f"SELECT id, album_id, title, made_at FROM {table} ORDER BY id")
        for event, (row_id, album, title, made_at) in zip(events, rows, strict=True):
            assert event["row"] == {
                "id": row_id,
                "album_id": album,
                "title": title,
                "made_at": event["row"]["made_at"],
            }
            assert event["row"]["made_at"].endswith("Z")  # as every time of the protocol, whoever wrote it
            assert datetime.fromisoformat(event["row"]["made_at"]) == made_at


async def test_updates_deletes_and_rows_moving_between_the_topics_of_a_topic_column(
    pair: list[Replica], world: World, db_url: str
) -> None:
    a, b = pair
    table = new_table(db_url)
    assert await make_live(db_url, table, topic_column="album_id") == f"{table}:{{album_id}}"
    seven, eight = f"{table}:7", f"{table}:8"
    async with open_topics(a.ws, world.tokens["alice"]) as sock:
        await sock.subscribe(seven)
        await sock.subscribe(eight)
        ids = {
            title: row_id
            for row_id, title in await sql(
                db_url,
                f"INSERT INTO {table} (album_id, title) VALUES (7, 'a'), (7, 'b'), (8, 'c') RETURNING id, title",
            )
        }
        await sql(db_url, f"UPDATE {table} SET title = title || '!' WHERE album_id = 7")
        await sql(db_url, f"UPDATE {table} SET album_id = 8 WHERE id = %s", (ids["a"],))  # moves to :8
        await sql(db_url, f"UPDATE {table} SET album_id = NULL WHERE id = %s", (ids["c"],))  # to no topic
        await sql(db_url, f"DELETE FROM {table} WHERE id = %s", (ids["b"],))
        await sql(db_url, f"UPDATE {table} SET title = 'x' WHERE album_id IS NULL")  # no topic: nothing
        await sock.until(
            lambda: len(durable(sock, seven)) >= 6 and len(durable(sock, eight)) >= 3, "the events"
        )
        assert shape(durable(sock, seven)) == [
            (1, "row_inserted", "a"),
            (2, "row_inserted", "b"),
            (3, "row_updated", "a!"),
            (4, "row_updated", "b!"),
            (5, "row_deleted", ids["a"]),
            (6, "row_deleted", ids["b"]),
        ]
        assert shape(durable(sock, eight)) == [
            (1, "row_inserted", "c"),
            (2, "row_inserted", "a!"),
            (3, "row_deleted", ids["c"]),
        ]
        assert [e["row"] for e in durable(sock, seven)[4:]] == [
            {"id": ids["a"]},
            {"id": ids["b"]},
        ]  # the key only
        assert durable(sock, eight)[1]["row"]["album_id"] == 8
        with contextlib.suppress(TimeoutError):  # the last UPDATE (of no topic) sent nothing
            await sock.recv(0.3)
        assert len(durable(sock, seven)) == 6 and len(durable(sock, eight)) == 3
        second = durable(sock, seven)[1]
    async with open_topics(b.ws, world.tokens["alice"]) as again:  # resumed on the other replica
        await again.subscribe(seven, since=second["seq"], tag=second["tag"])
        await again.until(lambda: len(durable(again, seven)) >= 4, "the replay")
        assert durable(again, seven) == durable(sock, seven)[2:]
        assert not again.answers(seven, "resync")


@pytest.fixture
def watched(db_url: str) -> Iterator[str]:
    """A live table whose topics (per album_id) only an album's members may see: its can_see reads
    the members, and raises for album 666; deleting a member asks the replicas to check again
    (the DBA's trigger calls tracktalk.recheck_topic)."""
    table = new_table(db_url)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            f"""
            CREATE TABLE public.{table}_members (user_id bigint, album_id bigint, PRIMARY KEY (user_id, album_id));
            CREATE FUNCTION public.{table}_can_see(user_id bigint, topic text) RETURNS boolean
            LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
            BEGIN
                IF topic = '{table}:666' THEN
                    RAISE EXCEPTION 'secret-{table}';
                END IF;
                RETURN EXISTS (SELECT 1 FROM public.{table}_members m
                                WHERE m.user_id = $1 AND m.album_id = split_part($2, ':', 2)::bigint);
            END
            $$;
            CREATE FUNCTION public.{table}_members_changed() RETURNS trigger
            LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
            BEGIN
                PERFORM tracktalk.recheck_topic('{table}:' || OLD.album_id);
                RETURN NULL;
            END
            $$;
            CREATE TRIGGER members_changed AFTER DELETE ON public.{table}_members
                FOR EACH ROW EXECUTE FUNCTION public.{table}_members_changed();
            """
        )
        row = conn.execute(
            "SELECT tracktalk.make_live(%s, topic_column => 'album_id', can_see => %s)",
            (f"public.{table}", f"public.{table}_can_see"),
        ).fetchone()
        assert row == (f"{table}:{{album_id}}",)
    yield table


async def test_can_see_refuses_a_raising_one_refuses_and_logs_leaking_nothing_and_a_recheck_ends_access(
    pair: list[Replica], world: World, db_url: str, watched: str, pg: EmbeddedPostgres
) -> None:
    a, _ = pair
    table, topic = watched, f"{watched}:7"
    await sql(db_url, f"INSERT INTO {table}_members VALUES (%s, 7)", (world.users["alice"],))
    async with (
        open_topics(a.ws, world.tokens["alice"]) as alice,
        open_topics(a.ws, world.tokens["bob"]) as bob,
        open_topics(a.ws, None) as anonymous,
    ):
        assert (await alice.subscribe(topic))["seq"] == 0
        assert (await subscribe_refused(bob, topic))["reason"] == "forbidden"
        assert (await subscribe_refused(anonymous, topic))["reason"] == "forbidden"  # can_see(NULL, …)
        raised = await subscribe_refused(alice, f"{table}:666")
        assert raised["reason"] == "forbidden"
        assert all("secret" not in json.dumps(m) for m in alice.received)  # the error's text stays out
        assert (await subscribe_refused(alice, f"{table}:07"))["reason"] == "not found"  # not 7's topic

        await sql(db_url, f"INSERT INTO {table} (album_id, title) VALUES (7, 'for members')")
        await alice.until(lambda: bool(durable(alice, topic)), "the event")  # the replica is well
        assert shape(durable(alice, topic)) == [(1, "row_inserted", "for members")]

        # recheck_user: bob, a member of album 5, moved to album 6 (an UPDATE: no recheck of its
        # own), then the DBA asks for bob's subscriptions to be checked again.
        await sql(db_url, f"INSERT INTO {table}_members VALUES (%s, 5)", (world.users["bob"],))
        assert (await bob.subscribe(f"{table}:5"))["seq"] == 0
        await sql(
            db_url, f"UPDATE {table}_members SET album_id = 6 WHERE user_id = %s", (world.users["bob"],)
        )
        await sql(db_url, "SELECT tracktalk.recheck_user(%s)", (world.users["bob"],))
        await bob.until(lambda: bool(bob.answers(f"{table}:5", "unsubscribed")), "bob's recheck", timeout=5)
        assert bob.answers(f"{table}:5", "unsubscribed")[0]["reason"] == "forbidden"

        await sql(db_url, f"DELETE FROM {table}_members WHERE user_id = %s", (world.users["alice"],))
        await alice.until(lambda: bool(alice.answers(topic, "unsubscribed")), "the recheck", timeout=5)
        assert alice.answers(topic, "unsubscribed")[0]["reason"] == "forbidden"
        await sql(db_url, f"INSERT INTO {table} (album_id, title) VALUES (7, 'after')")
        assert (await subscribe_refused(alice, topic))["reason"] == "forbidden"
        assert len(durable(alice, topic)) == 1
    assert a.process is not None and a.process.poll() is None
    logged = (pg.data_dir.parent / "postgres.log").read_text(errors="replace")  # the server's log
    assert (
        f"tracktalk.live_may_see: public.{table}_can_see(bigint,text), the can_see of public.{table},"
        f" failed for topic {table}:666 (refused): secret-{table}"
    ) in logged


async def test_enabled_false_undoes_it_the_subscriptions_end_and_a_resume_from_before_gets_resync(
    pair: list[Replica], world: World, db_url: str
) -> None:
    a, b = pair
    table = new_table(db_url)
    await make_live(db_url, table)
    async with open_topics(a.ws, world.tokens["alice"]) as sock:
        await sock.subscribe(table)
        await sql(db_url, f"INSERT INTO {table} (title) VALUES ('one')")
        await sql(db_url, f"INSERT INTO {table} (title) VALUES ('two')")
        await sock.until(lambda: len(durable(sock, table)) >= 2, "two events")
        last = durable(sock, table)[-1]

        assert await make_live(db_url, table, enabled=False) is None
        await sock.until(lambda: bool(sock.answers(table, "unsubscribed")), "the end of it", timeout=5)
        assert sock.answers(table, "unsubscribed")[0]["reason"] == "not found"
        assert await sql(
            db_url, "SELECT count(*) FROM pg_trigger WHERE tgrelid = %s::regclass", (table,)
        ) == [(0,)]
        for query in (
            "SELECT count(*) FROM tracktalk.live_tables WHERE topic = %s",
            "SELECT count(*) FROM tracktalk.topic_kinds WHERE kind = %s",
            "SELECT count(*) FROM tracktalk.events WHERE topic = %s",
        ):
            assert await sql(db_url, query, (table,)) == [(0,)], query
        await sql(db_url, f"INSERT INTO {table} (title) VALUES ('unseen')")  # not live: no event
        assert (await subscribe_refused(sock, table))["reason"] == "not found"
        assert await make_live(db_url, table, enabled=False) is None  # again: nothing to undo

    await make_live(db_url, table)
    async with open_topics(b.ws, world.tokens["alice"]) as back:
        # What 'unseen' did is in no event: a resume from before is told to reload.
        assert (await back.subscribe(table, since=last["seq"], tag=last["tag"]))["seq"] == 3
        await back.until(lambda: bool(back.answers(table, "resync")), "resync")
        await sql(db_url, f"INSERT INTO {table} (title) VALUES ('three')")
        await back.until(lambda: bool(durable(back, table)), "the next event")
        assert shape(durable(back, table)) == [(4, "row_inserted", "three")]  # numbering goes on


async def test_truncate_makes_subscribers_reload_and_numbering_go_on(
    pair: list[Replica], world: World, db_url: str
) -> None:
    a, b = pair
    table = new_table(db_url)
    await make_live(db_url, table, topic_column="album_id")
    topic = f"{table}:1"
    await sql(db_url, f"INSERT INTO {table} (album_id, title) VALUES (1, 'one')")
    async with open_topics(a.ws, world.tokens["alice"]) as sock:
        assert (await sock.subscribe(topic))["seq"] == 1
        await sql(db_url, f"TRUNCATE {table}")
        await sock.until(lambda: bool(sock.answers(topic, "resync")), "the reload")
        await sql(db_url, f"INSERT INTO {table} (album_id, title) VALUES (1, 'after')")
        await sock.until(lambda: bool(durable(sock, topic)), "the next event")
        assert shape(durable(sock, topic)) == [(3, "row_inserted", "after")]
    async with open_topics(b.ws, world.tokens["bob"]) as late:  # resumes from before the TRUNCATE
        await late.subscribe(topic, since=1)
        await late.until(lambda: bool(late.answers(topic, "resync")), "resync")


async def test_a_row_past_notifys_8000_bytes_travels_by_the_log_and_a_small_one_in_the_payload(
    pair: list[Replica], world: World, db_url: str
) -> None:
    a, _ = pair
    table = new_table(db_url)
    await make_live(db_url, table)
    big = "é" * 12_000  # 24,000 bytes
    async with (
        await psycopg.AsyncConnection.connect(db_url, autocommit=True) as listener,
        open_topics(a.ws, world.tokens["alice"]) as sock,
    ):
        channel = (await (await listener.execute("SELECT tracktalk.topic_channel(%s)", (table,))).fetchall())[
            0
        ][0]
        await listener.execute(pgsql.SQL("LISTEN {}").format(pgsql.Identifier(channel)))
        await sock.subscribe(table)
        await sql(db_url, f"INSERT INTO {table} (title) VALUES (%s)", (big,))
        await sql(db_url, f"INSERT INTO {table} (title) VALUES ('small')")
        await sock.until(lambda: len(durable(sock, table)) >= 2, "both rows")
        assert [e["row"]["title"] for e in durable(sock, table)] == [big, "small"]
        payloads = [n.payload async for n in listener.notifies(timeout=5, stop_after=2)]
    first, second = (json.loads(p.split(" ", 1)[1]) for p in payloads)
    assert (first["first"], first["last"], "events" in first) == (1, 1, False)  # read from the log
    assert (second["first"], "events" in second) == (2, True)
    assert second["events"][0]["row"]["title"] == "small"


async def test_a_table_with_can_see_never_sends_its_rows_in_a_payload(
    pair: list[Replica], world: World, db_url: str, watched: str
) -> None:
    a, _ = pair
    await sql(db_url, f"INSERT INTO {watched}_members VALUES (%s, 5)", (world.users["bob"],))
    async with (
        await psycopg.AsyncConnection.connect(db_url, autocommit=True) as listener,
        open_topics(a.ws, world.tokens["bob"]) as sock,
    ):
        topic = f"{watched}:5"
        channel = (await (await listener.execute("SELECT tracktalk.topic_channel(%s)", (topic,))).fetchall())[
            0
        ][0]
        await listener.execute(pgsql.SQL("LISTEN {}").format(pgsql.Identifier(channel)))
        await sock.subscribe(topic)
        await sql(db_url, f"INSERT INTO {watched} (album_id, title) VALUES (5, 'members only')")
        await sock.until(lambda: bool(durable(sock, topic)), "the row")
        payloads = [n.payload async for n in listener.notifies(timeout=5, stop_after=1)]
    assert "members only" not in payloads[0] and '"events"' not in payloads[0]


# ---------------------------------------------------------------------------------------------
# make_live's errors and who may call it (SQL only)
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(db_url, autocommit=True) as connection:
        yield connection


def refused(conn: psycopg.Connection[Any], query: str, params: Any = None) -> psycopg.Error:
    """The error `query` fails with (a failed test when it does not)."""
    with pytest.raises(psycopg.Error) as failed:
        conn.execute(query, params)
    return failed.value


def said(error: psycopg.Error) -> tuple[str | None, str | None, str | None]:
    return error.sqlstate, error.diag.message_primary, error.diag.message_hint


def test_make_live_errors_each_say_what_to_do(conn: psycopg.Connection[Any], db_url: str) -> None:
    table = new_table(db_url)
    other = new_table(db_url)
    q = f"public.{table}"
    conn.execute("CREATE TABLE public.no_key_table (a int)")
    state, message, hint = said(refused(conn, "SELECT tracktalk.make_live('public.no_key_table')"))
    assert (state, message) == ("55000", "public.no_key_table has no primary key: a live table needs one")
    assert hint == "Give it one: ALTER TABLE public.no_key_table ADD PRIMARY KEY (…);"

    assert conn.execute("SELECT tracktalk.make_live(%s, topic_column => 'album_id')", (q,)).fetchone() == (
        f"{table}:{{album_id}}",
    )
    # The same again: nothing changes (idempotent).
    assert conn.execute("SELECT tracktalk.make_live(%s, topic_column => 'album_id')", (q,)).fetchone() == (
        f"{table}:{{album_id}}",
    )
    assert conn.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = %s::regclass", (q,)).fetchone() == (
        4,
    )
    state, message, hint = said(refused(conn, "SELECT tracktalk.make_live(%s, topic => 'other_name')", (q,)))
    assert (state, message) == ("42710", f"{q} is live already, as {table}:{{album_id}}")
    assert hint is not None and f"SELECT tracktalk.make_live('{q}', enabled => false);" in hint

    for topic, expected in [
        ("thread", "the topic thread is tracktalk's own (track, thread, category)"),
        ("track", "the topic track is tracktalk's own (track, thread, category)"),
        (table, f"the topic {table} is the topic of the live table {q} already"),
    ]:
        state, message, hint = said(
            refused(conn, "SELECT tracktalk.make_live(%s, topic => %s)", (f"public.{other}", topic))
        )
        assert (state, message) == ("42710", expected)
        assert hint == f"Name another: SELECT tracktalk.make_live('public.{other}', topic => '…');"
    state, message, _ = said(
        refused(conn, "SELECT tracktalk.make_live(%s, topic => 'Bad-Name')", (f"public.{other}",))
    )
    assert state == "22023" and message is not None and "'Bad-Name' is not a-z, 0-9 and _" in message

    state, message, hint = said(
        refused(conn, "SELECT tracktalk.make_live(%s, topic_column => 'albumid')", (f"public.{other}",))
    )
    assert (state, message) == ("42703", f"public.{other} has no column albumid")
    assert hint is not None and "topic_column names a column of the table" in hint

    conn.execute(
        f"""
        CREATE FUNCTION public.{other}_wrong(user_id integer) RETURNS boolean LANGUAGE sql AS 'SELECT true';
        CREATE FUNCTION public.{other}_invoker(user_id bigint, topic text) RETURNS boolean
            LANGUAGE sql STABLE AS 'SELECT true';
        CREATE FUNCTION public.{other}_open(user_id bigint, topic text) RETURNS boolean
            LANGUAGE sql STABLE SECURITY DEFINER AS 'SELECT true';
        """
    )
    for can_see, state_, expected, fix in [
        (
            f"public.{other}_wrong",
            "42P13",
            f"can_see must be (user_id bigint, topic text) RETURNS boolean: public.{other}_wrong(integer) is not",
            "CREATE FUNCTION … (user_id bigint, topic text) RETURNS boolean",
        ),
        (
            f"public.{other}_invoker",
            "42P13",
            f"can_see public.{other}_invoker(bigint,text) must be SECURITY DEFINER: it runs as its owner",
            f"ALTER FUNCTION public.{other}_invoker(bigint,text) SECURITY DEFINER SET search_path",
        ),
        (
            f"public.{other}_open",
            "42P13",
            f"can_see public.{other}_open(bigint,text) must fix its search_path: as SECURITY DEFINER it would"
            " run with its caller's",
            f"ALTER FUNCTION public.{other}_open(bigint,text) SECURITY DEFINER SET search_path",
        ),
        (
            "public.no_such_function",
            "42883",
            "can_see: there is no function public.no_such_function(user_id bigint, topic text)",
            "can_see names a function (user_id bigint, topic text) RETURNS boolean",
        ),
    ]:
        state, message, hint = said(
            refused(conn, "SELECT tracktalk.make_live(%s, can_see => %s)", (f"public.{other}", can_see))
        )
        assert (state, message) == (state_, expected), can_see
        assert hint is not None and hint.startswith(fix), (can_see, hint)

    conn.execute("CREATE VIEW public.a_view AS SELECT 1 AS id")
    assert said(refused(conn, "SELECT tracktalk.make_live('public.a_view')"))[:2] == (
        "42809",
        "public.a_view is not a table: only tables can be made live",
    )
    state, message, hint = said(refused(conn, "SELECT tracktalk.make_live('public.comments')"))
    assert (
        state == "42809"
        and message is not None
        and message.startswith("public.comments is one of tracktalk's own tables")
    )
    conn.execute("CREATE TABLE public.parted (id int PRIMARY KEY) PARTITION BY RANGE (id)")
    conn.execute("CREATE TABLE public.parted_1 PARTITION OF public.parted FOR VALUES FROM (1) TO (10)")
    for parted in ("public.parted", "public.parted_1"):
        assert said(refused(conn, "SELECT tracktalk.make_live(%s)", (parted,)))[:2] == (
            "0A000",
            f"{parted} is a partitioned table, or a partition: it cannot be made live",
        )
    # Nothing of the refused calls was left behind.
    assert conn.execute(
        "SELECT count(*) FROM pg_trigger WHERE tgrelid = %s::regclass", (f"public.{other}",)
    ).fetchone() == (0,)
    assert conn.execute(
        "SELECT count(*) FROM tracktalk.live_tables WHERE tbl = %s::regclass", (f"public.{other}",)
    ).fetchone() == (0,)


@pytest.fixture
def role(conn: psycopg.Connection[Any]) -> Iterator[str]:
    """A role that may use the schema tracktalk and create tables in public, not a superuser (the
    DBA of the host app's tables)."""
    name = f"dba_{uuid.uuid4().hex[:8]}"
    conn.execute(f"CREATE ROLE {name}")
    conn.execute(f"GRANT USAGE ON SCHEMA tracktalk TO {name}")
    conn.execute(f"GRANT USAGE, CREATE ON SCHEMA public TO {name}")
    yield name
    conn.execute("RESET SESSION AUTHORIZATION")
    conn.execute(f"DROP OWNED BY {name}")
    conn.execute(f"DROP ROLE {name}")


def test_only_the_tables_owner_or_a_superuser_may_make_it_live_and_can_see_runs_as_a_role_they_may_act_as(
    conn: psycopg.Connection[Any], db_url: str, role: str
) -> None:
    theirs = new_table(db_url)  # the superuser's
    conn.execute(
        "CREATE FUNCTION public.superusers_can_see(user_id bigint, topic text) RETURNS boolean"
        " LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog AS 'SELECT true'"
    )
    conn.execute(f"SET SESSION AUTHORIZATION {role}")
    state, message, _ = said(refused(conn, "SELECT tracktalk.make_live(%s)", (f"public.{theirs}",)))
    assert (state, message) == (
        "42501",
        f"only the owner of public.{theirs} (tracktalk) or a superuser may make it live, or undo it, not {role}",
    )
    # The functions that write the registry check the session's role too: called directly, refused.
    state, message, _ = said(
        refused(conn, "SELECT tracktalk.live_register(%s, 'theirs', NULL, NULL)", (f"public.{theirs}",))
    )
    assert (state, message) == (
        "42501",
        f"only the owner of public.{theirs} (tracktalk) or a superuser may make it live, not {role}",
    )
    # Its own table: yes, with a can_see of its own; not with one that would run as a superuser.
    conn.execute(
        f"CREATE TABLE public.mine_{role} (id int PRIMARY KEY, album_id int);"
        f"CREATE FUNCTION public.mine_{role}_can_see(user_id bigint, topic text) RETURNS boolean"
        " LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog AS 'SELECT user_id = 1'"
    )
    mine = f"public.mine_{role}"
    state, message, _ = said(
        refused(conn, "SELECT tracktalk.make_live(%s, can_see => 'public.superusers_can_see')", (mine,))
    )
    assert (state, message) == (
        "42501",
        "can_see public.superusers_can_see(bigint,text) belongs to tracktalk, a role that"
        f" {role} may not act as: it would run as that role",
    )
    made = conn.execute(
        "SELECT tracktalk.make_live(%s, topic_column => 'album_id', can_see => %s)", (mine, f"{mine}_can_see")
    ).fetchone()
    assert made == (f"mine_{role}:{{album_id}}",)
    conn.execute(f"INSERT INTO {mine} VALUES (1, 3)")  # its writes publish (as tracktalk's owner)
    state, message, _ = said(refused(conn, "SELECT tracktalk.live_unregister(%s)", (mine,)))
    assert (state, message) == ("55000", f"{mine} still carries the triggers of a live table")
    conn.execute("RESET SESSION AUTHORIZATION")
    assert conn.execute(
        "SELECT seq, message->>'type' FROM tracktalk.events WHERE topic = %s", (f"mine_{role}:3",)
    ).fetchall() == [(1, "row_inserted")]
    assert conn.execute(
        "SELECT tracktalk.may_see(1, %s), tracktalk.may_see(2, %s)", (f"mine_{role}:3", f"mine_{role}:3")
    ).fetchone() == (True, False)
    conn.execute(f"SET SESSION AUTHORIZATION {role}")
    assert conn.execute("SELECT tracktalk.make_live(%s, enabled => false)", (mine,)).fetchone() == (None,)


def test_a_role_that_may_use_the_schema_cannot_put_tracktalks_own_trigger_functions_on_its_table(
    conn: psycopg.Connection[Any], role: str
) -> None:
    """Else it could make a table shaped like comments publish on any track's topic as tracktalk's
    owner."""
    conn.execute(f"SET SESSION AUTHORIZATION {role}")
    conn.execute(
        f"CREATE TABLE public.fake_{role} (id bigint PRIMARY KEY, track_id text, user_id bigint,"
        " parent_id bigint, content text, timestamp double precision)"
    )
    for function in ("comments_after_insert", "comments_after_delete", "live_rows_changed"):
        create = (
            f"CREATE TRIGGER forged AFTER INSERT ON public.fake_{role} REFERENCING NEW TABLE AS new_rows"
            f" FOR EACH STATEMENT EXECUTE FUNCTION tracktalk.{function}()"
        )
        if function == "live_rows_changed":
            conn.execute(create)  # the live tables' own: it publishes only for registered tables
            conn.execute(f"INSERT INTO public.fake_{role} VALUES (1, 't-public', 1, NULL, 'forged', 1)")
            conn.execute(f"DROP TRIGGER forged ON public.fake_{role}")
        else:
            state, message, _ = said(refused(conn, create))
            assert (state, message) == ("42501", f"permission denied for function tracktalk.{function}")
    conn.execute("RESET SESSION AUTHORIZATION")
    assert conn.execute(
        "SELECT count(*) FROM tracktalk.events WHERE message->>'content' = 'forged' OR topic LIKE %s",
        (f"fake_{role}%",),
    ).fetchone() == (0,)


def test_a_dropped_live_table_is_not_found_and_its_registration_goes_at_the_next_make_live(
    conn: psycopg.Connection[Any], db_url: str
) -> None:
    table = new_table(db_url)
    conn.execute("SELECT tracktalk.make_live(%s)", (f"public.{table}",))
    conn.execute(f"INSERT INTO public.{table} (title) VALUES ('one')")
    assert conn.execute("SELECT tracktalk.may_see(1, %s)", (table,)).fetchone() == (True,)
    conn.execute(f"DROP TABLE public.{table}")
    assert conn.execute("SELECT tracktalk.may_see(1, %s)", (table,)).fetchone() == (None,)
    again = new_table(db_url)
    assert conn.execute(
        "SELECT tracktalk.make_live(%s, topic => %s)", (f"public.{again}", table)
    ).fetchone() == (table,)  # its topic is free again
    assert conn.execute(
        "SELECT count(*) FROM tracktalk.live_tables WHERE topic = %s", (table,)
    ).fetchone() == (1,)
    assert conn.execute(
        "SELECT last_seq FROM tracktalk.topic_state WHERE topic = %s", (table,)
    ).fetchone() == (2,)


def test_rows_and_topics_are_the_same_text_whatever_the_writers_and_the_readers_settings(
    conn: psycopg.Connection[Any],
) -> None:
    """A timestamptz topic column and times inside an array, written and asked in a session whose
    zone is not UTC: the topic is the UTC text, the same one may_see knows."""
    conn.execute("CREATE TABLE public.shows (id int PRIMARY KEY, starts timestamptz, moved timestamptz[])")
    conn.execute("SELECT tracktalk.make_live('public.shows', topic_column => 'starts')")
    conn.execute("SET TimeZone = 'Asia/Tokyo'")
    conn.execute("SET DateStyle = 'German'")
    conn.execute(
        "INSERT INTO shows VALUES (1, '2026-01-01 09:00+09', ARRAY['2026-01-02 09:00+09'::timestamptz])"
    )
    topic, row = conn.execute(
        "SELECT topic, message->'row' FROM tracktalk.events WHERE topic LIKE 'shows:%'"
    ).fetchone()
    assert topic == "shows:2026-01-01 00:00:00+00"
    assert row == {"id": 1, "starts": "2026-01-01T00:00:00Z", "moved": ["2026-01-02T00:00:00+00:00"]}
    assert conn.execute("SELECT tracktalk.may_see(1, %s)", (topic,)).fetchone() == (True,)
    tokyo = conn.execute("SELECT 'shows:' || '2026-01-01 00:00:00+00'::timestamptz::text").fetchone()
    assert tokyo is not None and tokyo[0] != topic  # what the session alone would write
    assert conn.execute("SELECT tracktalk.may_see(1, %s)", (tokyo[0],)).fetchone() == (None,)


def test_a_live_tables_writes_fail_saying_what_to_do_once_its_topic_column_is_renamed(
    conn: psycopg.Connection[Any], db_url: str
) -> None:
    """A change that cannot be published is not made unseen."""
    table = new_table(db_url)
    conn.execute("SELECT tracktalk.make_live(%s, topic_column => 'album_id')", (f"public.{table}",))
    conn.execute(f"ALTER TABLE public.{table} RENAME COLUMN album_id TO album")
    state, message, hint = said(refused(conn, f"INSERT INTO public.{table} (album, title) VALUES (1, 'x')"))
    assert (state, message) == (
        "55000",
        f"public.{table} is live with a topic per value of its column album_id, which it no longer has",
    )
    assert hint is not None and f"SELECT tracktalk.make_live('public.{table}', enabled => false);" in hint
    conn.execute(f"ALTER TABLE public.{table} RENAME COLUMN id TO request_id")  # the key may be renamed
    conn.execute(f"ALTER TABLE public.{table} RENAME COLUMN album TO album_id")
    made = conn.execute(f"INSERT INTO public.{table} (album_id, title) VALUES (1, 'x') RETURNING request_id")
    row = made.fetchone()
    conn.execute(f"DELETE FROM public.{table}")
    assert row is not None and conn.execute(
        "SELECT array_agg(message->>'type' ORDER BY seq), (array_agg(message->'row' ORDER BY seq))[2]"
        " FROM tracktalk.events WHERE topic = %s",
        (f"{table}:1",),
    ).fetchone() == (["row_inserted", "row_deleted"], {"request_id": row[0]})


def test_a_row_whose_topic_would_pass_256_characters_is_written_and_in_no_topic(
    conn: psycopg.Connection[Any], db_url: str
) -> None:
    """No socket may subscribe to a topic of more than 256 characters: such a row is in no topic,
    as a row whose column is NULL, and its writer's statement goes through (it failed on the
    topic's key, past 2,704 bytes, or on NOTIFY's payload)."""
    table = new_table(db_url)
    conn.execute("SELECT tracktalk.make_live(%s, topic_column => 'title')", (f"public.{table}",))
    longest = "x" * (256 - len(table) - 1)
    noise = "(SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 300))"  # 9,600 bytes
    conn.execute(f"INSERT INTO public.{table} (title) VALUES (%s)", (longest,))
    conn.execute(f"INSERT INTO public.{table} (title) VALUES (%s)", (longest + "x",))
    conn.execute(f"INSERT INTO public.{table} (title) SELECT left({noise}, 2800)")
    conn.execute(f"INSERT INTO public.{table} (title) SELECT {noise}")
    conn.execute(f"UPDATE public.{table} SET title = title || 'y' WHERE title = %s", (longest,))
    assert conn.execute(f"SELECT count(*) FROM public.{table}").fetchone() == (4,)
    assert conn.execute(
        "SELECT topic, array_agg(message->>'type' ORDER BY seq) FROM tracktalk.events"
        " WHERE starts_with(topic, %s) GROUP BY topic",
        (f"{table}:",),
    ).fetchall() == [(f"{table}:{longest}", ["row_inserted", "row_deleted"])]  # it left for no topic


async def test_enabled_false_ends_the_subscriptions_of_topics_that_never_had_an_event(
    pair: list[Replica], world: World, db_url: str
) -> None:
    """A topic subscribed to before its first row has no numbering yet: undoing make_live ends
    its subscriptions all the same, so that a table made live again (here with a can_see that
    refuses everyone) sends them nothing."""
    a, _ = pair
    table = new_table(db_url)
    await make_live(db_url, table, topic_column="album_id")
    async with open_topics(a.ws, world.tokens["alice"]) as sock:
        await sock.subscribe(table + ":5")
        await sock.subscribe(table + ":6")
        await sql(db_url, f"INSERT INTO {table} (album_id, title) VALUES (6, 'one')")
        await sock.until(lambda: bool(durable(sock, table + ":6")), "the event of album 6")
        assert await make_live(db_url, table, enabled=False) is None
        for topic in (table + ":5", table + ":6"):
            await sock.until(lambda t=topic: bool(sock.answers(t, "unsubscribed")), topic, timeout=5)  # type: ignore[misc]
            assert sock.answers(topic, "unsubscribed")[0]["reason"] == "not found"
        await sql(
            db_url,
            f"CREATE FUNCTION public.{table}_nobody(user_id bigint, topic text) RETURNS boolean"
            " LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog AS 'SELECT false'",
        )
        await make_live(db_url, table, topic_column="album_id", can_see=f"public.{table}_nobody")
        await sql(db_url, f"INSERT INTO {table} (album_id, title) VALUES (5, 'not for alice')")
        await sql(db_url, f"INSERT INTO {table} (album_id, title) VALUES (6, 'nor this')")
        assert (await subscribe_refused(sock, table + ":5"))["reason"] == "forbidden"  # the socket goes on
        # Nothing of the table reached the topic after it was undone: no row, no `resync` (a
        # subscription that ends is not told to reload first), only its end and the refusal.
        kinds = [m["type"] for m in sock.by_topic[table + ":5"]]
        assert kinds == ["subscribed", "unsubscribed", "subscribe_error"]


async def test_the_subscribers_of_a_table_undone_are_not_told_to_reload_it_however_late_the_recheck(
    pair: list[Replica], world: World, db_url: str
) -> None:
    """Undoing make_live deletes the table's events and says its topics are gone: each replica
    asks again who may see them (`unsubscribed` for those who may not) and reads the log to tell
    those who may to reload. The recheck, which reads `users`, is held back here by a lock until
    the log could be read: the subscriptions still end with `unsubscribed` and nothing before it
    (they got a `resync` first whenever the log answered before the recheck did)."""
    a, _ = pair
    table = new_table(db_url)
    await make_live(db_url, table, topic_column="album_id")
    never, once = table + ":5", table + ":6"
    async with open_topics(a.ws, world.tokens["alice"]) as sock:
        await sock.subscribe(never)
        await sock.subscribe(once)
        await sql(db_url, f"INSERT INTO {table} (album_id, title) VALUES (6, 'one')")
        await sock.until(lambda: bool(durable(sock, once)), "the event of album 6")
        async with await psycopg.AsyncConnection.connect(db_url) as holder:
            await holder.execute("LOCK TABLE public.users IN ACCESS EXCLUSIVE MODE")
            assert await make_live(db_url, table, enabled=False) is None
            await async_wait_until(
                lambda: blocked_on_a_lock(db_url, "tracktalk.may_see(w.user_id, w.topic)"),
                10,
                "the replica's recheck, waiting for the lock",
            )
            await holder.rollback()
        for topic in (never, once):
            await sock.until(lambda t=topic: bool(sock.answers(t, "unsubscribed")), topic, timeout=5)  # type: ignore[misc]
    assert [m["type"] for m in sock.by_topic[never]] == ["subscribed", "unsubscribed"]
    assert [m["type"] for m in sock.by_topic[once]] == ["subscribed", "row_inserted", "unsubscribed"]


async def blocked_on_a_lock(db_url: str, query: str) -> bool:
    """Some session runs a statement that holds `query` and waits for a lock."""
    rows = await sql(
        db_url,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND wait_event_type = 'Lock' AND strpos(query, %s) > 0",
        (query,),
    )
    return bool(rows[0][0])
