"""The live pipeline across two real replicas: trigger -> NOTIFY -> listener -> feed -> hub -> socket."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import httpx
import psycopg
import pytest

from app.auth.hs256 import issue_token
from tests.support.processes import SECRET, Replica, rss_kib
from tests.support.seed import World, new_track
from tests.support.sockets import open_socket
from tests.support.writes import insert_comment, post_comment, sql

pytestmark = pytest.mark.timeout(180)


def shape(events: list[dict[str, Any]]) -> list[tuple[int, str, Any]]:
    """What two sockets must agree on: seq, type and the comment concerned."""
    return [(e["seq"], e["type"], e.get("comment", {}).get("id", e.get("comment_id"))) for e in events]


async def test_api_and_sql_writes_reach_both_replicas_with_the_same_seq(
    pair: list[Replica], world: World, db_url: str
) -> None:
    a, b = pair
    async with (
        open_socket(a.ws, world.public, world.tokens["alice"]) as on_a,
        open_socket(b.ws, world.public, world.tokens["bob"]) as on_b,
        open_socket(a.ws, world.other, world.tokens["dave"]) as elsewhere,
    ):
        start = (await on_a.expect("connected"))["seq"]
        assert (await on_b.expect("connected"))["seq"] == start
        await elsewhere.expect("connected")

        by_api = await post_comment(a.http, world, "alice", world.public, "through the API")
        by_sql = await insert_comment(db_url, world.public, world.users["bob"], "through psql")

        got_a, got_b = await on_a.events(2), await on_b.events(2)
        assert shape(got_a) == shape(got_b)
        # One change, one frame: each comment is one new_comment that carries the counters.
        assert [e["seq"] for e in got_a] == [start + 1, start + 2]
        assert [e["type"] for e in got_a] == ["new_comment", "new_comment"]
        assert got_a[0]["comment"]["id"] == by_api["id"]
        public = {
            k: v for k, v in by_api.items() if k not in ("hidden", "held", "report_count")
        }  # the author's
        assert got_a[0]["comment"] == {**public, "created_at": got_a[0]["comment"]["created_at"]}
        assert got_a[1]["metrics"]["comments"] == got_a[0]["metrics"]["comments"] + 1
        assert got_b[1]["comment"]["id"] == by_sql
        assert got_b[1]["comment"]["content"] == "through psql"
        assert got_b[1]["comment"]["username"] == "bob"

        # The socket on another track saw none of it: its first event is its own track's.
        marker = await insert_comment(db_url, world.other, world.users["dave"], "marker")
        first = (await elsewhere.events(1))[0]
        assert (first["type"], first["track_id"], first["comment"]["id"]) == (
            "new_comment",
            world.other,
            marker,
        )


async def test_edit_delete_like_and_unlike_arrive(pair: list[Replica], world: World, db_url: str) -> None:
    a, b = pair
    async with open_socket(b.ws, world.public, world.tokens["bob"]) as watcher:
        await watcher.expect("connected")
        comment = await post_comment(a.http, world, "alice", world.public, "to be changed")
        posted = (await watcher.events(1))[0]
        async with httpx.AsyncClient(base_url=a.http, timeout=10) as client:
            cid = comment["id"]
            assert (
                await client.put(
                    f"/api/comments/{cid}", json={"content": "changed"}, headers=world.auth("alice")
                )
            ).is_success
            assert (await client.post(f"/api/comments/{cid}/like", headers=world.auth("bob"))).is_success
            await sql(
                db_url,
                "INSERT INTO comment_likes (comment_id, user_id) VALUES (%s, %s)",
                (cid, world.users["dave"]),
            )
            assert (await client.delete(f"/api/comments/{cid}/like", headers=world.auth("bob"))).is_success
            await sql(db_url, "UPDATE comments SET content = 'by psql' WHERE id = %s", (cid,))
            assert (
                await client.delete(f"/api/comments/{cid}", headers=world.auth("alice"))
            ).status_code == 204
        got = await watcher.events(6)
    assert [e["type"] for e in got] == [
        "comment_edited",
        "comment_liked",
        "comment_liked",
        "comment_liked",
        "comment_edited",
        "comment_deleted",
    ]
    edited = got[0]
    assert (edited["comment_id"], edited["content"], edited["is_edited"]) == (cid, "changed", True)
    assert edited["last_edited_at"]
    assert [e["like_count"] for e in got[1:4]] == [1, 2, 1]
    assert got[4]["content"] == "by psql" and got[4]["is_edited"] is True
    assert got[5]["comment_id"] == cid
    assert "metrics" not in got[0] and "metrics" not in got[1]  # counters ride only on their changes
    assert got[5]["metrics"]["comments"] == posted["metrics"]["comments"] - 1


async def test_a_rolled_back_insert_delivers_nothing(pair: list[Replica], world: World, db_url: str) -> None:
    a, _ = pair
    async with open_socket(a.ws, world.public, world.tokens["alice"]) as watcher:
        start = (await watcher.expect("connected"))["seq"]
        async with await psycopg.AsyncConnection.connect(db_url) as conn:
            await conn.execute(
                "INSERT INTO comments (track_id, user_id, content) VALUES (%s, %s, 'never')",
                (world.public, world.users["alice"]),
            )
            await conn.rollback()
        kept = await insert_comment(db_url, world.public, world.users["alice"], "kept")
        first = (await watcher.events(1))[0]
    assert (first["seq"], first["comment"]["id"]) == (start + 1, kept)


async def test_fifty_concurrent_writers_give_every_socket_the_same_gapless_order(
    pair: list[Replica], world: World, db_url: str
) -> None:
    a, b = pair
    writers = 50
    async with (
        open_socket(a.ws, world.timed, world.tokens["alice"]) as on_a,
        open_socket(b.ws, world.timed, world.tokens["bob"]) as on_b,
    ):
        start = (await on_a.expect("connected"))["seq"]
        await on_b.expect("connected")
        await asyncio.gather(
            *(
                insert_comment(db_url, world.timed, world.users["dave"], f"writer {i}", i)
                for i in range(writers)
            )
        )
        got_a, got_b = await on_a.events(writers), await on_b.events(writers)
    assert [e["seq"] for e in got_a] == list(range(start + 1, start + writers + 1))
    assert shape(got_a) == shape(got_b)
    counts = [e["metrics"]["comments"] for e in got_a]
    assert counts == sorted(counts) and len(set(counts)) == writers


async def test_resume_with_since_gets_exactly_the_missed_events_then_live(
    pair: list[Replica], world: World, db_url: str
) -> None:
    a, b = pair
    async with open_socket(a.ws, world.public, world.tokens["alice"]) as first_visit:
        left_at = (await first_visit.expect("connected"))["seq"]
    missed = [await insert_comment(db_url, world.public, world.users["bob"], f"missed {i}") for i in range(3)]
    async with open_socket(b.ws, world.public, world.tokens["alice"], since=left_at) as back:
        hello = await back.expect("connected")
        assert hello["seq"] == left_at + 3
        replayed = await back.events(3)
        live = await insert_comment(db_url, world.public, world.users["bob"], "live")
        after = await back.events(1)
    assert [e["seq"] for e in replayed + after] == list(range(left_at + 1, left_at + 5))
    assert [e["comment"]["id"] for e in replayed + after if e["type"] == "new_comment"] == [*missed, live]


async def test_resume_while_others_keep_writing_has_no_gap_or_duplicate_at_the_seam(
    pair: list[Replica], world: World, db_url: str
) -> None:
    a, b = pair
    async with open_socket(a.ws, world.other, world.tokens["alice"]) as first_visit:
        left_at = (await first_visit.expect("connected"))["seq"]

    async def keep_writing(count: int) -> None:
        for i in range(count):
            await insert_comment(db_url, world.other, world.users["bob"], f"stream {i}")

    writing = asyncio.create_task(keep_writing(40))
    try:
        await insert_comment(db_url, world.other, world.users["bob"], "before the resume")
        async with open_socket(b.ws, world.other, world.tokens["alice"], since=left_at) as back:
            await back.expect("connected")
            await writing
            latest = (
                await sql(
                    db_url,
                    "SELECT coalesce((SELECT last_seq FROM tracktalk.topic_state WHERE topic = 'track:' || %s), 0)",
                    (world.other,),
                )
            )[0][0]
            got = await back.events(latest - left_at)
    finally:
        writing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writing
    assert [e["seq"] for e in got] == list(range(left_at + 1, latest + 1))


async def test_since_older_than_what_is_kept_gets_resync(
    pair: list[Replica], world: World, db_url: str
) -> None:
    a, _ = pair
    track = new_track(db_url)  # alone or after any other test: two events, the first pruned
    for text in ("soon pruned", "kept"):
        await insert_comment(db_url, track, world.users["bob"], text)
    latest = 2
    assert await sql(
        db_url,
        "SELECT coalesce((SELECT last_seq FROM tracktalk.topic_state WHERE topic = 'track:' || %s), 0)",
        (track,),
    ) == [(latest,)]
    await sql(
        db_url, "DELETE FROM tracktalk.events WHERE topic = 'track:' || %s AND seq <= %s", (track, latest - 1)
    )
    async with open_socket(a.ws, track, world.tokens["alice"], since=0) as late:
        await late.expect("connected")
        resync = await late.expect("resync")
        assert resync["seq"] == latest
        fresh = await insert_comment(db_url, track, world.users["bob"], "after resync")
        assert (await late.events(1))[0]["comment"]["id"] == fresh


async def test_events_committed_while_the_listener_was_killed_still_arrive(
    pair: list[Replica], world: World, db_url: str
) -> None:
    a, b = pair
    async with (
        open_socket(a.ws, world.public, world.tokens["alice"]) as on_a,
        open_socket(b.ws, world.public, world.tokens["bob"]) as on_b,
    ):
        start = (await on_a.expect("connected"))["seq"]
        await on_b.expect("connected")
        # Kill every listener and write in the same transaction: the writes land in the gap.
        async with await psycopg.AsyncConnection.connect(db_url) as conn:
            killed = await (
                await conn.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = 'tracktalk-listener' AND datname = current_database()"
                )
            ).fetchone()
            for i in range(3):
                await conn.execute(
                    "INSERT INTO comments (track_id, user_id, content) VALUES (%s, %s, %s)",
                    (world.public, world.users["dave"], f"in the gap {i}"),
                )
            await conn.commit()
        assert killed == (2,)
        after = await insert_comment(db_url, world.public, world.users["dave"], "after the gap")
        got_a, got_b = await on_a.events(4), await on_b.events(4)
    assert [e["seq"] for e in got_a] == list(range(start + 1, start + 5))
    assert shape(got_a) == shape(got_b)
    assert got_a[-1]["comment"]["id"] == after
    for replica in pair:
        replica.wait_ready(10)


async def test_a_60kb_comment_written_by_sql_arrives_whole(
    pair: list[Replica], world: World, db_url: str
) -> None:
    a, b = pair
    content = "🎵 long " + "x" * 60_000
    async with (
        open_socket(a.ws, world.public, world.tokens["alice"]) as on_a,
        open_socket(b.ws, world.public, world.tokens["bob"]) as on_b,
    ):
        await on_a.expect("connected")
        await on_b.expect("connected")
        cid = await insert_comment(db_url, world.public, world.users["dave"], content)
        for watcher in (on_a, on_b):
            event = (await watcher.events(1))[0]
            assert (event["comment"]["id"], event["comment"]["content"]) == (cid, content)


async def test_statements_of_10000_rows_arrive_as_events_without_flooding_memory(
    pair: list[Replica], world: World, db_url: str
) -> None:
    """One INSERT of 10,000 comments, then one UPDATE of them all: 20,000 events that do not fit
    in NOTIFY payloads. They reach a live socket as events, in order, each once (no resync), read
    from the log page by page, and the replica's memory stays bounded."""
    a, _ = pair
    rss_before = rss_kib(a.pid)
    async with open_socket(a.ws, world.timed, world.tokens["alice"]) as watcher:
        start = (await watcher.expect("connected"))["seq"]
        # Read while the statements run, as a live client does (a client that stops reading is
        # closed as too slow once the replica's bound on its unsent bytes is reached).
        reading = asyncio.create_task(watcher.events(20_000, timeout=90))
        await sql(
            db_url,
            "INSERT INTO comments (track_id, user_id, content, timestamp) "
            "SELECT %s, %s, 'bulk ' || i, i %% 60 FROM generate_series(1, 10000) AS i",
            (world.timed, world.users["dave"]),
        )
        await sql(db_url, "UPDATE comments SET content = content || ' (edited)' WHERE content LIKE 'bulk %%'")
        got = await reading
        assert [e["seq"] for e in got] == list(range(start + 1, start + 20_001))
        assert [e["type"] for e in got] == ["new_comment"] * 10_000 + ["comment_edited"] * 10_000
        assert not [m for m in watcher.received if m["type"] == "resync"]
        after = await insert_comment(db_url, world.timed, world.users["dave"], "still live")
        event = (await watcher.events(1))[0]
        assert (event["seq"], event["comment"]["id"]) == (start + 20_001, after)
    assert rss_kib(a.pid) - rss_before < 100 * 1024, "the replica's memory grew by more than 100 MiB"


async def test_typing_crosses_replicas_once_a_second_at_most(
    pair: list[Replica], world: World, db_url: str
) -> None:
    a, b = pair
    async with (
        open_socket(a.ws, world.other, world.tokens["alice"]) as typist,
        open_socket(b.ws, world.other, world.tokens["bob"]) as reader,
    ):
        await typist.expect("connected")
        await reader.expect("connected")
        for flag in (True, False, True, False, True):
            await typist.send({"type": "typing", "is_typing": flag})
        # An unknown type is answered in order: once it is, every typing frame was handled.
        await typist.send({"type": "ping"})
        await typist.expect("error", ignore=("user_typing",))
        marker = await insert_comment(db_url, world.other, world.users["dave"], "marker")
        typing = await reader.expect("user_typing")
        assert (typing["user_id"], typing["username"], typing["is_typing"]) == (
            world.users["alice"],
            "alice",
            True,
        )
        assert "seq" not in typing
        relayed_at = reader.arrived_at
        nxt = await reader.recv()
        assert (nxt["type"], nxt["comment"]["id"]) == ("new_comment", marker), (
            "more than one typing frame was relayed"
        )

        # Typing on (a user types, a frame every 0.1 s): relayed again once a second has passed.
        async def keep_typing() -> None:
            while True:
                await typist.send({"type": "typing", "is_typing": False})
                await asyncio.sleep(0.1)

        typing_on = asyncio.create_task(keep_typing())
        try:
            again = await reader.expect("user_typing", timeout=3)
        finally:
            typing_on.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await typing_on
        assert again["is_typing"] is False
        # Arrival to arrival: the relay's second, give or take the two trips through PostgreSQL.
        assert reader.arrived_at - relayed_at >= 0.9, "relayed again within a second"
    stored = await sql(
        db_url, "SELECT count(*) FROM tracktalk.events WHERE message::text LIKE '%%user_typing%%'"
    )
    assert stored == [(0,)]


async def test_a_users_messages_reach_all_their_sockets_on_every_replica(
    pair: list[Replica], world: World, db_url: str
) -> None:
    a, b = pair
    async with (
        open_socket(a.ws, world.other, world.tokens["bob"]) as bob_on_a,
        open_socket(b.ws, world.timed, world.tokens["bob"]) as bob_on_b,
        open_socket(b.ws, world.other, world.tokens["dave"]) as dave,
    ):
        for sock in (bob_on_a, bob_on_b, dave):
            await sock.expect("connected")
        cid = await insert_comment(db_url, world.public, world.users["alice"], "hey @BOB look")
        for sock in (bob_on_a, bob_on_b):
            note = await sock.expect("notification", ignore=("new_comment",))
            assert (note["notification"]["kind"], note["notification"]["comment_id"]) == ("mention", cid)
            mention = await sock.expect("mention", ignore=("new_comment",))
            assert (mention["comment"]["id"], mention["from_user"]) == (cid, "alice")
        marker = await insert_comment(db_url, world.other, world.users["alice"], "for dave's track")
        first = await dave.recv()
        assert (first["type"], first["comment"]["id"]) == ("new_comment", marker)


@pytest.mark.parametrize(
    ("token", "track", "reason"),
    [
        (None, "t-public", "invalid token"),
        ("garbage", "t-public", "invalid token"),
        ("expired", "t-public", "token expired"),
        ("other-key", "t-public", "invalid token"),
        ("alice", "no-such-track", "track not found"),
        ("alice", "t-private", "track not found"),
    ],
)
async def test_refused_sockets_are_closed_with_1008_and_a_reason_before_anything_is_sent(
    pair: list[Replica], world: World, token: str | None, track: str, reason: str
) -> None:
    tokens = {
        "garbage": "garbage",
        "expired": issue_token(SECRET, world.users["alice"], -10),
        "other-key": issue_token("another-secret-entirely-0123456789abc", world.users["alice"], 600),
        "alice": world.tokens["alice"],
    }
    async with open_socket(pair[0].ws, track, tokens.get(token or "")) as refused:
        code, why = await refused.closed()
    assert (code, refused.received) == (1008, [])
    assert why is not None and why.startswith(reason)


async def test_the_creator_and_team_may_watch_a_private_track(pair: list[Replica], world: World) -> None:
    for who in ("carol", "tina"):
        async with open_socket(pair[1].ws, world.private, world.tokens[who]) as sock:
            assert (await sock.expect("connected"))["track_id"] == world.private


@pytest.mark.parametrize(
    ("frame", "code"),
    [("not json", 1003), (b"\x00binary", 1003), ('{"type": "typing", "pad": "' + "x" * 5000 + '"}', 1009)],
)
async def test_bad_frames_close_only_their_own_socket(
    pair: list[Replica], world: World, db_url: str, frame: str | bytes, code: int
) -> None:
    a, _ = pair
    async with (
        open_socket(a.ws, world.other, world.tokens["alice"]) as bad,
        open_socket(a.ws, world.other, world.tokens["bob"]) as good,
    ):
        await bad.expect("connected")
        await good.expect("connected")
        await bad.send(frame)
        closed_with, _ = await bad.closed()
        assert closed_with == code
        cid = await insert_comment(db_url, world.other, world.users["dave"], "others carry on")
        assert (await good.events(1))[0]["comment"]["id"] == cid


async def test_an_unknown_type_gets_an_error_and_the_socket_stays_open(
    pair: list[Replica], world: World, db_url: str
) -> None:
    async with open_socket(pair[0].ws, world.other, world.tokens["alice"]) as sock:
        await sock.expect("connected")
        await sock.send({"type": "subscribe", "track": "all"})
        error = await sock.expect("error")
        assert "unknown message type" in error["message"]
        await sock.send({"type": "typing", "is_typing": "maybe"})
        assert "typing" in (await sock.expect("error"))["message"]
        cid = await insert_comment(db_url, world.other, world.users["dave"], "still open")
        assert (await sock.events(1))[0]["comment"]["id"] == cid


async def test_a_database_that_went_back_in_time_makes_sockets_resync(
    pair: list[Replica], world: World, db_url: str
) -> None:
    """As after a failover that lost commits: the track's numbers go back; sockets are told to
    reload, and the events numbered anew reach them instead of being taken for duplicates."""
    a, _ = pair
    track = new_track(db_url)  # its own numbers: alone or after any other test, the same
    for i in range(6):
        await insert_comment(db_url, track, world.users["bob"], f"soon lost {i}")
    async with open_socket(a.ws, track, world.tokens["alice"]) as sock:
        seen = (await sock.expect("connected"))["seq"]
        back_to = seen - 4
        await sql(
            db_url, "DELETE FROM tracktalk.events WHERE topic = 'track:' || %s AND seq > %s", (track, back_to)
        )
        await sql(
            db_url,
            "UPDATE tracktalk.topic_state SET last_seq = %(seq)s, last_tag ="
            " (SELECT tag FROM tracktalk.events WHERE topic = 'track:' || %(track)s AND seq = %(seq)s)"
            " WHERE topic = 'track:' || %(track)s",
            {"seq": back_to, "track": track},
        )
        await sql(
            db_url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'tracktalk-listener' AND datname = current_database()",
        )
        told = await sock.expect("resync")
        assert told["seq"] == back_to
        fresh = await insert_comment(db_url, track, world.users["bob"], "after the failover")
        event = (await sock.events(1))[0]
    assert (event["seq"], event["comment"]["id"]) == (back_to + 1, fresh)
