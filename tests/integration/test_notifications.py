"""Notifications (issue 4): who the database notifies, the inbox API, and live delivery.

Every rule is checked for a change made through the HTTP API and for the same change made with
plain SQL (the `writer` fixture), because the triggers make the notifications in the writer's
own transaction, whoever the writer is.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from app.auth.hs256 import issue_token
from app.data.events import EventLog
from app.services import prune
from tests.support.processes import SECRET, Replica
from tests.support.seed import World, new_track
from tests.support.sockets import open_socket

# ---------------------------------------------------------------------------------------------
# People, writers and readers
# ---------------------------------------------------------------------------------------------


@dataclass
class People:
    """The seeded users plus the ones a test adds, by name."""

    db_url: str
    ids: dict[str, int]
    tokens: dict[str, str]

    def auth(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[name]}"}

    def add(self, name: str) -> int:
        """A new user (by SQL) with a token."""
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            row = conn.execute("INSERT INTO users (username) VALUES (%s) RETURNING id", (name,)).fetchone()
        assert row is not None
        self.ids[name] = int(row[0])
        self.tokens[name] = issue_token(SECRET, self.ids[name], 3600)
        return self.ids[name]


class Writer(Protocol):
    """Changes comments as a user, either through the API or with plain SQL."""

    def comment(self, who: str, track: str, content: str, parent: int | None = None) -> int: ...
    def edit(self, who: str, comment_id: int, content: str) -> None: ...
    def like(self, who: str, comment_id: int) -> None: ...
    def unlike(self, who: str, comment_id: int) -> None: ...
    def delete(self, who: str, comment_id: int) -> None: ...
    def close(self) -> None: ...


class ApiWriter:
    """Writes through a replica's HTTP API."""

    def __init__(self, base: str, people: People) -> None:
        self.client = httpx.Client(base_url=base, timeout=10)
        self.people = people

    def close(self) -> None:
        self.client.close()

    def _call(self, method: str, url: str, who: str, expect: int, body: Any = None) -> httpx.Response:
        response = self.client.request(method, url, json=body, headers=self.people.auth(who))
        assert response.status_code == expect, response.text
        return response

    def comment(self, who: str, track: str, content: str, parent: int | None = None) -> int:
        body = {"content": content, "timestamp": 1.0, "parent_id": parent}
        return int(self._call("POST", f"/api/tracks/{track}/comments", who, 201, body).json()["id"])

    def edit(self, who: str, comment_id: int, content: str) -> None:
        self._call("PUT", f"/api/comments/{comment_id}", who, 200, {"content": content})

    def like(self, who: str, comment_id: int) -> None:
        self._call("POST", f"/api/comments/{comment_id}/like", who, 200)

    def unlike(self, who: str, comment_id: int) -> None:
        self._call("DELETE", f"/api/comments/{comment_id}/like", who, 200)

    def delete(self, who: str, comment_id: int) -> None:
        self._call("DELETE", f"/api/comments/{comment_id}", who, 204)


class SqlWriter:
    """Writes the rows directly, as psql or another service would."""

    def __init__(self, db_url: str, people: People) -> None:
        self.db_url = db_url
        self.people = people

    def close(self) -> None:
        pass

    def _run(self, sql: str, *params: Any) -> Any:
        rows = query(self.db_url, sql, *params)
        return rows[0] if rows else None

    def comment(self, who: str, track: str, content: str, parent: int | None = None) -> int:
        row = self._run(
            "INSERT INTO comments (track_id, user_id, content, timestamp, parent_id)"
            " VALUES (%s, %s, %s, 1.0, %s) RETURNING id",
            track,
            self.people.ids[who],
            content,
            parent,
        )
        return int(row[0])

    def edit(self, who: str, comment_id: int, content: str) -> None:
        self._run("UPDATE comments SET content = %s WHERE id = %s", content, comment_id)

    def like(self, who: str, comment_id: int) -> None:
        self._run(
            "INSERT INTO comment_likes (comment_id, user_id) VALUES (%s, %s) ON CONFLICT DO NOTHING",
            comment_id,
            self.people.ids[who],
        )

    def unlike(self, who: str, comment_id: int) -> None:
        self._run(
            "DELETE FROM comment_likes WHERE comment_id = %s AND user_id = %s",
            comment_id,
            self.people.ids[who],
        )

    def delete(self, who: str, comment_id: int) -> None:
        self._run("DELETE FROM comments WHERE id = %s", comment_id)


def query(db_url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """One statement in its own autocommit connection; its rows, if it returns any."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


def notified(db_url: str, comment_id: int) -> dict[str, str]:
    """Who holds a comment/reply/mention notification of the comment, and of which kind."""
    rows = query(
        db_url,
        "SELECT u.username, n.kind FROM notifications n JOIN users u ON u.id = n.user_id"
        " WHERE n.comment_id = %s AND n.kind <> 'comment_like' ORDER BY u.username",
        comment_id,
    )
    names = [name for name, _ in rows]
    assert len(names) == len(set(names)), f"someone got two notifications of one comment: {rows}"
    return dict(rows)


def like_notices(db_url: str, comment_id: int) -> list[tuple[str, str]]:
    """(recipient, liker) of every comment_like notification of the comment."""
    rows = query(
        db_url,
        "SELECT r.username, a.username FROM notifications n"
        " JOIN users r ON r.id = n.user_id JOIN users a ON a.id = n.actor_id"
        " WHERE n.comment_id = %s AND n.kind = 'comment_like' ORDER BY a.username",
        comment_id,
    )
    return [(str(r), str(a)) for r, a in rows]


def inbox(client: httpx.Client, people: People, who: str, **params: Any) -> httpx.Response:
    """GET /api/notifications as `who`."""
    response = client.get("/api/notifications", params=params, headers=people.auth(who))
    assert response.status_code == 200, response.text
    return response


def mark_read(client: httpx.Client, people: People, who: str, **kw: Any) -> int:
    """POST /api/notifications/read as `who`; the unread count it answers."""
    response = client.post("/api/notifications/read", headers=people.auth(who), **kw)
    assert response.status_code == 200, response.text
    return int(response.json()["unread"])


def notification_ids(db_url: str, who_id: int) -> list[int]:
    """Ids of the user's notifications, oldest first."""
    return [
        int(r[0])
        for r in query(db_url, "SELECT id FROM notifications WHERE user_id = %s ORDER BY id", who_id)
    ]


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def people(db_url: str, world: World) -> People:
    return People(db_url, dict(world.users), dict(world.tokens))


@pytest.fixture(scope="module")
def api(replica: Replica) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=replica.http, timeout=10) as client:
        yield client


def make_writer(via: str, base: str, db_url: str, people: People) -> ApiWriter | SqlWriter:
    """A writer through the API of the replica at `base`, or one with plain SQL."""
    return ApiWriter(base, people) if via == "api" else SqlWriter(db_url, people)


@pytest.fixture(params=["api", "sql"])
def writer(request: pytest.FixtureRequest, db_url: str, people: People) -> Iterator[Writer]:
    """The same change made through the HTTP API, then with plain SQL."""
    base = request.getfixturevalue("replica").http if request.param == "api" else ""
    with contextlib.closing(make_writer(request.param, base, db_url, people)) as made:
        yield made


@contextlib.contextmanager
def team_notifications_off(db_url: str) -> Iterator[None]:
    """tracktalk.settings.notify_team switched off, then back on (also when the test fails)."""
    query(db_url, "UPDATE tracktalk.settings SET notify_team = false")
    try:
        yield
    finally:
        query(db_url, "UPDATE tracktalk.settings SET notify_team = true")


# ---------------------------------------------------------------------------------------------
# Who is notified
# ---------------------------------------------------------------------------------------------


def test_album_creator_and_team_hear_of_every_comment_but_their_own(db_url: str, writer: Writer) -> None:
    by_alice = writer.comment("alice", "t-public", "nice bassline")
    assert notified(db_url, by_alice) == {"carol": "comment", "tina": "comment"}

    by_carol = writer.comment("carol", "t-public", "thanks for listening")
    assert notified(db_url, by_carol) == {"tina": "comment"}

    by_tina = writer.comment("tina", "t-other", "pinned")
    assert notified(db_url, by_tina) == {"carol": "comment"}


def test_team_notifications_can_be_switched_off(db_url: str, writer: Writer) -> None:
    with team_notifications_off(db_url):
        muted = writer.comment("alice", "t-public", "while the team is muted")
        assert notified(db_url, muted) == {"carol": "comment"}

    heard = writer.comment("alice", "t-public", "the team hears this again")
    assert notified(db_url, heard) == {"carol": "comment", "tina": "comment"}


def test_reply_notifies_the_parent_author(db_url: str, writer: Writer) -> None:
    parent = writer.comment("bob", "t-public", "what synth is this?")
    reply = writer.comment("alice", "t-public", "a Juno, I think", parent)
    assert notified(db_url, reply) == {"bob": "reply", "carol": "comment", "tina": "comment"}

    own_reply = writer.comment("bob", "t-public", "thanks!", parent)
    assert notified(db_url, own_reply) == {"carol": "comment", "tina": "comment"}


def test_each_mentioned_user_is_notified_once(db_url: str, writer: Writer) -> None:
    comment_id = writer.comment(
        "alice", "t-public", "@BOB listen, @bob again, ask @Dave; not @nobody_here; me: @alice"
    )
    assert notified(db_url, comment_id) == {
        "bob": "mention",
        "dave": "mention",
        "carol": "comment",
        "tina": "comment",
    }


def test_mail_address_is_no_mention(db_url: str, writer: Writer) -> None:
    comment_id = writer.comment("alice", "t-public", "write to a@bob.com or dave@example.org")
    assert notified(db_url, comment_id) == {"carol": "comment", "tina": "comment"}


def test_most_specific_kind_wins(db_url: str, writer: Writer) -> None:
    parent = writer.comment("bob", "t-public", "anyone?")
    reply = writer.comment("alice", "t-public", "@bob yes, and @carol @tina should hear this", parent)
    assert notified(db_url, reply) == {"bob": "mention", "carol": "mention", "tina": "mention"}

    by_creator = writer.comment("carol", "t-public", "new mix is up")
    answer = writer.comment("alice", "t-public", "love it", by_creator)
    assert notified(db_url, answer) == {"carol": "reply", "tina": "comment"}


def test_edit_notifies_only_newly_added_mentions(
    db_url: str, writer: Writer, api: httpx.Client, people: People
) -> None:
    comment_id = writer.comment("alice", "t-public", "hi @bob")
    before = notified(db_url, comment_id)
    assert before == {"bob": "mention", "carol": "comment", "tina": "comment"}
    bobs = query(
        db_url,
        "SELECT id FROM notifications WHERE comment_id = %s AND user_id = %s",
        comment_id,
        people.ids["bob"],
    )
    mark_read(api, people, "bob", json={"ids": [bobs[0][0]]})

    writer.edit("alice", comment_id, "hi @bob, and @dave and @carol too")

    assert notified(db_url, comment_id) == {
        "bob": "mention",
        "carol": "mention",
        "dave": "mention",
        "tina": "comment",
    }
    unread = query(
        db_url,
        "SELECT u.username FROM notifications n JOIN users u ON u.id = n.user_id"
        " WHERE n.comment_id = %s AND n.read_at IS NULL ORDER BY 1",
        comment_id,
    )
    # bob was mentioned before the edit too: his (read) notification is not news again.
    assert [r[0] for r in unread] == ["carol", "dave", "tina"]


def test_like_notifies_the_author_once_per_liker(db_url: str, writer: Writer) -> None:
    comment_id = writer.comment("bob", "t-public", "like this if you agree")
    writer.like("alice", comment_id)
    assert like_notices(db_url, comment_id) == [("bob", "alice")]

    writer.like("bob", comment_id)  # a self-like tells nobody
    writer.unlike("alice", comment_id)
    writer.like("alice", comment_id)  # liked again: not news twice
    assert like_notices(db_url, comment_id) == [("bob", "alice")]

    writer.like("dave", comment_id)
    assert like_notices(db_url, comment_id) == [("bob", "alice"), ("bob", "dave")]


def test_mentions_on_a_private_track_skip_who_cannot_see_it(db_url: str, writer: Writer) -> None:
    comment_id = writer.comment("tina", "t-private", "@alice @bob @carol: the unreleased mix")
    assert notified(db_url, comment_id) == {"carol": "mention"}


def crowd(people: People, count: int) -> list[str]:
    """`count` new users with names of their own (a test may run once per writer)."""
    prefix = f"m{uuid.uuid4().hex[:6]}"
    names = [f"{prefix}_{i:02d}" for i in range(count)]
    for name in names:
        people.add(name)
    return names


def mentioned(db_url: str, comment_id: int) -> set[str]:
    """Who holds a mention notification of the comment."""
    return {name for name, kind in notified(db_url, comment_id).items() if kind == "mention"}


def test_a_comment_notifies_only_the_first_ten_users_it_mentions(
    db_url: str, writer: Writer, people: People
) -> None:
    names = crowd(people, 15)[::-1]  # text order is not the order of the users' ids
    # A name of nobody takes no place among the ten; a name said twice (in any case) takes one.
    text = f"@nobody_{names[0]} " + " ".join(f"@{name}" for name in names[:3])
    text += f" @{names[1].upper()} " + " ".join(f"@{name}" for name in names[3:])
    comment_id = writer.comment("alice", "t-public", text)
    assert notified(db_url, comment_id) == {
        **dict.fromkeys(names[:10], "mention"),
        "carol": "comment",
        "tina": "comment",
    }


def test_edits_cannot_push_a_comments_mentions_past_ten(db_url: str, writer: Writer, people: People) -> None:
    names = crowd(people, 15)
    comment_id = writer.comment("alice", "t-public", " ".join(f"@{n}" for n in names[:7]))
    assert mentioned(db_url, comment_id) == set(names[:7])

    writer.edit("alice", comment_id, " ".join(f"@{n}" for n in names[:13]))
    assert mentioned(db_url, comment_id) == set(names[:10])  # three more: ten in all

    # A fresh set of names makes no room: the ten told before still count.
    writer.edit("alice", comment_id, f"@{names[13]} and @{names[14]} instead")
    assert mentioned(db_url, comment_id) == set(names[:10])


def test_deleting_a_comment_removes_its_unread_notifications_only(
    db_url: str, writer: Writer, api: httpx.Client, people: People
) -> None:
    comment_id = writer.comment("alice", "t-public", "@bob @dave: soon gone")
    rows = dict(query(db_url, "SELECT user_id, id FROM notifications WHERE comment_id = %s", comment_id))
    bobs = rows[people.ids["bob"]]
    mark_read(api, people, "bob", json={"ids": [bobs]})

    writer.delete("alice", comment_id)

    left = query(
        db_url,
        "SELECT id, comment_id, read_at IS NOT NULL FROM notifications WHERE id = ANY(%s)",
        [*rows.values()],
    )
    assert left == [(bobs, None, True)]
    listed = {n["id"]: n for n in inbox(api, people, "bob", limit=200).json()["notifications"]}
    assert listed[bobs]["comment_id"] is None
    assert listed[bobs]["read_at"] is not None

    # A comment with replies stays as a tombstone: its own unread notifications go (nothing is left
    # to read), its replies' stay with them.
    parent = writer.comment("alice", "t-public", "@bob a thread")
    reply = writer.comment("dave", "t-public", "ok", parent)
    reply_rows = [r[0] for r in query(db_url, "SELECT id FROM notifications WHERE comment_id = %s", reply)]
    assert len(reply_rows) == 3  # alice (reply), carol and tina
    writer.delete("alice", parent)
    assert query(db_url, "SELECT id FROM notifications WHERE comment_id = %s", parent) == []
    assert len(query(db_url, "SELECT id FROM notifications WHERE id = ANY(%s)", reply_rows)) == 3


# ---------------------------------------------------------------------------------------------
# What the recipient may no longer see (issue 23)
# ---------------------------------------------------------------------------------------------


def live_messages(db_url: str, ids: list[int]) -> list[dict[str, Any]]:
    """The messages a replica reads to push notifications `ids` to their recipient's sockets."""
    rows = query(db_url, "SELECT message FROM tracktalk.user_messages(%s::bigint[])", ids)
    return [message for (message,) in rows]


def test_a_member_taken_off_the_team_reads_nothing_more_of_a_private_track(
    db_url: str, api: httpx.Client, people: People
) -> None:
    """A team member hears of every comment, private tracks' too; off the team, the inbox and the
    live push show neither the track's title nor the comment's text, an edit made afterwards
    included. Back on the team, the notification is there again."""
    tess = people.add("tess")
    query(db_url, "UPDATE users SET is_team = true WHERE id = %s", tess)
    try:
        sql = SqlWriter(db_url, people)
        secret = sql.comment("carol", "t-private", "the band splits up after this album")
        heard = [n for n in inbox(api, people, "tess").json()["notifications"] if n["comment_id"] == secret]
        assert [(n["track_title"], n["excerpt"]) for n in heard] == [
            ("Private", "the band splits up after this album")
        ]
        ids = [n["id"] for n in heard]
        assert [m["type"] for m in live_messages(db_url, ids)] == ["notification"]
        unread = inbox(api, people, "tess").json()["unread"]

        query(db_url, "UPDATE users SET is_team = false WHERE id = %s", tess)
        sql.edit("carol", secret, "the band splits up: the edit made after she left")
        after = inbox(api, people, "tess", limit=200).json()
        shown = json.dumps(after)
        assert "band splits" not in shown and "Private" not in shown and "t-private" not in shown, shown
        assert after["unread"] == unread - 1
        assert live_messages(db_url, ids) == []

        query(db_url, "UPDATE users SET is_team = true WHERE id = %s", tess)
        back = [n for n in inbox(api, people, "tess").json()["notifications"] if n["comment_id"] == secret]
        assert [(n["track_title"], n["excerpt"]) for n in back] == [
            ("Private", "the band splits up: the edit made after she left")
        ]
    finally:
        query(db_url, "UPDATE users SET is_team = false WHERE id = %s", tess)


def test_notifications_of_a_track_made_private_show_nothing_of_it(
    db_url: str, api: httpx.Client, people: People
) -> None:
    """A mention (whose live push carries the whole comment) on a track that is then made
    private: the listener who may no longer see the track reads nothing of it, the comment's
    later edit included; the album's creator still does."""
    track = new_track(db_url)
    people.add("uma")
    sql = SqlWriter(db_url, people)
    mentioning = sql.comment("alice", track, "@uma listen to the bridge")
    ids = [
        n["id"] for n in inbox(api, people, "uma").json()["notifications"] if n["comment_id"] == mentioning
    ]
    assert [m["type"] for m in live_messages(db_url, ids)] == ["notification", "mention"]

    query(db_url, "UPDATE tracks SET is_private = true WHERE id = %s", track)
    sql.edit("alice", mentioning, "@uma the bridge, rewritten once the track was private")
    assert inbox(api, people, "uma").json() == {"notifications": [], "unread": 0}
    assert live_messages(db_url, ids) == []
    carols = [
        n for n in inbox(api, people, "carol", limit=200).json()["notifications"] if n["track_id"] == track
    ]
    assert [n["excerpt"] for n in carols] == ["@uma the bridge, rewritten once the track was private"]


# ---------------------------------------------------------------------------------------------
# The inbox API
# ---------------------------------------------------------------------------------------------


def mention(db_url: str, people: People, who: str, count: int) -> list[int]:
    """`count` comments by alice (SQL) that mention `who`; the ids of the notifications, newest first."""
    sql = SqlWriter(db_url, people)
    for i in range(count):
        sql.comment("alice", "t-other", f"@{who} take {i}")
    return notification_ids(db_url, people.ids[who])[::-1]


def test_inbox_is_newest_first_and_pages_with_link(db_url: str, api: httpx.Client, people: People) -> None:
    people.add("nina")
    expected = mention(db_url, people, "nina", 5)

    pages, url = [], "/api/notifications?limit=2"
    while url:
        response = api.get(url, headers=people.auth("nina"))
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["unread"] == 5
        pages.append([n["id"] for n in body["notifications"]])
        url = response.links.get("next", {}).get("url", "")

    assert pages == [expected[0:2], expected[2:4], expected[4:5]]
    first = inbox(api, people, "nina", limit=1).json()["notifications"][0]
    assert first["kind"] == "mention"
    assert first["user_id"] == people.ids["nina"]
    assert first["actor_username"] == "alice"
    assert first["track_id"] == "t-other"
    assert first["excerpt"] == "@nina take 4"
    assert first["read_at"] is None
    older = inbox(api, people, "nina", before_id=expected[1], limit=10).json()["notifications"]
    assert [n["id"] for n in older] == expected[2:]


def test_mark_some_then_all_read(db_url: str, api: httpx.Client, people: People) -> None:
    people.add("olga")
    ids = mention(db_url, people, "olga", 4)

    assert mark_read(api, people, "olga", json={"ids": []}) == 4  # no ids: none marked
    assert mark_read(api, people, "olga", json={"ids": ids[:2]}) == 2
    listed = inbox(api, people, "olga").json()
    assert listed["unread"] == 2
    assert [n["read_at"] is not None for n in listed["notifications"]] == [True, True, False, False]

    assert mark_read(api, people, "olga") == 0
    assert inbox(api, people, "olga").json()["unread"] == 0

    mention(db_url, people, "olga", 1)
    assert inbox(api, people, "olga").json()["unread"] == 1
    assert mark_read(api, people, "olga", json={}) == 0

    mention(db_url, people, "olga", 1)  # marked read by SQL: the API agrees
    query(db_url, "UPDATE notifications SET read_at = now() WHERE user_id = %s", people.ids["olga"])
    assert inbox(api, people, "olga").json()["unread"] == 0


def test_mark_read_takes_form_fields_too(db_url: str, api: httpx.Client, people: People) -> None:
    people.add("xena")
    ids = mention(db_url, people, "xena", 4)
    assert mark_read(api, people, "xena", data={"ids": str(ids[0])}) == 3  # one id
    assert mark_read(api, people, "xena", data={"ids": [str(i) for i in ids[1:3]]}) == 1  # ids=..&ids=..
    assert mark_read(api, people, "xena", data={}) == 0  # no field: all


def test_inbox_needs_a_token(api: httpx.Client) -> None:
    assert api.get("/api/notifications").status_code == 401
    assert api.post("/api/notifications/read").status_code == 401
    bad = {"Authorization": "Bearer not-a-token"}
    assert api.get("/api/notifications", headers=bad).status_code == 401
    assert api.post("/api/notifications/read", headers=bad, json={}).status_code == 401


def test_nobody_sees_or_marks_another_users_notifications(
    db_url: str, api: httpx.Client, people: People
) -> None:
    people.add("pia")
    people.add("quinn")
    pias = mention(db_url, people, "pia", 2)
    mention(db_url, people, "quinn", 1)

    quinns = inbox(api, people, "quinn", limit=200).json()
    assert {n["user_id"] for n in quinns["notifications"]} == {people.ids["quinn"]}
    assert mark_read(api, people, "quinn", json={"ids": pias}) == 1  # quinn's own still unread
    assert mark_read(api, people, "quinn") == 0

    assert inbox(api, people, "pia").json()["unread"] == 2


def test_pruning_removes_notifications_past_their_retention(db_url: str, people: People) -> None:
    people.add("ria")
    newest_first = mention(db_url, people, "ria", 4)
    query(
        db_url,
        "UPDATE notifications SET created_at = now() - interval '2 hours' WHERE id = ANY(%s)",
        newest_first[1:],
    )
    query(
        db_url,
        "UPDATE notifications SET created_at = now() - interval '91 days' WHERE id = %s",
        newest_first[3],
    )

    query(db_url, "SELECT tracktalk.prune_events()")  # what every replica runs every few minutes
    assert notification_ids(db_url, people.ids["ria"]) == newest_first[:3][::-1]

    query(db_url, "UPDATE tracktalk.settings SET notification_retention = '1 hour'")
    try:
        # At most a batch per call, the oldest first, so that one call never holds locks for long.
        assert query(db_url, "SELECT tracktalk.prune_notifications(1)") == [(1,)]
        assert notification_ids(db_url, people.ids["ria"]) == newest_first[:2][::-1]
        query(db_url, "SELECT tracktalk.prune_events()")
        assert notification_ids(db_url, people.ids["ria"]) == [newest_first[0]]
    finally:
        query(db_url, "UPDATE tracktalk.settings SET notification_retention = DEFAULT")


async def test_a_replicas_pruning_calls_again_until_the_expired_notifications_are_gone(
    db_url: str, people: People
) -> None:
    """Each call deletes at most a batch (10,000): the replica's pruning goes on while calls find much."""
    sam = people.add("sam")
    query(
        db_url,
        "INSERT INTO notifications (user_id, kind, actor_id, track_id, created_at)"
        " SELECT %s, 'comment', %s, 't-other', now() - interval '100 days' FROM generate_series(1, 25000)",
        sam,
        people.ids["alice"],
    )
    async with AsyncConnectionPool(
        db_url, min_size=1, max_size=1, kwargs={"autocommit": True}, open=False
    ) as pool:
        gone = await prune(EventLog(pool))
    assert gone >= 25000
    assert notification_ids(db_url, sam) == []


# ---------------------------------------------------------------------------------------------
# Live delivery, across two replicas
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("via", ["sql", "api"])
async def test_mention_reaches_the_users_socket_on_another_track_and_replica(
    via: str, pair: list[Replica], db_url: str, people: People
) -> None:
    a, b = pair
    with contextlib.closing(make_writer(via, a.http, db_url, people)) as write:
        comment_id = await live_mention(write, a, b, people)

    # After the live hint, the inbox is the truth (asked of either replica).
    for replica in pair:
        async with httpx.AsyncClient(base_url=replica.http, timeout=10) as client:
            newest = (await client.get("/api/notifications?limit=1", headers=people.auth("bob"))).json()
        assert newest["unread"] >= 1
        assert [(n["kind"], n["comment_id"]) for n in newest["notifications"]] == [("mention", comment_id)]


async def live_mention(write: Writer, a: Replica, b: Replica, people: People) -> int:
    """bob (socket on t-other, replica b) is mentioned by alice on t-public; dave's socket hears nothing of it."""
    async with (
        open_socket(b.ws, "t-other", people.tokens["bob"]) as bob,
        open_socket(a.ws, "t-other", people.tokens["dave"]) as dave,
    ):
        await bob.expect("connected")
        await dave.expect("connected")

        comment_id = await asyncio.to_thread(write.comment, "alice", "t-public", "@bob hear the bridge")

        note = (await bob.expect("notification"))["notification"]
        assert (note["kind"], note["comment_id"], note["user_id"]) == (
            "mention",
            comment_id,
            people.ids["bob"],
        )
        assert (note["actor_username"], note["track_id"]) == ("alice", "t-public")
        hint = await bob.expect("mention")
        assert hint["from_user"] == "alice"
        assert hint["track_id"] == "t-public"
        assert (hint["comment"]["id"], hint["comment"]["content"]) == (comment_id, "@bob hear the bridge")

        # dave was not mentioned: the first thing his socket gets is his own later mention.
        for_dave = await asyncio.to_thread(write.comment, "alice", "t-public", "@dave yours")
        first = await dave.recv()
        assert first["type"] == "notification"
        assert first["notification"]["comment_id"] == for_dave
    return comment_id


@pytest.mark.parametrize("via", ["sql", "api"])
async def test_the_eleventh_user_mentioned_gets_no_live_push(
    via: str, replica: Replica, db_url: str, people: People
) -> None:
    names = crowd(people, 11)
    async with (
        open_socket(replica.ws, "t-other", people.tokens[names[9]]) as tenth,
        open_socket(replica.ws, "t-other", people.tokens[names[10]]) as eleventh,
    ):
        await tenth.expect("connected")
        await eleventh.expect("connected")
        with contextlib.closing(make_writer(via, replica.http, db_url, people)) as write:
            text = " ".join(f"@{name}" for name in names)
            comment_id = await asyncio.to_thread(write.comment, "alice", "t-public", text)
            assert (await tenth.expect("notification"))["notification"]["comment_id"] == comment_id
            assert (await tenth.expect("mention"))["comment"]["id"] == comment_id

            # The eleventh's first message is a later mention of them alone: none came before it.
            alone = await asyncio.to_thread(write.comment, "alice", "t-public", f"@{names[10]} now you")
        first = await eleventh.recv()
        assert (first["type"], first["notification"]["comment_id"]) == ("notification", alone)


async def test_hundreds_of_mentions_in_one_statement_reach_exactly_their_recipients(
    pair: list[Replica], db_url: str, people: People
) -> None:
    """320 mentions by one INSERT of 32 comments (ten each, the most one comment may notify):
    announced in several NOTIFYs (150 a payload), each read by the replica where its recipient
    has a socket; a socket whose user is not mentioned hears nothing."""
    a, b = pair
    crowd = [f"crowd{i:03d}" for i in range(320)]
    with psycopg.connect(db_url, autocommit=True) as conn:
        rows = conn.execute(
            "INSERT INTO users (username) SELECT unnest(%s::text[]) RETURNING id, username", (crowd,)
        ).fetchall()
    ids = {str(name): int(id_) for id_, name in rows}
    listening = {"crowd000": a, "crowd200": b, "crowd319": b}
    async with contextlib.AsyncExitStack() as stack:
        sockets = {
            name: await stack.enter_async_context(
                open_socket(replica.ws, "t-other", issue_token(SECRET, ids[name], 3600))
            )
            for name, replica in listening.items()
        }
        dave = await stack.enter_async_context(open_socket(a.ws, "t-other", people.tokens["dave"]))
        for socket in [*sockets.values(), dave]:
            await socket.expect("connected")

        contents = [
            "shout-out to " + " ".join(f"@{name}" for name in crowd[k : k + 10]) for k in range(0, 320, 10)
        ]
        with psycopg.connect(db_url, autocommit=True) as conn:
            rows = conn.execute(
                "INSERT INTO comments (track_id, user_id, content, timestamp)"
                " SELECT 't-public', %s, c, 3 FROM unnest(%s::text[]) WITH ORDINALITY AS u (c, o) ORDER BY o"
                " RETURNING id, content",
                (people.ids["alice"], contents),
            ).fetchall()
        comment_of = {name: int(id_) for id_, content in rows for name in listening if f"@{name}" in content}
        comment_ids = [int(id_) for id_, _ in rows]

        for name, socket in sockets.items():
            note = (await socket.expect("notification"))["notification"]
            assert (note["user_id"], note["kind"], note["comment_id"]) == (
                ids[name],
                "mention",
                comment_of[name],
            )
            assert (await socket.expect("mention"))["comment"]["id"] == comment_of[name]

        # dave's first message is his own later mention: nothing of the crowd's reached him.
        for_dave = await asyncio.to_thread(
            SqlWriter(db_url, people).comment, "alice", "t-public", "@dave and nobody else"
        )
        first = await dave.recv()
        assert (first["type"], first["notification"]["comment_id"]) == ("notification", for_dave)

    with psycopg.connect(db_url) as conn:
        count = conn.execute(
            "SELECT count(*) FROM notifications WHERE comment_id = ANY(%s) AND kind = 'mention'",
            (comment_ids,),
        ).fetchone()
    assert count == (320,)


async def test_a_writer_whose_search_path_lacks_public_goes_live_all_the_same(
    replica: Replica, db_url: str, people: People
) -> None:
    """Another service's connection, search_path without public: its writes, named public.<table>,
    run the triggers (which resolve tables at run time) and go live like anyone's."""
    expected = {
        "new_comment": 1,
        "notification": 1,
        "mention": 1,
        "comment_edited": 1,
        "comment_liked": 1,
        "comment_deleted": 1,
    }
    async with open_socket(replica.ws, "t-public", people.tokens["bob"]) as bob:
        await bob.expect("connected")

        def write() -> None:
            with psycopg.connect(db_url, autocommit=True) as conn:
                conn.execute("SET search_path = pg_catalog")
                row = conn.execute(
                    "INSERT INTO public.comments (track_id, user_id, content, timestamp)"
                    " VALUES ('t-public', %s, '@bob from another service', 2) RETURNING id",
                    (people.ids["alice"],),
                ).fetchone()
                assert row is not None
                conn.execute("UPDATE public.comments SET content = content || ', edited' WHERE id = %s", row)
                conn.execute(
                    "INSERT INTO public.comment_likes (comment_id, user_id) VALUES (%s, %s)",
                    (row[0], people.ids["bob"]),
                )
                conn.execute("DELETE FROM public.comments WHERE id = %s", row)

        await asyncio.to_thread(write)
        seen: dict[str, int] = {}
        while seen != expected:
            kind = (await bob.recv())["type"]
            seen[kind] = seen.get(kind, 0) + 1
            assert seen[kind] <= expected.get(kind, 0), f"unexpected {kind}: {bob.received}"
