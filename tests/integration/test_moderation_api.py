"""Moderation's routes (issue 20) through a real replica and PostgreSQL: who may do what (403 for
anyone but the track's creator and team), what a hidden or held comment is for whom (404 for anyone
but its author and the moderators), reports (once; the write limit counts them; the threshold holds),
the queue, track settings (comments off: 403; slow mode: 429 with Retry-After), mutes, the deep link
and the orders; and that each action through the API goes live as the same change made with SQL."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.support.processes import Replica, replicas
from tests.support.seed import MODERATION_ACTIONS, World, new_track
from tests.support.sockets import open_socket
from tests.support.waiting import async_wait_until
from tests.support.writes import insert_comment, sql

pytestmark = pytest.mark.timeout(120)

MARKS = {"hidden", "held", "report_count"}


@pytest.fixture(scope="module")
def client(replica: Replica) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=replica.http, timeout=10) as http:
        yield http


class Api:
    def __init__(self, client: httpx.Client, world: World) -> None:
        self.client = client
        self.world = world

    def __call__(self, who: str | None, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = self.world.auth(who) if who else {}
        return self.client.request(method, path, headers=headers, **kw)

    def post(self, who: str, track: str, content: str, ts: float = 1.0, **extra: Any) -> dict[str, Any]:
        answer = self(
            who, "POST", f"/api/tracks/{track}/comments", json={"content": content, "timestamp": ts, **extra}
        )
        assert answer.status_code == 201, answer.text
        made: dict[str, Any] = answer.json()
        return made

    def listing(self, who: str | None, track: str, **params: Any) -> list[dict[str, Any]]:
        answer = self(who, "GET", f"/api/tracks/{track}/comments", params=params)
        assert answer.status_code == 200, answer.text
        found: list[dict[str, Any]] = answer.json()
        return found

    def ok(self, who: str, method: str, path: str, status: int = 200, **kw: Any) -> Any:
        answer = self(who, method, path, **kw)
        assert answer.status_code == status, answer.text
        return answer.json()


@pytest.fixture(scope="module")
def api(client: httpx.Client, world: World) -> Api:
    return Api(client, world)


def error(answer: httpx.Response, status: int, *words: str) -> None:
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert body["status_code"] == status and body["detail"]
    for word in words:
        assert word in body["detail"], body


# ---------------------------------------------------------------------------------------------
# Who may
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "action"),
    MODERATION_ACTIONS,
)
def test_moderation_routes_by_anyone_but_the_creator_and_team_are_403(
    api: Api, world: World, db_url: str, method: str, action: str
) -> None:
    track = new_track(db_url)
    comment = api.post("alice", track, "mine")
    for who in ("alice", "bob"):  # its author, anyone else
        error(api(who, method, f"/api/comments/{comment['id']}/{action}"), 403, "creator or a team member")
    assert api(None, method, f"/api/comments/{comment['id']}/{action}").status_code == 401
    for who in ("carol", "tina"):
        api.ok(who, method, f"/api/comments/{comment['id']}/{action}")


def test_a_comment_of_another_track_is_404_for_a_route_that_names_its_track(api: Api, db_url: str) -> None:
    track, other = new_track(db_url), new_track(db_url)
    comment = api.post("alice", track, "here")
    for action in ("pin", "hide", "heart", "approve"):
        error(
            api("carol", "POST", f"/api/comments/{comment['id']}/{action}", params={"track_id": other}),
            404,
            f"comment {comment['id']} of track",
        )
    assert api.listing(None, track)[0]["pinned"] is False  # nothing happened
    api.ok("carol", "POST", f"/api/comments/{comment['id']}/pin", params={"track_id": track})
    error(api("carol", "POST", "/api/comments/999999999/pin"), 404, "not found")


def test_settings_by_anyone_else_are_403_and_bad_values_422(api: Api, db_url: str) -> None:
    track = new_track(db_url)
    error(
        api("bob", "PUT", f"/api/tracks/{track}/settings", json={"comments_enabled": False}), 403, "settings"
    )
    error(
        api("carol", "PUT", f"/api/tracks/{track}/settings", json={"slow_mode_seconds": -1}),
        422,
        "slow_mode_seconds",
    )
    error(api("carol", "PUT", f"/api/tracks/{track}/settings", json={}), 422, "comments_enabled")
    error(
        api("carol", "PUT", "/api/tracks/no-such-track/settings", json={"slow_mode_seconds": 5}), 404, "track"
    )
    state = api.ok("tina", "PUT", f"/api/tracks/{track}/settings", data={"slow_mode_seconds": "7"})  # a form
    assert state == {"track_id": track, "comments_enabled": True, "slow_mode_seconds": 7}


def test_the_queue_is_for_creators_and_the_team(api: Api, world: World) -> None:
    error(api("bob", "GET", "/api/moderation/queue"), 403, "creators and team")
    error(api("bob", "GET", "/api/moderation/queue", params={"track_id": world.public}), 403, "queue")
    error(api("bob", "GET", "/api/moderation/queue", params={"track_id": world.private}), 404, "track")
    assert api("carol", "GET", "/api/moderation/queue").status_code == 200


def test_mute_is_for_creators_and_names_a_user(api: Api, world: World) -> None:
    error(api("bob", "POST", f"/api/users/{world.users['alice']}/mute"), 403, "creator")
    error(api("carol", "POST", "/api/users/999999999/mute"), 404, "user")
    error(api("carol", "DELETE", "/api/users/999999999/mute"), 404, "user")
    error(api("carol", "POST", f"/api/users/{world.users['carol']}/mute"), 422, "yourself")


# ---------------------------------------------------------------------------------------------
# Pin, heart, hide, the orders
# ---------------------------------------------------------------------------------------------


def test_one_pinned_comment_per_track_first_in_every_order(api: Api, db_url: str) -> None:
    track = new_track(db_url)
    early = api.post("alice", track, "early", ts=1)
    late = api.post("bob", track, "late and liked", ts=50)
    middle = api.post("dave", track, "middle", ts=20)
    api.ok("alice", "POST", f"/api/comments/{late['id']}/like")
    assert [c["id"] for c in api.listing(None, track)] == [early["id"], middle["id"], late["id"]]
    assert [c["id"] for c in api.listing(None, track, sort="newest")] == [
        middle["id"],
        late["id"],
        early["id"],
    ]
    assert api.listing(None, track, sort="top")[0]["id"] == late["id"]
    assert api.ok("carol", "POST", f"/api/comments/{middle['id']}/pin")["pinned"] is True
    assert api.ok("carol", "POST", f"/api/comments/{early['id']}/pin")["pinned"] is True  # unpins middle
    for sort in ("timestamp", "newest", "top"):
        listed = api.listing(None, track, sort=sort)
        assert listed[0]["id"] == early["id"] and [c["pinned"] for c in listed] == [True, False, False], sort
    # Pages: the pinned comment once, on the first page; the rest in order after it.
    first = api("bob", "GET", f"/api/tracks/{track}/comments", params={"limit": 2, "sort": "newest"})
    assert [c["id"] for c in first.json()] == [early["id"], middle["id"]]
    rest = api.client.get(first.links["next"]["url"])
    assert [c["id"] for c in rest.json()] == [late["id"]]
    assert api.ok("carol", "DELETE", f"/api/comments/{early['id']}/pin")["pinned"] is False


def test_the_artists_heart(api: Api, db_url: str) -> None:
    track = new_track(db_url)
    comment = api.post("alice", track, "a heart please")
    assert api.ok("carol", "POST", f"/api/comments/{comment['id']}/heart")["hearted"] is True
    assert api.listing("bob", track)[0]["hearted"] is True
    assert api.ok("carol", "DELETE", f"/api/comments/{comment['id']}/heart")["hearted"] is False


def test_a_hidden_comment_exists_only_for_its_author_and_the_moderators(api: Api, db_url: str) -> None:
    track = new_track(db_url)
    comment = api.post("alice", track, "rude")
    reply = api.post("bob", track, "a reply to it", parent_id=comment["id"])
    hidden = api.ok("tina", "POST", f"/api/comments/{comment['id']}/hide")
    assert (hidden["hidden"], hidden["held"]) == (True, False)
    for who in (None, "bob", "dave"):
        assert [c["id"] for c in api.listing(who, track)] == [reply["id"]]
        error(api(who, "GET", f"/api/comments/{comment['id']}"), 404, "not found")
        if who != "bob":  # (the reply is bob's: he gets its marks)
            assert set(api.listing(who, track)[0]) & MARKS == set()
    error(api("bob", "POST", f"/api/comments/{comment['id']}/like"), 404, "not found")
    error(api("bob", "POST", f"/api/comments/{comment['id']}/report", json={"reason": "x"}), 404, "not found")
    for who in ("alice", "carol", "tina"):
        mine = {c["id"]: c for c in api.listing(who, track)}
        assert mine[comment["id"]]["hidden"] is True
        assert api.ok(who, "GET", f"/api/comments/{comment['id']}")["comment"]["hidden"] is True
    # A reply's deep link still works; its hidden parent is null for others.
    assert api.ok("bob", "GET", f"/api/comments/{reply['id']}")["parent"] is None
    assert api.ok("alice", "GET", f"/api/comments/{reply['id']}")["parent"]["id"] == comment["id"]
    api.ok("carol", "DELETE", f"/api/comments/{comment['id']}/hide")
    assert api.ok("bob", "GET", f"/api/comments/{comment['id']}")["comment"]["content"] == "rude"


def _ids(comments: list[dict[str, Any]]) -> list[int]:
    return [c["id"] for c in comments]


def _liked(api: Api, track: str) -> list[dict[str, Any]]:
    """Five comments on `track` (alice's, bob's, dave's, alice's, bob's, 10 s apart), liked so
    that the three orders differ: the fourth twice, the second once."""
    authors = ["alice", "bob", "dave", "alice", "bob"]
    made = [api.post(who, track, f"c{i}", ts=10.0 * (i + 1)) for i, who in enumerate(authors)]
    for who in ("bob", "dave"):
        api.ok(who, "POST", f"/api/comments/{made[3]['id']}/like")
    api.ok("dave", "POST", f"/api/comments/{made[1]['id']}/like")
    return made


@pytest.mark.parametrize("sort", ["timestamp", "newest", "top"])
def test_a_page_cursor_that_is_or_became_hidden_or_held_skips_nothing_and_shows_nothing_of_it(
    api: Api, db_url: str, sort: str
) -> None:
    """A listener's next page after a comment hidden since their last page (or held, or one they
    never saw) has every visible comment after it in the order, and not it."""
    track = new_track(db_url)
    made = _liked(api, track)
    hidden, held = made[3], made[0]
    api.ok("tina", "POST", f"/api/comments/{hidden['id']}/hide")
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("UPDATE comments SET held_at = now() WHERE id = %s", (held["id"],))
    whole = _ids(api.listing("carol", track, sort=sort))  # a moderator's: all five, in order
    assert sorted(whole) == sorted(_ids(made))
    for cursor in (hidden["id"], held["id"]):
        after = [i for i in whole[whole.index(cursor) + 1 :] if i not in (hidden["id"], held["id"])]
        for who in ("dave", None):
            assert _ids(api.listing(who, track, sort=sort, after_id=cursor)) == after, (sort, cursor, who)


@pytest.mark.parametrize("sort", ["timestamp", "newest", "top"])
@pytest.mark.parametrize("limit", [1, 2])
def test_pages_followed_by_their_link_give_every_comment_once_the_pinned_one_first(
    api: Api, db_url: str, sort: str, limit: int
) -> None:
    """A client that follows the `Link` from the first page gets every comment once, when the
    pinned comment (the middle one of every order) fills a page alone (limit 1: the first page is
    only it) or ends one; and a cursor that is the pinned comment skips nothing."""
    track = new_track(db_url)
    made = _liked(api, track)
    api.ok("carol", "POST", f"/api/comments/{made[2]['id']}/pin")
    whole = _ids(api.listing("dave", track, sort=sort, limit=500))
    assert whole[0] == made[2]["id"] and sorted(whole) == sorted(_ids(made))
    seen: list[int] = []
    url: str | None = f"/api/tracks/{track}/comments?limit={limit}&sort={sort}"
    while url is not None and len(seen) <= len(whole):
        answer = api("dave", "GET", url)
        assert answer.status_code == 200, answer.text
        seen += _ids(answer.json())
        url = answer.links.get("next", {}).get("url")
    assert seen == whole, (sort, limit)
    by_hand = api.listing("dave", track, sort=sort, after_id=made[2]["id"], limit=500)
    assert _ids(by_hand) == whole[1:], (sort, limit)


@pytest.mark.parametrize("sort", ["timestamp", "top"])
def test_a_page_cursor_that_is_no_comment_of_the_track_starts_the_order_over(
    api: Api, world: World, db_url: str, sort: str
) -> None:
    """A cursor that is no comment of the track (one of another track, a private one's even; or
    deleted since) is placed nowhere: the order starts over, nothing skipped. Before, another
    track's comment placed it (and so told its position and likes), and a deleted one in the `top`
    order skipped every liked comment."""
    track = new_track(db_url)
    _liked(api, track)
    gone = api.post("bob", track, "deleted soon", ts=25)
    api.ok("dave", "POST", f"/api/comments/{gone['id']}/like")
    assert api("bob", "DELETE", f"/api/comments/{gone['id']}").status_code == 204
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO comments (track_id, user_id, content, timestamp) VALUES (%s, %s, 'elsewhere', 35)"
            " RETURNING id",
            (world.private, world.users["carol"]),
        ).fetchone()
        assert row is not None
        conn.execute(
            "INSERT INTO comment_likes (comment_id, user_id) VALUES (%s, %s)", (row[0], world.users["tina"])
        )
    whole = _ids(api.listing("dave", track, sort=sort))
    for cursor in (gone["id"], row[0]):
        assert _ids(api.listing("dave", track, sort=sort, after_id=cursor)) == whole, (sort, cursor)


def test_a_hidden_or_held_comment_takes_no_reply_from_anyone_it_does_not_exist_for(
    api: Api, db_url: str
) -> None:
    """A reply names a parent that does not exist for its writer: 422, as for no such comment (its
    answer would tell that it exists; and it would notify the hidden comment's author)."""
    track = new_track(db_url)
    hidden = api.post("alice", track, "hidden soon")
    held = api.post("alice", track, "held soon")
    api.ok("tina", "POST", f"/api/comments/{hidden['id']}/hide")
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("UPDATE comments SET held_at = now() WHERE id = %s", (held["id"],))
    for parent in (hidden, held):
        for who in ("bob", "dave"):
            answer = api(
                who,
                "POST",
                f"/api/tracks/{track}/comments",
                json={"content": "found you", "timestamp": 1, "parent_id": parent["id"]},
            )
            error(answer, 422, f"parent_id: {parent['id']} is not a comment of track")
        for who in ("alice", "carol", "tina"):  # its author and the moderators see it
            assert (
                api.post(who, track, f"a reply of {who}", parent_id=parent["id"])["parent_id"] == parent["id"]
            )
    assert "found you" not in str(api.listing("alice", track))


def test_a_notification_of_a_comment_hidden_since_shows_nothing_of_it(
    api: Api, world: World, db_url: str
) -> None:
    """bob was told of a mention and of a reply; both are then hidden (one by a moderator, one held
    by reports): his notifications no longer show them, nor count them unread, until they are
    shown again. The moderators and the comments' authors keep theirs."""
    track = new_track(db_url)
    asked = api.post("bob", track, "bob asks")
    mention = api.post("alice", track, "a secret mention of @bob")
    reply = api.post("dave", track, "a secret reply", parent_id=asked["id"])
    api.ok("carol", "POST", f"/api/comments/{mention['id']}/like")  # alice's own notification of it

    def bobs() -> tuple[set[int], int, str]:
        answer = api("bob", "GET", "/api/notifications", params={"limit": 100})
        assert answer.status_code == 200, answer.text
        page = answer.json()
        about = {n["comment_id"] for n in page["notifications"] if n["track_id"] == track}
        return about, page["unread"], answer.text

    told, unread, _ = bobs()
    assert told == {mention["id"], reply["id"]}
    api.ok("tina", "POST", f"/api/comments/{mention['id']}/hide")
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("UPDATE comments SET held_at = now() WHERE id = %s", (reply["id"],))
    told, unread_now, text = bobs()
    assert told == set() and unread_now == unread - 2
    assert "secret" not in text
    for who, comment in (("carol", mention), ("tina", reply), ("alice", mention)):
        page = api.ok(who, "GET", "/api/notifications", params={"limit": 100})
        assert comment["id"] in {n["comment_id"] for n in page["notifications"]}, who
    api.ok("carol", "POST", f"/api/comments/{mention['id']}/approve")
    api.ok("carol", "POST", f"/api/comments/{reply['id']}/approve")
    told, unread_again, _ = bobs()
    assert told == {mention["id"], reply["id"]} and unread_again == unread


def test_a_tombstone_is_not_pinned_hearted_liked_reported_or_edited(api: Api, db_url: str) -> None:
    """A deleted comment kept for its replies is empty: pinning (its deletion unpinned it), hearting,
    liking, reporting or editing it is a 422 that says it was deleted; nothing changes."""
    track = new_track(db_url)
    gone = api.post("alice", track, "soon gone")
    api.post("bob", track, "a reply keeps it", parent_id=gone["id"])
    assert api("alice", "DELETE", f"/api/comments/{gone['id']}").status_code == 204
    path = f"/api/comments/{gone['id']}"
    for who, method, action, body in (
        ("carol", "POST", "/pin", None),
        ("tina", "POST", "/heart", None),
        ("bob", "POST", "/like", None),
        ("dave", "POST", "/report", {"reason": "empty"}),
        ("alice", "PUT", "", {"content": "back again"}),
    ):
        error(api(who, method, path + action, json=body), 422, f"comment {gone['id']} was deleted")
    tombstone = api.ok("bob", "GET", path)["comment"]
    assert (tombstone["deleted"], tombstone["pinned"], tombstone["hearted"], tombstone["like_count"]) == (
        True,
        False,
        False,
        0,
    )
    assert (
        tombstone["content"] == ""
        and api.ok("carol", "GET", "/api/moderation/queue", params={"track_id": track}) == []
    )
    # Taking back is never refused (nothing to take back here: it changes nothing).
    for who, method, action in (
        ("carol", "DELETE", "/pin"),
        ("carol", "DELETE", "/heart"),
        ("bob", "DELETE", "/like"),
    ):
        assert api(who, method, path + action).status_code == 200, action


def test_the_deep_link_has_the_parent_and_the_replies(api: Api, db_url: str) -> None:
    track = new_track(db_url)
    top = api.post("alice", track, "top")
    replies = [api.post(who, track, f"reply of {who}", parent_id=top["id"]) for who in ("bob", "dave")]
    thread = api.ok("bob", "GET", f"/api/comments/{top['id']}")
    assert thread["comment"]["id"] == top["id"] and thread["parent"] is None
    assert [c["id"] for c in thread["replies"]] == [r["id"] for r in replies]
    one = api.ok("dave", "GET", f"/api/comments/{replies[0]['id']}")
    assert one["parent"]["id"] == top["id"] and one["replies"] == []
    error(api(None, "GET", "/api/comments/0"), 404, "comment")


def test_a_private_tracks_comment_is_404_by_deep_link_for_outsiders(api: Api, world: World) -> None:
    comment = api.post("carol", world.private, "inside")
    error(api("bob", "GET", f"/api/comments/{comment['id']}"), 404, "not found")
    assert api.ok("tina", "GET", f"/api/comments/{comment['id']}")["comment"]["id"] == comment["id"]


# ---------------------------------------------------------------------------------------------
# Hold: words, mutes, reports; the queue
# ---------------------------------------------------------------------------------------------


def test_a_held_comment_edited_by_its_author_stays_held(api: Api, world: World, db_url: str) -> None:
    track = new_track(db_url)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO moderation_words (creator_id, word) VALUES (%s, 'forbiddenword') ON CONFLICT DO NOTHING",
            (world.users["carol"],),
        )
    made = api.post("alice", track, "a ForbiddenWord here")
    assert made["held"] is True
    error(api("bob", "GET", f"/api/comments/{made['id']}"), 404, "not found")
    edited = api.ok("alice", "PUT", f"/api/comments/{made['id']}", json={"content": "all clean now"})
    assert (edited["held"], edited["content"]) == (True, "all clean now")
    error(api("bob", "GET", f"/api/comments/{made['id']}"), 404, "not found")
    queue = api.ok("carol", "GET", "/api/moderation/queue", params={"track_id": track})
    assert [item["comment"]["id"] for item in queue] == [made["id"]]
    api.ok("carol", "POST", f"/api/comments/{made['id']}/approve")
    assert api.ok("bob", "GET", f"/api/comments/{made['id']}")["comment"]["content"] == "all clean now"


def test_a_muted_users_replies_in_a_visible_thread_are_hidden_too(
    api: Api, world: World, db_url: str
) -> None:
    track = new_track(db_url)
    thread = api.post("bob", track, "a visible thread")
    assert api.ok("carol", "POST", f"/api/users/{world.users['dave']}/mute") == {
        "user_id": world.users["dave"],
        "muted": True,
    }
    try:
        reply = api.post("dave", track, "muted words", parent_id=thread["id"])
        assert reply["hidden"] is True  # its author sees it (and is not told otherwise)
        assert [c["id"] for c in api.listing("bob", track)] == [thread["id"]]
        assert api.ok("bob", "GET", f"/api/comments/{thread['id']}")["replies"] == []
        assert [c["id"] for c in api.ok("tina", "GET", f"/api/comments/{thread['id']}")["replies"]] == [
            reply["id"]
        ]
    finally:
        api.ok("carol", "DELETE", f"/api/users/{world.users['dave']}/mute")
    assert api.post("dave", track, "heard again", parent_id=thread["id"])["hidden"] is False


def test_reports_once_each_hold_at_the_threshold_and_approve_clears_them(
    api: Api, world: World, db_url: str
) -> None:
    track = new_track(db_url)
    older = api.post("alice", track, "first in the queue")
    comment = api.post("alice", track, "reported thrice")
    made = api.ok("bob", "POST", f"/api/comments/{older['id']}/report", status=201, json={"reason": "meh"})
    assert (made["comment_id"], made["username"], made["reason"]) == (older["id"], "bob", "meh")
    for who in ("bob", "dave", "tina"):
        api.ok(
            who,
            "POST",
            f"/api/comments/{comment['id']}/report",
            status=201,
            data={"reason": f"spam says {who}"},
        )
        if who == "bob":  # (before the third: a held comment is 404 for bob)
            again = api("bob", "POST", f"/api/comments/{comment['id']}/report", json={"reason": "again"})
            error(again, 409, "already")
    error(
        api("alice", "POST", f"/api/comments/{older['id']}/report", json={"reason": "mine"}), 422, "your own"
    )
    error(api("dave", "POST", f"/api/comments/{older['id']}/report", json={"reason": "  "}), 422, "reason")
    error(api("dave", "POST", f"/api/comments/{older['id']}/report", json={}), 422, "reason")
    error(api("bob", "GET", f"/api/comments/{comment['id']}"), 404, "not found")  # held: 3 reports
    queue = api.ok("carol", "GET", "/api/moderation/queue", params={"track_id": track})
    assert [item["comment"]["id"] for item in queue] == [older["id"], comment["id"]]  # oldest first
    assert [r["username"] for r in queue[1]["reports"]] == ["bob", "dave", "tina"]
    assert (queue[1]["comment"]["held"], queue[1]["comment"]["report_count"]) == (True, 3)
    approved = api.ok("carol", "POST", f"/api/comments/{comment['id']}/approve")
    assert (approved["held"], approved["report_count"]) == (False, 0)
    assert api.ok("bob", "GET", f"/api/comments/{comment['id']}")["comment"]["id"] == comment["id"]
    hidden = api.ok("carol", "POST", f"/api/comments/{older['id']}/hide")  # decided: hidden, off the queue
    assert hidden["hidden"] is True
    assert api.ok("carol", "GET", "/api/moderation/queue", params={"track_id": track}) == []


@pytest.fixture(scope="module")
def strict(db_url: str, world: World, log_dir: Path) -> Iterator[Replica]:
    """A replica that allows 3 writes a minute."""
    with replicas(db_url, log_dir, 1, TRACKTALK_WRITES_PER_MINUTE="3") as started:
        yield started[0]


def test_a_flood_of_reports_meets_the_write_limit(strict: Replica, world: World, db_url: str) -> None:
    track = new_track(db_url)
    with httpx.Client(base_url=strict.http, timeout=10) as http:
        ids = []
        for i in range(4):
            answer = http.post(
                f"/api/tracks/{track}/comments",
                json={"content": f"c{i}", "timestamp": 1},
                headers=world.auth("alice"),
            )
            assert answer.status_code == 201, answer.text
            ids.append(answer.json()["id"])
        answers = [
            http.post(f"/api/comments/{i}/report", json={"reason": "flood"}, headers=world.auth("dave"))
            for i in ids
        ]
    assert [a.status_code for a in answers] == [201, 201, 201, 429]
    assert int(answers[3].headers["Retry-After"]) >= 1 and "writes a minute" in answers[3].json()["detail"]


# ---------------------------------------------------------------------------------------------
# Track settings
# ---------------------------------------------------------------------------------------------


def test_comments_off_refuses_posts_and_keeps_the_comments(api: Api, db_url: str) -> None:
    track = new_track(db_url)
    kept = api.post("alice", track, "before")
    api.ok("carol", "PUT", f"/api/tracks/{track}/settings", json={"comments_enabled": False})
    error(
        api("bob", "POST", f"/api/tracks/{track}/comments", json={"content": "hey", "timestamp": 1}),
        403,
        "comments are off",
    )
    error(
        api(
            "bob",
            "POST",
            f"/api/tracks/{track}/comments",
            json={"content": "hey", "timestamp": 1, "parent_id": kept["id"]},
        ),
        403,
        "comments are off",
    )
    assert [c["id"] for c in api.listing(None, track)] == [kept["id"]]
    api.post("carol", track, "the creator may")  # the track's creator and team are above it
    api.ok("carol", "PUT", f"/api/tracks/{track}/settings", json={"comments_enabled": True})
    api.post("bob", track, "back on")


def test_slow_mode_answers_a_second_comment_with_429_and_retry_after(api: Api, db_url: str) -> None:
    track = new_track(db_url)
    api.ok("carol", "PUT", f"/api/tracks/{track}/settings", json={"slow_mode_seconds": 60})
    api.post("bob", track, "one")
    second = api("bob", "POST", f"/api/tracks/{track}/comments", json={"content": "two", "timestamp": 1})
    error(second, 429, "slow mode")
    assert 55 <= int(second.headers["Retry-After"]) <= 60
    api.post("dave", track, "someone else may")  # per user
    api.post("tina", track, "the team may")
    api.post("tina", track, "and again")
    api.ok("carol", "PUT", f"/api/tracks/{track}/settings", json={"slow_mode_seconds": 0})
    api.post("bob", track, "off again")


def test_slow_mode_runs_from_the_last_post_deleted_or_not(api: Api, db_url: str) -> None:
    """Deleting one's newest comment does not end the wait: it runs from the last post."""
    track = new_track(db_url)
    api.ok("carol", "PUT", f"/api/tracks/{track}/settings", json={"slow_mode_seconds": 60})
    first = api.post("bob", track, "one")
    assert api("bob", "DELETE", f"/api/comments/{first['id']}").status_code == 204
    again = api("bob", "POST", f"/api/tracks/{track}/comments", json={"content": "two", "timestamp": 1})
    error(again, 429, "slow mode", "one comment every 60 s", "post again in")
    assert 55 <= int(again.headers["Retry-After"]) <= 60
    assert api.listing(None, track) == []


def test_slow_mode_turned_on_counts_a_post_from_before_it_while_its_comment_exists(
    api: Api, db_url: str
) -> None:
    """Slow mode turned on after a post (or a database upgraded from version 11, or one whose
    unlogged slow_mode_posts a crash emptied): the wait runs from the user's newest comment, and
    ends with its deletion (only posts made in slow mode are remembered)."""
    track = new_track(db_url)
    first = api.post("bob", track, "before slow mode")
    api.ok("carol", "PUT", f"/api/tracks/{track}/settings", json={"slow_mode_seconds": 60})
    with psycopg.connect(db_url, autocommit=True) as conn:
        kept = conn.execute("SELECT count(*) FROM tracktalk.slow_mode_posts WHERE track_id = %s", (track,))
        assert kept.fetchone() == (0,)
    again = api("bob", "POST", f"/api/tracks/{track}/comments", json={"content": "two", "timestamp": 1})
    error(again, 429, "slow mode", "one comment every 60 s", "post again in")
    assert 55 <= int(again.headers["Retry-After"]) <= 60
    assert api("bob", "DELETE", f"/api/comments/{first['id']}").status_code == 204
    api.post("bob", track, "its comment deleted, a post from before slow mode counts no more")


def test_slow_mode_posts_older_than_a_day_are_pruned_and_the_others_kept(
    api: Api, world: World, db_url: str
) -> None:
    """tracktalk.slow_mode_posts does not grow for good: prune_events drops the rows past the
    longest slow mode (a day), and keeps the others, which still hold their users."""
    track = new_track(db_url)
    insert = "INSERT INTO comments (track_id, user_id, content) VALUES (%s, %s, 'x')"
    count = "SELECT user_id FROM tracktalk.slow_mode_posts WHERE track_id = %s ORDER BY user_id"
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("UPDATE tracks SET slow_mode_seconds = 86400 WHERE id = %s", (track,))
        for who in ("bob", "dave"):
            conn.execute(insert, (track, world.users[who]))
        conn.execute(
            "UPDATE tracktalk.slow_mode_posts SET posted_at = now() - interval '1 day 1 minute'"
            " WHERE track_id = %s AND user_id = %s",
            (track, world.users["bob"]),
        )
        conn.execute("DELETE FROM comments WHERE track_id = %s", (track,))
        conn.execute("SELECT tracktalk.prune_events()")
        assert conn.execute(count, (track,)).fetchall() == [(world.users["dave"],)]
    api.post("bob", track, "a day later")
    error(
        api("dave", "POST", f"/api/tracks/{track}/comments", json={"content": "kept", "timestamp": 1}),
        429,
        "slow mode",
    )


def test_slow_mode_binds_an_sql_writer_as_the_api_but_the_tracks_moderators(
    api: Api, world: World, db_url: str
) -> None:
    """Another service's INSERT is held to the track's slow mode (a clear error for its DBA, and
    nothing written), counts for the API's next post, and its deleted post counts too."""
    track = new_track(db_url)
    insert = "INSERT INTO comments (track_id, user_id, content) VALUES (%s, %s, %s) RETURNING id"
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("UPDATE tracks SET slow_mode_seconds = 60 WHERE id = %s", (track,))
        row = conn.execute(insert, (track, world.users["dave"], "by sql")).fetchone()
        assert row is not None
        conn.execute("DELETE FROM comments WHERE id = %s", (row[0],))
        with pytest.raises(psycopg.errors.CheckViolation) as refused:
            conn.execute(insert, (track, world.users["dave"], "again by sql"))
        diag = refused.value.diag
        assert diag.constraint_name == "comments_slow_mode"
        assert diag.message_primary and f"slow mode on track {track}" in diag.message_primary
        assert diag.message_detail and diag.message_detail.startswith("wait ")
        assert diag.message_hint and "slow_mode_seconds" in diag.message_hint
        for _ in range(2):  # the track's team (and creator) are above it, by SQL as by the API
            conn.execute(insert, (track, world.users["tina"], "the team may"))
    error(
        api("dave", "POST", f"/api/tracks/{track}/comments", json={"content": "api", "timestamp": 1}),
        429,
        "slow mode",
    )
    api.post("bob", track, "someone else may")
    with psycopg.connect(db_url, autocommit=True) as conn, pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(insert, (track, world.users["bob"], "bob again, by sql"))
    assert [c["content"] for c in api.listing(None, track)] == [
        "the team may",
        "the team may",
        "someone else may",
    ]


@pytest.mark.parametrize("earlier", [False, True], ids=["first-turn", "after-an-earlier-turn"])
async def test_two_posts_at_once_in_slow_mode_take_turns_without_the_write_limit(
    replica: Replica, world: World, db_url: str, earlier: bool
) -> None:
    """With TRACKTALK_COMMENTS_PER_MINUTE=0 (the test replicas' setting) nothing else takes one
    user's posts in turn: a post made and held uncommitted by another writer, and the API's post of
    the same user at the same moment. The API's waits for the first (seen in pg_stat_activity),
    then is refused with 429 once the first commits. Also when the user's turn was made by an
    earlier post, two minutes ago (their row of slow_mode_posts exists: only its lock, not the
    insert of a new one, takes the two in turn)."""
    track = new_track(db_url)
    await sql(db_url, "UPDATE tracks SET slow_mode_seconds = 60 WHERE id = %s", (track,))
    if earlier:
        await sql(
            db_url,
            "INSERT INTO comments (track_id, user_id, content) VALUES (%s, %s, 'earlier')",
            (track, world.users["bob"]),
        )
        for backdate in (
            "UPDATE comments SET created_at = now() - interval '2 minutes' WHERE track_id = %s",
            "UPDATE tracktalk.slow_mode_posts SET posted_at = now() - interval '2 minutes' WHERE track_id = %s",
        ):
            await sql(db_url, backdate, (track,))
    async with (
        await psycopg.AsyncConnection.connect(db_url) as first,
        httpx.AsyncClient(base_url=replica.http, timeout=10) as http,
    ):
        await first.execute(
            "INSERT INTO comments (track_id, user_id, content) VALUES (%s, %s, 'first')",
            (track, world.users["bob"]),
        )
        second = asyncio.create_task(
            http.post(
                f"/api/tracks/{track}/comments",
                json={"content": "at the same moment", "timestamp": 1},
                headers=world.auth("bob"),
            )
        )

        async def waits_on_the_first() -> bool:
            assert not second.done(), (await second).text  # it went through without waiting
            rows = await sql(
                db_url,
                "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY (pg_blocking_pids(pid))",
                (first.info.backend_pid,),
            )
            return int(rows[0][0]) == 1

        await async_wait_until(waits_on_the_first, 20, "the API's post to wait on the first one's turn")
        await first.commit()
        answer = await second
    error(answer, 429, "slow mode")
    assert [c["content"] for c in await _listing(replica, track)] == ["earlier", "first"][not earlier :]


async def _listing(replica: Replica, track: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=replica.http, timeout=10) as http:
        answer = await http.get(f"/api/tracks/{track}/comments")
    assert answer.status_code == 200, answer.text
    found: list[dict[str, Any]] = answer.json()
    return found


# ---------------------------------------------------------------------------------------------
# The API's actions go live like SQL's
# ---------------------------------------------------------------------------------------------


async def test_each_action_through_the_api_goes_live(replica: Replica, world: World, db_url: str) -> None:
    track = new_track(db_url)
    comment = await insert_comment(db_url, track, world.users["alice"], "live")
    async with (
        httpx.AsyncClient(base_url=replica.http, timeout=10) as http,
        open_socket(replica.ws, track, world.tokens["bob"]) as bob,
        open_socket(replica.ws, track, world.tokens["carol"]) as carol,
    ):
        await bob.expect("connected")
        await carol.expect("connected")
        for method, path, body in [
            ("POST", f"/api/comments/{comment}/pin", None),
            ("POST", f"/api/comments/{comment}/heart", None),
            ("POST", f"/api/comments/{comment}/hide", None),
            ("POST", f"/api/comments/{comment}/approve", None),
            ("PUT", f"/api/tracks/{track}/settings", {"slow_mode_seconds": 3}),
        ]:
            answer = await http.request(method, path, json=body, headers=world.auth("carol"))
            assert answer.status_code == 200, answer.text
        answer = await http.post(
            f"/api/comments/{comment}/report", json={"reason": "r"}, headers=world.auth("dave")
        )
        assert answer.status_code == 201
        bobs, carols = await bob.events(6), await carol.events(6)
    assert [e["type"] for e in bobs] == [
        "comment_pinned",
        "comment_hearted",
        "comment_hidden",
        "comment_restored",
        "track_settings",
        "skip",
    ]
    assert [e["type"] for e in carols] == [
        "comment_pinned",
        "comment_hearted",
        "comment_moderated",
        "comment_moderated",
        "track_settings",
        "comment_moderated",
    ]
    assert [e["seq"] for e in bobs] == [e["seq"] for e in carols]
    assert carols[-1]["comment"]["report_count"] == 1
