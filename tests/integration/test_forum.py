"""The forum (issue 24) through real replicas and PostgreSQL: its routes, and its topics on /api/ws.

Writes made with SQL go live exactly as the API's (the same messages, the same seqs on every
replica); a thread's post_count and last_post_at stay exact under concurrent writers; posts notify
(post_reply, post_mention); locked threads and private categories refuse; posts do not move
between threads; the write limits and the checks of what a client sends hold.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from app.auth.hs256 import issue_token
from tests.support.processes import SECRET, Replica, replicas
from tests.support.seed import World
from tests.support.sockets import TopicSocket, open_topics
from tests.support.waiting import async_wait_until
from tests.support.writes import sql

pytestmark = pytest.mark.timeout(180)


# ---- helpers ---------------------------------------------------------------------------------


def make_category(db_url: str, private: bool = False) -> str:
    """A new category; its slug."""
    slug = f"c-{uuid.uuid4().hex[:10]}"
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO forum_categories (slug, title, is_private) VALUES (%s, %s, %s)",
            (slug, f"Category {slug}", private),
        )
    return slug


async def call(base: str, world: World, who: str | None, method: str, path: str, **kw: Any) -> httpx.Response:
    """One request to the API as `who` (None: no token)."""
    headers = world.auth(who) if who else {}
    async with httpx.AsyncClient(base_url=base, timeout=15) as client:
        return await client.request(method, path, headers=headers, **kw)


async def start_thread(
    base: str, world: World, who: str, slug: str, title: str = "A thread"
) -> dict[str, Any]:
    """POST a thread (with its first post) as `who`; the answer."""
    answer = await call(
        base,
        world,
        who,
        "POST",
        f"/api/forum/categories/{slug}/threads",
        json={"title": title, "content": "first"},
    )
    assert answer.status_code == 201, answer.text
    result: dict[str, Any] = answer.json()
    return result


async def post(
    base: str, world: World, who: str, thread_id: int, content: str, **extra: Any
) -> dict[str, Any]:
    """POST a post as `who`; the post object."""
    answer = await call(
        base, world, who, "POST", f"/api/forum/threads/{thread_id}/posts", json={"content": content, **extra}
    )
    assert answer.status_code == 201, answer.text
    result: dict[str, Any] = answer.json()
    return result


async def insert_post(
    db_url: str, thread_id: int, user_id: int, content: str, parent_id: int | None = None
) -> int:
    """INSERT a post with SQL, as another service would; its id."""
    rows = await sql(
        db_url,
        "INSERT INTO forum_posts (thread_id, user_id, content, parent_id) VALUES (%s, %s, %s, %s) RETURNING id",
        (thread_id, user_id, content, parent_id),
    )
    return int(rows[0][0])


async def insert_thread(db_url: str, slug: str, user_id: int, title: str = "by psql") -> int:
    rows = await sql(
        db_url,
        "INSERT INTO forum_threads (category_id, user_id, title)"
        " SELECT id, %s, %s FROM forum_categories WHERE slug = %s RETURNING id",
        (user_id, title, slug),
    )
    return int(rows[0][0])


def durable(sock: TopicSocket, topic: str) -> list[dict[str, Any]]:
    """The topic's durable events the socket got, in order."""
    return [m for m in sock.by_topic[topic] if "seq" in m and m["type"] not in ("subscribed", "resync")]


async def events(sock: TopicSocket, topic: str, count: int, timeout: float = 10) -> list[dict[str, Any]]:
    """Wait for the topic's first `count` durable events (and say so if more came)."""
    await sock.until(lambda: len(durable(sock, topic)) >= count, f"{count} events of {topic}", timeout)
    return durable(sock, topic)


def without(message: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in message.items() if k not in keys}


async def thread_row(db_url: str, thread_id: int) -> tuple[int, Any]:
    rows = await sql(db_url, "SELECT post_count, last_post_at FROM forum_threads WHERE id = %s", (thread_id,))
    return rows[0][0], rows[0][1]


async def counted(db_url: str, thread_id: int) -> tuple[int, Any]:
    """What the thread's counters should be, from its posts."""
    rows = await sql(
        db_url,
        "SELECT count(p.id), coalesce(max(p.created_at), t.created_at) FROM forum_threads t"
        " LEFT JOIN forum_posts p ON p.thread_id = t.id WHERE t.id = %s GROUP BY t.created_at",
        (thread_id,),
    )
    return rows[0][0], rows[0][1]


# ---- live: SQL writers and the API alike, on every replica -----------------------------------


async def test_a_psql_insert_into_forum_posts_reaches_both_replicas_with_the_same_seqs_as_a_post_does(
    pair: list[Replica], world: World, db_url: str
) -> None:
    a, b = pair
    slug = make_category(db_url)
    thread = await start_thread(a.http, world, "alice", slug)
    topics = [f"thread:{thread['id']}", f"category:{slug}"]
    async with (
        open_topics(a.ws, world.tokens["bob"]) as on_a,
        open_topics(b.ws, world.tokens["dave"]) as on_b,
    ):
        for sock in (on_a, on_b):
            assert [(await sock.subscribe(t))["seq"] for t in topics] == [1, 2]  # new_post; created, updated
        by_api = await post(a.http, world, "bob", thread["id"], "through the API")
        by_sql = await insert_post(db_url, thread["id"], world.users["dave"], "through psql", by_api["id"])
        got_a, got_b = await events(on_a, topics[0], 2), await events(on_b, topics[0], 2)
        assert got_a == got_b
        assert [(e["seq"], e["type"]) for e in got_a] == [(2, "new_post"), (3, "new_post")]
        api_event, sql_event = got_a
        assert api_event["post"] == by_api  # the message's post is the API's answer, field for field
        assert without(sql_event["post"], "created_at") == {
            "id": by_sql,
            "thread_id": thread["id"],
            "user_id": world.users["dave"],
            "username": "dave",
            "parent_id": by_api["id"],
            "content": "through psql",
            "is_edited": False,
            "last_edited_at": None,
            "like_count": 0,
            "user_has_liked": False,
        }
        # One change, one event: each post carries the thread's counters after it.
        assert [e["thread"]["post_count"] for e in got_a] == [2, 3]
        assert sql_event["thread"] == {
            "id": thread["id"],
            "post_count": 3,
            "last_post_at": sql_event["post"]["created_at"],
        }
        # The category's topic hears the counters too (its list shows them).
        cat_a, cat_b = await events(on_a, topics[1], 2), await events(on_b, topics[1], 2)
        assert cat_a == cat_b
        assert [(e["seq"], e["type"], e["thread"]["post_count"]) for e in cat_a] == [
            (3, "thread_updated", 2),
            (4, "thread_updated", 3),
        ]
        assert without(cat_a[1]["thread"], "last_post_at", "post_count") == without(
            thread, "first_post", "last_post_at", "post_count"
        )
    answer = await call(a.http, world, "bob", "GET", f"/api/forum/threads/{thread['id']}")
    assert (
        answer.json()["post_count"] == 3 and answer.json()["last_post_at"] == sql_event["post"]["created_at"]
    )


async def test_edits_likes_deletes_and_thread_changes_arrive_live_from_the_api_and_from_sql(
    pair: list[Replica], world: World, db_url: str
) -> None:
    a, b = pair
    slug = make_category(db_url)
    thread = await start_thread(a.http, world, "alice", slug)
    tid, first = thread["id"], thread["first_post"]["id"]
    topic, category = f"thread:{tid}", f"category:{slug}"
    async with open_topics(b.ws, world.tokens["bob"]) as watcher:
        await watcher.subscribe(topic, since=1)
        await watcher.subscribe(category, since=2)
        edited = await call(
            a.http, world, "alice", "PUT", f"/api/forum/posts/{first}", json={"content": "changed"}
        )
        assert edited.status_code == 200 and edited.json()["is_edited"] is True
        assert (await call(a.http, world, "bob", "POST", f"/api/forum/posts/{first}/like")).json()[
            "like_count"
        ] == 1
        await sql(
            db_url,
            "INSERT INTO forum_post_likes (post_id, user_id) VALUES (%s, %s)",
            (first, world.users["dave"]),
        )
        assert (await call(a.http, world, "bob", "DELETE", f"/api/forum/posts/{first}/like")).json() == {
            "post_id": first,
            "like_count": 1,
            "user_has_liked": False,
        }
        await sql(db_url, "UPDATE forum_posts SET content = 'by psql' WHERE id = %s", (first,))
        renamed = await call(
            a.http, world, "alice", "PUT", f"/api/forum/threads/{tid}", json={"title": "Renamed"}
        )
        assert renamed.status_code == 200 and renamed.json()["title"] == "Renamed"
        locked = await call(
            a.http, world, "tina", "PUT", f"/api/forum/threads/{tid}", json={"is_locked": True}
        )
        assert locked.status_code == 200 and locked.json()["is_locked"] is True
        await sql(db_url, "UPDATE forum_threads SET is_pinned = true WHERE id = %s", (tid,))
        second = await insert_post(db_url, tid, world.users["tina"], "the team may post in a locked thread")
        assert (await call(a.http, world, "tina", "DELETE", f"/api/forum/posts/{first}")).status_code == 204
        got = await events(watcher, topic, 10)
        cat = await events(watcher, category, 5)
    assert [e["type"] for e in got] == [
        "post_edited",
        "post_liked",
        "post_liked",
        "post_liked",
        "post_edited",
        "thread_updated",
        "thread_updated",
        "thread_updated",
        "new_post",
        "post_deleted",
    ]
    assert [e["seq"] for e in got] == list(range(2, 12))
    assert without(got[0], "topic", "seq", "tag", "last_edited_at") == {
        "type": "post_edited",
        "post_id": first,
        "content": "changed",
        "is_edited": True,
    }
    assert [e["like_count"] for e in got[1:4]] == [1, 2, 1]
    assert got[4]["content"] == "by psql" and got[4]["is_edited"] is True
    assert [(e["thread"]["title"], e["thread"]["is_locked"], e["thread"]["is_pinned"]) for e in got[5:8]] == [
        ("Renamed", False, False),
        ("Renamed", True, False),
        ("Renamed", True, True),
    ]
    assert got[8]["post"]["id"] == second and got[8]["thread"]["post_count"] == 2
    assert (got[9]["post_id"], got[9]["thread"]["post_count"]) == (first, 1)
    assert [(e["type"], e["seq"], e["thread"]["post_count"]) for e in cat] == [
        ("thread_updated", 3, 1),  # renamed
        ("thread_updated", 4, 1),  # locked
        ("thread_updated", 5, 1),  # pinned
        ("thread_updated", 6, 2),  # tina's post
        ("thread_updated", 7, 1),  # the first post deleted
    ]


async def test_a_thread_started_moved_and_deleted_with_sql_is_told_to_its_categories_and_its_sockets(
    replica: Replica, world: World, db_url: str
) -> None:
    here, there = make_category(db_url), make_category(db_url)
    async with open_topics(replica.ws, world.tokens["bob"]) as bob:
        await bob.subscribe(f"category:{here}")
        await bob.subscribe(f"category:{there}")
        tid = await insert_thread(db_url, here, world.users["alice"], "started by psql")
        created = (await events(bob, f"category:{here}", 1))[0]
        assert (created["type"], created["thread"]["id"], created["thread"]["title"]) == (
            "thread_created",
            tid,
            "started by psql",
        )
        assert (created["thread"]["post_count"], created["thread"]["username"]) == (0, "alice")
        assert created["thread"]["last_post_at"] == created["thread"]["created_at"]  # no post yet
        await bob.subscribe(f"thread:{tid}")
        await sql(
            db_url,
            "UPDATE forum_threads SET category_id = (SELECT id FROM forum_categories WHERE slug = %s) WHERE id = %s",
            (there, tid),
        )
        gone = (await events(bob, f"category:{here}", 2))[1]
        arrived = (await events(bob, f"category:{there}", 1))[0]
        moved = (await events(bob, f"thread:{tid}", 1))[0]
        assert (gone["type"], gone["thread_id"]) == ("thread_deleted", tid)
        assert (arrived["type"], arrived["thread"]["category_slug"]) == ("thread_created", there)
        assert (moved["type"], moved["thread"]["category_slug"]) == ("thread_updated", there)
        await sql(db_url, "DELETE FROM forum_threads WHERE id = %s", (tid,))
        deleted = (await events(bob, f"category:{there}", 2))[1]
        assert (deleted["type"], deleted["thread_id"]) == ("thread_deleted", tid)
        await bob.until(lambda: bool(bob.answers(f"thread:{tid}", "unsubscribed")), "the thread's end", 5)
        assert bob.answers(f"thread:{tid}", "unsubscribed")[0]["reason"] == "not found"
    assert await sql(
        db_url, "SELECT count(*) FROM tracktalk.events WHERE topic = %s", (f"thread:{tid}",)
    ) == [(0,)]


# ---- counters --------------------------------------------------------------------------------


async def test_post_count_and_last_post_at_stay_exact_under_concurrent_posts_and_deletes(
    replica: Replica, world: World, db_url: str
) -> None:
    slug = make_category(db_url)
    thread = await start_thread(replica.http, world, "alice", slug)
    tid = thread["id"]

    async def sql_writer(n: int) -> list[int]:
        made = []
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            for i in range(10):
                cur = await conn.execute(
                    "INSERT INTO forum_posts (thread_id, user_id, content) VALUES (%s, %s, %s) RETURNING id",
                    (tid, world.users["bob"], f"w{n}-{i}"),
                )
                row = await cur.fetchone()
                assert row is not None
                made.append(int(row[0]))
        return made

    async def api_writer(who: str) -> None:
        for i in range(5):
            await post(replica.http, world, who, tid, f"{who} {i}")

    made = await asyncio.gather(*(sql_writer(n) for n in range(6)), api_writer("dave"), api_writer("carol"))
    assert await thread_row(db_url, tid) == await counted(db_url, tid)
    assert (await thread_row(db_url, tid))[0] == 1 + 60 + 10

    async def sql_deleter(ids: list[int]) -> None:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            for post_id in ids[:5]:
                await conn.execute("DELETE FROM forum_posts WHERE id = %s", (post_id,))

    await asyncio.gather(*(sql_deleter(ids) for ids in made[:6]), sql_writer(99))
    assert await thread_row(db_url, tid) == await counted(db_url, tid)
    assert (await thread_row(db_url, tid))[0] == 1 + 60 + 10 - 30 + 10


async def test_a_post_committed_while_another_waits_for_the_thread_is_counted_by_the_later_one(
    world: World, db_url: str, replica: Replica
) -> None:
    """A writer that began first but counts second (it waited for the thread's row) sees the other's
    post, committed meanwhile: its count and the newest post's time are read after the wait, not
    from what its statement saw when it began."""
    slug = make_category(db_url)
    tid = await insert_thread(db_url, slug, world.users["alice"])
    async with (
        await psycopg.AsyncConnection.connect(db_url) as early,
        await psycopg.AsyncConnection.connect(db_url) as late,
    ):
        await early.execute("SELECT now()")  # its transaction (and its posts' created_at) begins first
        await late.execute(
            "INSERT INTO forum_posts (thread_id, user_id, content) VALUES (%s, %s, 'later, but first')",
            (tid, world.users["bob"]),
        )  # holds the thread's row to commit
        waiting = asyncio.create_task(
            early.execute(
                "INSERT INTO forum_posts (thread_id, user_id, content) VALUES (%s, %s, 'earlier, but second')",
                (tid, world.users["dave"]),
            )
        )
        pid = early.info.backend_pid

        async def blocked() -> bool:
            rows = await sql(db_url, "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,))
            return rows == [("Lock",)]

        await async_wait_until(blocked, 10, "the early writer to wait for the thread's row")
        assert not waiting.done()
        await late.commit()
        await waiting
        await early.commit()
    post_count, last_post_at = await thread_row(db_url, tid)
    newest = await sql(db_url, "SELECT max(created_at) FROM forum_posts WHERE thread_id = %s", (tid,))
    assert (post_count, last_post_at) == (2, newest[0][0])


async def test_what_a_writer_puts_in_the_counters_is_set_aside_and_recount_thread_sets_them_from_the_posts(
    replica: Replica, world: World, db_url: str
) -> None:
    slug = make_category(db_url)
    rows = await sql(
        db_url,
        "INSERT INTO forum_threads (category_id, user_id, title, post_count, last_post_at)"
        " SELECT id, %s, 'lying', 42, now() + interval '1 day' FROM forum_categories WHERE slug = %s"
        " RETURNING id, post_count, last_post_at = created_at",
        (world.users["alice"], slug),
    )
    tid = rows[0][0]
    assert rows[0][1:] == (0, True)
    await insert_post(db_url, tid, world.users["bob"], "one")
    await sql(db_url, "UPDATE forum_threads SET post_count = 7, title = 'still lying' WHERE id = %s", (tid,))
    assert (await thread_row(db_url, tid))[0] == 1
    # Counters written with the triggers' setting on (or the triggers off) drift: recount mends them, live.
    async with open_topics(replica.ws, world.tokens["bob"]) as bob:
        await bob.subscribe(f"thread:{tid}")
        await bob.subscribe(f"category:{slug}")
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            await conn.execute("SET tracktalk.counting = 'on'")
            await conn.execute("UPDATE forum_threads SET post_count = 7 WHERE id = %s", (tid,))
        assert (await thread_row(db_url, tid))[0] == 7
        await sql(db_url, "SELECT tracktalk.recount_thread(%s)", (tid,))
        assert await thread_row(db_url, tid) == await counted(db_url, tid)
        for topic in (f"thread:{tid}", f"category:{slug}"):
            told = durable(bob, topic) or await events(bob, topic, 1)
            assert (told[-1]["type"], told[-1]["thread"]["post_count"]) == ("thread_updated", 1)


# ---- rows do not move --------------------------------------------------------------------------


async def test_posts_and_likes_moved_between_threads_by_sql_are_refused(
    replica: Replica, world: World, db_url: str
) -> None:
    slug = make_category(db_url)
    one, two = (
        await insert_thread(db_url, slug, world.users["alice"]),
        await insert_thread(db_url, slug, world.users["alice"]),
    )
    post_id = await insert_post(db_url, one, world.users["bob"], "stays")
    await sql(
        db_url,
        "INSERT INTO forum_post_likes (post_id, user_id) VALUES (%s, %s)",
        (post_id, world.users["dave"]),
    )
    other = await insert_post(db_url, two, world.users["bob"], "other")
    for statement, params in [
        ("UPDATE forum_posts SET thread_id = %s WHERE id = %s", (two, post_id)),
        ("UPDATE forum_posts SET id = %s WHERE id = %s", (post_id + 1000, post_id)),
        ("UPDATE forum_post_likes SET post_id = %s WHERE post_id = %s", (other, post_id)),
        ("UPDATE forum_threads SET id = %s WHERE id = %s", (one + 1000, one)),
    ]:
        with pytest.raises(psycopg.errors.FeatureNotSupported) as refused:
            await sql(db_url, statement, params)
        assert "cannot move" in str(refused.value) and refused.value.diag.message_hint, statement
    assert [await thread_row(db_url, t) for t in (one, two)] == [await counted(db_url, t) for t in (one, two)]


# ---- notifications ---------------------------------------------------------------------------


async def inbox(base: str, world: World, who: str) -> dict[str, Any]:
    answer = await call(base, world, who, "GET", "/api/notifications")
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def about(page: dict[str, Any], post_id: int) -> list[tuple[str, str]]:
    """(kind, actor) of the page's notifications about post `post_id`."""
    return [(n["kind"], n["actor_username"]) for n in page["notifications"] if n["post_id"] == post_id]


async def test_replies_and_mentions_notify_in_the_same_inbox_live_and_by_sql_writers_too(
    pair: list[Replica], world: World, db_url: str
) -> None:
    a, b = pair
    slug = make_category(db_url)
    thread = await start_thread(a.http, world, "alice", slug, "Ask me anything")
    first = thread["first_post"]["id"]
    async with (
        open_topics(b.ws, world.tokens["alice"]) as alice,
        open_topics(a.ws, world.tokens["bob"]) as bob,
    ):
        await alice.subscribe(f"track:{world.public}")  # whatever it watches: once per socket
        # bob replies to alice and mentions her: one notification, the most specific (a mention).
        by_api = await post(a.http, world, "bob", thread["id"], "yes @alice, and @bob (me)", parent_id=first)
        # dave replies with SQL: a post_reply.
        by_sql = await insert_post(db_url, thread["id"], world.users["dave"], "by psql", parent_id=first)
        # alice mentions bob in a reply to her own post: bob is mentioned, nobody is told of a reply.
        own = await post(a.http, world, "alice", thread["id"], "thanks @BOB", parent_id=first)
        await alice.until(lambda: len([m for m in alice.received if m["type"] == "notification"]) >= 2, "two")
        await bob.until(lambda: bool([m for m in bob.received if m["type"] == "mention"]), "bob's mention")
    page = await inbox(a.http, world, "alice")
    assert about(page, by_api["id"]) == [("post_mention", "bob")]
    assert about(page, by_sql) == [("post_reply", "dave")]
    assert about(page, own["id"]) == []
    newest = page["notifications"][0]
    assert without(newest, "id", "created_at") == {
        "user_id": world.users["alice"],
        "kind": "post_reply",
        "actor_id": world.users["dave"],
        "actor_username": "dave",
        "track_id": None,
        "track_title": None,
        "comment_id": None,
        "excerpt": "by psql",
        "read_at": None,
        "thread_id": thread["id"],
        "thread_title": "Ask me anything",
        "post_id": by_sql,
    }
    assert about(await inbox(a.http, world, "bob"), own["id"]) == [("post_mention", "alice")]
    live = [m for m in alice.received if m["type"] in ("notification", "mention")]
    assert [(m["type"], m.get("thread_id"), "topic" in m) for m in live] == [
        ("notification", thread["id"], False),
        ("mention", thread["id"], False),
        ("notification", thread["id"], False),
    ]
    assert live[0]["notification"]["post_id"] == by_api["id"] and "track_id" not in live[0]
    assert live[1]["post"]["id"] == by_api["id"] and live[1]["from_user"] == "bob"
    bobs = [m for m in bob.received if m["type"] == "mention"]
    assert len(bobs) == 1 and bobs[0]["post"]["content"] == "thanks @BOB"


async def test_a_post_notifies_at_most_ten_mentioned_users_its_edits_included(
    replica: Replica, world: World, db_url: str
) -> None:
    names = [f"m{uuid.uuid4().hex[:8]}" for _ in range(14)]
    await sql(db_url, "INSERT INTO users (username) SELECT unnest(%s::text[])", (names,))
    slug = make_category(db_url)
    thread = await start_thread(replica.http, world, "alice", slug)
    made = await post(replica.http, world, "alice", thread["id"], " ".join(f"@{n}" for n in names[:8]))
    edit = " ".join(f"@{n}" for n in names)  # six more named: two of them fit
    assert (
        await call(
            replica.http, world, "alice", "PUT", f"/api/forum/posts/{made['id']}", json={"content": edit}
        )
    ).status_code == 200
    await sql(db_url, "UPDATE forum_posts SET content = content || ' again' WHERE id = %s", (made["id"],))
    told = await sql(
        db_url,
        "SELECT u.username FROM notifications n JOIN users u ON u.id = n.user_id WHERE n.post_id = %s"
        " AND n.kind = 'post_mention' ORDER BY u.username",
        (made["id"],),
    )
    assert [name for (name,) in told] == sorted(names[:10])


async def test_nobody_is_told_of_a_private_categorys_post_they_cannot_see_and_the_inbox_hides_what_became_private(
    replica: Replica, world: World, db_url: str
) -> None:
    team, public = make_category(db_url, private=True), make_category(db_url)
    secret = await start_thread(replica.http, world, "tina", team, "Team only")
    made = await post(replica.http, world, "tina", secret["id"], "@alice @bob @carol hello")
    assert await sql(db_url, "SELECT count(*) FROM notifications WHERE post_id = %s", (made["id"],)) == [(0,)]
    open_thread = await start_thread(replica.http, world, "bob", public)
    mention = await post(replica.http, world, "dave", open_thread["id"], "hi @bob")
    before = await inbox(replica.http, world, "bob")
    assert about(before, mention["id"]) == [("post_mention", "dave")]
    await sql(db_url, "UPDATE forum_categories SET is_private = true WHERE slug = %s", (public,))
    after = await inbox(replica.http, world, "bob")
    assert about(after, mention["id"]) == []  # not its thread's title, not the post's text
    assert after["unread"] == before["unread"] - 1
    await sql(db_url, "UPDATE users SET is_team = true WHERE id = %s", (world.users["bob"],))
    try:
        assert about(await inbox(replica.http, world, "bob"), mention["id"]) == [("post_mention", "dave")]
    finally:
        await sql(db_url, "UPDATE users SET is_team = false WHERE id = %s", (world.users["bob"],))


async def test_a_deleted_post_takes_its_unread_notifications_with_it(
    replica: Replica, world: World, db_url: str
) -> None:
    slug = make_category(db_url)
    thread = await start_thread(replica.http, world, "alice", slug)
    made = await post(replica.http, world, "bob", thread["id"], "hey @alice @dave")
    read = await sql(
        db_url,
        "UPDATE notifications SET read_at = now() WHERE post_id = %s AND user_id = %s RETURNING id",
        (made["id"], world.users["dave"]),
    )
    assert (
        await call(replica.http, world, "bob", "DELETE", f"/api/forum/posts/{made['id']}")
    ).status_code == 204
    left = await sql(
        db_url,
        "SELECT id, post_id FROM notifications WHERE actor_id = %s AND thread_id = %s",
        (world.users["bob"], thread["id"]),
    )
    assert left == [(read[0][0], None)]  # alice's unread one went; dave's read one stays, without its post


# ---- who may do what ---------------------------------------------------------------------------


async def test_a_locked_thread_refuses_posts_edits_and_deletes_but_the_teams(
    replica: Replica, world: World, db_url: str
) -> None:
    slug = make_category(db_url)
    thread = await start_thread(replica.http, world, "alice", slug)
    tid, first = thread["id"], thread["first_post"]["id"]
    bobs = await post(replica.http, world, "bob", tid, "before the lock")
    assert (
        await call(replica.http, world, "bob", "PUT", f"/api/forum/threads/{tid}", json={"is_locked": True})
    ).status_code == 403  # only the team locks
    await sql(db_url, "UPDATE forum_threads SET is_locked = true WHERE id = %s", (tid,))
    for who, method, path, body in [
        ("bob", "POST", f"/api/forum/threads/{tid}/posts", {"content": "after the lock"}),
        ("bob", "PUT", f"/api/forum/posts/{bobs['id']}", {"content": "edited after the lock"}),
        ("bob", "DELETE", f"/api/forum/posts/{bobs['id']}", None),
        ("alice", "PUT", f"/api/forum/threads/{tid}", {"title": "renamed after the lock"}),
    ]:
        answer = await call(replica.http, world, who, method, path, json=body)
        assert answer.status_code == 403, (method, path, answer.text)
        assert answer.json() == {
            "status_code": 403,
            "detail": "the thread is locked: only the team can write in it",
        }
    assert (
        await call(replica.http, world, "bob", "POST", f"/api/forum/posts/{first}/like")
    ).status_code == 200
    assert (await post(replica.http, world, "tina", tid, "the team still may"))["user_id"] == world.users[
        "tina"
    ]
    unlocked = await call(
        replica.http, world, "tina", "PUT", f"/api/forum/threads/{tid}", json={"is_locked": False}
    )
    assert unlocked.json()["is_locked"] is False
    assert (await post(replica.http, world, "bob", tid, "after the unlock"))["content"] == "after the unlock"


async def test_only_authors_edit_and_authors_or_the_team_delete(
    replica: Replica, world: World, db_url: str
) -> None:
    slug = make_category(db_url)
    thread = await start_thread(replica.http, world, "alice", slug)
    tid, first = thread["id"], thread["first_post"]["id"]
    refusals = [
        (
            "bob",
            "PUT",
            f"/api/forum/posts/{first}",
            {"content": "not mine"},
            "only the post's author can edit it",
        ),
        (
            "tina",
            "PUT",
            f"/api/forum/posts/{first}",
            {"content": "the team neither"},
            "only the post's author can edit it",
        ),
        (
            "bob",
            "DELETE",
            f"/api/forum/posts/{first}",
            None,
            "only the post's author or the team can delete it",
        ),
        (
            "bob",
            "PUT",
            f"/api/forum/threads/{tid}",
            {"title": "mine now"},
            "only the thread's author (or the team) can change its title",
        ),
        (
            "alice",
            "PUT",
            f"/api/forum/threads/{tid}",
            {"is_pinned": True},
            "only the team can lock or pin a thread",
        ),
    ]
    for who, method, path, body, detail in refusals:
        answer = await call(replica.http, world, who, method, path, json=body)
        assert (answer.status_code, answer.json()["detail"]) == (403, detail), (who, method, path)
    renamed = await call(
        replica.http,
        world,
        "tina",
        "PUT",
        f"/api/forum/threads/{tid}",
        json={"title": "Team's title", "is_pinned": True},
    )
    assert (renamed.json()["title"], renamed.json()["is_pinned"]) == ("Team's title", True)
    assert (await call(replica.http, world, "tina", "DELETE", f"/api/forum/posts/{first}")).status_code == 204
    assert (await call(replica.http, world, "alice", "GET", f"/api/forum/threads/{tid}")).json()[
        "post_count"
    ] == 0


async def test_a_private_category_exists_for_the_team_only_over_http_and_on_sockets(
    replica: Replica, world: World, db_url: str
) -> None:
    team = make_category(db_url, private=True)
    thread = await start_thread(replica.http, world, "tina", team, "Backstage")
    tid, first = thread["id"], thread["first_post"]["id"]
    listed = await call(replica.http, world, "alice", "GET", "/api/forum/categories")
    assert team not in [c["slug"] for c in listed.json()]
    team_list = (await call(replica.http, world, "tina", "GET", "/api/forum/categories")).json()
    assert next(c for c in team_list if c["slug"] == team) == {
        "id": thread["category_id"],
        "slug": team,
        "title": f"Category {team}",
        "description": "",
        "is_private": True,
        "thread_count": 1,
    }
    for who in ("alice", None):
        for method, path, body in [
            ("GET", f"/api/forum/categories/{team}/threads", None),
            ("POST", f"/api/forum/categories/{team}/threads", {"title": "in", "content": "x"}),
            ("GET", f"/api/forum/threads/{tid}", None),
            ("PUT", f"/api/forum/threads/{tid}", {"title": "x"}),
            ("GET", f"/api/forum/threads/{tid}/posts", None),
            ("POST", f"/api/forum/threads/{tid}/posts", {"content": "x"}),
            ("PUT", f"/api/forum/posts/{first}", {"content": "x"}),
            ("DELETE", f"/api/forum/posts/{first}", None),
            ("POST", f"/api/forum/posts/{first}/like", None),
            ("DELETE", f"/api/forum/posts/{first}/like", None),
        ]:
            answer = await call(replica.http, world, who, method, path, json=body)
            expected = 404 if who or method == "GET" else 401
            assert answer.status_code == expected, (who, method, path, answer.text)
    async with (
        open_topics(replica.ws, world.tokens["alice"]) as alice,
        open_topics(replica.ws, world.tokens["tina"]) as tina,
    ):
        for topic in (f"thread:{tid}", f"category:{team}", "thread:999999999", "category:no-such"):
            await alice.send({"type": "subscribe", "topic": topic})
            await alice.until(lambda t=topic: bool(alice.answers(t, "subscribe_error")), topic)  # type: ignore[misc]
            assert alice.answers(topic, "subscribe_error")[0]["reason"] == "not found", topic
        await tina.subscribe(f"thread:{tid}")
        await tina.subscribe(f"category:{team}")


async def test_a_category_made_private_and_a_member_off_the_team_lose_their_topics_and_keep_the_others(
    replica: Replica, world: World, db_url: str
) -> None:
    closing, team, kept = make_category(db_url), make_category(db_url, private=True), make_category(db_url)
    in_closing = await start_thread(replica.http, world, "alice", closing)
    in_team = await start_thread(replica.http, world, "tina", team)
    in_kept = await start_thread(replica.http, world, "alice", kept)
    member = f"m{uuid.uuid4().hex[:8]}"
    rows = await sql(
        db_url, "INSERT INTO users (username, is_team) VALUES (%s, true) RETURNING id", (member,)
    )
    token = issue_token(SECRET, rows[0][0], 3600)
    async with (
        open_topics(replica.ws, world.tokens["alice"]) as alice,
        open_topics(replica.ws, token) as leaver,
    ):
        for topic in (f"category:{closing}", f"thread:{in_closing['id']}", f"thread:{in_kept['id']}"):
            await alice.subscribe(topic)
        for topic in (f"category:{team}", f"thread:{in_team['id']}", f"thread:{in_kept['id']}"):
            await leaver.subscribe(topic)
        await sql(db_url, "UPDATE forum_categories SET is_private = true WHERE slug = %s", (closing,))
        await sql(db_url, "UPDATE users SET is_team = false WHERE id = %s", (rows[0][0],))
        for sock, lost in [
            (alice, (f"category:{closing}", f"thread:{in_closing['id']}")),
            (leaver, (f"category:{team}", f"thread:{in_team['id']}")),
        ]:
            await sock.until(
                lambda s=sock, gone=lost: all(s.answers(t, "unsubscribed") for t in gone), "revocations", 5
            )  # type: ignore[misc]
            assert [s.answers(t, "unsubscribed")[0]["reason"] for t in lost for s in [sock]] == [
                "not found"
            ] * 2
        await post(replica.http, world, "bob", in_kept["id"], "still here")
        for sock in (alice, leaver):
            await sock.until(lambda s=sock: bool(durable(s, f"thread:{in_kept['id']}")), "the kept topic")  # type: ignore[misc]
            assert sock.conn.close_code is None


# ---- limits and bad input --------------------------------------------------------------------


@pytest.fixture(scope="module")
def limited(db_url: str, world: World, log_dir: Path) -> Iterator[Replica]:
    """A replica that allows two posts (threads count) and two other writes per user and minute."""
    with replicas(db_url, log_dir, 1, TRACKTALK_COMMENTS_PER_MINUTE="2", TRACKTALK_WRITES_PER_MINUTE="2") as (
        started,
    ):
        yield started


async def test_posts_and_threads_count_toward_the_comments_limit_and_the_rest_toward_the_writes_limit(
    limited: Replica, world: World, db_url: str
) -> None:
    slug = make_category(db_url)
    name = f"w{uuid.uuid4().hex[:8]}"
    rows = await sql(db_url, "INSERT INTO users (username) VALUES (%s) RETURNING id", (name,))
    world.tokens[name] = issue_token(SECRET, rows[0][0], 3600)
    thread = await start_thread(limited.http, world, name, slug)  # one
    made = await post(limited.http, world, name, thread["id"], "two")
    third = await call(
        limited.http, world, name, "POST", f"/api/forum/threads/{thread['id']}/posts", json={"content": "3"}
    )
    another = await call(
        limited.http,
        world,
        name,
        "POST",
        f"/api/forum/categories/{slug}/threads",
        json={"title": "t", "content": "3"},
    )
    for answer in (third, another):
        assert answer.status_code == 429 and int(answer.headers["Retry-After"]) >= 1
        assert answer.json()["detail"].startswith("at most 2 comments a minute")
    path = f"/api/forum/posts/{made['id']}"
    assert (await call(limited.http, world, name, "PUT", path, json={"content": "edit"})).status_code == 200
    assert (await call(limited.http, world, name, "POST", path + "/like")).status_code == 200
    for method, target, body in [
        ("DELETE", path + "/like", None),
        ("PUT", f"/api/forum/threads/{thread['id']}", {"title": "x"}),
        ("DELETE", path, None),
    ]:
        answer = await call(limited.http, world, name, method, target, json=body)
        assert answer.status_code == 429 and answer.json()["detail"].startswith(
            "at most 2 writes a minute"
        ), target
    assert (await thread_row(db_url, thread["id"]))[0] == 2


async def test_bad_input_gets_a_status_and_a_detail_that_says_what_to_fix(
    replica: Replica, world: World, db_url: str
) -> None:
    slug = make_category(db_url)
    thread = await start_thread(replica.http, world, "alice", slug)
    other = await start_thread(replica.http, world, "alice", slug)
    tid, first = thread["id"], thread["first_post"]["id"]
    threads, posts = f"/api/forum/categories/{slug}/threads", f"/api/forum/threads/{tid}/posts"
    cases: list[tuple[str, str, dict[str, Any], int, str]] = [
        ("POST", threads, {"json": {"title": " ", "content": "x"}}, 422, "title: write something"),
        (
            "POST",
            threads,
            {"json": {"title": "t" * 201, "content": "x"}},
            422,
            "title: at most 200 characters (got 201)",
        ),
        ("POST", threads, {"json": {"title": "two\nlines", "content": "x"}}, 422, "title: one line"),
        ("POST", threads, {"json": {"title": "t"}}, 422, "content"),
        (
            "POST",
            threads,
            {"json": {"title": "t", "content": "x" * 5001}},
            422,
            "content: at most 5000 characters",
        ),
        ("POST", posts, {"json": {"content": "  "}}, 422, "content: write something"),
        ("POST", posts, {"json": {"content": "nul \x00"}}, 422, "content: the NUL character"),
        (
            "POST",
            posts,
            {"json": {"content": "x", "parent_id": other["first_post"]["id"]}},
            422,
            f"parent_id: {other['first_post']['id']} is not a post of thread {tid}",
        ),
        ("POST", posts, {"json": {"content": "x", "parent_id": 0}}, 422, "parent_id"),
        (
            "PUT",
            f"/api/forum/threads/{tid}",
            {"json": {}},
            422,
            "body: send at least one of title, is_locked, is_pinned",
        ),
        ("PUT", f"/api/forum/threads/{tid}", {"json": {"is_locked": "maybe"}}, 422, "is_locked"),
        ("PUT", f"/api/forum/posts/{first}", {"json": {"content": ""}}, 422, "content: write something"),
        ("GET", threads, {"params": {"limit": 0}}, 422, "limit"),
        ("GET", threads, {"params": {"after": "not-a-cursor"}}, 422, "after: pass the cursor"),
        ("GET", posts, {"params": {"limit": 501}}, 422, "limit"),
        (
            "POST",
            posts,
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
            400,
            "not valid JSON",
        ),
        (
            "POST",
            posts,
            {"content": b"x" * (70 * 1024), "headers": {"content-type": "application/json"}},
            413,
            "too large",
        ),
        ("GET", "/api/forum/categories/no-such/threads", {}, 404, "category 'no-such' not found"),
        ("GET", "/api/forum/categories/Not%20A%20Slug/threads", {}, 404, "not found"),
        ("GET", "/api/forum/threads/999999999", {}, 404, "thread 999999999 not found"),
        ("GET", "/api/forum/threads/0/posts", {}, 404, "thread 0 not found"),
        ("PUT", "/api/forum/posts/999999999", {"json": {"content": "x"}}, 404, "post 999999999 not found"),
        ("POST", "/api/forum/posts/999999999/like", {}, 404, "post 999999999 not found"),
    ]
    for method, path, kw, status, detail in cases:
        headers = {**world.auth("alice"), **kw.pop("headers", {})}
        async with httpx.AsyncClient(base_url=replica.http, timeout=15) as client:
            answer = await client.request(method, path, headers=headers, **kw)
        assert answer.status_code == status, (method, path, answer.text)
        body = answer.json()
        assert body["status_code"] == status and detail in body["detail"], (method, path, body)
    # Nothing of it was written.
    assert (
        await thread_row(db_url, tid) == await counted(db_url, tid)
        and (await thread_row(db_url, tid))[0] == 1
    )


async def test_form_encoded_bodies_work_as_the_seeds_client_sends_them(
    replica: Replica, world: World, db_url: str
) -> None:
    slug = make_category(db_url)
    async with httpx.AsyncClient(base_url=replica.http, timeout=15) as client:
        made = await client.post(
            f"/api/forum/categories/{slug}/threads",
            data={"title": "by form", "content": "first"},
            headers=world.auth("alice"),
        )
        assert made.status_code == 201, made.text
        tid = made.json()["id"]
        reply = await client.post(
            f"/api/forum/threads/{tid}/posts",
            data={"content": "a reply", "parent_id": str(made.json()["first_post"]["id"])},
            headers=world.auth("bob"),
        )
        assert reply.status_code == 201 and reply.json()["parent_id"] == made.json()["first_post"]["id"]
        blank_parent = await client.post(
            f"/api/forum/threads/{tid}/posts",
            data={"content": "top", "parent_id": ""},
            headers=world.auth("bob"),
        )
        assert blank_parent.status_code == 201 and blank_parent.json()["parent_id"] is None
        locked = await client.put(
            f"/api/forum/threads/{tid}", data={"is_locked": "true"}, headers=world.auth("tina")
        )
        assert locked.status_code == 200 and locked.json()["is_locked"] is True, locked.text
        edited = await client.put(
            f"/api/forum/posts/{reply.json()['id']}", data={"content": "no"}, headers=world.auth("bob")
        )
        assert edited.status_code == 403


# ---- reading ---------------------------------------------------------------------------------


async def test_threads_are_listed_pinned_first_then_by_their_newest_post_page_by_page(
    replica: Replica, world: World, db_url: str
) -> None:
    slug = make_category(db_url)
    made = [await insert_thread(db_url, slug, world.users["alice"], f"t{i}") for i in range(7)]
    for tid in (made[2], made[0], made[5]):  # the newest post: in made[5], then made[0], then made[2]
        await insert_post(db_url, tid, world.users["bob"], "bump")  # each a transaction of its own: later
    await sql(db_url, "UPDATE forum_threads SET is_pinned = true WHERE id = ANY (%s)", ([made[3], made[6]],))
    expected = [made[6], made[3], made[5], made[0], made[2], made[4], made[1]]
    seen: list[int] = []
    path: str | None = f"/api/forum/categories/{slug}/threads?limit=3"
    while path:
        answer = await call(replica.http, world, None, "GET", path)
        assert answer.status_code == 200
        seen += [t["id"] for t in answer.json()]
        link = answer.headers.get("link")
        path = link[1 : link.index(">")] if link else None
    assert seen == expected
    top = (await call(replica.http, world, "bob", "GET", f"/api/forum/categories/{slug}/threads")).json()[0]
    assert (top["id"], top["is_pinned"], top["category_slug"], top["username"]) == (
        made[6],
        True,
        slug,
        "alice",
    )


async def test_posts_are_listed_oldest_first_page_by_page_with_the_callers_likes(
    replica: Replica, world: World, db_url: str
) -> None:
    slug = make_category(db_url)
    tid = await insert_thread(db_url, slug, world.users["alice"])
    ids = [await insert_post(db_url, tid, world.users["bob"], f"p{i}") for i in range(5)]
    await sql(
        db_url,
        "INSERT INTO forum_post_likes (post_id, user_id) VALUES (%s, %s)",
        (ids[1], world.users["dave"]),
    )
    first = await call(replica.http, world, "dave", "GET", f"/api/forum/threads/{tid}/posts?limit=3")
    assert [p["id"] for p in first.json()] == ids[:3]
    assert [(p["like_count"], p["user_has_liked"]) for p in first.json()] == [
        (0, False),
        (1, True),
        (0, False),
    ]
    link = first.headers["link"]
    rest = await call(replica.http, world, "dave", "GET", link[1 : link.index(">")])
    assert [p["id"] for p in rest.json()] == ids[3:] and "link" not in rest.headers


# ---- typing and presence on a thread's topic ---------------------------------------------------


async def test_typing_and_presence_work_on_a_threads_topic_across_replicas(
    pair: list[Replica], world: World, db_url: str
) -> None:
    a, b = pair
    slug = make_category(db_url)
    tid = await insert_thread(db_url, slug, world.users["alice"])
    topic = f"thread:{tid}"
    async with (
        open_topics(a.ws, world.tokens["alice"]) as alice,
        open_topics(b.ws, world.tokens["bob"]) as bob,
    ):
        await alice.subscribe(topic)
        await bob.subscribe(topic)
        await alice.until(
            lambda: any(m.get("listening") == 2 for m in alice.answers(topic, "presence")), "2 here"
        )
        await bob.send({"type": "typing", "topic": topic, "is_typing": True})
        await alice.until(lambda: bool(alice.answers(topic, "user_typing")), "bob typing")
        typing = alice.answers(topic, "user_typing")[0]
        assert without(typing, "topic") == {
            "type": "user_typing",
            "user_id": world.users["bob"],
            "username": "bob",
            "is_typing": True,
        }
        assert next(iter(typing)) == "topic"
    # A category's topic has neither.
    async with open_topics(a.ws, world.tokens["alice"]) as alice:
        await alice.subscribe(f"category:{slug}")
        await alice.send({"type": "typing", "topic": f"category:{slug}", "is_typing": True})
        await alice.until(lambda: any(m["type"] == "error" for m in alice.received), "an error")
        error = next(m for m in alice.received if m["type"] == "error")
        assert "has no typing" in error["message"] and error["topic"] == f"category:{slug}"


async def test_liking_twice_or_unliking_twice_changes_nothing(
    replica: Replica, world: World, db_url: str
) -> None:
    slug = make_category(db_url)
    thread = await start_thread(replica.http, world, "alice", slug)
    path = f"/api/forum/posts/{thread['first_post']['id']}/like"
    answers = [
        (await call(replica.http, world, "bob", method, path)).json()
        for method in ("POST", "POST", "DELETE", "DELETE")
    ]
    assert [(a["like_count"], a["user_has_liked"]) for a in answers] == [
        (1, True),
        (1, True),
        (0, False),
        (0, False),
    ]
    assert await sql(
        db_url, "SELECT likes FROM tracktalk.post_stats WHERE post_id = %s", (thread["first_post"]["id"],)
    ) == [(0,)]


@pytest.fixture(scope="module")
def open_to_readers(db_url: str, world: World, log_dir: Path) -> Iterator[Replica]:
    """A replica that lets sockets without a token watch public topics."""
    with replicas(db_url, log_dir, 1, TRACKTALK_ANONYMOUS_SOCKETS="1") as (started,):
        yield started


async def test_a_socket_without_a_token_may_watch_public_forum_topics_only(
    open_to_readers: Replica, world: World, db_url: str
) -> None:
    public, team = make_category(db_url), make_category(db_url, private=True)
    open_thread = await insert_thread(db_url, public, world.users["alice"])
    secret = await insert_thread(db_url, team, world.users["tina"])
    async with open_topics(open_to_readers.ws, None) as reader:
        await reader.subscribe(f"thread:{open_thread}")
        await reader.subscribe(f"category:{public}")
        for topic in (f"thread:{secret}", f"category:{team}"):
            await reader.send({"type": "subscribe", "topic": topic})
            await reader.until(lambda t=topic: bool(reader.answers(t, "subscribe_error")), topic)  # type: ignore[misc]
            assert reader.answers(topic, "subscribe_error")[0]["reason"] == "not found"
        await insert_post(db_url, open_thread, world.users["bob"], "for everyone")
        got = await events(reader, f"thread:{open_thread}", 1)
        assert got[0]["post"]["content"] == "for everyone"
