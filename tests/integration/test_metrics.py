"""Track metrics (issue 4): likes, shares and comment counts kept by the database.

Counters live in tracktalk.track_state and are kept by the triggers in the writer's own
transaction: they must be exact under concurrency, agree with the rows, go live to the track's
sockets in the change's own frame (`metrics` inside `new_comment` and `comment_deleted`, or a
`track_metrics` for a like, unlike or share) for API and SQL writes alike, and never need COUNT(*).
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psycopg
import pytest

from app.auth.hs256 import issue_token
from app.data import tracks
from tests.support.processes import SECRET, Replica
from tests.support.seed import World, new_track
from tests.support.sockets import Socket, open_socket
from tests.support.waiting import wait_until

COUNTS = ("likes", "comments", "shares")


def run(db_url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """One statement in its own autocommit connection; its rows, if any."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


def counts(likes: int, comments: int, shares: int) -> dict[str, int]:
    return {"likes": likes, "comments": comments, "shares": shares}


def counts_by_rows(db_url: str, track_id: str) -> dict[str, int]:
    """The counts as COUNT(*) over the rows gives them (the truth the counters must match): a
    tombstone (a deleted comment whose replies stay) is no comment."""
    ((likes, comments, shares),) = run(
        db_url,
        "SELECT (SELECT count(*) FROM track_likes WHERE track_id = %s),"
        " (SELECT count(*) FROM comments WHERE track_id = %s AND deleted_at IS NULL),"
        " (SELECT count(*) FROM track_shares WHERE track_id = %s)",
        *[track_id] * 3,
    )
    return counts(likes, comments, shares)


def counts_kept(db_url: str, track_id: str) -> dict[str, int]:
    """The counters tracktalk keeps for the track."""
    ((likes, comments, shares),) = run(
        db_url, "SELECT likes, comments, shares FROM tracktalk.track_state WHERE track_id = %s", track_id
    )
    return counts(likes, comments, shares)


def only_counts(metrics: dict[str, Any]) -> dict[str, int]:
    return {key: metrics[key] for key in COUNTS}


class Actions:
    """Likes, shares and comments on one track as a user: through the API or with plain SQL."""

    def __init__(self, via: str, client: httpx.AsyncClient, db_url: str, world: World, track_id: str) -> None:
        self.via, self.client, self.db_url, self.world, self.track = via, client, db_url, world, track_id

    async def _api(self, method: str, url: str, who: str, expect: int = 200, **kw: Any) -> httpx.Response:
        response = await self.client.request(method, url, headers=self.world.auth(who), **kw)
        assert response.status_code == expect, response.text
        return response

    async def _sql(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        return await asyncio.to_thread(run, self.db_url, sql, *params)

    async def like(self, who: str) -> None:
        if self.via == "api":
            await self._api("POST", f"/api/tracks/{self.track}/like", who)
        else:
            await self._sql(
                "INSERT INTO track_likes (track_id, user_id) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                self.track,
                self.world.users[who],
            )

    async def unlike(self, who: str) -> None:
        if self.via == "api":
            await self._api("DELETE", f"/api/tracks/{self.track}/like", who)
        else:
            await self._sql(
                "DELETE FROM track_likes WHERE track_id = %s AND user_id = %s",
                self.track,
                self.world.users[who],
            )

    async def share(self, who: str) -> None:
        if self.via == "api":
            await self._api("POST", f"/api/tracks/{self.track}/share", who)
        else:
            await self._sql(
                "INSERT INTO track_shares (track_id, user_id) VALUES (%s, %s)",
                self.track,
                self.world.users[who],
            )

    async def comment(self, who: str) -> int:
        if self.via == "api":
            body = {"content": "counted", "timestamp": 2.0}
            response = await self._api("POST", f"/api/tracks/{self.track}/comments", who, 201, json=body)
            return int(response.json()["id"])
        rows = await self._sql(
            "INSERT INTO comments (track_id, user_id, content) VALUES (%s, %s, 'counted') RETURNING id",
            self.track,
            self.world.users[who],
        )
        return int(rows[0][0])

    async def uncomment(self, who: str, comment_id: int) -> None:
        if self.via == "api":
            await self._api("DELETE", f"/api/comments/{comment_id}", who, 204)
        else:
            await self._sql("DELETE FROM comments WHERE id = %s", comment_id)


async def get_metrics(client: httpx.AsyncClient, track_id: str, headers: dict[str, str] | None = None) -> Any:
    response = await client.get(f"/api/tracks/{track_id}/metrics", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


async def make_users(db_url: str, count: int) -> list[str]:
    """`count` new users (one INSERT); their tokens."""
    rows = await asyncio.to_thread(
        run,
        db_url,
        "INSERT INTO users (username) SELECT 'fan_' || md5(random()::text) FROM generate_series(1, %s)"
        " RETURNING id",
        count,
    )
    return [issue_token(SECRET, int(r[0]), 3600) for r in rows]


async def metrics_events(sock: Socket, count: int) -> list[dict[str, Any]]:
    """The next `count` track_metrics events on the socket (other durable events are skipped)."""
    got: list[dict[str, Any]] = []
    while len(got) < count:
        got += [e for e in await sock.events(1) if e["type"] == "track_metrics"]
    return got


def assert_contiguous(events: list[dict[str, Any]], after: int) -> None:
    assert [e["seq"] for e in events] == list(range(after + 1, after + 1 + len(events))), events


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def track(db_url: str, world: World) -> str:
    return new_track(db_url)


@pytest.fixture
async def client(replica: Replica) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=replica.http, timeout=30) as c:
        yield c


# ---------------------------------------------------------------------------------------------
# The API
# ---------------------------------------------------------------------------------------------


async def test_metrics_of_a_new_track(client: httpx.AsyncClient, track: str) -> None:
    assert await get_metrics(client, track) == {
        "track_id": track,
        "likes": 0,
        "comments": 0,
        "shares": 0,
        "user_has_liked": False,
        "listening": 0,
    }


async def test_like_and_unlike_are_idempotent(client: httpx.AsyncClient, world: World, track: str) -> None:
    url = f"/api/tracks/{track}/like"
    for _ in range(2):
        liked = await client.post(url, headers=world.auth("alice"))
        assert liked.status_code == 200, liked.text
        assert liked.json() == {
            "track_id": track,
            "likes": 1,
            "comments": 0,
            "shares": 0,
            "user_has_liked": True,
            "listening": 0,
        }
    seen_by_bob = await get_metrics(client, track, world.auth("bob"))
    assert (seen_by_bob["likes"], seen_by_bob["user_has_liked"]) == (1, False)
    assert (await get_metrics(client, track, world.auth("alice")))["user_has_liked"] is True

    for _ in range(2):
        unliked = await client.delete(url, headers=world.auth("alice"))
        assert unliked.status_code == 200, unliked.text
        assert (unliked.json()["likes"], unliked.json()["user_has_liked"]) == (0, False)


async def test_every_share_counts(client: httpx.AsyncClient, db_url: str, world: World, track: str) -> None:
    for expected in (1, 2, 3):
        shared = await client.post(f"/api/tracks/{track}/share", headers=world.auth("bob"))
        assert shared.status_code == 200, shared.text
        assert (shared.json()["shares"], shared.json()["likes"]) == (expected, 0)
    assert counts_by_rows(db_url, track)["shares"] == 3


async def test_track_writes_need_a_token_and_a_visible_track(client: httpx.AsyncClient, world: World) -> None:
    for method, path in [("POST", "like"), ("DELETE", "like"), ("POST", "share")]:
        assert (await client.request(method, f"/api/tracks/t-public/{path}")).status_code == 401
        outsider = await client.request(method, f"/api/tracks/t-private/{path}", headers=world.auth("alice"))
        assert outsider.status_code == 404
    assert (await client.get("/api/tracks/t-private/metrics", headers=world.auth("alice"))).status_code == 404
    assert (await client.get("/api/tracks/no-such-track/metrics")).status_code == 404
    assert (await get_metrics(client, "t-private", world.auth("tina")))["track_id"] == "t-private"


# ---------------------------------------------------------------------------------------------
# Live: fresh counters with every change, whoever makes it, in the change's own frame
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("via", ["api", "sql"])
async def test_every_change_sends_fresh_metrics(
    via: str, client: httpx.AsyncClient, replica: Replica, db_url: str, world: World, track: str
) -> None:
    act = Actions(via, client, db_url, world, track)
    async with open_socket(replica.ws, track, world.tokens["dave"]) as sock:
        seq = (await sock.expect("connected"))["seq"]
        received: list[dict[str, Any]] = []

        async def step(action: Any, durable: list[str], expected: dict[str, int]) -> Any:
            """Do `action`; the next durable events are `durable`, and their counters say `expected`."""
            result = await action
            events = await sock.events(len(durable))
            assert [e["type"] for e in events] == durable
            received.extend(events)
            sent = [only_counts(e if e["type"] == "track_metrics" else e["metrics"]) for e in events]
            assert sent == ([expected] if durable else [])
            assert only_counts(await get_metrics(client, track)) == expected
            return result

        await step(act.like("alice"), ["track_metrics"], counts(1, 0, 0))
        await step(act.like("alice"), [], counts(1, 0, 0))  # already liked: nothing is sent ...
        await step(act.share("bob"), ["track_metrics"], counts(1, 0, 1))  # ... the next event is the share's
        comment_id = await step(act.comment("bob"), ["new_comment"], counts(1, 1, 1))
        await step(act.uncomment("bob", comment_id), ["comment_deleted"], counts(1, 0, 1))
        await step(act.unlike("alice"), ["track_metrics"], counts(0, 0, 1))
        await step(act.unlike("alice"), [], counts(0, 0, 1))
        await step(act.share("alice"), ["track_metrics"], counts(0, 0, 2))

    assert_contiguous(received, seq)
    assert counts_kept(db_url, track) == counts_by_rows(db_url, track) == counts(0, 0, 2)


# ---------------------------------------------------------------------------------------------
# Concurrency
# ---------------------------------------------------------------------------------------------


async def test_hundred_users_liking_at_once_make_hundred_likes(
    client: httpx.AsyncClient, replica: Replica, db_url: str, world: World, track: str
) -> None:
    tokens = await make_users(db_url, 100)
    async with open_socket(replica.ws, track, world.tokens["dave"]) as sock:
        seq = (await sock.expect("connected"))["seq"]
        answers = await asyncio.gather(
            *(
                client.post(f"/api/tracks/{track}/like", headers={"Authorization": f"Bearer {t}"})
                for t in tokens
            )
        )
        assert [a.status_code for a in answers] == [200] * 100
        events = await metrics_events(sock, 100)

    # Each like is its own event, numbered in commit order, with the count as of that commit.
    assert_contiguous(events, seq)
    assert [e["likes"] for e in events] == list(range(1, 101))
    assert max(a.json()["likes"] for a in answers) == 100
    assert (await get_metrics(client, track))["likes"] == 100
    assert counts_kept(db_url, track) == counts_by_rows(db_url, track) == counts(100, 0, 0)


async def test_one_user_liking_twice_at_once_makes_one_like(
    client: httpx.AsyncClient, world: World, track: str
) -> None:
    url = f"/api/tracks/{track}/like"
    answers = await asyncio.gather(*(client.post(url, headers=world.auth("alice")) for _ in range(10)))
    assert [a.status_code for a in answers] == [200] * 10
    assert all(a.json()["user_has_liked"] for a in answers)
    assert (await get_metrics(client, track))["likes"] == 1


def test_racing_sql_likes_of_one_user_count_once(db_url: str, world: World, track: str) -> None:
    """Two sessions insert the same like; the second waits for the first, then adds nothing."""
    like = "INSERT INTO track_likes (track_id, user_id) VALUES (%s, %s) ON CONFLICT DO NOTHING"
    bob = world.users["bob"]
    with psycopg.connect(db_url) as first, psycopg.connect(db_url, autocommit=True) as second:
        first.execute(like, (track, bob))
        waiting_pid = second.info.backend_pid
        with ThreadPoolExecutor(1) as pool:
            racing = pool.submit(lambda: second.execute(like, (track, bob)).rowcount)
            wait_for_lock_wait(db_url, waiting_pid)
            first.commit()
            assert racing.result(timeout=10) == 0
    assert counts_kept(db_url, track) == counts_by_rows(db_url, track) == counts(1, 0, 0)


def wait_for_lock_wait(db_url: str, pid: int) -> None:
    """Until backend `pid` waits for a lock (deadline 10 s)."""

    def waiting() -> bool:
        rows = run(db_url, "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", pid)
        return bool(rows) and rows[0][0] == "Lock"

    wait_until(waiting, 10, f"backend {pid} to wait for a lock")


BURST_WORKERS = 6
BURST_STEPS = 150
BURST_STATEMENTS = [
    # comments: one, several in one statement, a reply, deletes (replies go along by cascade)
    "INSERT INTO comments (track_id, user_id, content) VALUES (%(t)s, %(u)s, 'burst')",
    "INSERT INTO comments (track_id, user_id, content) SELECT %(t)s, %(u)s, 'many' FROM generate_series(1, 3)",
    "INSERT INTO comments (track_id, user_id, content) SELECT t, %(u)s, 'both' FROM unnest(%(both)s::text[]) t",
    "INSERT INTO comments (track_id, user_id, content, parent_id)"
    " SELECT track_id, %(u)s, 'reply', id FROM comments WHERE track_id = %(t)s ORDER BY random() LIMIT 1",
    "DELETE FROM comments WHERE id = (SELECT id FROM comments WHERE track_id = %(t)s ORDER BY random() LIMIT 1)",
    "DELETE FROM comments WHERE id IN (SELECT id FROM comments WHERE track_id = ANY(%(both)s) LIMIT 2)",
    # likes of the track and of its comments, shares
    "INSERT INTO track_likes (track_id, user_id) VALUES (%(t)s, %(u)s) ON CONFLICT DO NOTHING",
    "DELETE FROM track_likes WHERE track_id = %(t)s AND user_id = %(u)s",
    "INSERT INTO comment_likes (comment_id, user_id)"
    " SELECT id, %(u)s FROM comments WHERE track_id = %(t)s ORDER BY random() LIMIT 2 ON CONFLICT DO NOTHING",
    "DELETE FROM comment_likes WHERE user_id = %(u)s AND comment_id IN"
    " (SELECT id FROM comments WHERE track_id = %(t)s ORDER BY random() LIMIT 3)",
    "INSERT INTO track_shares (track_id, user_id) VALUES (%(t)s, %(u)s)",
    "DELETE FROM track_shares WHERE id = (SELECT min(id) FROM track_shares WHERE track_id = %(t)s)",
]
RACE_OUTCOMES = (psycopg.errors.DeadlockDetected, psycopg.errors.ForeignKeyViolation)
"""Errors a racing SQL writer may legitimately get (and roll back); the counters must still agree."""


def burst(db_url: str, seed: int, both: list[str], users: list[int], start: threading.Barrier) -> list[str]:
    """BURST_STEPS random writes on the tracks `both`; the race errors met (rolled back)."""
    rng = random.Random(seed)
    errors = []
    with psycopg.connect(db_url, autocommit=True) as conn:
        start.wait(10)
        for _ in range(BURST_STEPS):
            params = {"t": rng.choice(both), "u": rng.choice(users), "both": both}
            try:
                conn.execute(rng.choice(BURST_STATEMENTS), params)
            except RACE_OUTCOMES as exc:
                errors.append(type(exc).__name__)
    return errors


def test_counters_agree_with_the_rows_after_a_concurrent_burst(db_url: str, world: World) -> None:
    both = sorted([new_track(db_url), new_track(db_url)])
    users = list(world.users.values())
    start = threading.Barrier(BURST_WORKERS)
    with ThreadPoolExecutor(BURST_WORKERS) as pool:
        runs = [pool.submit(burst, db_url, seed, both, users, start) for seed in range(BURST_WORKERS)]
        errors = [e for r in runs for e in r.result(timeout=100)]
    assert len(errors) < BURST_WORKERS * BURST_STEPS // 10, errors

    for track_id in both:
        assert counts_kept(db_url, track_id) == counts_by_rows(db_url, track_id)
    drift = run(
        db_url,
        "SELECT c.id, coalesce(s.likes, 0), (SELECT count(*) FROM comment_likes l WHERE l.comment_id = c.id)"
        " FROM comments c LEFT JOIN tracktalk.comment_stats s ON s.comment_id = c.id"
        " WHERE c.track_id = ANY(%s)"
        " AND coalesce(s.likes, 0) <> (SELECT count(*) FROM comment_likes l WHERE l.comment_id = c.id)",
        both,
    )
    assert drift == []


# ---------------------------------------------------------------------------------------------
# Rows that would move between tracks; tracks the triggers never saw
# ---------------------------------------------------------------------------------------------

MOVES = {
    "comments.track_id": "UPDATE comments SET track_id = %(dst)s WHERE id = %(comment)s",
    "comments.id": "UPDATE comments SET id = id + 1000000 WHERE id = %(comment)s",
    "comment_likes.comment_id": "UPDATE comment_likes SET comment_id = %(elsewhere)s WHERE comment_id = %(comment)s",
    "comment_likes.user_id": "UPDATE comment_likes SET user_id = %(carol)s WHERE comment_id = %(comment)s",
    "track_likes.track_id": "UPDATE track_likes SET track_id = %(dst)s WHERE track_id = %(src)s",
    "track_likes.user_id": "UPDATE track_likes SET user_id = %(carol)s WHERE track_id = %(src)s",
    "track_shares.track_id": "UPDATE track_shares SET track_id = %(dst)s WHERE track_id = %(src)s",
}


@pytest.mark.parametrize("column", MOVES)
def test_moving_a_row_to_another_track_or_owner_is_refused_and_says_what_to_do(
    db_url: str, world: World, column: str
) -> None:
    src, dst = new_track(db_url), new_track(db_url)
    bob = world.users["bob"]
    ((comment,),) = run(
        db_url,
        "INSERT INTO comments (track_id, user_id, content) VALUES (%s, %s, 'mine') RETURNING id",
        src,
        bob,
    )
    ((elsewhere,),) = run(
        db_url,
        "INSERT INTO comments (track_id, user_id, content) VALUES (%s, %s, 'there') RETURNING id",
        dst,
        bob,
    )
    run(db_url, "INSERT INTO comment_likes (comment_id, user_id) VALUES (%s, %s)", comment, bob)
    run(db_url, "INSERT INTO track_likes (track_id, user_id) VALUES (%s, %s)", src, bob)
    run(db_url, "INSERT INTO track_shares (track_id, user_id) VALUES (%s, %s)", src, bob)
    params = {
        "src": src,
        "dst": dst,
        "comment": comment,
        "elsewhere": elsewhere,
        "carol": world.users["carol"],
    }

    with (
        psycopg.connect(db_url, autocommit=True) as conn,
        pytest.raises(psycopg.errors.FeatureNotSupported) as refused,
    ):
        conn.execute(MOVES[column], params)
    diag = refused.value.diag
    assert diag.sqlstate == "0A000"
    assert column in (diag.message_primary or ""), diag.message_primary
    assert "delete" in (diag.message_hint or "").lower() and "insert" in (diag.message_hint or "").lower()

    for track in (src, dst):
        assert counts_kept(db_url, track) == counts_by_rows(db_url, track)
    # Writing a column with its own value, or a column that moves nothing, is fine.
    run(db_url, "UPDATE comments SET track_id = track_id, content = 'still mine' WHERE id = %s", comment)
    run(db_url, "UPDATE track_likes SET created_at = now() WHERE track_id = %s", src)


def uncounted_track(db_url: str, comments: int = 0) -> str:
    """A track (and `comments` comments on it) written with the triggers off, as a bulk load does:
    no row in tracktalk.track_state."""
    track_id = f"u-{uuid.uuid4().hex[:10]}"
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute(
            "INSERT INTO tracks (id, album_id, title) SELECT %s, id, 'Bulk' FROM albums ORDER BY id LIMIT 1",
            (track_id,),
        )
        conn.execute(
            "INSERT INTO comments (track_id, user_id, content)"
            " SELECT %s, (SELECT min(id) FROM users), 'loaded' FROM generate_series(1, %s)",
            (track_id, comments),
        )
    assert run(db_url, "SELECT count(*) FROM tracktalk.track_state WHERE track_id = %s", track_id) == [(0,)]
    return track_id


STATEMENTS = {
    "comments": "INSERT INTO comments (track_id, user_id, content) SELECT %s, id, 'bulk' FROM users ORDER BY id LIMIT 3",
    "likes": "INSERT INTO track_likes (track_id, user_id) SELECT %s, id FROM users ORDER BY id LIMIT 3",
    "shares": "INSERT INTO track_shares (track_id, user_id) SELECT %s, id FROM users ORDER BY id LIMIT 3",
}


@pytest.mark.parametrize("kind", STATEMENTS)
async def test_a_statement_that_meets_an_uncounted_track_counts_its_rows_once(
    kind: str, client: httpx.AsyncClient, replica: Replica, db_url: str, world: World
) -> None:
    track = uncounted_track(db_url, comments=2)
    async with open_socket(replica.ws, track, world.tokens["dave"]) as sock:
        await sock.expect("connected")
        await asyncio.to_thread(run, db_url, STATEMENTS[kind], track)
        events = await sock.events(3 if kind == "comments" else 1)
    expected = counts(
        likes=3 if kind == "likes" else 0,
        comments=5 if kind == "comments" else 2,
        shares=3 if kind == "shares" else 0,
    )
    assert counts_kept(db_url, track) == counts_by_rows(db_url, track) == expected
    assert only_counts(await get_metrics(client, track)) == expected
    assert [only_counts(e.get("metrics", e)) for e in events] == [expected] * len(events)


def test_two_first_writers_of_an_uncounted_track_are_both_counted(db_url: str, world: World) -> None:
    """The first writer counts the track's rows; the second, waiting for it, counts after it commits."""
    track = uncounted_track(db_url)
    alice, bob = world.users["alice"], world.users["bob"]
    with psycopg.connect(db_url) as first, psycopg.connect(db_url, autocommit=True) as second:
        first.execute(
            "INSERT INTO comments (track_id, user_id, content) VALUES (%s, %s, 'one')", (track, alice)
        )
        waiting_pid = second.info.backend_pid
        with ThreadPoolExecutor(1) as pool:
            racing = pool.submit(
                second.execute,
                "INSERT INTO comments (track_id, user_id, content) SELECT %s, %s, 'three' FROM generate_series(1, 3)",
                (track, bob),
            )
            wait_for_lock_wait(db_url, waiting_pid)
            first.commit()
            racing.result(timeout=10)
    assert counts_kept(db_url, track) == counts_by_rows(db_url, track) == counts(0, 4, 0)


# ---------------------------------------------------------------------------------------------
# Cheap on a big track: counters, not COUNT(*)
# ---------------------------------------------------------------------------------------------


class QueryRecorder:
    """Stands in for a connection to capture the SQL that app.tracks.metrics runs."""

    def __init__(self) -> None:
        self.statements: list[tuple[str, Any]] = []

    def cursor(self, **_: Any) -> QueryRecorder:
        return self

    async def __aenter__(self) -> QueryRecorder:
        return self

    async def __aexit__(self, *_: object) -> None:
        return None

    async def execute(self, sql: str, params: Any = None) -> None:
        self.statements.append((sql, params))

    async def fetchone(self) -> None:
        return None


def relations(plan: Any) -> Iterator[str]:
    """Every table a plan (EXPLAIN FORMAT JSON) reads."""
    if isinstance(plan, dict):
        if "Relation Name" in plan:
            yield plan["Relation Name"]
        for value in plan.values():
            yield from relations(value)
    elif isinstance(plan, list):
        for item in plan:
            yield from relations(item)


async def test_metrics_of_a_track_with_100k_comments_need_no_count(
    client: httpx.AsyncClient, db_url: str, world: World, track: str
) -> None:
    await asyncio.to_thread(
        run,
        db_url,
        "INSERT INTO comments (track_id, user_id, content, timestamp)"
        " SELECT %s, %s, 'comment ' || g, g %% 300 FROM generate_series(1, 100000) g",
        track,
        world.users["alice"],
    )
    await client.post(f"/api/tracks/{track}/like", headers=world.auth("bob"))

    metrics = await get_metrics(client, track, world.auth("bob"))
    assert metrics == {
        "track_id": track,
        "likes": 1,
        "comments": 100000,
        "shares": 0,
        "user_has_liked": True,
        "listening": 0,
    }
    assert counts_kept(db_url, track) == counts_by_rows(db_url, track)

    recorder = QueryRecorder()
    await tracks.metrics(recorder, track, world.users["bob"])  # type: ignore[arg-type]
    [(sql, params)] = recorder.statements
    [(plan,)] = await asyncio.to_thread(run, db_url, "EXPLAIN (FORMAT JSON) " + sql, *params)
    plan = json.loads(plan) if isinstance(plan, str) else plan
    read = set(relations(plan))
    assert "comments" not in read, read
    assert read <= {"track_state", "track_likes"}, read
