"""Moderation (issue 20) made by SQL, as a DBA's psql or a moderation service would: each row change
goes live through a real replica, in its form for each audience (the track's moderators and the
comment's author; everyone else), every socket's seqs whole; and replays (`since=`) give each socket
its audience's form."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import psycopg
import pytest

from tests.support.processes import Replica
from tests.support.seed import World, new_track
from tests.support.sockets import Socket, TopicSocket, open_socket, open_topics
from tests.support.waiting import async_wait_until
from tests.support.writes import insert_comment, sql

pytestmark = pytest.mark.timeout(120)

AUDIENCE = ("carol", "tina", "alice", "bob")
"""carol: the album's creator; tina: the team; alice: the comments' author; bob: anyone else."""


@contextlib.asynccontextmanager
async def watching(
    replica: Replica, world: World, track: str, since: int | None = None
) -> AsyncIterator[dict[str, Socket]]:
    """A track socket for each of AUDIENCE, past `connected`."""
    async with contextlib.AsyncExitStack() as stack:
        socks = {}
        for name in AUDIENCE:
            socks[name] = await stack.enter_async_context(
                open_socket(replica.ws, track, world.tokens[name], since=since)
            )
            await socks[name].expect("connected")
        yield socks


async def next_events(socks: dict[str, Socket], count: int = 1) -> dict[str, list[dict[str, Any]]]:
    got = {name: await sock.events(count) for name, sock in socks.items()}
    seqs = {name: [e["seq"] for e in events] for name, events in got.items()}
    assert len({tuple(s) for s in seqs.values()}) == 1, f"every socket gets every seq: {seqs}"
    return got


def kinds(got: dict[str, list[dict[str, Any]]]) -> dict[str, list[str]]:
    return {name: [e["type"] for e in events] for name, events in got.items()}


async def test_pinning_by_sql_goes_live_and_pinning_another_unpins_the_first(
    replica: Replica, world: World, db_url: str
) -> None:
    track = new_track(db_url)
    first = await insert_comment(db_url, track, world.users["alice"], "first")
    second = await insert_comment(db_url, track, world.users["bob"], "second")
    async with watching(replica, world, track) as socks:
        await sql(db_url, "UPDATE comments SET pinned_at = now() WHERE id = %s", (first,))
        got = await next_events(socks)
        assert all(
            e[0]["type"] == "comment_pinned" and (e[0]["comment_id"], e[0]["pinned"]) == (first, True)
            for e in got.values()
        )
        await sql(db_url, "UPDATE comments SET pinned_at = now() WHERE id = %s", (second,))
        got = await next_events(socks, 2)
        for events in got.values():
            assert [(e["type"], e["comment_id"], e["pinned"]) for e in events] == [
                ("comment_pinned", first, False),
                ("comment_pinned", second, True),
            ]
    rows = await sql(
        db_url, "SELECT id FROM comments WHERE track_id = %s AND pinned_at IS NOT NULL", (track,)
    )
    assert rows == [(second,)]


async def test_hearting_by_sql_goes_live(replica: Replica, world: World, db_url: str) -> None:
    track = new_track(db_url)
    comment = await insert_comment(db_url, track, world.users["alice"], "love it")
    async with watching(replica, world, track) as socks:
        await sql(db_url, "UPDATE comments SET hearted_at = now() WHERE id = %s", (comment,))
        await sql(db_url, "UPDATE comments SET hearted_at = NULL WHERE id = %s", (comment,))
        got = await next_events(socks, 2)
        for events in got.values():
            assert [(e["type"], e["hearted"]) for e in events] == [
                ("comment_hearted", True),
                ("comment_hearted", False),
            ]


async def test_hiding_by_sql_reaches_each_audience_in_its_form_and_unhiding_restores_it(
    replica: Replica, world: World, db_url: str
) -> None:
    track = new_track(db_url)
    comment = await insert_comment(db_url, track, world.users["alice"], "a hot take")
    async with watching(replica, world, track) as socks:
        await sql(
            db_url,
            "UPDATE comments SET hidden_at = now(), hidden_by = %s WHERE id = %s",
            (world.users["carol"], comment),
        )
        got = await next_events(socks)
        assert kinds(got) == {
            "carol": ["comment_moderated"],
            "tina": ["comment_moderated"],
            "alice": ["comment_moderated"],
            "bob": ["comment_hidden"],
        }
        assert got["bob"][0]["comment_id"] == comment and "comment" not in got["bob"][0]
        marked = got["carol"][0]["comment"]
        assert (marked["id"], marked["hidden"], marked["held"], marked["report_count"]) == (
            comment,
            True,
            False,
            0,
        )

        # While hidden, its edit and its likes reach its audience only: everyone else gets skip.
        await sql(db_url, "UPDATE comments SET content = 'a hotter take' WHERE id = %s", (comment,))
        await sql(
            db_url,
            "INSERT INTO comment_likes (comment_id, user_id) VALUES (%s, %s)",
            (comment, world.users["tina"]),
        )
        got = await next_events(socks, 2)
        assert kinds(got)["alice"] == kinds(got)["carol"] == ["comment_edited", "comment_liked"]
        assert kinds(got)["bob"] == ["skip", "skip"] and "content" not in str(got["bob"])

        await sql(db_url, "UPDATE comments SET hidden_at = NULL, hidden_by = NULL WHERE id = %s", (comment,))
        got = await next_events(socks)
        assert kinds(got)["bob"] == ["comment_restored"] and kinds(got)["carol"] == ["comment_moderated"]
        restored = got["bob"][0]["comment"]
        assert (restored["id"], restored["content"], restored["like_count"]) == (comment, "a hotter take", 1)
        assert not {"hidden", "held", "report_count"} & set(restored)
        assert got["alice"][0]["comment"]["hidden"] is False


async def test_a_creators_word_holds_a_comment_from_the_start_and_an_edit_keeps_it_held(
    replica: Replica, world: World, db_url: str
) -> None:
    track = new_track(db_url)
    await sql(
        db_url,
        "INSERT INTO moderation_words (creator_id, word) VALUES (%s, 'Spoiler'), (%s, 'buy now')"
        " ON CONFLICT DO NOTHING",
        (world.users["carol"], world.users["carol"]),
    )
    async with watching(replica, world, track) as socks:
        held = await insert_comment(db_url, track, world.users["alice"], "huge SPOILER: he dies")
        phrase = await insert_comment(db_url, track, world.users["alice"], "please Buy Now!!")
        fine = await insert_comment(db_url, track, world.users["alice"], "spoilers are words too")
        got = await next_events(socks, 3)
        assert kinds(got)["bob"] == ["skip", "skip", "new_comment"]
        assert kinds(got)["carol"] == kinds(got)["alice"] == ["new_comment"] * 3
        assert [e["comment"]["held"] for e in got["carol"][:2]] == [True, True]
        assert got["bob"][2]["comment"]["id"] == fine and got["bob"][0]["metrics"]["comments"] == 1
        assert [e["comment"]["id"] for e in got["carol"][:2]] == [held, phrase]

        await sql(db_url, "UPDATE comments SET content = 'no more words here' WHERE id = %s", (held,))
        got = await next_events(socks)
        assert kinds(got)["bob"] == ["skip"] and kinds(got)["alice"] == ["comment_edited"]
    rows = await sql(db_url, "SELECT held_at IS NOT NULL FROM comments WHERE id = %s", (held,))
    assert rows == [(True,)], "an edit never clears a hold"


async def test_a_muted_users_comments_and_replies_are_hidden_from_the_start(
    replica: Replica, world: World, db_url: str
) -> None:
    track = new_track(db_url)
    visible = await insert_comment(db_url, track, world.users["bob"], "a visible thread")
    before = await insert_comment(db_url, track, world.users["alice"], "written before the mute")
    await sql(
        db_url,
        "INSERT INTO muted_users (creator_id, user_id) VALUES (%s, %s) ON CONFLICT DO NOTHING",
        (world.users["carol"], world.users["alice"]),
    )
    try:
        async with watching(replica, world, track) as socks:
            rows = await sql(
                db_url,
                "INSERT INTO comments (track_id, user_id, parent_id, content) VALUES (%s, %s, %s, 'a reply')"
                " RETURNING id, hidden_at IS NOT NULL, hidden_by",
                (track, world.users["alice"], visible),
            )
            assert rows[0][1:] == (True, world.users["carol"])
            got = await next_events(socks)
            assert kinds(got) == {
                "carol": ["new_comment"],
                "tina": ["new_comment"],
                "alice": ["new_comment"],
                "bob": ["skip"],
            }
            assert got["alice"][0]["comment"]["parent_id"] == visible

            # Those before stay, until docs/dba.md's statement hides them too, live.
            rows = await sql(db_url, "SELECT hidden_at IS NULL FROM comments WHERE id = %s", (before,))
            assert rows == [(True,)]
            await sql(
                db_url,
                "UPDATE comments c SET hidden_at = now(), hidden_by = a.created_by_id"
                "  FROM tracks t JOIN albums a ON a.id = t.album_id"
                " WHERE c.track_id = t.id AND a.created_by_id = %s AND c.user_id = %s"
                "   AND c.hidden_at IS NULL AND c.deleted_at IS NULL",
                (world.users["carol"], world.users["alice"]),
            )
            got = await next_events(socks)
            assert kinds(got)["bob"] == ["comment_hidden"] and got["bob"][0]["comment_id"] == before
            assert (
                kinds(got)["carol"] == ["comment_moderated"] and got["carol"][0]["comment"]["hidden"] is True
            )
    finally:
        await sql(db_url, "DELETE FROM muted_users WHERE creator_id = %s", (world.users["carol"],))


async def test_reports_by_sql_reach_the_moderators_and_the_threshold_holds_the_comment(
    replica: Replica, world: World, db_url: str
) -> None:
    track = new_track(db_url)
    comment = await insert_comment(db_url, track, world.users["alice"], "reported")
    async with watching(replica, world, track) as socks:
        for name in ("bob", "dave", "tina"):  # reports_to_hide is 3 by default
            await sql(
                db_url,
                "INSERT INTO comment_reports (comment_id, user_id, reason) VALUES (%s, %s, 'spam')",
                (comment, world.users[name]),
            )
        got = await next_events(socks, 3)
        assert kinds(got)["bob"] == ["skip", "skip", "comment_hidden"]
        assert kinds(got)["carol"] == ["comment_moderated"] * 3
        assert [(e["comment"]["report_count"], e["comment"]["held"]) for e in got["carol"]] == [
            (1, False),
            (2, False),
            (3, True),
        ]


async def test_reports_taken_away_reach_the_moderators_with_the_new_count(
    replica: Replica, world: World, db_url: str
) -> None:
    """An approval of a visible reported comment (nothing to show: it changes no mark) and a DBA's
    DELETE of reports each reach its author and the moderators as comment_moderated with the count
    that remains (everyone else: skip), as a report does; the next event follows in order."""
    track = new_track(db_url)
    comment = await insert_comment(db_url, track, world.users["alice"], "reported, then cleared")
    report = "INSERT INTO comment_reports (comment_id, user_id, reason) VALUES (%s, %s, 'meh')"
    async with watching(replica, world, track) as socks, httpx.AsyncClient(base_url=replica.http) as http:
        await sql(db_url, report, (comment, world.users["bob"]))
        got = await next_events(socks)
        assert got["tina"][0]["comment"]["report_count"] == 1
        answer = await http.post(f"/api/comments/{comment}/approve", headers=world.auth("carol"))
        assert answer.status_code == 200 and answer.json()["report_count"] == 0, answer.text
        await sql(db_url, report, (comment, world.users["dave"]))
        await sql(db_url, "DELETE FROM comment_reports WHERE comment_id = %s", (comment,))
        await sql(db_url, "UPDATE comments SET hearted_at = now() WHERE id = %s", (comment,))
        got = await next_events(socks, 4)
    counts = [(e["type"], e["comment"]["report_count"]) for e in got["carol"][:3]]
    assert counts == [("comment_moderated", 0), ("comment_moderated", 1), ("comment_moderated", 0)]
    assert kinds(got)["alice"] == kinds(got)["tina"] == kinds(got)["carol"]
    assert kinds(got)["bob"] == ["skip", "skip", "skip", "comment_hearted"]


async def test_two_reports_at_once_that_reach_the_threshold_hold_the_comment(
    world: World, db_url: str
) -> None:
    """The second and third reports, written at the same moment by two transactions, each count
    the other's: the later one waits for the first to commit, then counts 3 and holds the
    comment (each used to count 2, its own and the one committed before: 3 reports, not held)."""
    track = new_track(db_url)
    comment = await insert_comment(db_url, track, world.users["alice"], "reported at once")
    report = "INSERT INTO comment_reports (comment_id, user_id, reason) VALUES (%s, %s, 'at once')"
    await sql(db_url, report, (comment, world.users["bob"]))
    async with (
        await psycopg.AsyncConnection.connect(db_url) as first,
        await psycopg.AsyncConnection.connect(db_url) as second,
    ):
        await first.execute(report, (comment, world.users["dave"]))  # not committed yet
        waiting = asyncio.create_task(second.execute(report, (comment, world.users["tina"])))
        pid = second.info.backend_pid

        async def blocked_or_done() -> bool:
            rows = await sql(db_url, "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,))
            return waiting.done() or rows == [("Lock",)]

        await async_wait_until(blocked_or_done, 10, "the second report to wait for the first, or end")
        await first.commit()
        await waiting
        await second.commit()
    rows = await sql(
        db_url,
        "SELECT held_at IS NOT NULL, (SELECT count(*) FROM comment_reports WHERE comment_id = c.id)"
        " FROM comments c WHERE c.id = %s",
        (comment,),
    )
    assert rows == [(True, 3)]


async def test_track_settings_by_sql_go_live(replica: Replica, world: World, db_url: str) -> None:
    track = new_track(db_url)
    async with watching(replica, world, track) as socks:
        await sql(
            db_url,
            "UPDATE tracks SET comments_enabled = false, slow_mode_seconds = 30 WHERE id = %s",
            (track,),
        )
        await sql(db_url, "UPDATE tracks SET title = 'renamed' WHERE id = %s", (track,))  # no event
        await sql(db_url, "UPDATE tracks SET comments_enabled = true WHERE id = %s", (track,))
        got = await next_events(socks, 2)
        for events in got.values():
            assert [(e["type"], e["comments_enabled"], e["slow_mode_seconds"]) for e in events] == [
                ("track_settings", False, 30),
                ("track_settings", True, 30),
            ]


async def test_deleting_a_comment_with_replies_by_sql_leaves_a_tombstone(
    replica: Replica, world: World, db_url: str
) -> None:
    track = new_track(db_url)
    parent = await insert_comment(db_url, track, world.users["alice"], "a question")
    reply = (
        await sql(
            db_url,
            "INSERT INTO comments (track_id, user_id, parent_id, content) VALUES (%s, %s, %s, 'an answer')"
            " RETURNING id",
            (track, world.users["bob"], parent),
        )
    )[0][0]
    async with watching(replica, world, track) as socks:
        await sql(db_url, "DELETE FROM comments WHERE id = %s", (parent,))
        got = await next_events(socks)
        for events in got.values():
            assert (events[0]["type"], events[0]["comment_id"], events[0]["tombstone"]) == (
                "comment_deleted",
                parent,
                True,
            )
            assert events[0]["metrics"]["comments"] == 1
        await sql(db_url, "DELETE FROM comments WHERE id = %s", (reply,))
        got = await next_events(socks, 2)
        for events in got.values():  # the reply, then the tombstone it held
            assert [(e["type"], e["comment_id"], e.get("tombstone", False)) for e in events] == [
                ("comment_deleted", reply, False),
                ("comment_deleted", parent, False),
            ]
    rows = await sql(db_url, "SELECT count(*) FROM comments WHERE track_id = %s", (track,))
    assert rows == [(0,)]


async def test_a_replay_gives_each_socket_its_audiences_form(
    replica: Replica, world: World, db_url: str
) -> None:
    track = new_track(db_url)
    comment = await insert_comment(db_url, track, world.users["alice"], "soon hidden")
    await sql(db_url, "UPDATE comments SET held_at = now() WHERE id = %s", (comment,))
    await sql(db_url, "UPDATE comments SET content = 'edited while held' WHERE id = %s", (comment,))
    async with watching(replica, world, track, since=1) as socks:
        got = await next_events(socks, 2)
    assert kinds(got) == {
        "carol": ["comment_moderated", "comment_edited"],
        "tina": ["comment_moderated", "comment_edited"],
        "alice": ["comment_moderated", "comment_edited"],
        "bob": ["comment_hidden", "skip"],
    }
    assert [e["seq"] for e in got["bob"]] == [2, 3]


async def test_a_team_member_who_leaves_the_team_is_told_to_reload_and_sees_no_more_hidden_events(
    replica: Replica, world: World, db_url: str
) -> None:
    track = new_track(db_url)
    comment = await insert_comment(db_url, track, world.users["alice"], "will be hidden")
    await sql(db_url, "UPDATE comments SET hidden_at = now() WHERE id = %s", (comment,))
    try:
        async with open_socket(replica.ws, track, world.tokens["tina"]) as tina:
            connected = await tina.expect("connected")
            await sql(db_url, "UPDATE users SET is_team = false WHERE id = %s", (world.users["tina"],))
            resync = await tina.expect("resync", ignore=("presence",))
            assert resync["seq"] == connected["seq"]
            await sql(db_url, "UPDATE comments SET content = 'still hidden' WHERE id = %s", (comment,))
            (event,) = await tina.events(1)
            assert event["type"] == "skip" and "content" not in event
    finally:
        await sql(db_url, "UPDATE users SET is_team = true WHERE id = %s", (world.users["tina"],))


async def test_one_who_joins_the_team_is_told_to_reload_and_gets_the_moderators_forms_at_once(
    replica: Replica, world: World, db_url: str
) -> None:
    """dave joins the team while his socket is open: a `resync` (reload: GET now shows him the
    hidden comment) and, from then on, the moderators' form of each event, without subscribing
    again. The creator of an album given to him, likewise, on its track."""
    track = new_track(db_url)
    comment = await insert_comment(db_url, track, world.users["alice"], "hidden before he joins")
    await sql(db_url, "UPDATE comments SET hidden_at = now() WHERE id = %s", (comment,))
    try:
        async with open_socket(replica.ws, track, world.tokens["dave"]) as dave:
            connected = await dave.expect("connected")
            await sql(db_url, "UPDATE users SET is_team = true WHERE id = %s", (world.users["dave"],))
            resync = await dave.expect("resync", ignore=("presence",))
            assert resync["seq"] == connected["seq"]
            await sql(db_url, "UPDATE comments SET content = 'seen by the team' WHERE id = %s", (comment,))
            (event,) = await dave.events(1)
            assert (event["type"], event["content"]) == ("comment_edited", "seen by the team")
    finally:
        await sql(db_url, "UPDATE users SET is_team = false WHERE id = %s", (world.users["dave"],))
    rows = await sql(
        db_url,
        "INSERT INTO albums (title, created_by_id) VALUES ('Given', %s) RETURNING id",
        (world.users["carol"],),
    )
    given = f"t-given-{rows[0][0]}"
    await sql(
        db_url, "INSERT INTO tracks (id, album_id, title) VALUES (%s, %s, 'Given')", (given, rows[0][0])
    )
    hidden = await insert_comment(db_url, given, world.users["alice"], "hidden on the given track")
    await sql(db_url, "UPDATE comments SET hidden_at = now() WHERE id = %s", (hidden,))
    async with open_socket(replica.ws, given, world.tokens["dave"]) as dave:
        await dave.expect("connected")
        await sql(
            db_url, "UPDATE albums SET created_by_id = %s WHERE id = %s", (world.users["dave"], rows[0][0])
        )
        await dave.expect("resync", ignore=("presence",))
        await sql(db_url, "UPDATE comments SET content = 'his now' WHERE id = %s", (hidden,))
        (event,) = await dave.events(1)
        assert (event["type"], event["content"]) == ("comment_edited", "his now")


async def test_a_creator_whose_album_goes_to_another_is_told_to_reload(
    replica: Replica, world: World, db_url: str
) -> None:
    rows = await sql(
        db_url,
        "INSERT INTO albums (title, created_by_id) VALUES ('Theirs', %s) RETURNING id",
        (world.users["carol"],),
    )
    track = f"t-album-{rows[0][0]}"
    await sql(
        db_url, "INSERT INTO tracks (id, album_id, title) VALUES (%s, %s, 'Theirs')", (track, rows[0][0])
    )
    async with open_socket(replica.ws, track, world.tokens["carol"]) as carol:
        await carol.expect("connected")
        await sql(
            db_url, "UPDATE albums SET created_by_id = %s WHERE id = %s", (world.users["dave"], rows[0][0])
        )
        await carol.expect("resync")


def durable(sock: TopicSocket, topic: str) -> list[dict[str, Any]]:
    """The topic's durable events the socket got, in order."""
    return [m for m in sock.by_topic[topic] if "seq" in m and m["type"] not in ("subscribed", "resync")]


async def test_on_api_ws_a_hidden_comment_reaches_each_audience_in_its_form_live_and_in_a_replay(
    replica: Replica, world: World, db_url: str
) -> None:
    """/api/ws carries the same per-audience forms as the track socket: a comment hidden by SQL
    reaches carol (creator), tina (team) and alice (author) as `comment_moderated` and bob as
    `comment_hidden`, the same seq for all; its edit while hidden reaches bob as `skip`; and a
    subscription resumed with `since=` replays each audience's form."""
    track = new_track(db_url)
    topic = f"track:{track}"
    comment = await insert_comment(db_url, track, world.users["alice"], "a hot take")
    async with contextlib.AsyncExitStack() as stack:
        socks: dict[str, TopicSocket] = {}
        for name in AUDIENCE:
            socks[name] = await stack.enter_async_context(open_topics(replica.ws, world.tokens[name]))
            assert (await socks[name].subscribe(topic))["seq"] == 1
        await sql(
            db_url,
            "UPDATE comments SET hidden_at = now(), hidden_by = %s WHERE id = %s",
            (world.users["carol"], comment),
        )
        await sql(db_url, "UPDATE comments SET content = 'a hotter take' WHERE id = %s", (comment,))
        for sock in socks.values():
            await sock.until(lambda s=sock: len(durable(s, topic)) >= 2, "two events")  # type: ignore[misc]
        live = {name: [(m["seq"], m["type"]) for m in durable(sock, topic)] for name, sock in socks.items()}
        replayed = {}
        for name in ("tina", "bob"):
            again = await stack.enter_async_context(open_topics(replica.ws, world.tokens[name]))
            await again.subscribe(topic, since=1)
            await again.until(lambda s=again: len(durable(s, topic)) >= 2, "the replay")  # type: ignore[misc]
            replayed[name] = [(m["seq"], m["type"]) for m in durable(again, topic)]
    moderated = [(2, "comment_moderated"), (3, "comment_edited")]
    assert live == {
        "carol": moderated,
        "tina": moderated,
        "alice": moderated,
        "bob": [(2, "comment_hidden"), (3, "skip")],
    }
    assert replayed == {"tina": moderated, "bob": [(2, "comment_hidden"), (3, "skip")]}
    assert "a hotter take" not in str(socks["bob"].received)


async def test_a_held_comment_approved_by_sql_notifies_as_a_new_one_would_have_and_only_then(
    replica: Replica, world: World, db_url: str
) -> None:
    """Held comments tell nobody (a mention in a held comment must not reach the one it names); the
    approval makes the mention's notification, once (hiding and showing it again adds none)."""
    track = new_track(db_url)
    carol, alice, bob = world.users["carol"], world.users["alice"], world.users["bob"]
    await sql(db_url, "INSERT INTO moderation_words (creator_id, word) VALUES (%s, 'zeugma')", (carol,))
    try:
        comment = await insert_comment(db_url, track, alice, "a zeugma for @bob")
        mentions = (
            "SELECT count(*) FROM notifications WHERE comment_id = %s AND user_id = %s AND kind = 'mention'"
        )
        assert await sql(db_url, mentions, (comment, bob)) == [(0,)]
        await sql(db_url, "UPDATE comments SET held_at = NULL WHERE id = %s", (comment,))
        assert await sql(db_url, mentions, (comment, bob)) == [(1,)]
        await sql(
            db_url, "UPDATE comments SET hidden_at = now(), hidden_by = %s WHERE id = %s", (carol, comment)
        )
        await sql(db_url, "UPDATE comments SET hidden_at = NULL, hidden_by = NULL WHERE id = %s", (comment,))
        assert await sql(db_url, mentions, (comment, bob)) == [(1,)]
    finally:
        await sql(db_url, "DELETE FROM moderation_words WHERE creator_id = %s AND word = 'zeugma'", (carol,))
